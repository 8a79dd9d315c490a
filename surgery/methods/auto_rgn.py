"""Auto-RGN (paper Section 5): per-tensor learning rates from relative gradient norms.

For each tensor, RGN = ||g||_2 / ||theta||_2. Normalised by the largest RGN over the
tensors it applies to, it scales that tensor's *update* from an inner optimizer, so
the tensor's effective learning rate is weight * lr, with weight in [0, 1].

The weight multiplies the inner update, not the gradient: Adam divides by the
gradient's own scale, so scaling its input would cancel out.

Refresh cadence: weights are recomputed every `refresh_every` steps from the mean RGN
over the first `window` steps of that period. With (1, 1) they follow every step.
The authors' code uses one refresh per epoch from 5 batches measured in a separate
pass before the epoch; here the first `window` steps of a period use the running mean
of the RGNs seen so far in it, which equals their weights from step `window` on and
needs no extra pass.

Inner state: by default the inner optimizer's state (Adam's moments and step count)
carries over across refreshes. `reset_inner=True` resets it to `inner.init(params)` on
the first step of every period after the first, which reproduces the authors' code: it
rebuilds Adam each epoch. Hyperparameters injected with `optax.inject_hyperparams`
(and their schedules' step counts) are kept, so an injected lr survives the reset.

Degenerate tensors:
  * ||theta|| == 0 (e.g. a zero-initialised bias): its relative gradient is unbounded,
    so it gets weight 1 (the full lr) and stays out of the normaliser; scoring it by
    ||g|| / eps instead would give it all the weight and every other tensor ~0. Zero at
    any step of a window, it keeps weight 1 for that period.
  * a non-finite gradient norm within a window: the tensor gets weight 0 for the
    period and stays out of the normaliser, so one bad tensor does not turn every
    weight into NaN. Stopping the run on it is the caller's job; its own update is
    still non-finite.

As a method (`METHOD`, config section `auto_rgn`): the authors' setting is one refresh
per epoch from 5 batches with norm layers left out. Each run's weights per epoch go to
WORKDIR/auto_rgn/<shift>_lr<lr>_seed<seed>.json, and summary.md gets the paper's Fig. 6
(auto_rgn_weights.png) for the run validation picked on each shift.
"""
import json
import os
import re
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from surgery.errors import SurgeryError
from surgery.groups import path_str
from surgery.methods.registry import Method


_NORM_MODULE = re.compile(r'norm|^(bn|gn)\d*$')
_HYPER_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


class AutoRGNState(NamedTuple):
  count: jax.Array  # steps taken
  rgn_sum: Any  # per-tensor sum of RGN over the current window
  weights: Any  # per-tensor weight in [0, 1] applied to the inner update
  inner_state: optax.OptState


def relative_grad_norms(grads: Any, params: Any) -> Any:
  """||g|| / ||theta|| per tensor, in float32.

  +inf where ||theta|| == 0 (unbounded), NaN where ||g|| is not finite, so callers can
  tell the two apart (see the module docstring).
  """

  def rgn(g, p):
    g_norm = jnp.linalg.norm(g.ravel()).astype(jnp.float32)
    p_norm = jnp.linalg.norm(p.ravel()).astype(jnp.float32)
    zero = p_norm == 0
    # Divide by 1 where zero: 0 / 0 would make a NaN that reads as a bad gradient.
    ratio = jnp.where(zero, jnp.inf, g_norm / jnp.where(zero, 1.0, p_norm))
    return jnp.where(jnp.isfinite(g_norm), ratio, jnp.nan)

  return jax.tree_util.tree_map(rgn, grads, params)


def is_norm_tensor(path: str) -> bool:
  """Normalisation-layer scale/bias, which the authors' code leaves out of Auto-RGN."""
  return any(_NORM_MODULE.search(part) for part in path.lower().split('/')[:-1])


def _normalised(mean_rgn: Any, include: Any, eps: float) -> Any:
  """Window-mean RGNs to weights: divided by the largest finite one among `include`;
  +inf (a zero tensor) -> 1, NaN (a bad gradient) or excluded -> 0."""
  finite = [jnp.where(jnp.isfinite(m), m, 0.0) for m, i in
            zip(jax.tree_util.tree_leaves(mean_rgn), jax.tree_util.tree_leaves(include)) if i]
  top = jnp.maximum(jnp.max(jnp.stack(finite or [jnp.zeros([])])), eps)

  def weight(m, i):
    w = jnp.where(m == jnp.inf, 1.0, jnp.where(jnp.isfinite(m), m / top, 0.0))
    return jnp.where(i, w, 0.0)

  return jax.tree_util.tree_map(weight, mean_rgn, include)


def _reset_where(now: jax.Array, fresh: Any, old: Any) -> Any:
  """Inner state `fresh` where `now`, else `old`. Injected hyperparameters are always
  taken from `old`: `fresh` holds the values the optimizer was built with, not those
  set in its state since (as a shared compiled step does for an lr grid)."""

  def pick(f, o):
    if isinstance(o, _HYPER_STATES):
      return o._replace(inner_state=_reset_where(now, f.inner_state, o.inner_state))
    return jnp.where(now, f, o)

  return jax.tree_util.tree_map(pick, fresh, old, is_leaf=lambda x: isinstance(x, _HYPER_STATES))


def auto_rgn(inner: optax.GradientTransformation, refresh_every: int = 1, window: int = 1,
             exclude: Optional[Callable[[str], bool]] = None, eps: float = 1e-12,
             reset_inner: bool = False) -> optax.GradientTransformation:
  """Wraps `inner` so each tensor's update is scaled by its normalised RGN.

  Args:
    inner: the base optimizer (e.g. `optax.adam(lr)`), fed the raw gradients.
    refresh_every: steps between weight refreshes (an epoch's steps for per-epoch).
    window: number of steps at the start of each period whose RGNs are averaged.
    exclude: path predicate; excluded tensors get weight 0 (not tuned) and do not
      take part in the normalisation. `is_norm_tensor` reproduces the authors' code.
    eps: floor on the normaliser.
    reset_inner: reset the inner state to `inner.init(params)` at every refresh after
      the first (the authors' code); by default it carries over.
  """
  if refresh_every < 1 or not 1 <= window <= refresh_every:
    raise ValueError(f'need refresh_every >= 1 and 1 <= window <= refresh_every, '
                     f'got refresh_every={refresh_every}, window={window}')

  def included(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not (exclude and exclude(path_str(path))), params)

  def init_fn(params):
    inc = included(params)
    return AutoRGNState(
        count=jnp.zeros([], jnp.int32),
        rgn_sum=jax.tree_util.tree_map(lambda _: jnp.zeros([], jnp.float32), params),
        weights=jax.tree_util.tree_map(lambda i: jnp.asarray(float(i), jnp.float32), inc),
        inner_state=inner.init(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    rgn = relative_grad_norms(updates, params)
    phase = state.count % refresh_every
    in_window = phase < window
    # inf (zero tensor) and NaN (bad gradient) stick in the sum for the whole window.
    rgn_sum = jax.tree_util.tree_map(
        lambda s, r: jnp.where(phase == 0, 0.0, s) + r, state.rgn_sum, rgn)
    mean = jax.tree_util.tree_map(lambda s: s / (phase + 1).astype(jnp.float32), rgn_sum)
    fresh = _normalised(mean, included(params), eps)
    weights = jax.tree_util.tree_map(lambda f, w: jnp.where(in_window, f, w), fresh, state.weights)
    rgn_sum = jax.tree_util.tree_map(lambda s, o: jnp.where(in_window, s, o), rgn_sum, state.rgn_sum)

    inner_state = state.inner_state
    if reset_inner:
      refresh = (phase == 0) & (state.count > 0)
      inner_state = _reset_where(refresh, inner.init(params), inner_state)
    inner_updates, inner_state = inner.update(updates, inner_state, params)
    scaled = jax.tree_util.tree_map(lambda u, w: (u * w).astype(u.dtype), inner_updates, weights)
    return scaled, AutoRGNState(state.count + 1, rgn_sum, weights, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


# -- the method ----------------------------------------------------------------------
REFRESH = ('epoch', 'step')


def _wrap(base, ctx):
  s = ctx.settings
  every = ctx.steps_per_epoch if s['refresh'] == 'epoch' else 1
  return auto_rgn(base, refresh_every=every, window=min(int(s['window']), every),
                  exclude=is_norm_tensor if s['exclude_norm'] else None,
                  reset_inner=bool(s['reset_inner']))


def _check(section):
  if section.get('refresh') not in REFRESH:
    raise SurgeryError(f'auto_rgn.refresh must be one of {", ".join(REFRESH)}, got '
                       f'{section.get("refresh")!r}')
  window = section.get('window')
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise SurgeryError(f'auto_rgn.window must be an integer >= 1, got {window!r}')


def state_of(opt_state) -> Optional[AutoRGNState]:
  """The AutoRGNState inside an optimizer state, or None."""
  is_rgn = lambda s: isinstance(s, AutoRGNState)  # noqa: E731
  return next((s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_rgn) if is_rgn(s)),
              None)


def _epoch_weights(opt_state):
  rgn = state_of(opt_state)
  return None if rgn is None else jax.device_get(rgn.weights)


FOLDER = 'auto_rgn'  # WORKDIR/auto_rgn/<shift>_lr<lr>_seed<seed>.json


def _weights_path(workdir, shift, lr, seed):
  return os.path.join(workdir, FOLDER, f'{shift}_lr{float(lr):g}_seed{seed}.json')


def _save_weights(workdir, run, per_epoch):
  """Weights per tensor per epoch, for the paper's Figure 6."""
  from surgery.io import atomic_write
  names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(per_epoch[0])]
  data = {'tensors': names,
          'weights': [[float(w) for w in jax.tree_util.tree_leaves(e)] for e in per_epoch]}
  atomic_write(_weights_path(workdir, run.shift, run.lr, run.seed), json.dumps(data))


def _read_weights(workdir, shift, lr, seed, group_of):
  """(tensors, their groups, weights summed over epochs) of one run, or None."""
  import numpy as np
  path = _weights_path(workdir, shift, lr, seed)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    data = json.load(f)
  summed = np.sum(np.asarray(data['weights'], float), axis=0)
  return data['tensors'], [group_of(t) for t in data['tensors']], summed


def _report(ctx) -> list:
  """Fig. 6 for the run validation picked on each shift (its first seed)."""
  from surgery.report import figures
  from surgery.report.summary import select_lr
  chosen = select_lr([r for r in ctx.rows if r['method'] == METHOD.name], metric=ctx.metric)

  def group_of(path):
    return next((g for g, rx in ctx.groups if re.search(rx, path)), '?')

  panels, missing = [], []
  for shift in ctx.shifts:
    runs = chosen.get((shift, METHOD.name))
    if runs:
      got = _read_weights(ctx.workdir, shift, runs[0]['lr'], runs[0]['seed'], group_of)
      if got:
        panels.append((f'{shift} (lr {runs[0]["lr"]})',) + got)
      else:
        missing.append(shift)
  if not panels and not missing:
    return []
  title = ['## Auto-RGN weights accumulated over training (Fig. 6)', '']
  # The weights are written by the runs, not kept in results.csv: a folder rebuilt from
  # its rows alone (report_only after a merge or a copy) says so instead of going quiet.
  absent = ([f'No weights in {FOLDER}/ for the picked run of: {", ".join(missing)} '
             '(the runs write them; results.csv does not hold them).', '']
            if missing else [])
  if not panels:
    return title + absent
  figures.plot_rgn_weights(panels, os.path.join(ctx.workdir, 'auto_rgn_weights.png'), ctx.groups)
  return title + [
      "Per tensor in auto_rgn_weights.png; here the mean over each group's tensors "
      '(norm tensors, which Auto-RGN leaves out, not counted), for the run '
      'validation picked.', '', figures.rgn_group_means_markdown(panels, ctx.groups),
      ''] + absent


METHOD = Method(
    'auto_rgn', wrap=_wrap, section='auto_rgn', check=_check,
    defaults=dict(refresh='epoch', window=5, exclude_norm=True, reset_inner=False),
    # Rows made before `reset_inner` existed kept Adam's state across refreshes.
    added_later=dict(reset_inner=False),
    epoch_record=_epoch_weights, save_records=_save_weights, records_folder=FOLDER,
    report=_report, order=100)
