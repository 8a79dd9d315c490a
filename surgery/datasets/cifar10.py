"""CIFAR-10 and its target shifts (paper Sections 2 and 3.3, Fig. 4).

Source: the CIFAR-10 train split. Target shifts, named in `config.corruptions`:

  <corruption>      CIFAR-10-C at `config.severity` (input-level shift, paper Fig. 2)
  clean             the uncorrupted CIFAR-10 test set
  label_flip        CIFAR-Flip: test images with labels y -> (K - 1) - y (output level)
  noise_<group>     the source model with Gaussian noise added to one parameter group
                    of the model, tuned on the clean test set (Section 3.3, Table 5)
  <any>@<n>         the same with n labelled target examples (n/K per class; Fig. 4)

Each target pool is the 10,000-image test set (generated or released CIFAR-10-C for
corruptions). Tune and validation sets are drawn stratified by class and seeded
(`config.tune_per_class`, `config.val_per_class`); the rest is the test set.
Config fields read: data_dir, corruptions, tune_sizes, severity, corruption_seed,
tune_per_class, val_per_class, param_noise.{scale, group_scales, seed}.
"""
import functools
from typing import NamedTuple, Optional

import jax
import numpy as np

from surgery.corruptions import CORRUPTIONS
from surgery.datasets.common import split_names
from surgery.data import corrupted_test_set, load_cifar10, target_split
from surgery.data.sources import ArraySource, to_arrays
from surgery.errors import SurgeryError
from surgery.groups import assign_groups, group_names

NUM_CLASSES = 10
NOISE_PREFIX = 'noise_'
SPECIAL = ('clean', 'label_flip')


class Shift(NamedTuple):
  name: str  # as written in results.csv
  base: str
  tune_size: Optional[int]  # None: tune_per_class per class


class Cifar10:
  """The dataset contract for CIFAR-10 and its shifts (see surgery.datasets)."""
  num_classes = NUM_CLASSES
  image_size = 32
  metrics = ('acc',)

  def __init__(self, config):
    self.data_dir = config.get('data_dir') or None
    self.severity = config.get('severity', 5)
    self.corruption_seed = config.get('corruption_seed', 0)
    self.tune_per_class = config.get('tune_per_class', 100)
    self.val_per_class = config.get('val_per_class', 10)
    self.param_noise = config.get('param_noise')
    self.config = config

  # -- which shifts -------------------------------------------------------------
  def shift_names(self, groups=None) -> list:
    """The validated shift names `config.corruptions` (x `config.tune_sizes`) asks for."""
    names = split_names(self.config.get('corruptions', ''))
    if not names:
      raise SurgeryError('corruptions: no shift given')
    sizes = split_names(self.config.get('tune_sizes', ''))
    if sizes:
      names = [f'{n}@{s}' for n in names for s in sizes]
    shifts = [self.parse(n, groups) for n in names]
    if any(s.base in CORRUPTIONS for s in shifts) and not 1 <= int(self.severity) <= 5:
      raise SurgeryError(f'severity must be 1 to 5, got {self.severity}')
    if not (isinstance(self.tune_per_class, int) and self.tune_per_class >= 1
            and isinstance(self.val_per_class, int) and self.val_per_class >= 1):
      raise SurgeryError(f'tune_per_class and val_per_class must be integers >= 1, got '
                         f'{self.tune_per_class!r} and {self.val_per_class!r}')
    return [s.name for s in shifts]

  def parse(self, name: str, groups=None) -> Shift:
    base, _, size = name.partition('@')
    noise = tuple(NOISE_PREFIX + g for g in group_names(groups or ()))
    valid = tuple(CORRUPTIONS) + SPECIAL + noise
    if base not in valid:
      raise SurgeryError(f'corruptions: unknown shift {base!r}; valid: {", ".join(valid)} '
                         '(each optionally @<number of target examples>)')
    k = self.num_classes
    if size and (not size.isdigit() or int(size) % k or int(size) == 0):
      raise SurgeryError(f'bad target size in {name!r}: need a positive multiple of {k}')
    return Shift(name, base, int(size) if size else None)

  # -- data -----------------------------------------------------------------------
  def source(self, split: str = 'train') -> ArraySource:
    images, labels = load_cifar10(split, self.data_dir)
    return ArraySource(images, labels)

  def target(self, shift_name: str) -> ArraySource:
    """The target pool of a shift: uint8 images and int labels of the test set."""
    shift = self.parse(shift_name, self._groups_for(shift_name))
    if shift.base in CORRUPTIONS:
      shifted = corrupted_test_set(shift.base, int(self.severity), seed=self.corruption_seed,
                                   data_dir=self.data_dir)
      return ArraySource(shifted.images, shifted.labels)
    images, labels = load_cifar10('test', self.data_dir)
    if shift.base == 'label_flip':
      labels = ((self.num_classes - 1) - labels).astype(labels.dtype)
    return ArraySource(images, labels)

  def target_sets(self, shift_name: str, seed: int) -> tuple:
    """(tune, val, test) of `seed`'s split, each (uint8 images, int labels)."""
    target = self._target_arrays(shift_name)
    columns = [k for k in ('image', 'label', 'group') if k in target]
    return tuple(tuple(target[k][idx] for k in columns)
                 for idx in self.split(shift_name, target['label'], seed))

  @functools.lru_cache(maxsize=2)  # one shift's pool serves all its seeds
  def _target_arrays(self, shift_name: str) -> dict:
    return to_arrays(self.target(shift_name))

  def split(self, shift_name: str, labels, seed: int):
    shift = self.parse(shift_name, self._groups_for(shift_name))
    per_class = (shift.tune_size // self.num_classes if shift.tune_size
                 else self.tune_per_class)
    return target_split(labels, per_class, self.val_per_class, seed)

  def perturb(self, shift_name: str, params, groups):
    """The model tuning starts from: the source, or for noise_<group> the source with
    N(0, s^2) noise on that group, s = scale * ||theta|| / sqrt(size) per tensor, so the
    noise norm is about `scale` times the tensor's norm (`noise_scale`)."""
    base = shift_name.partition('@')[0]
    if not base.startswith(NOISE_PREFIX):
      return params
    group = base[len(NOISE_PREFIX):]
    names = group_names(groups)
    if group not in names:
      raise SurgeryError(f'{shift_name}: the model has no group {group!r}; groups: {names}')
    scale = self.noise_scale(group, names)
    labels = assign_groups(params, groups)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng([self.param_noise.seed, names.index(group)])
    noised = []
    for leaf, g in zip(leaves, jax.tree_util.tree_leaves(labels)):
      leaf = np.asarray(leaf)
      if g == group:
        s = scale * np.linalg.norm(leaf) / np.sqrt(leaf.size)
        leaf = (leaf + s * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
      noised.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, noised)

  def noise_scale(self, group: str, names) -> float:
    """`param_noise.group_scales` ('block1=1.0,last=3') for `group`, else `.scale`."""
    pc = self.param_noise
    scales = {}
    for item in split_names(pc.get('group_scales', '')):
      name, _, value = item.partition('=')
      name = name.strip()
      if name not in names:
        raise SurgeryError(f'param_noise.group_scales: unknown group {name!r}; valid: '
                           f'{", ".join(names)}')
      try:
        scales[name] = float(value)
      except ValueError:
        raise SurgeryError(f'param_noise.group_scales: {item!r} is not group=number') from None
    scale = scales.get(group, pc.scale)
    if not scale > 0:
      raise SurgeryError(f'param_noise scale for {group} must be positive, got {scale}')
    return float(scale)

  def _groups_for(self, shift_name):
    # Parsing a noise shift outside `shift_names` needs no group check: accept it.
    base = shift_name.partition('@')[0]
    if base.startswith(NOISE_PREFIX):
      return ((base[len(NOISE_PREFIX):], ''),)
    return None


READS = ('data_dir', 'corruptions', 'tune_sizes', 'severity', 'corruption_seed',
         'tune_per_class', 'val_per_class', 'param_noise')  # the config fields it is given (surgery.datasets.create)


def create(config, name: str = 'cifar10') -> Cifar10:
  return Cifar10(config)
