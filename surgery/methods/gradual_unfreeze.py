"""Gradual unfreezing (paper Section 4.1 baselines; Howard & Ruder, 2018).

Groups are unfrozen one per epoch in a fixed order: at epoch k (0-based, k = step //
steps_per_epoch) the first k+1 groups of `order` are tuned and every other leaf gets
an update of exactly zero. 'first_last' starts at the input (Gradual Unfreeze (First
Last)), 'last_first' at the output.

Optimizer state: each group has its own copy of the base optimizer's state, which is
held unchanged (not merely fed zero gradients) until the group unfreezes. A group
therefore starts its optimizer fresh on its first tuned step: Adam moments are zero,
its step count (bias correction) starts at 1, and weight decay has not leaked into
its moments while it was frozen. This is what PyTorch does with per-parameter
optimizer state created on a parameter's first gradient. One consequence: anything in
the base optimizer that spans leaves, such as `clip_by_global_norm`, acts per group,
and hyperparameters injected with `optax.inject_hyperparams` live once per group.

Use it at the top level with a mask of all True for `make_train_step`: the schedule is
dynamic, so gradients of not-yet-unfrozen leaves are still computed, then discarded.
"""
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from surgery.groups import GroupPatterns, group_names
from surgery.methods.registry import Method

ORDERS = ('first_last', 'last_first')

# A frozen leaf's update: p + (-0.0) is bitwise p for every p, including p = -0.0,
# which p + 0.0 would turn into +0.0.
_NO_UPDATE = -0.0


class GradualUnfreezeState(NamedTuple):
  count: jax.Array  # steps taken
  inner_states: tuple  # per group of `order`: base state over that group's leaves


def unfreeze_order(direction: str, patterns: GroupPatterns) -> tuple[str, ...]:
  """Group names in unfreezing order: network order for 'first_last', reversed for
  'last_first'."""
  if direction not in ORDERS:
    raise ValueError(f'unknown unfreezing order {direction!r}; valid: {list(ORDERS)}')
  names = group_names(patterns)
  return tuple(names if direction == 'first_last' else reversed(names))


def gradual_unfreeze(base: optax.GradientTransformation, labels: Any, order: Sequence[str],
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """Wraps `base` so one more group of `order` is tuned each epoch.

  Args:
    base: the optimizer of tuned leaves (e.g. `surgery.base_optimizer(...)`).
    labels: pytree of group names like the params (`surgery.assign_groups`).
    order: group names, first-unfrozen first (`unfreeze_order`).
    steps_per_epoch: optimizer steps per epoch.
  """
  order = tuple(order)
  present = set(jax.tree_util.tree_leaves(labels))
  if steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}')
  if len(set(order)) != len(order):
    raise ValueError(f'order {order} names a group twice')
  # A group left out of `order` would never train, one without leaves would waste
  # an epoch: both are configuration mistakes, not schedules.
  if present - set(order) or set(order) - present:
    raise ValueError(f'order {order} must name exactly the groups of the params: '
                     f'missing {sorted(present - set(order))}, '
                     f'without parameters {sorted(set(order) - present)}')
  txs = [optax.masked(base, jax.tree_util.tree_map(lambda l, g=g: l == g, labels))
         for g in order]
  index = {g: i for i, g in enumerate(order)}

  def init_fn(params):
    return GradualUnfreezeState(jnp.zeros([], jnp.int32), tuple(tx.init(params) for tx in txs))

  def update_fn(updates, state, params=None):
    epoch = state.count // steps_per_epoch
    group_updates, inner_states = [], []
    for i, (tx, old) in enumerate(zip(txs, state.inner_states)):
      active = i <= epoch
      new_updates, new = tx.update(updates, old, params)
      group_updates.append(new_updates)
      inner_states.append(jax.tree_util.tree_map(lambda n, o: jnp.where(active, n, o), new, old))
    out = jax.tree_util.tree_map(
        lambda l, *us: jnp.where(index[l] <= epoch, us[index[l]], jnp.asarray(_NO_UPDATE, us[0].dtype)),
        labels, *group_updates)
    return out, GradualUnfreezeState(optax.safe_increment(state.count), tuple(inner_states))

  return optax.GradientTransformation(init_fn, update_fn)


# -- the methods: one more group each epoch, from the input or from the output --------
def _wrap(direction):
  def wrap(base, ctx):
    order = unfreeze_order(direction, ctx.groups)
    return gradual_unfreeze(base, ctx.group_labels, order, ctx.steps_per_epoch)
  return wrap


METHODS = tuple(Method(f'gradual_unfreeze_{d}', wrap=_wrap(d), order=110 + i)
                for i, d in enumerate(ORDERS))
