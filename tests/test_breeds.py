import json
import os
import subprocess
import sys

import pytest

from surgery.data import breeds
from surgery.data.common import DataNotFoundError
from surgery.data.cifar10 import CLASSES
from surgery.errors import SurgeryError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Pinned from the output of MadryLab/robustness robustness/tools/breeds_helpers.py at
# commit a9541241defd9972e9334bfcdb804f6aefe24dc7 (make_<name>(info_dir, split=...)), run on
# BREEDS-Benchmarks imagenet_class_hierarchy/modified/: (wnid, name, source, target).
REFERENCE = {
    ('living17', 'rand', 0): ('n01629276', 'salamander', [27, 29], [26, 28]),
    ('living17', 'rand', -1): ('n02484322', 'monkey', [377, 380], [381, 379]),
    ('living17', 'good', 0): ('n01629276', 'salamander', [26, 25], [27, 28]),
    ('living17', None, 0): ('n01629276', 'salamander', [27, 29, 26, 28], None),
    ('entity30', 'rand', 0): ('dummy9', 'serpentes', [64, 56, 57, 52], [61, 55, 53, 62]),
    ('entity30', 'rand', -1): ('n13134947', 'fruit', [949, 953, 955, 948],
                               [990, 987, 998, 988]),
    ('entity13', 'rand', 0): ('dummy32', 'garment',
                              [869, 399, 578, 735, 652, 610, 501, 445, 655, 842],
                              [617, 459, 601, 474, 697, 400, 411, 529, 841, 775]),
    ('nonliving26', 'rand', 0): ('n02773037', 'bag', [728, 748], [636, 414]),
}
SIZES = {'living17': (17, 4), 'entity30': (30, 8), 'entity13': (13, 20), 'nonliving26': (26, 4)}


@pytest.fixture(scope='module')
def info_dir():
  d = os.environ.get('SURGERY_DATA_DIR')
  d = d and os.path.join(d, 'breeds')
  if not d or not all(os.path.isfile(os.path.join(d, f)) for f in breeds.FILES):
    pytest.skip('no BREEDS hierarchy in $SURGERY_DATA_DIR/breeds')
  return d


@pytest.mark.parametrize('split', ['rand', 'good'])
@pytest.mark.parametrize('name', sorted(SIZES))
def test_sizes(info_dir, name, split):
  n_super, n_sub = SIZES[name]
  ds = breeds.make(name, info_dir, split)
  assert len(ds.superclasses) == len(ds.names) == len(ds.source) == len(ds.target) == n_super
  assert ds.superclasses == sorted(ds.superclasses)
  seen = set()
  for src, tgt in zip(ds.source, ds.target):
    assert len(src) == len(tgt) == n_sub // 2 and not set(src) & set(tgt)
    assert all(0 <= i < 1000 for i in src + tgt)
    assert not seen & set(src + tgt)  # a class belongs to one superclass
    seen |= set(src + tgt)


def test_no_split(info_dir):
  ds = breeds.make('entity30', info_dir, None)
  assert ds.target == [] and all(len(s) == 8 for s in ds.source)
  assert ds.source == [s + t for s, t in zip(*breeds.make('entity30', info_dir, 'rand')[2:])]


@pytest.mark.parametrize('key', sorted(REFERENCE, key=str))
def test_matches_reference(info_dir, key):
  name, split, i = key
  ds = breeds.make(name, info_dir, split)
  got = (ds.superclasses[i], ds.names[i], ds.source[i], ds.target[i] if split else None)
  assert got == REFERENCE[key]


def test_seed_changes_rand_split(info_dir):
  assert breeds.make('living17', info_dir, seed=3).source != breeds.make('living17', info_dir).source
  assert breeds.make('living17', info_dir, 'good', seed=3) == breeds.make('living17', info_dir, 'good')


def test_cifar10_subpop():
  pairs = [{'airplane', 'ship'}, {'automobile', 'truck'}, {'cat', 'dog'}, {'deer', 'horse'},
           {'bird', 'frog'}]
  for split in ('rand', 'good'):
    ds = breeds.cifar10_subpop(split)
    assert len(ds.superclasses) == 5
    assert [{CLASSES[s[0]], CLASSES[t[0]]} for s, t in zip(ds.source, ds.target)] == pairs
    assert sorted(i for s in ds.source + ds.target for i in s) == list(range(10))
  # As the docstring says.
  assert [CLASSES[s[0]] for s in breeds.cifar10_subpop('rand').source] == [
      'ship', 'automobile', 'cat', 'horse', 'frog']
  assert [CLASSES[s[0]] for s in breeds.cifar10_subpop('good').source] == [
      'airplane', 'automobile', 'cat', 'deer', 'bird']


def test_hierarchy_levels_are_longest_paths(tmp_path):
  # r -> a -> b -> {x, y}; r -> b as well, so b is at level 2 (not 1); c at level 1 has 3.
  edges = ['r a', 'a b', 'r b', 'b x', 'b y', 'r c', 'c x', 'c z', 'c w', 'r dead']
  (tmp_path / 'class_hierarchy.txt').write_text('\n'.join(edges) + '\n')
  (tmp_path / 'node_names.txt').write_text('b\tbee\nc\tsea\n')
  (tmp_path / 'dataset_class_info.json').write_text(
      json.dumps([[i, w, w] for i, w in enumerate('wxyz')]))
  h = breeds.Hierarchy(str(tmp_path), root='r')
  assert h.level['b'] == 2 and h.level['c'] == 1 and 'dead' not in h.level
  assert h.classes_under('c') == {'w', 'x', 'z'}
  ds = breeds.build(str(tmp_path), 2, 2, split='good', root='r')
  assert ds.superclasses == ['b'] and ds.names == ['bee'] and ds.source == [[1]]
  assert ds.target == [[2]]


def test_errors(tmp_path):
  with pytest.raises(DataNotFoundError, match='class_hierarchy.txt'):
    breeds.make('living17', str(tmp_path))
  with pytest.raises(SurgeryError, match='unknown BREEDS dataset'):
    breeds.make('living18', str(tmp_path))
  with pytest.raises(SurgeryError, match='unknown BREEDS split'):
    breeds.cifar10_subpop('bad')


def test_cli(info_dir, capsys):
  assert breeds.main(['--dataset=living17', f'--info_dir={info_dir}', '--split=rand']) == 0
  out = json.loads(capsys.readouterr().out)
  assert sorted(out) == ['names', 'source', 'superclasses', 'target']
  assert (out['superclasses'][0], out['source'][0]) == ('n01629276', [27, 29])


def test_cli_errors(tmp_path, capsys):
  for argv in (['--dataset=living18'], ['--dataset=cifar10', '--split=bad'],
               ['--dataset=living17', f'--info_dir={tmp_path}'], ['--bogus']):
    assert breeds.main(argv) != 0
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err.startswith('error: ')
    assert len(captured.err.strip().splitlines()) == 1


def test_cli_subprocess():
  run = lambda *a: subprocess.run([sys.executable, '-m', 'surgery.data.breeds', *a], cwd=REPO,
                                  capture_output=True, text=True, timeout=120)
  ok = run('--dataset=cifar10')
  assert ok.returncode == 0 and len(json.loads(ok.stdout)['superclasses']) == 5
  bad = run('--dataset=nope', '--info_dir=/nonexistent')
  assert bad.returncode != 0 and bad.stdout == ''
  assert bad.stderr.startswith('error: ') and len(bad.stderr.strip().splitlines()) == 1
