"""The CIFAR ResNet-26 of TTT and MEMO (the paper's CIFAR source model), in Flax Linen.

Pre-activation basic blocks, 3 stages x 4 blocks, widths (16, 32, 64) x `width`.
Where a stage changes width or stride, the shortcut is an average pool followed by
zero channels (no parameters). The head is norm -> ReLU -> global average -> Dense.
GroupNorm with 8 groups by default; BatchNorm on request.

Inputs are float images in [0, 1], NHWC; the model normalises with `mean`/`std`
(0.5/0.5 for the MEMO weights), so callers never have to remember to.
"""
import os
from functools import partial
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from surgery.errors import SurgeryError
from surgery.models.batchnorm import SelectiveBatchNorm
from surgery.models.group_norm import GroupNorm

# Group map: the paper's blocks, following the authors' code (`first_two_block` =
# stem + stage 1 is the paper-facing `block1` method; see METHODS).
GROUPS = (
    ('first_layer', r'^stem/'),
    ('block1', r'^stage1/'),
    ('block2', r'^stage2/'),
    ('block3', r'^stage3/'),
    ('last', r'^(final_norm|head)/'),
)

# Paper-facing methods -> group specs.
METHODS = {
    'all': 'all',
    'first_layer': 'first_layer',
    'block1': 'first_layer,block1',
    'block2': 'block2',
    'block3': 'block3',
    'last': 'last',
}

# MEMO's freezing options (paper Section 2.2): the groups plus one for `layer1.0.conv1`
# (the paper's "first conv layer within the first block"). It sits before `block1`, so
# first-match-wins takes it out of that group and `first_layer-block1` still covers
# the whole stage.
MEMO_GROUPS = (GROUPS[0], ('first_block_conv', r'^stage1/block0/conv1/')) + tuple(GROUPS[1:])
MEMO_OPTIONS = {
    'all': 'all',
    'first_layer': 'first_layer',
    'first_2_layers': 'first_layer,first_block_conv',
    'block1': 'first_layer-block1',
    'last': 'last',
}


def _conv3x3(features: int, stride: int = 1, name: str = None) -> nn.Conv:
  # Explicit (1, 1) padding: 'SAME' pads a stride-2 conv (0, 1), torch pads (1, 1).
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                 use_bias=False, name=name)


class PreActBlock(nn.Module):
  features: int
  stride: int
  norm: Any

  @nn.compact
  def __call__(self, x):
    h = nn.relu(self.norm(name='norm1')(x))
    h = _conv3x3(self.features, self.stride, name='conv1')(h)
    h = nn.relu(self.norm(name='norm2')(h))
    h = _conv3x3(self.features, name='conv2')(h)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = nn.avg_pool(x, (self.stride, self.stride), (self.stride, self.stride))
      pad = self.features - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad)))
    return x + h


class Stage(nn.Module):
  features: int
  stride: int
  num_blocks: int
  norm: Any

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_blocks):
      x = PreActBlock(self.features, self.stride if i == 0 else 1, self.norm, name=f'block{i}')(x)
    return x


class ResNet26(nn.Module):
  num_classes: int = 10
  width: int = 1
  depth: int = 26
  norm_type: str = 'group'  # 'group' or 'batch'
  num_groups: int = 8
  # BatchNorm only: layers in train mode when train=True (see SelectiveBatchNorm);
  # () keeps every layer in eval mode, as the authors fine-tune.
  bn_train_layers: Optional[Sequence[str]] = ()
  mean: Sequence[float] = (0.5, 0.5, 0.5)
  std: Sequence[float] = (0.5, 0.5, 0.5)
  # Group boundaries (see surgery.models: `cuts`): boundary k is the input of GROUPS[k].
  # The module reads boundary `start`'s activations and returns boundary `stop`'s, so a
  # frozen prefix can be computed once and only the rest trained.
  start: int = 0
  stop: Optional[int] = None
  # The same function as flax.linen.GroupNorm, faster on XLA:CPU (see group_norm.py);
  # tests swap Flax's back in to check that the logits did not move.
  group_norm: Any = GroupNorm

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.norm_type == 'group':
      norm = partial(self.group_norm, num_groups=self.num_groups, epsilon=1e-5)
    elif self.norm_type == 'batch':
      norm = partial(SelectiveBatchNorm, train=train, train_layers=self.bn_train_layers,
                     momentum=0.9, epsilon=1e-5)
    else:
      raise ValueError(f"norm_type must be 'group' or 'batch', got {self.norm_type!r}")
    blocks = (self.depth - 2) // 6

    def stem(x):
      x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
      return _conv3x3(16, name='stem')(x)

    def stage(s, features, stride):
      return lambda x: Stage(features * self.width, stride, blocks, norm, name=f'stage{s}')(x)

    def head(x):
      x = nn.relu(norm(name='final_norm')(x))
      return nn.Dense(self.num_classes, name='head')(jnp.mean(x, axis=(1, 2)))

    layers = (stem, stage(1, 16, 1), stage(2, 32, 2), stage(3, 64, 2), head)  # = GROUPS
    stop = len(layers) if self.stop is None else self.stop
    for k in range(self.start, stop):
      x = layers[k](x)
    return x


def create(num_classes: int = 10, width: int = 1, depth: int = 26, norm: str = 'group',
           **unused) -> 'ModelSpec':
  """The model contract's spec (see surgery.models)."""
  from surgery.models import ModelSpec
  if unused:
    raise SurgeryError(f'resnet26 has no option(s) {sorted(unused)}; valid: num_classes, '
                       'width, depth, norm')
  if norm not in ('group', 'batch'):
    raise SurgeryError(f"model.norm must be 'group' or 'batch', got {norm!r}")
  if depth < 8 or (depth - 2) % 6:
    raise SurgeryError(f'model.depth must be 6n+2 >= 8, got {depth}')
  if width < 1 or num_classes < 2:
    raise SurgeryError(f'model.width must be >= 1 and num_classes >= 2, got {width}, {num_classes}')
  module = ResNet26(num_classes=num_classes, width=width, depth=depth, norm_type=norm)
  spec = ModelSpec(
      name='resnet26', module=module, groups=GROUPS, methods=METHODS, image_size=32,
      num_classes=num_classes, load=None, head_methods=('last',), cuts=True,
      extra_group_maps={'memo': (MEMO_GROUPS, MEMO_OPTIONS)},
      overrides=dict(num_classes=num_classes, width=width, depth=depth, norm=norm))
  import dataclasses
  return dataclasses.replace(spec, load=lambda path: load(path, spec))


def load(path: str, spec) -> dict:
  """Variables from the MEMO/TTT `.pth` file or one of this project's orbax directories."""
  from surgery.checkpoints import load_memo_variables, load_orbax_variables
  if os.path.isdir(path):
    return load_orbax_variables(path, spec.init())
  return load_memo_variables(path, spec.init())
