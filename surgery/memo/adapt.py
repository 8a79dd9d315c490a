"""MEMO test-time adaptation with surgical freezing, one image at a time.

MEMO (Zhang, Levine & Finn, 2021) adapts to a single test image by minimising the
entropy of the model's average prediction over augmented copies of it, then predicts
the unaugmented image. Lee et al. (ICLR 2023, Sec. 2.2 and App. A.6) run it
*episodic* (reset to the pre-trained weights after every image; AdamW) and *online*
(carry the weights along the stream; SGD), tuning only some layers.

Which layers an option tunes is the model's business: a model that supports MEMO
declares `spec.extra_group_maps['memo'] = (groups, options)`, a group map (often finer
than its fine-tuning one, e.g. with the first conv of the first block on its own) and
option name -> group spec over it (see `surgery/models/resnet26.py` for the paper's
options). Everything here takes that pair from the caller (`memo_group_map(spec)`).
"""
import time
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from surgery.errors import SurgeryError
from surgery.groups import trainable_mask
from surgery.memo.augment import MEMO_SEVERITY, augment_batch_float
from surgery.optim import base_optimizer, surgical
from surgery.train import forward, to_float_images

MEMO_MAP = 'memo'  # the key of a model spec's `extra_group_maps` read here
MODES = ('episodic', 'online')

# MEMO's CIFAR-10 script (cifar-10-exps/test_calls/test_adapt.py) adapts with
# torch SGD, lr 0.005, no momentum or weight decay, 1 step, 32 augmentations: the
# online default. Lee et al. found AdamW better episodic, but their tuned CIFAR values
# are not in the paper's text. Adam's first step moves every tuned weight by about lr,
# so MEMO's 0.005 under AdamW drove the marginal entropy of a noisy CIFAR image from
# 1.01 to 0.00 in one step (option `all`); 0.0005 gives 0.14, close to MEMO's SGD step
# (0.12). A provisional default: sweep per option as in App. A.6.
DEFAULTS = {
    'episodic': {'optimizer': 'adamw', 'learning_rate': 0.0005, 'weight_decay': 0.0},
    'online': {'optimizer': 'sgd', 'learning_rate': 0.005, 'weight_decay': 0.0},
}
NUM_COPIES = 32
STEPS = 1


def marginal_entropy(logits: jax.Array):
  """(entropy, avg_logits) of the mean softmax over the leading (copies) axis.

  Averaging probabilities in log space (logsumexp of log-softmax minus log B) keeps
  tiny probabilities exact; the clamp stops 0 * -inf from turning into NaN, as in
  MEMO's `marginal_entropy`.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  avg_logits = jax.nn.logsumexp(log_probs, axis=0) - jnp.log(log_probs.shape[0])
  avg_logits = jnp.maximum(avg_logits, jnp.finfo(avg_logits.dtype).min)
  return -jnp.sum(jnp.exp(avg_logits) * avg_logits, axis=-1), avg_logits


GroupMap = tuple  # (groups, {option: group spec}): a spec's extra_group_maps['memo']


def memo_group_map(spec) -> GroupMap:
  """The MEMO group map a model spec declares (`extra_group_maps['memo']`); a model
  without one is a user error, in one line."""
  group_map = dict(getattr(spec, 'extra_group_maps', None) or {}).get(MEMO_MAP)
  if group_map is None:
    raise SurgeryError(f'model {getattr(spec, "name", "?")} declares no MEMO freezing options '
                       f"(extra_group_maps['{MEMO_MAP}']), so MEMO cannot run on it")
  groups, options = group_map
  return tuple(groups), dict(options)


def memo_mask(params: Any, option: str, group_map: GroupMap) -> Any:
  """True where `option` of the model's MEMO `group_map` tunes the parameter."""
  groups, options = group_map
  if option not in options:
    raise SurgeryError(f'unknown MEMO option {option!r}; valid: {", ".join(options)}')
  return trainable_mask(params, groups, options[option])


def memo_optimizer(mode: str, mask: Any, optimizer: Optional[str] = None,
                   learning_rate: Optional[float] = None, weight_decay: Optional[float] = None,
                   momentum: float = 0.0) -> optax.GradientTransformation:
  """The paper's per-mode optimizer (DEFAULTS), any field overridable, frozen by `mask`."""
  if mode not in MODES:
    raise SurgeryError(f'unknown MEMO mode {mode!r}; valid: {", ".join(MODES)}')
  d = DEFAULTS[mode]
  base = base_optimizer(optimizer or d['optimizer'],
                        d['learning_rate'] if learning_rate is None else learning_rate,
                        d['weight_decay'] if weight_decay is None else weight_decay,
                        momentum=momentum)
  return surgical(base, mask)


def traced_optimizer(mode: str, mask: Any, optimizer: Optional[str] = None,
                     learning_rate: Optional[float] = None,
                     weight_decay: Optional[float] = None,
                     momentum: float = 0.0) -> Tuple[Callable[..., optax.GradientTransformation],
                                                     dict]:
  """(build, hyper): `memo_optimizer`'s transformation as `build(**hyper)`, with its
  learning rate (and weight decay, when not zero) in `hyper` rather than baked in.

  `make_adapt_predict(model, build)` traces `hyper`, so one compiled program serves
  every learning rate and decay of a search; baked in, each value was a compilation of
  its own (3 to 5 s for ResNet-26). A zero decay stays baked in: for `sgd` and `adam`
  it means no decay transform at all, another program. `build(**hyper).init(params)` is
  the optimizer state, whose structure does not depend on the values.
  """
  d = DEFAULTS[mode] if mode in MODES else {}
  lr = d.get('learning_rate') if learning_rate is None else learning_rate
  wd = d.get('weight_decay') if weight_decay is None else weight_decay
  hyper = {'learning_rate': lr} if not wd else {'learning_rate': lr, 'weight_decay': wd}

  def build(learning_rate, weight_decay=0.0):
    return memo_optimizer(mode, mask, optimizer, learning_rate, weight_decay, momentum)

  build(**hyper)  # a bad mode or optimizer name fails here, in one line
  return build, hyper


def _builder(optimizer) -> Callable[..., optax.GradientTransformation]:
  if isinstance(optimizer, optax.GradientTransformation):
    return lambda: optimizer
  return optimizer


def make_adapt_predict(model, optimizer, steps: int = STEPS, num_copies: int = NUM_COPIES,
                       severity: float = MEMO_SEVERITY, model_state: Optional[dict] = None):
  """`(params, opt_state, image_uint8_HWC, key, hyper=None) -> (params, opt_state,
  logits)`: the image's augmentations, then one compiled program for its updates and
  prediction.

  `optimizer` is a GradientTransformation, or a function of keyword hyperparameters
  returning one (`traced_optimizer`'s `build`); `hyper`, the dict of those
  hyperparameters, is then an argument, traced, so every value runs the same program.
  Each of `steps` updates draws fresh augmentations (as MEMO re-augments per
  iteration); the network runs in eval mode throughout (MEMO calls `net.eval()`), so
  BatchNorm statistics in `model_state` are used, never updated. `model` is a Linen
  module with or without a `train` argument (`surgery.train.forward`). Freezing is the
  optimizer's (`memo_optimizer`, i.e. `surgery.surgical`): frozen leaves get an update
  of -0.0, so `optax.apply_updates` returns them bitwise unchanged.
  """
  logits_of, loss_fn = _memo_functions(model, model_state)
  build = _builder(optimizer)

  @jax.jit
  def adapt_on(params, opt_state, batches, image, hyper):
    tx = build(**(hyper or {}))
    # A Python loop, not lax.fori_loop: XLA:CPU ran the convolutions inside a while
    # loop's body about 15x slower (2.8 s vs 0.18 s per image for `all`, 32 copies).
    for batch in batches:
      grads = jax.grad(loss_fn)(params, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    logits = logits_of(params, to_float_images(image[None]))[0]
    return params, opt_state, logits

  def adapt_predict(params, opt_state, image, key, hyper=None):
    # The augmentations do not depend on the weights, so they are a program of their
    # own, compiled once per (copies, severity): inside this one, AugMix was 80% of
    # each (option, steps, optimizer)'s compilation.
    batches = [augment_batch_float(jax.random.fold_in(key, i), image, num_copies, severity)
               for i in range(steps)]
    return adapt_on(params, opt_state, batches, image, hyper)

  return adapt_predict


def _memo_functions(model, model_state):
  """(logits_of(params, float images), MEMO's loss(params, augmented batch)), eval mode."""
  model_state = model_state or {}

  def logits_of(params, images):
    return forward(model, params, model_state, images, train=False)[0]

  def loss_fn(params, images):
    return marginal_entropy(logits_of(params, images))[0]

  return logits_of, loss_fn


def make_episodic_predict_many(model, optimizers, num_copies: int = NUM_COPIES,
                               severity: float = MEMO_SEVERITY,
                               model_state: Optional[dict] = None):
  """`(params, opt_states, image_uint8_HWC, key, hypers=None) -> logits [K, classes]`:
  one episodic MEMO step per optimizer in `optimizers`, all from one gradient.

  Each optimizer is a GradientTransformation or a `build` function as in
  `make_adapt_predict`; `hypers` then holds one dict per optimizer (`{}` for a fixed
  one), traced. Equal to K calls of `make_adapt_predict(model, tx_k, steps=1)` from the
  same params and fresh states: a first step's augmentations (`fold_in(key, 0)`), hence
  its gradient, do not depend on the optimizer, so K candidates of an episodic search
  (lr, weight decay) cost about one. Only the first step shares; later steps start
  from different weights.
  """
  logits_of, loss_fn = _memo_functions(model, model_state)
  builds = tuple(_builder(tx) for tx in optimizers)

  @jax.jit
  def predict_on(params, opt_states, batch, image, hypers):
    grads = jax.grad(loss_fn)(params, batch)
    x = to_float_images(image[None])
    logits = []
    for build, state, hyper in zip(builds, opt_states, hypers or [{}] * len(builds)):
      updates, _ = build(**hyper).update(grads, state, params)
      logits.append(logits_of(optax.apply_updates(params, updates), x)[0])
    return jnp.stack(logits)

  def predict_many(params, opt_states, image, key, hypers=None):
    batch = augment_batch_float(jax.random.fold_in(key, 0), image, num_copies, severity)
    return predict_on(params, opt_states, batch, image, hypers)

  return predict_many


def run_episodic_many(predict_many, params: Any, opt_states, images: np.ndarray,
                      labels: np.ndarray, seed: int = 0, progress: bool = True, *,
                      start: int = 0, predictions=(), on_progress: Optional[Callable] = None,
                      progress_every: int = 500, hypers=None) -> list:
  """The episodic streams of a `make_episodic_predict_many` function's K candidates
  (with their traced `hypers`, if any), in one pass: per candidate, what `run_stream` returns (accuracy, correct, predictions;
  images_per_second is the shared pass's, compilation excluded). The same per-image
  keys as `run_stream`, so each candidate's stream is the one it would run alone.

  Resumes like `run_stream`: at image `start`, given the K rows of `predictions` made
  before it; `on_progress(done, predictions [K, done])` is called every
  `progress_every` images and at the end."""
  images, labels = np.asarray(images), np.asarray(labels)
  n, k = len(images), len(opt_states)
  before = np.asarray(predictions, np.int64).reshape(k, -1) if start else np.zeros((k, 0))
  if before.shape[1] != start or not 0 <= start <= n:
    raise SurgeryError(f'a stream resumed at image {start} of {n} needs the {start} '
                       f'predictions before it for each of {k} candidates, got '
                       f'{np.shape(predictions)}')
  keys = image_keys(seed, n)
  preds = np.zeros((k, n), np.int64)
  preds[:, :start] = before
  began = None
  for i in tqdm(range(start, n), desc=f'MEMO episodic x{k}', disable=not progress,
                leave=False, total=n, initial=start):
    preds[:, i] = np.argmax(
        np.asarray(predict_many(params, opt_states, images[i], keys[i], hypers)), axis=-1)
    if i == start:
      began = time.perf_counter()
    done = i + 1
    if on_progress is not None and (done % progress_every == 0 or done == n):
      on_progress(done, preds[:, :done].copy())
  elapsed = _since(began)
  return [_stream_result(p, labels, n - start, elapsed) for p in preds]


def image_keys(seed: int, n: int) -> np.ndarray:
  """The per-image PRNG keys of a stream (host array, so indexing costs no dispatch)."""
  return np.asarray(jax.random.split(jax.random.PRNGKey(seed), n))


def run_stream(adapt_predict, params: Any, opt_state: Any, images: np.ndarray,
               labels: np.ndarray, mode: str, seed: int = 0, progress: bool = True, *,
               start: int = 0, predictions=(), on_progress: Optional[Callable] = None,
               progress_every: int = 500, hyper: Optional[dict] = None) -> dict:
  """Adapts-then-predicts each image in order with a `make_adapt_predict` function
  (and its traced `hyper`, if it takes any).

  Episodic mode hands every image the same pre-trained `params` and fresh `opt_state`
  (jax arrays are immutable, so nothing can leak between images); online mode feeds
  each call's outputs to the next. Throughput leaves out the first image adapted here,
  which includes compilation.

  A stream resumes at image `start` from the `params`/`opt_state` it had there and the
  `predictions` of the images before it: an image's augmentation key depends only on
  (seed, index), so the resumed stream is the same stream. `on_progress(done, params,
  opt_state, predictions)` is called every `progress_every` images and at the end, so
  a caller can save what a long stream has done so far.
  """
  if mode not in MODES:
    raise SurgeryError(f'unknown MEMO mode {mode!r}; valid: {", ".join(MODES)}')
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise SurgeryError(f'MEMO needs uint8 NHWC images, got {images.dtype} {images.shape}')
  n = len(images)
  predictions = [int(p) for p in predictions]
  if len(predictions) != start or not 0 <= start <= n:
    raise SurgeryError(f'a stream resumed at image {start} of {n} needs the {start} '
                       f'predictions before it, got {len(predictions)}')
  keys = image_keys(seed, n)
  p, s = params, opt_state
  new_logits = []
  bar = tqdm(total=n, initial=start, desc=f'MEMO {mode}', disable=not progress, leave=False)
  began = None
  for i in range(start, n):
    new_p, new_s, logits = adapt_predict(p, s, images[i], keys[i], hyper)
    if mode == 'online':
      p, s = new_p, new_s
    # Host sync per image: bounds the dispatch queue and feeds the progress bar.
    logits = np.asarray(logits)
    new_logits.append(logits)
    predictions.append(int(np.argmax(logits)))
    if i == start:
      began = time.perf_counter()
    bar.update(1)
    done = i + 1
    if done % 50 == 0 or done == n:
      bar.set_postfix(acc=f'{np.mean(np.asarray(predictions) == labels[:done]):.4f}')
    if on_progress is not None and (done % progress_every == 0 or done == n):
      on_progress(done, p, s, list(predictions))
  bar.close()
  return {
      **_stream_result(predictions, labels, n - start, _since(began)),
      # Only the images adapted in this call (all of them unless resumed).
      'logits': np.stack(new_logits) if new_logits else np.zeros((0, 0), np.float32),
      'params': p,
      'opt_state': s,
  }


def _since(began) -> float:
  return time.perf_counter() - began if began is not None else 0.0


def _stream_result(predictions, labels, adapted: int, elapsed: float) -> dict:
  """accuracy, per-image correct, predictions and images/s of a stream that adapted
  `adapted` images, `elapsed` seconds after the first (compilation left out)."""
  correct = [bool(a == b) for a, b in zip(predictions, labels)]
  return {
      'accuracy': float(np.mean(correct)) if len(correct) else float('nan'),
      'correct': correct,
      'predictions': [int(p) for p in predictions],
      'images_per_second': (adapted - 1) / elapsed if adapted > 1 and elapsed > 0 else float('nan'),
  }


def adapt_stream(model, params: Any, images: np.ndarray, labels: np.ndarray,
                 mode: str, option: str, *, group_map: GroupMap,
                 optimizer: Optional[str] = None, learning_rate: Optional[float] = None,
                 weight_decay: Optional[float] = None, momentum: float = 0.0,
                 steps: int = STEPS, num_copies: int = NUM_COPIES,
                 severity: float = MEMO_SEVERITY, seed: int = 0,
                 model_state: Optional[dict] = None, progress: bool = True) -> dict:
  """MEMO over a stream of uint8 NHWC test images, tuning only `option`'s layers.

  `group_map` is the model's MEMO group map (`memo_group_map(spec)`). Returns
  accuracy, per-image `correct` (and `predictions`, `logits`), `images_per_second` and
  the final `params` (the pre-trained ones when episodic).
  """
  mask = memo_mask(params, option, group_map)
  build, hyper = traced_optimizer(mode, mask, optimizer, learning_rate, weight_decay, momentum)
  fn = make_adapt_predict(model, build, steps, num_copies, severity, model_state)
  return run_stream(fn, params, build(**hyper).init(params), images, labels, mode, seed,
                    progress, hyper=hyper)
