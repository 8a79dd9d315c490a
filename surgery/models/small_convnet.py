"""A small ConvNet for CPU-sized experiments and for trying a method or a shift in
seconds: three conv stages (3x3 conv, GroupNorm, ReLU; the second and third downsample
by 2), global average pooling and a linear head.

Groups, in network order: `block1`, `block2`, `block3` (the stages) and `last` (the
head); each is also a surgical method. Options: `width` (channels of the first stage,
doubled per stage), `num_classes`, `image_size`. `load` reads this project's orbax
checkpoints (pre-train one with the runner: an empty `init_checkpoint`).
"""
import dataclasses
import os

import flax.linen as nn
import jax.numpy as jnp

from surgery.errors import CheckpointError, SurgeryError
from surgery.models.group_norm import GroupNorm

GROUPS = (
    ('block1', r'^block1/'),
    ('block2', r'^block2/'),
    ('block3', r'^block3/'),
    ('last', r'^head/'),
)
METHODS = {'all': 'all', 'block1': 'block1', 'block2': 'block2', 'block3': 'block3',
           'last': 'last'}


class Stage(nn.Module):
  features: int
  stride: int

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), strides=self.stride, use_bias=False, name='conv')(x)
    x = GroupNorm(num_groups=min(8, self.features), name='norm')(x)
    return nn.relu(x)


class SmallConvNet(nn.Module):
  num_classes: int = 10
  width: int = 16

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = (images - 0.5) / 0.5  # inputs in [0, 1]; normalisation inside, as every model here
    for i, stride in enumerate((1, 2, 2)):
      x = Stage(self.width * 2 ** i, stride, name=f'block{i + 1}')(x)
    return nn.Dense(self.num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


def create(num_classes: int = 10, width: int = 16, image_size: int = 32, **unused):
  """The model contract's spec (see surgery.models)."""
  from surgery.models import ModelSpec
  if unused:
    raise SurgeryError(f'small_convnet has no option(s) {sorted(unused)}; valid: '
                       'num_classes, width, image_size')
  if width < 1 or num_classes < 2 or image_size < 4:
    raise SurgeryError(f'small_convnet needs width >= 1, num_classes >= 2 and image_size >= 4, '
                       f'got {width}, {num_classes}, {image_size}')
  spec = ModelSpec(name='small_convnet', module=SmallConvNet(num_classes, width), groups=GROUPS,
                   methods=METHODS, image_size=image_size, num_classes=num_classes, load=None,
                   head_methods=('last',),
                   overrides=dict(num_classes=num_classes, width=width, image_size=image_size))
  return dataclasses.replace(spec, load=lambda path: load(path, spec))


def load(path: str, spec) -> dict:
  """Variables from one of this project's orbax directories."""
  from surgery.checkpoints import load_orbax_variables
  if not os.path.isdir(path):
    raise CheckpointError(f'small_convnet loads this project\'s orbax checkpoints (folders); '
                       f'{path} is not one')
  return load_orbax_variables(path, spec.init())
