"""BatchNorm whose train mode is chosen per layer, so frozen layers stay in eval mode.

The authors fine-tune with BatchNorm in eval mode. With `train_layers=()` (the
default) every layer normalises with its running statistics and never updates them,
whatever `train` says; a tuple of layer paths ('stage1/block0/norm1') puts just those
layers in train mode when `train` is True (`bn_mode='train'` for tuned layers);
`None` is the classic behaviour, every layer following `train`.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from surgery.groups import path_str


class SelectiveBatchNorm(nn.BatchNorm):
  train: bool = False
  train_layers: Optional[Sequence[str]] = ()

  def __call__(self, x, *, mask=None):
    # No `use_running_average`: the mode is `train` and `train_layers`, per layer.
    in_train_mode = self.train and (
        self.train_layers is None or '/'.join(self.scope.path) in self.train_layers)
    return super().__call__(x, use_running_average=not in_train_mode, mask=mask)


def tuned_norm_layers(mask: Any, batch_stats: Any) -> tuple:
  """Paths of the BatchNorm layers (those with running statistics) whose parameters
  `mask` tunes: the layers that run in train mode under `bn_mode='train'`."""
  tuned = {path_str(p).rsplit('/', 1)[0]
           for p, m in jax.tree_util.tree_leaves_with_path(mask) if m}
  layers = {path_str(p).rsplit('/', 1)[0] for p, _ in jax.tree_util.tree_leaves_with_path(batch_stats)}
  return tuple(sorted(layers & tuned))
