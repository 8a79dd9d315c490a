"""Frozen-aware optimizers: surgical fine-tuning as an `optax.partition`.

Freezing lives entirely in the optimizer: tuned leaves go through the base optimizer,
frozen leaves through `keep_frozen()`, which keeps no state, never reads its input
gradient and returns an update of -0.0. `p + (-0.0)` is bitwise `p` for every float
(including -0.0, which `p + 0.0` would turn into +0.0), so plain `optax.apply_updates`
leaves frozen parameters bitwise unchanged and the train step needs no separate mask.
Nothing downstream may read a frozen gradient either (a global-norm clip over every
leaf would), so under `jax.jit` XLA drops the backward work for frozen weights.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from surgery.errors import SurgeryError

TUNE, FREEZE = 'tune', 'freeze'
BASE_OPTIMIZERS = ('adam', 'adamw', 'sgd')


def base_optimizer(name: str = 'adam', learning_rate: Any = 1e-3, weight_decay: float = 0.0,
                   momentum: float = 0.9, nesterov: bool = False,
                   grad_clip_norm: Optional[float] = None) -> optax.GradientTransformation:
  """The optimizer applied to the tuned leaves.

  `adam` and `sgd` add weight decay to the gradient (L2, as `torch.optim.Adam(...,
  weight_decay=wd)` in the authors' code); `adamw` decouples it.
  """
  if name not in BASE_OPTIMIZERS:
    raise SurgeryError(f'unknown optimizer {name!r}; valid: {list(BASE_OPTIMIZERS)}')
  chain = []
  if grad_clip_norm:
    # Inside the tuned partition, so the norm reads tuned gradients only.
    chain.append(optax.clip_by_global_norm(grad_clip_norm))
  if name == 'adamw':
    chain.append(optax.adamw(learning_rate, weight_decay=weight_decay))
  else:
    # A traced decay (MEMO's `traced_optimizer`) counts as non-zero: no truth test on it.
    if not isinstance(weight_decay, (int, float)) or weight_decay:
      chain.append(optax.add_decayed_weights(weight_decay))
    if name == 'adam':
      chain.append(optax.adam(learning_rate))
    else:
      # `momentum` may be a tracer under optax.inject_hyperparams: no truth test on it.
      chain.append(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))
  return optax.chain(*chain)


NO_UPDATE = -0.0  # the update of a frozen leaf: p + (-0.0) is bitwise p


def keep_frozen() -> optax.GradientTransformation:
  """`optax.set_to_zero` with -0.0 instead of +0.0, so `optax.apply_updates` returns
  frozen parameters bitwise unchanged. Stateless; never reads the gradient."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u: jnp.full_like(u, NO_UPDATE), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def surgical(base: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
  """`base` on leaves where `mask` is True; frozen (update -0.0, no state) elsewhere."""
  labels = jax.tree_util.tree_map(lambda m: TUNE if m else FREEZE, mask)
  return optax.partition({TUNE: base, FREEZE: keep_frozen()}, labels)


def state_bytes(opt_state: Any) -> int:
  """Bytes held by an optimizer state (what freezing saves)."""
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(opt_state)
             if hasattr(x, 'dtype'))


def count_params(params: Any, mask: Optional[Any] = None) -> int:
  leaves = jax.tree_util.tree_leaves(params)
  if mask is None:
    return sum(int(p.size) for p in leaves)
  return sum(int(p.size) for p, m in zip(leaves, jax.tree_util.tree_leaves(mask)) if m)


