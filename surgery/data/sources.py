"""Random-access example sources: the dataset contract every loader hands to the pipeline.

A source is any object with `__len__` and `__getitem__(i) -> dict`, the dict holding
`'image'` (uint8 [H, W, C]), `'label'` (int) and optionally `'group'` (e.g. the
Waterbirds bird/background group) and/or `'domain'` (e.g. a WILDS hospital), both int:

    source = ArraySource(images, labels)              # uint8 [N, H, W, C], int [N]
    tune = Subset(source, split.tune)                 # a view, nothing copied
    small = to_arrays(tune)                           # {'image': ..., 'label': ...}

Large sets implement the same two methods over files (or ArrayRecord) and are streamed
by `surgery.data.pipeline.batches`; small ones are gathered with `to_arrays`.
"""
import operator
from typing import Optional

import numpy as np

from surgery.errors import SurgeryError

OPTIONAL_KEYS = ('group', 'domain')


def _read_only(array: np.ndarray) -> np.ndarray:
  """A view that cannot be written through, so a transform that edits an example in
  place fails loudly instead of silently corrupting the source for later epochs."""
  view = array.view()
  view.flags.writeable = False
  return view


def _index_in(i, length: int) -> int:
  """`i` as a non-negative position in a sequence of `length`, Python-style."""
  i = operator.index(i)
  if not -length <= i < length:
    raise IndexError(f'index {i} out of range for a source of {length} examples')
  return i + length if i < 0 else i


def _int_column(name: str, values, length: int) -> np.ndarray:
  values = np.asarray(values)
  if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
    raise SurgeryError(f'{name} must be a 1-D integer array, got {values.dtype} {values.shape}')
  if len(values) != length:
    raise SurgeryError(f'{name} has {len(values)} entries but there are {length} images')
  return _read_only(values)


class ArraySource:
  """In-memory source over uint8 [N, H, W, C] images and integer per-example columns.

  Examples are read-only views of the arrays (no copies), with ints for the columns.
  """

  def __init__(self, images, labels, groups=None, domains=None):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise SurgeryError(f'images must be a uint8 [N, H, W, C] array, got {images.dtype} '
                         f'{images.shape}')
    n = len(images)
    self.images = _read_only(images)
    self.labels = _int_column('labels', labels, n)
    given = {'group': groups, 'domain': domains}
    self.columns = {key: _int_column(key + 's', values, n)
                    for key, values in given.items() if values is not None}

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i) -> dict:
    i = _index_in(i, len(self))
    example = {'image': self.images[i], 'label': int(self.labels[i])}
    example.update({key: int(values[i]) for key, values in self.columns.items()})
    return example

  def __repr__(self) -> str:
    extra = ''.join(f', {key}s' for key in self.columns)
    return f'ArraySource({len(self)} x {self.images.shape[1:]}{extra})'


def _positions(indices, length: int) -> np.ndarray:
  """`indices` checked to be 1-D integers in [0, length), as a read-only int64 array."""
  indices = np.asarray(indices)
  if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
    raise SurgeryError(f'indices must be a 1-D integer array, got {indices.dtype} '
                       f'{indices.shape}')
  indices = indices.astype(np.int64)
  if indices.size and (indices.min() < 0 or indices.max() >= length):
    bad = indices[(indices < 0) | (indices >= length)][0]
    raise SurgeryError(f'index {bad} is outside a source of {length} examples')
  return _read_only(indices)


class Subset:
  """Random-access view of `source` at `indices` (e.g. a target set's tune split).

  Indices may repeat and come in any order; they are positions in `source`.
  """

  def __init__(self, source, indices):
    self.source = source
    self.indices = _positions(indices, len(source))

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i) -> dict:
    return self.source[int(self.indices[_index_in(i, len(self))])]

  def __repr__(self) -> str:
    return f'Subset({len(self)} of {self.source!r})'


def _array_view(source, indices: np.ndarray):
  """(ArraySource, positions in it) when `source` is one, possibly under Subsets, so
  `to_arrays` can gather with one fancy index instead of a Python loop."""
  while isinstance(source, Subset):
    indices = source.indices[indices]
    source = source.source
  return (source, indices) if isinstance(source, ArraySource) else (None, indices)


def _stack_examples(source, indices: np.ndarray) -> dict:
  examples = [source[int(i)] for i in indices]
  keys = ('image', 'label') + tuple(k for k in OPTIONAL_KEYS if k in examples[0])
  for position, example in zip(indices, examples):
    if set(keys) - set(example) or (set(OPTIONAL_KEYS) & set(example)) - set(keys):
      raise SurgeryError(f'example {position} has keys {sorted(example)}, but the first '
                         f'has {sorted(keys)}')
  out = {'image': np.stack([np.asarray(ex['image'], np.uint8) for ex in examples])}
  out.update({key: np.array([ex[key] for ex in examples], np.int32) for key in keys[1:]})
  return out


def to_arrays(source, indices: Optional[np.ndarray] = None) -> dict:
  """Gather `source` (or its `indices`) into stacked arrays, for sets that fit in memory.

  Returns:
    {'image': uint8 [n, H, W, C], 'label': int32 [n]} plus int32 'group' and 'domain'
    columns when the examples have them.
  """
  indices = (np.arange(len(source)) if indices is None
             else _positions(indices, len(source)))
  if indices.size == 0:
    raise SurgeryError('to_arrays needs at least one example, got none')
  arrays, positions = _array_view(source, indices)
  if arrays is None:
    return _stack_examples(source, indices)
  out = {'image': arrays.images[positions], 'label': arrays.labels[positions].astype(np.int32)}
  out.update({key: values[positions].astype(np.int32) for key, values in arrays.columns.items()})
  return out


class LazyImages:
  """A read-only uint8 [n, H, W, C] array-like over `source` examples at `indices`,
  decoded (through `transform`, e.g. an EvalTransform) only when sliced.

  For target test sets too large to hold decoded (Camelyon17's 85,054 OOD patches at
  224 px would take 12.8 GB): evaluation reads them a batch at a time. Each access
  decodes again; Pillow releases the GIL, so slices decode on `threads` threads.

      images = LazyImages(pool, split.test, EvalTransform())
      batch = images[0:256]          # uint8 [256, H, W, C]
  """

  def __init__(self, source, indices=None, transform=None, threads: int = 8):
    self.source = source
    self.indices = (np.arange(len(source), dtype=np.int64) if indices is None
                    else _positions(indices, len(source)))
    if self.indices.size == 0:
      raise SurgeryError('LazyImages needs at least one example, got none')
    self.transform = transform
    self.threads = max(1, int(threads))
    first = self._image(0)
    self.shape = (len(self.indices),) + first.shape
    self.dtype = first.dtype
    self.ndim = len(self.shape)

  def __len__(self) -> int:
    return len(self.indices)

  def _image(self, position: int) -> np.ndarray:
    example = self.source[int(self.indices[position])]
    if self.transform is not None:
      example = self.transform(example)
    image = np.asarray(example['image'])
    if image.dtype != np.uint8 or image.ndim != 3:
      raise SurgeryError(f'example {int(self.indices[position])} decodes to {image.dtype} '
                         f'{image.shape}, not a uint8 [H, W, C] image')
    return image

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self._image(_index_in(key, len(self)))
    positions = (np.arange(len(self))[key] if isinstance(key, slice)
                 else _positions(key, len(self)))
    out = np.empty((len(positions),) + self.shape[1:], np.uint8)
    if len(positions) == 0:
      return out

    def fill(k):
      image = self._image(int(positions[k]))
      if image.shape != out.shape[1:]:
        raise SurgeryError(f'example {int(self.indices[positions[k]])} decodes to '
                           f'{image.shape}, not {out.shape[1:]} like the first')
      out[k] = image

    if self.threads == 1 or len(positions) == 1:
      for k in range(len(positions)):
        fill(k)
    else:
      import concurrent.futures
      with concurrent.futures.ThreadPoolExecutor(min(self.threads, len(positions))) as pool:
        list(pool.map(fill, range(len(positions))))
    return out

  def __array__(self, dtype=None, copy=None):
    out = self[:]
    return out if dtype is None else out.astype(dtype)

  def __repr__(self) -> str:
    return f'LazyImages({self.shape}, of {self.source!r})'

