"""Auto-SNR (paper Section 4.1): freeze the tensors whose gradients are noisiest.

Paper variant (`variant='paper'`): with g_ij the j-th gradient entry on example i of a
minibatch of N, per tensor

    SNR = mean_j [ (mean_i g_ij)^2 / (var_i g_ij + eps) ]

with the population variance (1/N) over examples. This needs per-example gradients,
computed by `per_example_grads` in memory-bounded chunks.

Channel-variance variant (`variant='channel_variance'`): from the batch-mean gradient g
alone, per tensor mean(g * g / (var(g, axis=-1, ddof=1) + 1e-8)), the variance
running along the output-channel axis, which Flax stores last (Dense [in, out], Conv
[kh, kw, in, out]) and PyTorch first. It measures spread across output units, not
across examples. It is the criterion of the authors' released code, but not their
procedure, which differs in four ways:
  1. it thresholds the raw value at 0.95, un-normalised; here it is normalised by the
     max like the paper variant and the threshold is the one swept;
  2. it averages the value over 5 batches; here it comes from one measuring batch;
  3. it leaves BN tensors out and freezes them; here only with `exclude`;
  4. it rebuilds Adam every epoch; here the base optimizer's state carries over.

Normalisation: per-tensor values are divided by the largest over the tensors taken
into account, so the best tensor scores 1 and the threshold is a fraction of it. This
is how Auto-RGN normalises, here and in the authors' code (whose Auto-SNR uses the raw
value, see above); min-max (option) would always freeze the lowest tensor for any
positive threshold, however close it is. A
tensor is frozen for the epoch when its normalised value is under the threshold
(strictly, as `0 if v < 0.95 else 1` in the authors' code).

Training: `auto_snr(base)` multiplies the base update by per-tensor weights in {0, 1}
held in its state; refresh them once per epoch with `set_snr_weights`. As with
`torch.optim.Adam` at lr 0, a frozen tensor's moments keep accumulating; only its
update is withheld.
"""
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from surgery.errors import SurgeryError
from surgery.groups import path_str
from surgery.methods.registry import Method

VARIANTS = ('paper', 'channel_variance')
_NO_UPDATE = -0.0  # p + (-0.0) is bitwise p, -0.0 included


class AutoSNRState(NamedTuple):
  weights: Any  # per-tensor float32 scalar in {0, 1} applied to the base update
  inner_state: optax.OptState


def per_example_grads(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any,
                      chunk_size: Optional[int] = None) -> Any:
  """Gradients of `loss_fn(params, example)` for each example of `batch` (a pytree with
  a leading example axis); each leaf gains that axis in front.

  `chunk_size` examples are vmapped at a time and chunks run in sequence (`lax.map`,
  a short last chunk included), so memory grows with the chunk, not the batch.
  """
  grad = jax.grad(loss_fn)
  if chunk_size is None:
    return jax.vmap(grad, in_axes=(None, 0))(params, batch)
  return jax.lax.map(lambda ex: grad(params, ex), batch, batch_size=chunk_size)


def snr_per_tensor(example_grads: Any, eps: float = 1e-8) -> Any:
  """Paper SNR per tensor from per-example gradients (leading axis = examples)."""

  def snr(g):
    g = g.astype(jnp.float32)
    return jnp.mean(jnp.mean(g, 0) ** 2 / (jnp.var(g, 0) + eps))

  return jax.tree_util.tree_map(snr, example_grads)


def channel_variance_per_tensor(grads: Any, eps: float = 1e-8, axis: int = -1) -> Any:
  """The channel-variance criterion per tensor from batch-mean gradients."""

  def crit(g):
    g = g.astype(jnp.float32)
    return jnp.mean(g * g / (jnp.var(g, axis=axis, ddof=1, keepdims=True) + eps))

  return jax.tree_util.tree_map(crit, grads)


def normalise(snr: Any, method: str = 'max', include: Optional[Any] = None,
              eps: float = 1e-12) -> Any:
  """Per-tensor values mapped to [0, 1]: divided by the max, or 'minmax'. Tensors
  with `include` False score 0 and do not set the scale."""
  if method not in ('max', 'minmax'):
    raise ValueError(f"normalise method must be 'max' or 'minmax', got {method!r}")
  if include is None:
    include = jax.tree_util.tree_map(lambda _: True, snr)
  kept = [v for v, i in zip(jax.tree_util.tree_leaves(snr), jax.tree_util.tree_leaves(include)) if i]
  if not kept:
    raise ValueError('no tensor left to normalise')
  kept = jnp.stack(kept)
  lo = jnp.min(kept) if method == 'minmax' else 0.0
  scale = jnp.maximum(jnp.max(kept) - lo, eps)
  return jax.tree_util.tree_map(
      lambda v, i: jnp.where(i, (v - lo) / scale, 0.0).astype(jnp.float32), snr, include)


def frozen_set(snr_normalised: Any, threshold: float) -> Any:
  """Pytree of bools: True where the tensor is frozen (normalised SNR < threshold)."""
  return jax.tree_util.tree_map(lambda v: bool(v < threshold), snr_normalised)


@partial(jax.jit, static_argnames=('loss_fn', 'variant', 'chunk_size'))
def snr_criterion(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any,
                  variant: str = 'paper', chunk_size: Optional[int] = None) -> Any:
  """Per-tensor SNR (un-normalised) of `variant` on one measuring minibatch.

  `loss_fn(params, example)` is the loss of one example; pass the same function
  object every epoch so the compiled measurement is reused.

  Raises:
    SurgeryError: `variant` is not one of `VARIANTS`.
  """
  if variant == 'paper':
    return snr_per_tensor(per_example_grads(loss_fn, params, batch, chunk_size))
  if variant == 'channel_variance':
    mean_loss = lambda p: jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(p, batch))
    return channel_variance_per_tensor(jax.grad(mean_loss)(params))
  raise SurgeryError(f'unknown Auto-SNR variant {variant!r}; valid: {list(VARIANTS)}')


def snr_weights(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any,
                threshold: float, variant: str = 'paper', chunk_size: Optional[int] = None,
                exclude: Optional[Callable[[str], bool]] = None) -> Any:
  """One epoch's weights for `set_snr_weights`: 1.0 tuned, 0.0 frozen.

  `exclude` (a path predicate, e.g. `surgery.is_norm_tensor`) freezes tensors outright
  and keeps them out of the normalisation.
  """
  snr = snr_criterion(loss_fn, params, batch, variant=variant, chunk_size=chunk_size)
  include = jax.tree_util.tree_map_with_path(
      lambda path, _: not (exclude and exclude(path_str(path))), params)
  frozen = frozen_set(normalise(snr, include=include), threshold)
  return jax.tree_util.tree_map(
      lambda f, i: jnp.asarray(float(i and not f), jnp.float32), frozen, include)


def auto_snr(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Wraps `inner` so each tensor's update is kept (weight 1) or zeroed (weight 0).

  Weights start at 1 (tune everything) until the first `set_snr_weights`.
  """

  def init_fn(params):
    return AutoSNRState(jax.tree_util.tree_map(lambda _: jnp.ones([], jnp.float32), params),
                        inner.init(params))

  def update_fn(updates, state, params=None):
    inner_updates, inner_state = inner.update(updates, state.inner_state, params)
    out = jax.tree_util.tree_map(
        lambda u, w: jnp.where(w > 0, u * w.astype(u.dtype), jnp.asarray(_NO_UPDATE, u.dtype)),
        inner_updates, state.weights)
    return out, AutoSNRState(state.weights, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def set_snr_weights(opt_state: Any, weights: Any) -> Any:
  """`opt_state` with every AutoSNRState's weights replaced by `weights` (a pytree
  like the params). Inside `surgery.surgical`, leaves frozen by its mask are skipped.
  Under a mesh, pass the result through `surgery.replicate`."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)

  def replace(s):
    if not isinstance(s, AutoSNRState):
      return s
    new = jax.tree_util.tree_map(
        lambda old, w: old if is_masked(old) else jnp.asarray(w, jnp.float32).reshape(old.shape),
        s.weights, weights, is_leaf=is_masked)
    return s._replace(weights=new)

  return jax.tree_util.tree_map(replace, opt_state, is_leaf=lambda s: isinstance(s, AutoSNRState))


# -- the method: before each epoch, freeze for that epoch the tensors under the threshold
def _before_epoch(ctx, state, order):
  """This epoch's frozen set from per-example gradients on one measuring batch, the
  first `batch_size` images of the epoch's order, at the current parameters."""
  import numpy as np
  from surgery import train as training
  s = ctx.settings
  first = order[:s['batch_size']]
  x, y = ctx.tune[0][first], ctx.tune[1][first].astype(np.int32)

  def example_loss(params, example):
    xi, yi = example
    logits = training.forward(ctx.module, params, ctx.model_state,
                              training.to_float_images(xi[None]), train=False)[0]
    return training.cross_entropy(logits, yi[None])

  from surgery.methods.auto_rgn import is_norm_tensor
  weights = snr_weights(example_loss, state.params, (x, y), ctx.hparam, variant=s['variant'],
                        chunk_size=s['chunk_size'],
                        exclude=is_norm_tensor if s['exclude_norm'] else None)
  return state._replace(opt_state=training.replicate(
      ctx.mesh, set_snr_weights(state.opt_state, weights)))


def _check(section):
  if section.get('variant') not in VARIANTS:
    raise SurgeryError(f'auto_snr.variant must be one of {", ".join(VARIANTS)}, got '
                       f'{section.get("variant")!r}')
  for field in ('batch_size', 'chunk_size'):
    v = section.get(field)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise SurgeryError(f'auto_snr.{field} must be an integer >= 1, got {v!r}')


# The threshold is swept beside the lr over `auto_snr.thresholds`, chosen on validation.
METHOD = Method('auto_snr', wrap=lambda base, ctx: auto_snr(base), before_epoch=_before_epoch,
                section='auto_snr', check=_check, hparam='threshold', grid_field='thresholds',
                defaults=dict(thresholds=(0.2, 0.5, 0.8), variant='paper', batch_size=64,
                              chunk_size=16, exclude_norm=False),
                order=130)
