"""RobustBench's `Standard` CIFAR-10 WideResNet-28-10, in Flax Linen, in its key layout.

This is the CIFAR source model the authors' released code loads from RobustBench.
`conv1` (3x3, 16 channels) -> three NetworkBlocks `block1`..`block3` of (depth - 4) / 6
pre-activation BasicBlocks each (widths 16, 32, 64 times `widen`; strides 1, 2, 2)
-> BatchNorm `bn1` -> ReLU -> global average -> `fc`.

A BasicBlock is bn1-relu-conv1(3x3, stride)-bn2-relu-conv2(3x3). Where its input and
output widths differ, RobustBench's block (`equalInOut` False) feeds the pre-activated
input relu(bn1(x)) both to conv1 and to a 1x1 `convShortcut`; where they agree, the
residual is the raw input x.

Module names mirror the torch keys (`block1/layer0/bn1` is `block1.layer.0.bn1`) so the
checkpoint mapping is one substitution. Inputs are float NHWC images in [0, 1]; the
RobustBench model has no input normalisation.

`dtype='bfloat16'` computes convolutions and BatchNorm outputs in bfloat16 (mixed
precision on GPU/TPU); parameters, BatchNorm statistics, the pooled features and the
logits stay float32.
"""
import os
import re
from functools import partial
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from surgery.errors import CheckpointError, SurgeryError
from surgery.models.batchnorm import SelectiveBatchNorm

# Group map: the paper's blocks, as for ResNet-26 (the authors tune the stem together
# with the first stage for `block1`; see METHODS).
GROUPS = (
    ('first_layer', r'^conv1/'),
    ('block1', r'^block1/'),
    ('block2', r'^block2/'),
    ('block3', r'^block3/'),
    ('last', r'^(bn1|fc)/'),
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

# torch BatchNorm's step counter carries nothing the Flax model uses.
IGNORED_KEYS = (r'(^|\.)num_batches_tracked$',)

_LEAF_KEYS = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
              'mean': 'running_mean', 'var': 'running_var'}

# RobustBench initialises convolutions with N(0, 2 / (k * k * out_channels)); keeping
# that makes a model trained from scratch here start where the reference does.
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
  # Explicit padding: 'SAME' pads a stride-2 3x3 conv (0, 1), torch pads (1, 1).
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_CONV_INIT,
                 name=name, dtype=dtype)


class BasicBlock(nn.Module):
  features: int
  stride: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = partial(_conv, dtype=self.dtype)
    pre = nn.relu(self.norm(name='bn1')(x))
    out = conv(self.features, 3, self.stride, name='conv1')(pre)
    out = nn.relu(self.norm(name='bn2')(out))
    out = conv(self.features, 3, 1, name='conv2')(out)
    if x.shape[-1] == self.features:
      # Widths only change where a stage starts, together with any stride, so an
      # identity residual always has the output's shape.
      return x + out
    return conv(self.features, 1, self.stride, name='convShortcut')(pre) + out


class NetworkBlock(nn.Module):
  features: int
  stride: int
  num_layers: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      x = BasicBlock(self.features, self.stride if i == 0 else 1, self.norm, self.dtype,
                     name=f'layer{i}')(x)
    return x


class WideResNet(nn.Module):
  depth: int = 28
  widen: int = 10
  num_classes: int = 10
  # Layers in train mode when train=True (see SelectiveBatchNorm); () keeps every
  # layer in eval mode, as the authors fine-tune.
  bn_train_layers: Optional[Sequence[str]] = ()
  # Compute dtype (bfloat16 for mixed precision on GPU/TPU); parameters, BatchNorm
  # statistics and logits stay float32.
  dtype: Any = jnp.float32
  # Group boundaries (see surgery.models: `cuts`): boundary k is the input of GROUPS[k].
  start: int = 0
  stop: Optional[int] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    # Flax momentum 0.9 is torch's momentum 0.1.
    norm = partial(SelectiveBatchNorm, train=train, train_layers=self.bn_train_layers,
                   momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    num_layers = (self.depth - 4) // 6

    def block(i, width, stride):
      return lambda x: NetworkBlock(width * self.widen, stride, num_layers, norm, self.dtype,
                                    name=f'block{i}')(x)

    def head(x):
      x = nn.relu(norm(name='bn1')(x))
      # torch's avg_pool2d(8) on the 8x8 maps a 32x32 input leaves is the global mean;
      # averaged in float32, so the classifier (and the loss) sees float32 features.
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      return nn.Dense(self.num_classes, name='fc')(x)

    layers = (lambda x: _conv(16, 3, 1, name='conv1', dtype=self.dtype)(x),
              block(1, 16, 1), block(2, 32, 2), block(3, 64, 2), head)  # = GROUPS
    for k in range(self.start, len(layers) if self.stop is None else self.stop):
      x = layers[k](x)
    return x


def create(depth: int = 28, widen: int = 10, num_classes: int = 10, new_head: bool = False,
           dtype: str = 'float32', **unused) -> 'ModelSpec':
  """The model contract's spec (see surgery.models).

  Args:
    depth: 6n + 4 layers, n BasicBlocks per NetworkBlock (28 for the released model).
    widen: width multiplier (10 for the released model).
    num_classes: classifier outputs.
    new_head: `load` keeps a freshly initialised `fc` (e.g. for another number of
      classes) instead of requiring the checkpoint's to fit.
    dtype: compute dtype, 'float32' or 'bfloat16' (mixed precision: float32
      parameters, statistics and logits).
  """
  from surgery.models import ModelSpec, compute_dtype
  if unused:
    raise SurgeryError(f'wrn28_10 has no option(s) {sorted(unused)}; valid: depth, widen, '
                       'num_classes, new_head, dtype')
  if depth < 10 or (depth - 4) % 6:
    raise SurgeryError(f'model.depth must be 6n+4 >= 10, got {depth}')
  if widen < 1 or num_classes < 2:
    raise SurgeryError(f'model.widen must be >= 1 and num_classes >= 2, got {widen}, {num_classes}')
  module = WideResNet(depth=depth, widen=widen, num_classes=num_classes,
                      dtype=compute_dtype(dtype))
  spec = ModelSpec(
      name='wrn28_10', module=module, groups=GROUPS, methods=METHODS, image_size=32,
      num_classes=num_classes, load=None, head_methods=('last',), cuts=True,
      overrides=dict(depth=depth, widen=widen, num_classes=num_classes, new_head=bool(new_head),
                     # Only when mixed: float32 specs keep the overrides they had before
                     # the option existed (tests/test_main.py compares them whole).
                     **({} if dtype == 'float32' else {'dtype': str(dtype)})))
  import dataclasses
  return dataclasses.replace(spec, load=lambda path: load(path, spec))


def torch_key(flax_path: str) -> tuple:
  """(torch key, layout kind) of a variables path such as 'params/block1/layer0/bn1/scale'
  ('block1.layer.0.bn1.weight', '') or 'params/fc/kernel' ('fc.weight', 'dense')."""
  _, *modules, leaf = flax_path.split('/')
  modules = [re.sub(r'^layer(\d+)$', r'layer.\1', m) for m in modules]
  kind = ('dense' if modules == ['fc'] else 'conv') if leaf == 'kernel' else ''
  return '.'.join(modules + [_LEAF_KEYS[leaf]]), kind


def load(path: str, spec) -> dict:
  """Variables (params and batch_stats) from a RobustBench checkpoint, a plain torch
  state dict of this layout, or one of this project's orbax directories."""
  from surgery.checkpoints import load_orbax_variables
  from surgery.checkpoints.state_dict import convert, read_state_dict
  template = spec.init()
  if os.path.isdir(path):
    return load_orbax_variables(path, template)
  state = read_state_dict(path)  # undoes RobustBench's 'state_dict' / 'module.' nesting
  new_head = spec.overrides['new_head']
  if not new_head:
    _check_head(state, spec.num_classes, path)
  o = spec.overrides
  return dict(convert(
      state, template, torch_key, source=path,
      model=f"wrn28_10 (depth {o['depth']}, widen {o['widen']}, {o['num_classes']} classes)",
      ignore=IGNORED_KEYS,
      new_head=(lambda name: name.startswith('params/fc/')) if new_head else None))


def _check_head(state: dict, num_classes: int, path: str) -> None:
  # A classifier for other classes is the one mismatch with a remedy worth naming.
  weight = state.get('fc.weight')
  if weight is not None and np.ndim(weight) == 2 and weight.shape[0] != num_classes:
    raise CheckpointError(
        f'{path} has a {weight.shape[0]}-class fc, the model {num_classes} classes; create '
        'the model with new_head=True to train a fresh classifier')
