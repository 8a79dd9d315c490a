"""Surgical fine-tuning in JAX: tune one contiguous block of a pre-trained network.

    spec = surgery.models.create('resnet26')
    mask = surgery.trainable_mask(params, spec.groups, spec.methods[method])
    tx = surgery.surgical(surgery.base_optimizer('adam', 1e-3, 1e-4), mask)
    step = surgery.make_train_step(spec.module, tx)
"""
from surgery.methods.auto_rgn import AutoRGNState, auto_rgn, is_norm_tensor, relative_grad_norms
from surgery.errors import CheckpointError, GroupSpecError, SurgeryError
from surgery.groups import assign_groups, group_names, group_sizes, parse_spec, trainable_mask
from surgery.optim import base_optimizer, count_params, state_bytes, surgical
from surgery.train import (TrainState, data_mesh, evaluate, init_train_state, make_predict,
                           make_train_step, shard_batch, replicate)


def corrupt(images, name, severity, seed=0):
  """CIFAR-10-C corruption `name` at `severity` (1-5) of uint8 NHWC images."""
  from surgery.corruptions import corrupt as _corrupt  # scipy-heavy; import on use
  return _corrupt(images, name, severity, seed=seed)


_NNX_EXPORTS = ('NNXModel', 'nnx_model', 'nnx_update')


def __getattr__(name):
  # flax.nnx loads on first use, so `import surgery` stays light for Linen users.
  if name in _NNX_EXPORTS:
    from surgery import nnx_support
    return getattr(nnx_support, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
