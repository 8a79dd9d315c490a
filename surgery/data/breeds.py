"""BREEDS subpopulation shifts (Santurkar et al., 2021) built from a class hierarchy.

BREEDS groups ImageNet classes into superclasses at one depth of a calibrated WordNet
hierarchy, then splits each superclass's subclasses into a source and a target set:
a model learns the superclasses from source subclasses and is tested on unseen target
subclasses of the same superclasses.

    ds = make('living17', info_dir, split='rand')
    ds.superclasses[0], ds.names[0], ds.source[0], ds.target[0]
    # ('n01629276', 'salamander', [27, 29], [26, 28])

The output equals that of MadryLab's `robustness.tools.breeds_helpers` (`make_living17`,
`make_entity30`, `make_entity13`, `make_nonliving26`; commit a9541241) element for
element, order included: superclasses sorted by node id, one numpy
`RandomState(seed)` drawn from superclass by superclass, the same constants. `info_dir`
holds the three files of BREEDS-Benchmarks `imagenet_class_hierarchy/modified/`:
`class_hierarchy.txt` (one "parent child" edge a line), `node_names.txt` ("id<TAB>name")
and `dataset_class_info.json` ([[class index, id, name], ...], ImageNet's index being the
position in the sorted list of the 1000 wnids). `build` takes any hierarchy in that
format; `cifar10_subpop` runs it on the one shipped in `cifar10_hierarchy/`.

Only the reference's balanced datasets are built (every superclass gets `n_subclasses`)
and only its 'rand' and 'good' splits; with split=None the source holds, like the
reference, `n_subclasses` subclasses of each superclass drawn at random, and the target
is empty.

    python -m surgery.data.breeds --dataset=living17 [--info_dir=DIR] [--split=rand]

prints one JSON object {"superclasses", "names", "source", "target"}; `--info_dir`
defaults to $SURGERY_DATA_DIR/breeds, `--split` to rand (`none` for no split), and
`--dataset` may also be cifar10 (which ignores --info_dir).
"""
import argparse
import json
import os
import sys
from typing import List, NamedTuple, Optional

import numpy as np

from surgery.data.common import DATA_DIR_ENV, DataNotFoundError
from surgery.errors import SurgeryError

FILES = ('class_hierarchy.txt', 'node_names.txt', 'dataset_class_info.json')
IMAGENET_ROOT = 'n00001740'  # "entity"
SPLITS = ('rand', 'good', None)
DEFAULT_SEED = 2  # the reference's `random_seed`

# level, ancestor, subclasses per superclass: the reference's make_<name>.
DATASETS = {
    'living17': (5, 'n00004258', 4),     # living thing
    'nonliving26': (5, 'n00021939', 4),  # non-living thing
    'entity30': (4, None, 8),
    'entity13': (3, None, 20),
}

CIFAR10_HIERARCHY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                     'cifar10_hierarchy')
CIFAR10_ROOT = 'c20000000'


class Breeds(NamedTuple):
  superclasses: List[str]   # node ids, sorted
  names: List[str]
  source: List[List[int]]   # per superclass, class indices of the source subpopulations
  target: List[List[int]]   # the same for the target; empty when split is None


class Hierarchy:
  """The part of a hierarchy that lies above the dataset's classes.

  As in the reference, edges into nodes that have no class below them are dropped, a
  node's level is its longest distance from the root, and the search for a node's
  classes does not look below a class.
  """

  def __init__(self, info_dir, root=IMAGENET_ROOT):
    paths = [os.path.join(info_dir, f) for f in FILES]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise DataNotFoundError(
          f'no BREEDS hierarchy at {missing[0]}: put {", ".join(FILES)} (BREEDS-Benchmarks '
          f'imagenet_class_hierarchy/modified/) in {info_dir}')
    edges = _read_rows(paths[0], None, 2)
    self.node_names = dict(_read_rows(paths[1], '\t', 2))
    try:
      with open(paths[2]) as f:
        info = json.load(f)
      self.class_index = {str(wnid): int(i) for i, wnid, _ in info}
    except (ValueError, TypeError) as e:
      raise SurgeryError(f'{paths[2]}: not a list of [index, id, name] ({e})') from None

    parents = {}
    for p, c in edges:
      parents.setdefault(c, []).append(p)
    # The classes and their ancestors; only edges into these are kept.
    relevant, todo = set(), [c for c in self.class_index if c in parents]
    while todo:
      n = todo.pop()
      if n not in relevant:
        relevant.add(n)
        todo.extend(parents.get(n, ()))
    self.children = {}
    for p, c in edges:
      if c in relevant and c not in self.children.setdefault(p, []):
        self.children[p].append(c)
    self.level = self._longest_depths(root)

  def _longest_depths(self, root):
    if root not in self.children:
      raise SurgeryError(f'hierarchy root {root!r} has no classes below it')
    order, state = [], {}  # state: 1 while on the DFS stack, 2 when done

    def visit(n):
      state[n] = 1
      for c in self.children.get(n, ()):
        if state.get(c) == 1:
          raise SurgeryError(f'the class hierarchy has a cycle through {c!r}')
        if c not in state:
          visit(c)
      state[n] = 2
      order.append(n)

    visit(root)
    depth = {root: 0}
    for n in reversed(order):  # a topological order, so every parent comes first
      for c in self.children.get(n, ()):
        depth[c] = max(depth.get(c, 0), depth[n] + 1)
    return depth

  def name(self, node):
    return self.node_names.get(node, node)

  def classes_under(self, node):
    """The dataset classes below `node` (and `node` itself if it is one), as a set."""
    found, seen, todo = set(), set(), [node]
    while todo:
      n = todo.pop()
      for c in self.children.get(n, ()):
        if c in self.class_index:
          found.add(c)
        elif c not in seen:
          seen.add(c)
          todo.append(c)
    if node in self.class_index:
      found.add(node)
    return found

  def nodes_at_level(self, level, ancestor=None):
    nodes = {n for n, d in self.level.items() if d == level}
    if ancestor is not None:
      below, todo = set(), [ancestor]
      while todo:
        n = todo.pop()
        if n not in below:
          below.add(n)
          todo.extend(self.children.get(n, ()))
      nodes &= below
    return nodes


def build(info_dir, level, n_subclasses, ancestor=None, split='rand', seed=DEFAULT_SEED,
          root=IMAGENET_ROOT) -> Breeds:
  """Superclasses at `level` below `ancestor` that have >= `n_subclasses` classes.

  The reference's `get_superclasses(..., balanced=True)`. `split` is 'rand' (a random
  half of `n_subclasses` drawn subclasses to the source, the rest to the target),
  'good' (each half takes about half of every subtree below the superclass, so source
  and target are alike), or None (`n_subclasses` random subclasses, no target).
  """
  if split not in SPLITS:
    raise SurgeryError(f'unknown BREEDS split {split!r}; valid: rand, good, none')
  if n_subclasses < 2 or n_subclasses % 2:
    raise SurgeryError(f'n_subclasses must be even and >= 2, got {n_subclasses}')
  h = Hierarchy(info_dir, root)
  if ancestor is not None and ancestor not in h.children:
    raise SurgeryError(f'ancestor {ancestor!r} has no classes below it in {info_dir}')
  candidates = sorted(h.nodes_at_level(level, ancestor))
  superclasses = [n for n in candidates if len(h.classes_under(n)) >= n_subclasses]
  if not superclasses:
    raise SurgeryError(f'no node at level {level} of {info_dir} has {n_subclasses} classes')
  rng = np.random.RandomState(seed)
  source, target = [], []
  for node in superclasses:
    if split is None:
      pool = sorted(h.classes_under(node))
      source.append([pool[i] for i in rng.choice(len(pool), n_subclasses, replace=False)])
    else:
      src, tgt = _split_superclass(h, node, n_subclasses // 2, split, rng)
      source.append(src)
      target.append(tgt)
  return Breeds(superclasses=superclasses, names=[h.name(n) for n in superclasses],
                source=[[h.class_index[c] for c in s] for s in source],
                target=[[h.class_index[c] for c in t] for t in target])


def _split_superclass(h, node, half, split, rng):
  # The subtrees start where the hierarchy first branches below the superclass.
  kids = sorted(h.children.get(node, ()))
  while len(kids) == 1:
    kids = sorted(h.children.get(kids[0], ()))
  groups = [sorted(h.classes_under(k)) for k in kids]
  if split == 'rand':
    # Subtrees may share classes; like the reference, the pool keeps the repeats.
    pool = sorted(c for g in groups for c in g)
    picked = [pool[i] for i in rng.choice(len(pool), 2 * half, replace=False)]
    src, tgt = picked[:half], picked[half:]
  else:
    src, tgt = [], []
    for g in sorted(groups, key=lambda g: -len(g)):  # stable: ties keep id order
      src_room, tgt_room = half - len(src), half - len(tgt)
      if len(g) == 1:
        cut = 1 if src_room > 0 else 0
      else:
        cut = min(len(g) // 2, src_room)
      if src_room > 0:
        src.extend(g[:cut])
      if tgt_room > 0:
        tgt.extend(g[cut:cut + tgt_room])
  if len(src) != len(tgt) or set(src) & set(tgt):
    raise SurgeryError(f'cannot split superclass {node!r} ({h.name(node)}) into two disjoint '
                       f'halves of {half} with split {split!r}')
  return src, tgt


def make(name, info_dir=None, split='rand', seed=DEFAULT_SEED) -> Breeds:
  """A BREEDS dataset by name; `info_dir` defaults to $SURGERY_DATA_DIR/breeds."""
  if name not in DATASETS:
    raise SurgeryError(f'unknown BREEDS dataset {name!r}; valid: {", ".join(DATASETS)}')
  level, ancestor, n_subclasses = DATASETS[name]
  return build(info_dir or default_info_dir(), level, n_subclasses, ancestor, split, seed)


def default_info_dir():
  data_dir = os.environ.get(DATA_DIR_ENV)
  if not data_dir:
    raise DataNotFoundError(f'no BREEDS hierarchy: pass --info_dir or set ${DATA_DIR_ENV} to '
                            f'a directory with breeds/{{{",".join(FILES)}}}')
  return os.path.join(data_dir, 'breeds')


def cifar10_subpop(split='rand', seed=DEFAULT_SEED) -> Breeds:
  """A BREEDS-style shift over CIFAR-10: 5 superclasses of 2 classes, one per side.

  Built by `build` from `cifar10_hierarchy/` (root c20000000, superclasses c10000000-4 at
  level 1, class k is leaf c0000000k), so exactly as living17 is. Indices are CIFAR-10
  labels. Superclasses in order: craft {airplane, ship}, motor vehicle {automobile,
  truck}, carnivore {cat, dog}, ungulate {deer, horse}, non-mammal vertebrate {bird,
  frog}. Source classes with the default seed 2: 'rand' -> ship, automobile, cat,
  horse, frog (targets airplane, truck, dog, deer, bird); 'good' -> the lower label of
  each pair: airplane, automobile, cat, deer, bird.
  """
  return build(CIFAR10_HIERARCHY_DIR, 1, 2, split=split, seed=seed, root=CIFAR10_ROOT)


def _read_rows(path, sep, width):
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = line.strip().split(sep)
      if len(row) != width:
        raise SurgeryError(f'{path}:{number}: expected {width} fields, got {line.strip()!r}')
      rows.append(row)
  return rows


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, like every other user error
    raise SurgeryError(message)


def main(argv=None):
  parser = _Parser(description='Print a BREEDS dataset as JSON.')
  parser.add_argument('--dataset', required=True, help=f'{", ".join(DATASETS)} or cifar10')
  parser.add_argument('--info_dir', default=None, help='default: $SURGERY_DATA_DIR/breeds')
  parser.add_argument('--split', default='rand', help='rand, good or none')
  parser.add_argument('--seed', type=int, default=DEFAULT_SEED)
  try:
    args = parser.parse_args(argv)
    split = None if args.split.lower() == 'none' else args.split
    if args.dataset == 'cifar10':
      ds = cifar10_subpop(split, args.seed)
    else:
      ds = make(args.dataset, args.info_dir, split, args.seed)
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps(ds._asdict()))
  return 0


if __name__ == '__main__':
  sys.exit(main())
