"""Streaming batches from a random-access source with grain: shuffled, sharded, resumable.

    it = batches(source, 256, seed=0, num_epochs=10)   # this host's share of every epoch
    for batch in it:                                    # image uint8, label int32, weight f32
      ...
    state = it.get_state()                              # JSON-able; later: it.set_state(state)

Each epoch is a fresh seeded permutation of the whole source; host h of k takes positions
h, h+k, h+2k, ... of it, so hosts are disjoint and together cover the epoch. Hosts of a
pod must step together, so every host yields the same number of batches per epoch: with
`pad_to_batch` the shortfall is filled with copies of real examples at weight 0, with
`drop_remainder` each host stops at the last full batch that every host can make. Batches
never straddle epochs. Nothing here imports TensorFlow.

With `worker_count > 0`, run inside `surgery.data.shm.shared_memory_scope(workdir)`, so a
killed run's worker processes and their shared memory do not outlive it.
"""
import functools
import math
import operator
from typing import Callable, Optional

import grain
import numpy as np

from surgery.data import shm
from surgery.errors import SurgeryError

# Worker processes import this module to unpickle the pipeline: that is where they learn
# to name their shared memory after the run and to exit with it.
shm.install_in_worker()

_INT_KEYS = ('label', 'group', 'domain', 'class_index')


class _EvenShard(grain.MapDataset):
  """This host's rows of each epoch of `parent`, padded or trimmed to `rows` per epoch.

  Elements are (example, is_real). Padding rows repeat real examples so that every row
  has the same shapes after a transform; `is_real` becomes the weight.
  """

  def __init__(self, parent: grain.MapDataset, shard_index: int, shard_count: int, rows: int):
    super().__init__(parent)
    self._epoch_length = len(parent)
    self._shard_index = shard_index
    self._shard_count = shard_count
    self._rows = rows

  def __len__(self) -> int:
    return self._rows

  def __str__(self) -> str:
    return f'_EvenShard({self._shard_index} of {self._shard_count}, {self._rows} rows)'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    # Indices past one epoch address later epochs (that is how grain's repeat works), and
    # the shuffle below reseeds from the epoch it reads off the index we pass on.
    epoch, row = divmod(index, self._rows)
    position = self._shard_index + row * self._shard_count
    is_real = position < self._epoch_length
    if not is_real:
      position = row % self._epoch_length
    return self._parent[epoch * self._epoch_length + position], is_real


def _finish(element, transform: Optional[Callable[[dict], dict]]) -> dict:
  """Apply `transform` and fix the dtypes, so every batch has one signature."""
  example, is_real = element
  if transform is not None:
    example = transform(example)
  if not isinstance(example, dict):
    raise SurgeryError(f'transform must return a dict, got {type(example).__name__}')
  out = {key: np.asarray(value) for key, value in example.items()}
  out.update({key: np.int32(example[key]) for key in _INT_KEYS if key in example})
  out['weight'] = np.float32(is_real)
  return out


def _rows_per_epoch(num_examples: int, batch_size: int, shard_index: int, shard_count: int,
                    drop_remainder: bool, pad_to_batch: bool) -> int:
  """Rows this host yields per epoch (padding included); see the module docstring."""
  if drop_remainder:
    rows = num_examples // shard_count // batch_size * batch_size
    if rows == 0:
      raise SurgeryError(f'drop_remainder leaves no batches: {num_examples} examples over '
                         f'{shard_count} shard(s) is less than batch_size {batch_size} each')
    return rows
  if pad_to_batch:
    return math.ceil(math.ceil(num_examples / shard_count) / batch_size) * batch_size
  return len(range(shard_index, num_examples, shard_count))


def _shard(shard_index: Optional[int], shard_count: Optional[int]):
  """(index, count), defaulting to this host among all hosts of a multi-host run."""
  if (shard_index is None) != (shard_count is None):
    raise SurgeryError('pass both shard_index and shard_count, or neither')
  if shard_index is None:
    import jax  # here, not at the top, so data worker processes need not import jax
    shard_index, shard_count = jax.process_index(), jax.process_count()
  shard_index = _integer('shard_index', shard_index)
  shard_count = _integer('shard_count', shard_count)
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise SurgeryError(f'shard_index must be in [0, shard_count), got {shard_index} of '
                       f'{shard_count}')
  return shard_index, shard_count


def _integer(name: str, value) -> int:
  """`value` as a plain int (so iterator states stay JSON-able), or a one-line error."""
  try:
    return operator.index(value)
  except TypeError:
    raise SurgeryError(f'{name} must be an integer, got {value!r}') from None


def _checked_arguments(source, batch_size, seed, num_epochs, worker_count, prefetch):
  """The integer arguments as plain ints, after checking them and the source."""
  if not (hasattr(source, '__len__') and hasattr(source, '__getitem__')):
    raise SurgeryError(f'a source needs __len__ and __getitem__, got {type(source).__name__}')
  if len(source) == 0:
    raise SurgeryError('the source is empty')
  batch_size, seed = _integer('batch_size', batch_size), _integer('seed', seed)
  worker_count, prefetch = _integer('worker_count', worker_count), _integer('prefetch', prefetch)
  if batch_size < 1:
    raise SurgeryError(f'batch_size must be >= 1, got {batch_size}')
  if not 0 <= seed < 2**32:
    raise SurgeryError(f'seed must be in [0, 2**32), got {seed}')
  if num_epochs is not None and _integer('num_epochs', num_epochs) < 1:
    raise SurgeryError(f'num_epochs must be >= 1 or None (forever), got {num_epochs}')
  if worker_count < 0 or prefetch < 0:
    raise SurgeryError(f'worker_count and prefetch must be >= 0, got {worker_count} and '
                       f'{prefetch}')
  num_epochs = None if num_epochs is None else int(num_epochs)
  return batch_size, seed, num_epochs, worker_count, prefetch


def _check_example(example) -> None:
  """Catch a source that breaks the contract on its first example, not deep in grain."""
  if not isinstance(example, dict) or not {'image', 'label'} <= set(example):
    keys = sorted(example) if isinstance(example, dict) else type(example).__name__
    raise SurgeryError(f"source examples must be dicts with 'image' and 'label', got {keys}")
  image = np.asarray(example['image'])
  if image.dtype != np.uint8 or image.ndim != 3:
    raise SurgeryError(f"source 'image' must be uint8 [H, W, C], got {image.dtype} "
                       f'{image.shape}')


def _allow_unparsed_absl_flags() -> None:
  # grain 0.2.18's worker processes read an absl flag, which raises in programs that never
  # parse absl flags (grain issue #1355, fixed upstream after 0.2.18); flags keep their
  # defaults, and a later absl.app.run still parses argv as usual.
  from absl import flags  # grain depends on absl
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _shuffle_seed(seed: int) -> int:
  # grain reshuffles epoch e with seed + e, so seed 1 would replay seed 0's epochs shifted
  # by one; scrambling the seed first keeps nearby seeds' epochs unrelated.
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


class BatchIterator(grain.DatasetIterator):
  """Iterator over dict batches; `get_state` / `set_state` resume it exactly.

  A grain `DatasetIterator`, so grain's and Orbax's checkpoint handlers save it as is.

  Attributes:
    steps_per_epoch: batches per epoch, the same on every host unless neither
      pad_to_batch nor drop_remainder is set.
    num_epochs: epochs in total, None for forever.
  """

  def __init__(self, parent: grain.DatasetIterator, pipeline: dict, steps_per_epoch: int,
               num_epochs: Optional[int]):
    super().__init__(parent)
    self._pipeline = pipeline
    self.steps_per_epoch = steps_per_epoch
    self.num_epochs = num_epochs

  def __next__(self) -> dict:
    return next(self._parent)

  def __enter__(self) -> 'BatchIterator':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()  # stops worker processes now rather than at garbage collection

  def __len__(self) -> int:
    """Batches in all epochs, counted from the start whatever the position."""
    if self.num_epochs is None:
      raise TypeError('an iterator with num_epochs=None has no length')
    return self.steps_per_epoch * self.num_epochs

  def get_state(self) -> dict:
    return {'pipeline': dict(self._pipeline), 'grain': self._parent.get_state()}

  def set_state(self, state: dict) -> None:
    saved = state.get('pipeline') if isinstance(state, dict) else None
    if saved != self._pipeline:
      differ = sorted(k for k in self._pipeline if (saved or {}).get(k) != self._pipeline[k])
      raise SurgeryError(f'iterator state is from a different pipeline (differs in '
                         f'{", ".join(differ) or "format"}); rebuild it with the same arguments')
    self._parent.set_state(state['grain'])


def batches(source, batch_size: int, *, seed: int, shuffle: bool = True,
            num_epochs: Optional[int] = 1, drop_remainder: bool = False,
            shard_index: Optional[int] = None, shard_count: Optional[int] = None,
            transform: Optional[Callable[[dict], dict]] = None,
            random_transform: Optional[Callable[[dict, np.random.Generator], dict]] = None,
            worker_count: int = 0, pad_to_batch: bool = True,
            prefetch: int = 2) -> BatchIterator:
  """Batches of this host's shard of `source`, epoch after epoch, as a resumable iterator.

  Args:
    source: random-access examples (see `surgery.data.sources`).
    batch_size: examples per batch on this host.
    seed: shuffle seed in [0, 2**32), the same on every host (they split one permutation
      per epoch); each epoch is a different permutation.
    shuffle: False keeps the source order (e.g. for evaluation).
    num_epochs: passes over the source, or None to go on forever.
    drop_remainder: stop each epoch at the last full batch every host can make.
    shard_index, shard_count: this host's shard; default `jax.process_index()` of
      `jax.process_count()`.
    transform: example dict -> example dict (decode, crop, ...), applied before batching;
      its images must have one shape.
    random_transform: (example dict, np.random.Generator) -> example dict, for random
      augmentation (`surgery.data.transforms.TrainTransform`); instead of `transform`.
      The generator is seeded from `seed`, the epoch and the position in the epoch's
      order, so a run's crops do not depend on workers, hosts or where it resumed.
    worker_count: grain worker processes (0 reads in this process); the source and
      transform must then be picklable.
    pad_to_batch: fill each epoch's last batch up to `batch_size` with copies of real
      examples at weight 0, so a single compiled shape serves every batch.
    prefetch: batches read ahead in background threads (0 reads on demand).

  Returns:
    A `BatchIterator` of dicts: 'image' (uint8 [B, H, W, C] unless `transform` changes
    it), 'label' int32 [B], 'weight' float32 [B] (0 on padding), plus int32 'group' /
    'domain' [B] when the source has them.
  """
  batch_size, seed, num_epochs, worker_count, prefetch = _checked_arguments(
      source, batch_size, seed, num_epochs, worker_count, prefetch)
  shard_index, shard_count = _shard(shard_index, shard_count)
  if transform is not None and random_transform is not None:
    raise SurgeryError('give transform or random_transform, not both')
  if transform is None and random_transform is None:
    _check_example(source[0])  # a transform may read other keys ('encoded' JPEG bytes)
  rows = _rows_per_epoch(len(source), batch_size, shard_index, shard_count, drop_remainder,
                         pad_to_batch)
  dataset = grain.MapDataset.source(source)
  if shuffle:
    dataset = dataset.shuffle(seed=_shuffle_seed(seed))
  if random_transform is not None:
    # Seeded per index, and _EvenShard asks for epoch * N + position: one draw per
    # (seed, epoch, position), whichever host or worker reads it.
    dataset = dataset.random_map(
        random_transform, seed=int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
  dataset = (_EvenShard(dataset, shard_index, shard_count, rows)
             .map(functools.partial(_finish, transform=transform))
             .batch(batch_size)
             .repeat(num_epochs))
  stream = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
  if worker_count:
    _allow_unparsed_absl_flags()
    stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  pipeline = {'examples': int(len(source)), 'batch_size': batch_size, 'seed': seed,
              'shuffle': bool(shuffle), 'shard_index': shard_index, 'shard_count': shard_count,
              'rows_per_epoch': rows, 'worker_count': worker_count}
  return BatchIterator(iter(stream), pipeline, math.ceil(rows / batch_size), num_epochs)
