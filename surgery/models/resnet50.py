"""torchvision's ResNet-50 (v1.5) in Flax Linen: the paper's ImageNet source model.

7x7/2 stem, 3x3/2 max-pool, bottleneck stages of (3, 4, 6, 3) blocks with the stride
on the 3x3 conv (v1.5) and a 1x1 conv + BatchNorm projection in each stage's first
block, global average pool, `fc`. Paddings are torchvision's, written out: 'SAME'
would pad a stride-2 window (0, 1) where torch pads (1, 1).

Module names mirror torch's state-dict keys, so `layer1/0/downsample/0/kernel` is
`layer1.0.downsample.0.weight`; `torch_key` is the whole mapping.

Inputs are float images in [0, 1], NHWC; the model normalises with ImageNet's mean/std
itself, as RobustBench's `normalize_model` wrapper does.

`width` (the stem width, 64) and `stage_sizes` exist so tests can build a tiny model of
the same shape; only the defaults read torchvision and RobustBench checkpoints.
"""
import dataclasses
import os
from functools import partial
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from surgery.errors import CheckpointError, SurgeryError
from surgery.models.batchnorm import SelectiveBatchNorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Group map following the authors' code: the stem is `first_layer`, each torch
# `layerN` is `blockN`, the classifier is `last`.
GROUPS = (
    ('first_layer', r'^(conv1|bn1)/'),
    ('block1', r'^layer1/'),
    ('block2', r'^layer2/'),
    ('block3', r'^layer3/'),
    ('block4', r'^layer4/'),
    ('last', r'^fc/'),
)

# Paper-facing methods -> group specs; `block1` tunes the stem too, as for ResNet-26.
METHODS = {
    'all': 'all',
    'first_layer': 'first_layer',
    'block1': 'first_layer,block1',
    'block2': 'block2',
    'block3': 'block3',
    'block4': 'block4',
    'last': 'last',
}

_EXPANSION = 4  # a bottleneck's output is 4x its inner width


def _conv(features: int, kernel: int, stride: int = 1, name: str = None,
          dtype: Any = jnp.float32) -> nn.Conv:
  pad = kernel // 2  # torchvision's padding for its 1x1, 3x3 and 7x7 convs
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, name=name, dtype=dtype)


class Downsample(nn.Module):
  """The projection shortcut, torch's `nn.Sequential(conv1x1, BatchNorm2d)`: its
  children are named '0' and '1' so paths match the torch keys."""
  features: int
  stride: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return self.norm(name='1')(_conv(self.features, 1, self.stride, name='0', dtype=self.dtype)(x))


class Bottleneck(nn.Module):
  width: int  # inner width; the block outputs width * 4 channels
  stride: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_features = self.width * _EXPANSION
    conv = partial(_conv, dtype=self.dtype)
    h = nn.relu(self.norm(name='bn1')(conv(self.width, 1, name='conv1')(x)))
    h = nn.relu(self.norm(name='bn2')(conv(self.width, 3, self.stride, name='conv2')(h)))
    h = self.norm(name='bn3')(conv(out_features, 1, name='conv3')(h))
    if self.stride != 1 or x.shape[-1] != out_features:
      x = Downsample(out_features, self.stride, self.norm, self.dtype, name='downsample')(x)
    return nn.relu(x + h)


class Stage(nn.Module):
  """torch's `layerN`: blocks named '0', '1', ... like the `nn.Sequential` indices."""
  width: int
  stride: int
  num_blocks: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_blocks):
      x = Bottleneck(self.width, self.stride if i == 0 else 1, self.norm, self.dtype,
                     name=str(i))(x)
    return x


class ResNet50(nn.Module):
  num_classes: int = 1000
  width: int = 64
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  # Layers in train mode when train=True (see SelectiveBatchNorm); () keeps every
  # BatchNorm in eval mode, as the authors fine-tune.
  bn_train_layers: Optional[Sequence[str]] = ()
  mean: Sequence[float] = IMAGENET_MEAN
  std: Sequence[float] = IMAGENET_STD
  # Compute dtype (bfloat16 for mixed precision on GPU/TPU); parameters, BatchNorm
  # statistics and logits stay float32.
  dtype: Any = jnp.float32
  # Group boundaries (see surgery.models: `cuts`): boundary k is the input of GROUPS[k];
  # the global average pool ends block4, so the head's input is 2048 numbers, not 7x7x2048.
  start: int = 0
  stop: Optional[int] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    # torch's BatchNorm2d momentum 0.1 weighs the new batch; Flax's weighs the old.
    norm = partial(SelectiveBatchNorm, train=train, train_layers=self.bn_train_layers,
                   momentum=0.9, epsilon=1e-5, dtype=self.dtype)

    def stem(x):
      x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
      x = nn.relu(norm(name='bn1')(_conv(self.width, 7, 2, name='conv1', dtype=self.dtype)(x)))
      # Padding with -inf (reduce_window's init value), as torch's MaxPool2d does.
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def stage(i, blocks):
      def run(x):
        x = Stage(self.width * 2 ** i, 1 if i == 0 else 2, blocks, norm, self.dtype,
                  name=f'layer{i + 1}')(x)
        return x if i < len(self.stage_sizes) - 1 else jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      return run

    layers = ((stem,) + tuple(stage(i, b) for i, b in enumerate(self.stage_sizes))
              + (_classifier(self.num_classes),))  # = GROUPS
    for k in range(self.start, len(layers) if self.stop is None else self.stop):
      x = layers[k](x)
    return x


def _classifier(num_classes: int) -> nn.Dense:
  return nn.Dense(num_classes, name='fc')


class _HeadOnly(nn.Module):
  """Just `fc`, at the same path as in ResNet50: Linen derives each parameter's key
  from its path, so its init equals the whole model's for the same seed."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return _classifier(self.num_classes)(x)


def create(num_classes: int = 1000, width: int = 64, stage_sizes: Sequence[int] = (3, 4, 6, 3),
           new_head: bool = False, dtype: str = 'float32', **unused) -> 'ModelSpec':
  """The model contract's spec (see surgery.models).

  Args:
    num_classes: outputs of `fc`.
    width: stem width; stage N's bottlenecks are width * 2**(N-1) wide inside.
    stage_sizes: blocks per stage (four stages, as the group map expects).
    new_head: `spec.load` keeps a freshly initialised `fc` instead of reading the
      checkpoint's (a new classifier, e.g. for another number of classes).
    dtype: compute dtype, 'float32' or 'bfloat16' (mixed precision: float32
      parameters, statistics and logits).
  """
  from surgery.models import ModelSpec
  if unused:
    raise SurgeryError(f'resnet50 has no option(s) {sorted(unused)}; valid: num_classes, '
                       'width, stage_sizes, new_head, dtype')
  from surgery.models import compute_dtype
  stage_sizes = tuple(int(s) for s in stage_sizes)
  if len(stage_sizes) != 4 or min(stage_sizes) < 1:
    raise SurgeryError(f'model.stage_sizes must be four block counts >= 1, got {stage_sizes}')
  if width < 1 or num_classes < 2:
    raise SurgeryError(f'model.width must be >= 1 and num_classes >= 2, got {width}, {num_classes}')
  module = ResNet50(num_classes=num_classes, width=width, stage_sizes=stage_sizes,
                    dtype=compute_dtype(dtype))
  spec = ModelSpec(
      name='resnet50', module=module, groups=GROUPS, methods=METHODS, image_size=224,
      num_classes=num_classes, load=None, head_methods=('last',), cuts=True,
      overrides=dict(num_classes=num_classes, width=width, stage_sizes=stage_sizes,
                     new_head=bool(new_head), dtype=str(dtype)))
  return dataclasses.replace(spec, load=lambda path: load(path, spec))


# ------------------------------------------------------------------------ checkpoints

_LEAF_KEYS = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
              'mean': 'running_mean', 'var': 'running_var'}

# Buffers of input-normaliser wrappers (RobustBench's `normalize`, the robustness
# library's `normalizer`): not parameters here, but their values are checked.
_NORMALIZER_KEYS = {
    'normalize.mean': IMAGENET_MEAN, 'normalize.std': IMAGENET_STD,
    'normalizer.new_mean': IMAGENET_MEAN, 'normalizer.new_std': IMAGENET_STD,
}


def torch_key(path: str) -> tuple:
  """(torch state-dict key, layout kind for `torch_to_flax`) of a variables path such
  as 'params/layer1/0/downsample/0/kernel' or 'batch_stats/bn1/mean'."""
  _, *modules, leaf = path.split('/')
  if leaf == 'kernel':
    kind = 'dense' if modules == ['fc'] else 'conv'
  else:
    kind = ''
  return '.'.join(modules + [_LEAF_KEYS[leaf]]), kind


def _is_head(path: str) -> bool:
  return path.startswith('params/fc/')


def load(path: str, spec) -> dict:
  """Variables ({'params', 'batch_stats'}) from a torchvision state dict, a RobustBench
  ImageNet checkpoint, or one of this project's orbax directories.

  Raises:
    CheckpointError: unreadable or unsafe file, or one that does not fit the model
      (every missing or unexpected key and wrong shape is named; nothing loads).
  """
  from surgery.checkpoints import load_orbax_variables
  from surgery.checkpoints.state_dict import convert, read_state_dict
  template = _template(spec.module, spec.overrides['new_head'])
  if os.path.isdir(path):
    return load_orbax_variables(path, template)
  state = _unwrap(read_state_dict(path), path)
  model = f'resnet50 ({spec.num_classes} classes, width {spec.overrides["width"]})'
  return convert(state, template, torch_key, source=path, model=model,
                 ignore=(r'(^|\.)num_batches_tracked$',),
                 new_head=_is_head if spec.overrides['new_head'] else None)


def _template(module: ResNet50, fresh_head: bool, seed: int = 0) -> dict:
  """Variables shaped like `module`'s, zeros except a freshly initialised `fc` when
  `fresh_head`: loading overwrites everything else, and compiling the whole init of
  ResNet-50 takes seconds."""
  dummy = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(seed), dummy)
  template = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))
  if fresh_head:
    in_features = shapes['params']['fc']['kernel'].shape[0]
    head = _HeadOnly(module.num_classes).init(jax.random.PRNGKey(seed),
                                              jnp.zeros((1, in_features), jnp.float32))
    template['params'] = {**template['params'], 'fc': head['params']['fc']}
  return template


def _unwrap(state: dict, path: str) -> dict:
  """The bare network's keys from a wrapped model's state dict.

  RobustBench wraps the net as `Sequential(normalize=ImageNormalizer, model=net)` (keys
  'model.conv1.weight', 'normalize.mean'); the robustness library also keeps an
  `attacker.model` copy of the same weights. `read_state_dict` has already dropped
  'module.' (DataParallel). Normaliser buffers must hold ImageNet's statistics, since
  this model applies those itself.
  """
  if not any(k.startswith('model.') for k in state):
    return state
  bare, rest = {}, {}
  for key, value in state.items():
    if key.startswith('model.'):
      bare[key[len('model.'):]] = value
    elif not key.startswith('attacker.'):
      rest[key] = value
  for key, value in rest.items():
    if key in bare:
      raise CheckpointError(f'{path} holds both {key} and model.{key}; which is the network?')
    if key not in _NORMALIZER_KEYS:
      bare[key] = value  # left for convert() to report as unexpected
    elif not np.allclose(np.ravel(value), _NORMALIZER_KEYS[key], atol=1e-6):
      raise CheckpointError(f'{path}: {key} is {np.ravel(value).tolist()}, but resnet50 '
                            f'normalises with {list(_NORMALIZER_KEYS[key])}')
  return bare
