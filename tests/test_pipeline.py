import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from surgery.data.pipeline import batches
from surgery.data.sources import ArraySource, Subset, to_arrays
from surgery.errors import SurgeryError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_source(n=10, groups=True):
  """Example i has label i and an image filled with i, so rows can be traced back."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3))
  return ArraySource(np.ascontiguousarray(images), np.arange(n),
                     groups=np.arange(n) % 2 if groups else None, domains=np.arange(n) % 3)


class ListSource:
  """A source that is not an ArraySource, like a loader over files."""

  def __init__(self, examples):
    self.examples = examples

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    return self.examples[i]


def epochs_of(iterator):
  """[[batch, ...] per epoch] of a finite iterator."""
  out = [list(b for _, b in zip(range(iterator.steps_per_epoch), iterator))
         for _ in range(iterator.num_epochs)]
  with pytest.raises(StopIteration):
    next(iterator)
  return out


def real_labels(epoch):
  return [int(label) for b in epoch for label, w in zip(b['label'], b['weight']) if w == 1]


def one_line_error(fn):
  with pytest.raises(SurgeryError) as info:
    fn()
  assert '\n' not in str(info.value)
  return str(info.value)


# ---------------------------------------------------------------------------- sources

def test_array_source_examples_and_indexing():
  source = make_source(5)
  example = source[-1]
  assert example['label'] == 4 and example['group'] == 0 and example['domain'] == 1
  assert example['image'].dtype == np.uint8 and example['image'].shape == (4, 4, 3)
  assert (example['image'] == 4).all()
  with pytest.raises(ValueError):  # read-only: a transform cannot corrupt later epochs
    example['image'][0, 0, 0] = 1
  for i in (5, -6):
    with pytest.raises(IndexError):
      source[i]


@pytest.mark.parametrize('images, labels, kwargs', [
    (np.zeros((3, 4, 4, 3), np.float32), np.arange(3), {}),
    (np.zeros((3, 4, 4), np.uint8), np.arange(3), {}),
    (np.zeros((3, 4, 4, 3), np.uint8), np.arange(2), {}),
    (np.zeros((3, 4, 4, 3), np.uint8), np.zeros(3), {}),
    (np.zeros((3, 4, 4, 3), np.uint8), np.arange(3), {'groups': np.arange(4)}),
])
def test_array_source_rejects_bad_arrays(images, labels, kwargs):
  one_line_error(lambda: ArraySource(images, labels, **kwargs))


def test_subset_and_to_arrays():
  source = make_source(10)
  inner = Subset(source, np.array([9, 7, 5, 3, 1]))
  view = Subset(inner, np.array([4, 0]))
  assert [view[i]['label'] for i in range(2)] == [1, 9] and view[-1]['label'] == 9
  with pytest.raises(IndexError):
    view[2]
  arrays = to_arrays(view)
  assert arrays['label'].tolist() == [1, 9] and arrays['label'].dtype == np.int32
  assert arrays['group'].tolist() == [1, 1] and arrays['domain'].tolist() == [1, 0]
  assert (arrays['image'][:, 0, 0, 0] == [1, 9]).all()
  # The generic loop (any source) agrees with the gather over ArraySource's arrays.
  generic = to_arrays(ListSource([source[i] for i in range(10)]), np.array([1, 9]))
  assert generic.keys() == arrays.keys()
  for key in arrays:
    np.testing.assert_array_equal(generic[key], arrays[key])
    assert generic[key].dtype == arrays[key].dtype
  one_line_error(lambda: Subset(source, np.array([0, 10])))
  one_line_error(lambda: Subset(source, np.array([0.5])))
  one_line_error(lambda: to_arrays(source, np.array([], np.int64)))
  mixed = ListSource([source[0], {'image': source[1]['image'], 'label': 1}])
  one_line_error(lambda: to_arrays(mixed))


# --------------------------------------------------------------------------- pipeline

def test_every_example_once_per_epoch_and_deterministic():
  source = make_source(10)
  run = lambda seed: epochs_of(batches(source, 4, seed=seed, num_epochs=3, shard_index=0,
                                       shard_count=1, prefetch=0))
  epochs = run(seed=0)
  orders = [real_labels(epoch) for epoch in epochs]
  for order in orders:
    assert sorted(order) == list(range(10))
  assert len({tuple(order) for order in orders}) == 3  # each epoch a new permutation
  assert [real_labels(e) for e in run(seed=0)] == orders
  assert [real_labels(e) for e in run(seed=1)] != orders


def test_batches_have_fixed_signature_and_zero_weight_padding():
  source = make_source(10)
  (epoch,) = epochs_of(batches(source, 4, seed=0, shard_index=0, shard_count=1))
  assert len(epoch) == 3
  for b in epoch:
    assert b['image'].shape == (4, 4, 4, 3) and b['image'].dtype == np.uint8
    assert {key: b[key].dtype for key in ('label', 'group', 'domain', 'weight')} == {
        'label': np.int32, 'group': np.int32, 'domain': np.int32, 'weight': np.float32}
  assert epoch[-1]['weight'].tolist() == [1, 1, 0, 0]
  for b in epoch:  # padded rows are whole copies of real examples
    assert (b['image'][:, 0, 0, 0] == b['label']).all()
    assert (b['group'] == b['label'] % 2).all()


def test_ragged_and_drop_remainder():
  source = make_source(10)
  (ragged,) = epochs_of(batches(source, 4, seed=0, shard_index=0, shard_count=1,
                                pad_to_batch=False))
  assert [len(b['label']) for b in ragged] == [4, 4, 2]
  assert sorted(real_labels(ragged)) == list(range(10))
  (dropped,) = epochs_of(batches(source, 4, seed=0, shard_index=0, shard_count=1,
                                 drop_remainder=True))
  assert [len(b['label']) for b in dropped] == [4, 4]
  assert all(b['weight'].all() for b in dropped)
  # 11 examples over 3 hosts: 4, 4 and 3 each, so every host stops at one batch of 2.
  per_host = [epochs_of(batches(make_source(11), 2, seed=5, shard_index=h, shard_count=3,
                                drop_remainder=True))[0] for h in range(3)]
  assert [len(epoch) for epoch in per_host] == [1, 1, 1]
  assert len(set(sum((real_labels(epoch) for epoch in per_host), []))) == 6


@pytest.mark.parametrize('n, batch_size', [(10, 2), (11, 4), (2, 4)])
def test_shards_are_disjoint_cover_and_step_together(n, batch_size):
  source, hosts = make_source(n), 3
  per_host = [epochs_of(batches(source, batch_size, seed=5, num_epochs=2, shard_index=h,
                                shard_count=hosts, prefetch=0)) for h in range(hosts)]
  assert len({len(epochs[0]) for epochs in per_host}) == 1  # same steps on every host
  for e in range(2):
    seen = [real_labels(epochs[e]) for epochs in per_host]
    assert sorted(sum(seen, [])) == list(range(n))


def test_unshuffled_shards_take_every_kth_example():
  source = make_source(10)
  (epoch,) = epochs_of(batches(source, 2, seed=0, shuffle=False, shard_index=1,
                               shard_count=3))
  assert real_labels(epoch) == [1, 4, 7]


def test_forever_reshuffles_each_epoch():
  iterator = batches(make_source(5), 5, seed=0, num_epochs=None, shard_index=0, shard_count=1)
  orders = [tuple(next(iterator)['label']) for _ in range(4)]
  assert all(sorted(order) == list(range(5)) for order in orders) and len(set(orders)) > 1
  with pytest.raises(TypeError):
    len(iterator)


@pytest.mark.parametrize('stop', [0, 2, 3, 5])
def test_resume_from_state_gives_remaining_batches(stop):
  source = make_source(10)
  make = lambda: batches(source, 4, seed=3, num_epochs=2, shard_index=0, shard_count=1,
                         prefetch=2)
  full = [b['label'].tolist() for b in make()]
  interrupted = make()
  head = [next(interrupted)['label'].tolist() for _ in range(stop)]
  state = json.loads(json.dumps(interrupted.get_state()))  # it must survive a JSON file
  resumed = make()
  resumed.set_state(state)
  assert head + [b['label'].tolist() for b in resumed] == full
  assert len(resumed) == len(full) == 6


def test_resume_refuses_state_of_another_pipeline():
  source = make_source(10)
  state = batches(source, 4, seed=0, shard_index=0, shard_count=2).get_state()
  other = batches(source, 4, seed=0, shard_index=0, shard_count=3)
  assert 'shard_count' in one_line_error(lambda: other.set_state(state))


def test_worker_processes_match_in_process_and_resume():
  source = make_source(10)
  make = lambda workers: batches(source, 4, seed=0, num_epochs=2, shard_index=0,
                                 shard_count=1, worker_count=workers)
  expected = [b['label'].tolist() for b in make(0)]
  with make(1) as iterator:
    head = [next(iterator)['label'].tolist() for _ in range(2)]
    state = json.loads(json.dumps(iterator.get_state()))
    assert head + [b['label'].tolist() for b in iterator] == expected
    iterator.set_state(state)  # rewind: the workers restart from the saved position
    assert head + [b['label'].tolist() for b in iterator] == expected


def test_transform_and_default_shard():
  source = make_source(6, groups=False)
  flip = lambda ex: dict(ex, image=ex['image'][::-1].astype(np.float32), label=ex['label'] + 1)
  (epoch,) = epochs_of(batches(source, 3, seed=0, transform=flip))  # one host: everything
  assert sorted(real_labels(epoch)) == list(range(1, 7))
  assert epoch[0]['image'].dtype == np.float32 and epoch[0]['label'].dtype == np.int32
  assert 'group' not in epoch[0] and 'domain' in epoch[0]
  bad = batches(source, 3, seed=0, shard_index=0, shard_count=1, transform=lambda ex: 1)
  one_line_error(lambda: next(bad))


@pytest.mark.parametrize('source, kwargs', [
    (make_source(4), {'batch_size': 0}),
    (make_source(4), {'batch_size': 2.0}),
    (make_source(4), {'shard_index': 3, 'shard_count': 3}),
    (make_source(4), {'shard_index': 0, 'shard_count': 0}),
    (make_source(4), {'shard_count': None}),
    (make_source(4), {'seed': -1}),
    (make_source(4), {'num_epochs': 0}),
    (make_source(4), {'drop_remainder': True, 'batch_size': 5}),
    (make_source(0), {}),
    (ListSource([{'label': 0}]), {}),
    (ListSource([{'image': np.zeros((4, 4, 3)), 'label': 0}]), {}),
    (object(), {}),
])
def test_bad_input_is_one_line_error(source, kwargs):
  kwargs = {'batch_size': 2, 'seed': 0, 'shard_index': 0, 'shard_count': 1, **kwargs}
  one_line_error(lambda: batches(source, **kwargs))


def test_pipeline_never_imports_tensorflow():
  # Records every attempt, so the check means something even where TF is not installed.
  script = textwrap.dedent("""
      import sys
      attempts = []
      class Spy:
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] == 'tensorflow':
            attempts.append(name)
          return None
      sys.meta_path.insert(0, Spy())
      import numpy as np
      from surgery.data.pipeline import batches
      from surgery.data.sources import ArraySource
      source = ArraySource(np.zeros((5, 2, 2, 3), np.uint8), np.arange(5))
      assert sum(len(b['label']) for b in batches(source, 2, seed=0)) == 6
      assert not attempts and 'tensorflow' not in sys.modules, attempts
  """)
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]


def _draw(example, rng):
  # Records which random number each example got, keyed by the example it came from.
  return {**example, 'draw': rng.integers(0, 2**31)}


def _draws(it):
  out = []
  for batch in it:
    real = batch['weight'] > 0
    out += list(zip(batch['label'][real].tolist(), batch['draw'][real].tolist()))
  return out


def test_random_transform_draws_depend_on_seed_epoch_and_position_only():
  source = ArraySource(np.zeros((10, 2, 2, 3), np.uint8), np.arange(10))
  one = _draws(batches(source, 4, seed=3, num_epochs=2, random_transform=_draw))
  assert one == _draws(batches(source, 4, seed=3, num_epochs=2, random_transform=_draw))
  first, second = one[:10], one[10:]
  assert {d for _, d in first}.isdisjoint({d for _, d in second}), 'epochs repeat draws'
  hosts = [_draws(batches(source, 2, seed=3, num_epochs=2, random_transform=_draw,
                          shard_index=h, shard_count=2)) for h in range(2)]
  assert sorted(hosts[0] + hosts[1]) == sorted(one)  # same draw per example, any host
  other = _draws(batches(source, 4, seed=4, num_epochs=1, random_transform=_draw))
  assert {d for _, d in other}.isdisjoint({d for _, d in first})
  with pytest.raises(SurgeryError, match='not both'):
    batches(source, 4, seed=0, transform=lambda e: e, random_transform=_draw)
