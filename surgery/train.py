"""The jitted training and evaluation steps, on one device or data-parallel on a mesh.

Data parallelism is `jax.jit` over a 1-D mesh with axis 'data': the batch is sharded
along it, parameters and optimizer state are replicated, and XLA inserts the gradient
all-reduce. (`jax.pmap` is in maintenance mode since JAX 0.8; nothing here uses it.)
The same step function runs unchanged with or without a mesh.
"""
import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from surgery.errors import SurgeryError

DATA_AXIS = 'data'


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any  # non-parameter collections, e.g. {'batch_stats': ...}; {} for GroupNorm


def init_train_state(params: Any, optimizer: optax.GradientTransformation,
                     model_state: Optional[dict] = None) -> TrainState:
  return TrainState(jnp.zeros([], jnp.int32), params, optimizer.init(params), model_state or {})


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (or the given) devices, axis name 'data'."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(mesh: Optional[Mesh], *arrays):
  """Puts arrays on the mesh, split along their leading (batch) axis.

  Every process passes the same global batch and keeps the rows of its own devices, so
  a run over several processes sees exactly the batches of a single-process run.
  """
  if mesh is None:
    return arrays if len(arrays) > 1 else arrays[0]
  n = mesh.devices.size
  for a in arrays:
    if a.shape[0] % n:
      raise SurgeryError(f'batch of {a.shape[0]} does not split over {n} devices; '
                         f'use a batch size divisible by {n}')
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:
    out = tuple(jax.device_put(a, sharding) for a in arrays)
  else:
    out = tuple(jax.make_array_from_callback(np.shape(a), sharding,
                                             lambda index, a=a: np.asarray(a)[index])
                for a in arrays)
  return out if len(out) > 1 else out[0]


def host_local_batch(mesh: Optional[Mesh], *arrays):
  """Like `shard_batch`, but each process passes only its own rows (its shard of a
  streamed split): the global batch is the processes' rows, in process order."""
  if mesh is None or jax.process_count() == 1:
    return shard_batch(mesh, *arrays)
  out = tuple(jax.make_array_from_process_local_data(batch_sharded(mesh), np.asarray(a))
              for a in arrays)
  return out if len(out) > 1 else out[0]


def replicate(mesh: Optional[Mesh], tree: Any) -> Any:
  """A copy of `tree` on every device of the mesh (the same values in every process)."""
  if mesh is None:
    return tree
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                             lambda index, x=x: np.asarray(x)[index]), tree)


def to_host(tree: Any) -> Any:
  """numpy copies of replicated (or local) arrays, in any process."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
      and not x.is_fully_addressable else np.asarray(x), tree)


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: Optional[jax.Array] = None):
  """Mean cross-entropy; with `weights`, a weighted mean (0 drops a padded example)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  if weights is None:
    return losses.mean()
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def takes_train_flag(model) -> bool:
  """Whether `model.__call__` accepts `train=` (Linen modules may or may not)."""
  try:
    params = inspect.signature(model.__call__).parameters
  except (TypeError, ValueError):
    return False
  return 'train' in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def forward(model, params, model_state, images, train):
  """(logits, new model_state). `model` is a Linen module, with or without a `train`
  argument, or the wrapper `surgery.nnx_model` makes of a Flax NNX module, whose
  Linen-style `apply` always takes `train`. `model_state` holds non-parameter
  collections such as `batch_stats`; they are mutable only in train mode, so eval never
  moves them."""
  import sys
  # A wrapper can exist only once surgery.nnx_support is loaded, so Linen users never
  # pay for importing flax.nnx here.
  nnx_support = sys.modules.get('surgery.nnx_support')
  is_nnx = nnx_support is not None and isinstance(model, nnx_support.NNXModel)
  variables = {'params': params, **model_state}
  kwargs = {'train': train} if is_nnx or takes_train_flag(model) else {}
  if train and model_state:
    return model.apply(variables, images, mutable=list(model_state), **kwargs)
  return model.apply(variables, images, **kwargs), model_state


def to_float_images(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float input is passed through."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images


def make_train_step(model, optimizer: optax.GradientTransformation,
                    mesh: Optional[Mesh] = None,
                    loss_fn: Callable = cross_entropy,
                    extra_loss: Optional[Callable[[Any], jax.Array]] = None,
                    donate: bool = False):
  """A jitted `step(state, images, labels, weights=None) -> (state, metrics)`.

  Freezing is the optimizer's business (`surgery.surgical`): frozen leaves get an
  update of -0.0, which `optax.apply_updates` adds bitwise-exactly, and since nothing
  reads their gradients XLA never computes them. `model` is a Linen module, with or
  without a `train` argument (see `surgery.nnx_model` for Flax NNX).

  `weights` (per example, 0 or 1) lets a short last batch be padded to the compiled
  shape yet count exactly like a smaller batch (GroupNorm mixes no examples).
  `extra_loss(params)` adds a regulariser (e.g. L1-SP). `donate` lets XLA reuse the
  input state's buffers: faster, but every array of the old state (including params
  it shares with the caller) is deleted.

  metrics: `loss`, `accuracy`, and `nonfinite`, a bool vector with one entry per
  parameter leaf (in `jax.tree_util.tree_leaves` order), True where that leaf's update
  is not finite; the loss is checked through it too (a NaN loss makes every tuned
  update NaN). It reads updates, never frozen gradients, so it costs no backward work.
  """

  def step(state: TrainState, images, labels, weights=None):
    images = to_float_images(images)

    def objective(params):
      logits, model_state = forward(model, params, state.model_state, images, train=True)
      loss = loss_fn(logits, labels, weights)
      total = loss + extra_loss(params) if extra_loss is not None else loss
      return total, (loss, logits, model_state)

    grads, (loss, logits, model_state) = jax.grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    acc = jnp.mean(hits) if weights is None else jnp.sum(hits * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    nonfinite = jnp.stack([~jnp.all(jnp.isfinite(u)) for u in jax.tree_util.tree_leaves(updates)])
    metrics = {'loss': loss, 'accuracy': acc, 'nonfinite': nonfinite | ~jnp.isfinite(loss)}
    return TrainState(state.step + 1, params, opt_state, model_state), metrics

  donate_argnums = (0,) if donate else ()
  if mesh is None:
    jitted = jax.jit(step, donate_argnums=donate_argnums)
  else:
    rep, dat = replicated(mesh), batch_sharded(mesh)
    jitted = jax.jit(step, in_shardings=(rep, dat, dat, dat), out_shardings=(rep, rep),
                     donate_argnums=donate_argnums)

  # Positional `weights` (None when absent) keeps the argument tuple the length that
  # in_shardings describes.
  def call(state, images, labels, weights=None):
    return jitted(state, images, labels, weights)

  call.lower = lambda state, images, labels, weights=None: jitted.lower(state, images, labels, weights)
  return call


def make_predict(model, mesh: Optional[Mesh] = None):
  """A jitted `predict(params, model_state, images) -> logits` (eval mode)."""

  def predict(params, model_state, images):
    return forward(model, params, model_state, to_float_images(images), train=False)[0]

  if mesh is None:
    return jax.jit(predict)
  rep, dat = replicated(mesh), batch_sharded(mesh)
  return jax.jit(predict, in_shardings=(rep, rep, dat), out_shardings=dat)


def batched_outputs(apply, params, model_state, images, batch_size: int = 512,
                    mesh: Optional[Mesh] = None, finish=None) -> np.ndarray:
  """`apply(params, model_state, batch)` over a whole array in fixed-size batches (the
  last one padded), so one compiled shape serves any dataset size, gathered on the host.
  On a mesh the batch is rounded up to a multiple of the device count, so any batch size
  splits. `finish` (jitted) turns each batch's output into an array every process can
  read; by default the output itself, replicated."""
  if batch_size < 1:
    raise SurgeryError(f'evaluation batch size must be >= 1, got {batch_size}')
  if mesh is not None:
    batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  finish = finish or _gathered(mesh)
  out = []
  for start in range(0, len(images), batch_size):
    x = np.asarray(images[start:start + batch_size])
    real = len(x)
    if real < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - real, *x.shape[1:]), x.dtype)])
    y = finish(apply(params, model_state, shard_batch(mesh, x)))
    out.append(np.asarray(to_host(y))[:real])
  return np.concatenate(out)


def predictions(predict, params, model_state, images: np.ndarray, batch_size: int = 512,
                mesh: Optional[Mesh] = None) -> np.ndarray:
  """Predicted classes over a whole array (`batched_outputs` of the argmax)."""
  if len(images) == 0:
    return np.zeros([0], np.int64)
  return batched_outputs(predict, params, model_state, images, batch_size, mesh,
                         finish=_classes(mesh))


@functools.lru_cache(maxsize=None)
def _gathered(mesh: Optional[Mesh]):
  """Identity, with a batch-sharded array gathered onto every device of the mesh."""
  if mesh is None:
    return lambda y: y
  return jax.jit(lambda y: y, out_shardings=replicated(mesh))


@functools.lru_cache(maxsize=None)
def _classes(mesh: Optional[Mesh]):
  """argmax over classes, gathered onto every device: with several processes no host
  could read a batch-sharded array, so the gather happens inside jit."""
  if mesh is None:
    return jax.jit(lambda logits: jnp.argmax(logits, -1))
  return jax.jit(lambda logits: jnp.argmax(logits, -1), out_shardings=replicated(mesh))


def evaluate(predict, params, model_state, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 512, mesh: Optional[Mesh] = None) -> float:
  """Accuracy over a whole array (see `predictions`)."""
  pred = predictions(predict, params, model_state, images, batch_size, mesh)
  return float((pred == np.asarray(labels)).sum()) / max(len(images), 1)
