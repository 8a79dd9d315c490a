"""The target shifts a fine-tuning sweep can name in `config.corruptions`.

  <corruption>      CIFAR-10-C at `config.severity` (input-level shift, paper Fig. 2)
  clean             the uncorrupted CIFAR-10 test set
  label_flip        CIFAR-Flip: test images with labels y -> 9 - y (output-level shift)
  noise_<group>     the source model with Gaussian noise added to one parameter group,
                    tuned on the clean test set (paper Section 3.3, Table 5, Fig. 6)
  <any>@<n>         the same with n labelled target examples (n/10 per class; Fig. 4)

The tune / validation / test split of every shift comes from `surgery.data.target_split`.
"""
from typing import NamedTuple, Optional

import jax
import numpy as np

from surgery.corruptions import CORRUPTIONS
from surgery.data import corrupted_test_set, load_cifar10
from surgery.errors import SurgeryError
from surgery.groups import assign_groups, group_names
from surgery.models import RESNET26_GROUPS

NOISE_PREFIX = 'noise_'
SPECIAL = ('clean', 'label_flip') + tuple(NOISE_PREFIX + g for g in group_names(RESNET26_GROUPS))
BASES = tuple(CORRUPTIONS) + SPECIAL


class Shift(NamedTuple):
  name: str  # as written in results.csv
  base: str
  tune_size: Optional[int]  # None: config.tune_per_class per class


def parse(name: str) -> Shift:
  base, _, size = name.partition('@')
  if base not in BASES:
    raise SurgeryError(f'unknown corruption [{base!r}]; valid: {", ".join(BASES)} '
                       '(each optionally @<number of target examples>)')
  if size and (not size.isdigit() or int(size) % 10 or int(size) == 0):
    raise SurgeryError(f'bad target size in {name!r}: need a positive multiple of 10')
  return Shift(name, base, int(size) if size else None)


def shifts_of(config):
  names = [t.strip() for t in str(config.corruptions).split(',') if t.strip()]
  if not names:
    raise SurgeryError('no corruption given')
  sizes = [t.strip() for t in str(config.get('tune_sizes', '') or '').split(',') if t.strip()]
  if sizes:
    names = [f'{n}@{s}' for n in names for s in sizes]
  shifts = [parse(n) for n in names]
  if any(s.base in CORRUPTIONS for s in shifts) and not 1 <= int(config.severity) <= 5:
    raise SurgeryError(f'severity must be 1 to 5, got {config.severity}')
  return shifts


def tune_per_class(config, shift: Shift) -> int:
  return shift.tune_size // 10 if shift.tune_size else config.tune_per_class


def target_data(config, shift: Shift):
  """uint8 images and int labels of the target distribution."""
  data_dir = config.data_dir or None
  if shift.base in CORRUPTIONS:
    shifted = corrupted_test_set(shift.base, int(config.severity), seed=config.corruption_seed,
                                 data_dir=data_dir)
    return shifted.images, shifted.labels
  images, labels = load_cifar10('test', data_dir)
  if shift.base == 'label_flip':
    labels = (9 - labels).astype(labels.dtype)
  return images, labels


def noise_scale(config, group: str) -> float:
  """`param_noise.group_scales` ('block1=1.0,last=3') for `group`, else `param_noise.scale`."""
  pc = config.param_noise
  scales = {}
  for item in str(pc.get('group_scales', '') or '').split(','):
    if not item.strip():
      continue
    name, _, value = item.partition('=')
    name = name.strip()
    if name not in group_names(RESNET26_GROUPS):
      raise SurgeryError(f'param_noise.group_scales: unknown group {name!r}; valid: '
                         f'{", ".join(group_names(RESNET26_GROUPS))}')
    try:
      scales[name] = float(value)
    except ValueError:
      raise SurgeryError(f'param_noise.group_scales: {item.strip()!r} is not group=number') from None
  scale = scales.get(group, pc.scale)
  if not scale > 0:
    raise SurgeryError(f'param_noise scale for {group} must be positive, got {scale}')
  return float(scale)


def source_params(config, shift: Shift, params):
  """The model fine-tuning starts from: the source, or for noise_<group> the source with
  N(0, s^2) noise on that group, s = scale * ||theta|| / sqrt(size) per tensor, so the
  noise norm is about `scale` times the tensor's norm (`noise_scale`)."""
  if not shift.base.startswith(NOISE_PREFIX):
    return params
  group = shift.base[len(NOISE_PREFIX):]
  scale = noise_scale(config, group)
  labels = assign_groups(params, RESNET26_GROUPS)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng([config.param_noise.seed, group_names(RESNET26_GROUPS).index(group)])
  noised = []
  for leaf, g in zip(leaves, jax.tree_util.tree_leaves(labels)):
    leaf = np.asarray(leaf)
    if g == group:
      s = scale * np.linalg.norm(leaf) / np.sqrt(leaf.size)
      leaf = (leaf + s * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
    noised.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, noised)
