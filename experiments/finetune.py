"""One fine-tuning run (paper Section 2.1 protocol), for any model, dataset and method.

Fine-tune the source model on the labelled target tune set, evaluate the validation
metrics after every epoch, keep the parameters of the best epoch on the plan's
selection metric (`config.select_metric`, else the dataset's), and evaluate them once
on the target test set.
"""
import math
import os

import jax
import numpy as np
import optax
from tqdm import tqdm

import surgery
from surgery.datasets import compute_metrics
from surgery.errors import Interrupted, SurgeryError
from surgery.groups import assign_groups, group_names, path_str, trainable_mask
from surgery.methods import registry
from surgery.methods.registry import Context, EpochContext
from surgery.models.batchnorm import tuned_norm_layers


class NonFiniteError(SurgeryError):
  """A gradient update or the loss became NaN or infinite: the run stops."""


SCHEDULES = ('constant', 'cosine')


def make_optimizer(config, method, lr, mask, ctx: Context):
  """The base optimizer with the lr injected into its state, so one compiled step
  serves the whole lr grid; wrapped by the method, then frozen outside `mask`.

  `config.schedule='cosine'` (the WILDS configs: the paper's target stage keeps its
  source stage's cosine annealing) scales every update by (1 + cos(pi t / T)) / 2 over
  the run's T = epochs x steps-per-epoch steps, which for Adam, SGD with momentum and
  AdamW is the same as annealing the lr; the factor depends only on the step count, so
  the step stays shared across lrs. 'constant' (default) leaves the lr as it is.
  """
  base = optax.inject_hyperparams(surgery.base_optimizer, static_args=('name', 'weight_decay'))(
      name=config.optimizer, learning_rate=lr, weight_decay=config.weight_decay)
  if config.get('schedule', 'constant') == 'cosine':
    total = max(1, int(config.epochs) * ctx.steps_per_epoch)
    base = optax.chain(base, optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, total)))
  if method.wrap is not None:
    base = method.wrap(base, ctx)
  return surgery.surgical(base, mask)


class Finetuner:
  """Runs one fine-tuning run at a time, reusing compiled steps across runs."""

  def __init__(self, model_spec, config, mesh=None, metric='acc', domain_names=()):
    self.spec, self.config, self.mesh = model_spec, config, mesh
    self.metric, self.domain_names = metric, tuple(domain_names)
    self.bn_mode = config.model.get('bn_mode', 'eval')
    self.predict = surgery.make_predict(model_spec.module, mesh)
    self._steps = {}
    self._predicts = {0: self.predict}  # cut -> predict from that boundary on
    self._prefix = {}  # the current target sets' frozen-prefix activations, per (cut, set)
    self._prefix_predicts = {}  # cut -> predict up to that boundary
    self._prefix_of = None  # (objects the cache was computed from)
    self._warned = set()

  def _module(self, mask, model_state):
    """The module for training: BatchNorm layers in eval mode unless tuned under
    bn_mode='train' (frozen layers always in eval mode)."""
    if 'batch_stats' not in model_state or not hasattr(self.spec.module, 'bn_train_layers'):
      return self.spec.module, False
    layers = tuned_norm_layers(mask, model_state['batch_stats']) if self.bn_mode == 'train' else ()
    return self.spec.module.clone(bn_train_layers=layers), bool(layers)

  def _step(self, key, module, tx, extra_loss=None):
    if extra_loss is not None:  # the penalty bakes in this run's start: compile per run
      return surgery.make_train_step(module, tx, mesh=self.mesh, extra_loss=extra_loss)
    if key not in self._steps:
      self._steps[key] = surgery.make_train_step(module, tx, mesh=self.mesh)
    return self._steps[key]

  # -- frozen-prefix reuse ----------------------------------------------------------
  def _cut(self, mask, method) -> int:
    """The group boundary up to which everything is frozen (0: none), where the model
    can be cut there and the prefix's output depends only on the input: frozen layers
    run in eval mode, target sets are not augmented, and no method hook needs the whole
    model. With several processes every host gathers the activations of every image,
    as it holds every image of the (small) target sets."""
    if (not self.spec.cuts or not self.config.get('reuse_frozen_prefix', True)
        or method.before_epoch):
      return 0
    return first_tuned_group(mask, self.spec.groups)

  def _fits(self, cut, params, model_state, sets) -> bool:
    """Whether the activations at `cut` of every image fit `prefix_cache_gb` (a ResNet-50
    at 224 px holds 800 kB per image after block3): else the run goes uncached."""
    images = sets[0][0]
    example = jax.ShapeDtypeStruct((1,) + tuple(images.shape[1:]), np.float32)
    out = jax.eval_shape(lambda p, s, x: surgery.train.forward(
        self.spec.module.clone(stop=cut), p, s, x, train=False)[0], params, model_state, example)
    need = sum(len(d[0]) for d in sets) * out.size * out.dtype.itemsize
    budget = float(self.config.get('prefix_cache_gb', 4.0)) * 2 ** 30
    if need > budget and (cut, need) not in self._warned:
      self._warned.add((cut, need))
      print(f'frozen prefix not cached: its activations at group boundary {cut} would take '
            f'{need / 2 ** 30:.1f} GB (prefix_cache_gb={budget / 2 ** 30:g})', flush=True)
    return need <= budget

  def _predict_at(self, cut: int):
    if cut not in self._predicts:
      self._predicts[cut] = surgery.make_predict(self.spec.module.clone(start=cut), self.mesh)
    return self._predicts[cut]

  def _prefix_sets(self, cut, params, model_state, sets, which=None):
    """`sets` (those at indices `which`, default all) with each image array replaced by
    its boundary-`cut` activations (float32), each computed once per target sets,
    start parameters and cut: a run that is cut before it ends (a probe's arm, a head
    probe) never pays for the test set's."""
    sources = (params, model_state) + tuple(d[0] for d in sets)
    if self._prefix_of is None or any(a is not b for a, b in zip(self._prefix_of, sources)):
      self._prefix, self._prefix_of = {}, sources  # new target sets: drop the old ones
    which = range(len(sets)) if which is None else which
    out = []
    for i in which:
      if (cut, i) not in self._prefix:
        if cut not in self._prefix_predicts:
          self._prefix_predicts[cut] = surgery.make_predict(self.spec.module.clone(stop=cut),
                                                            self.mesh)
        self._prefix[cut, i] = surgery.train.batched_outputs(
            self._prefix_predicts[cut], params, model_state, sets[i][0],
            self.config.eval_batch_size, self.mesh)
      out.append((self._prefix[cut, i],) + tuple(sets[i][1:]))
    return tuple(out)

  def metrics(self, params, model_state, data, predict=None):
    images, labels = data[0], data[1]
    preds = surgery.train.predictions(predict or self.predict, params, model_state, images,
                                      self.config.eval_batch_size, self.mesh)
    groups, domains = (tuple(data[2:4]) + (None, None))[:2]
    return compute_metrics(preds, labels, groups, domains, self.domain_names)

  def run(self, params, model_state, method, lr, seed, tune, val, test, desc='', hparam=None):
    """Returns (row fields, per-epoch history, the method's `epoch_record` per epoch)."""
    arm = self.start(params, model_state, method, lr, seed, tune, val, test, hparam)
    for _ in tqdm(range(self.config.epochs), desc=desc, leave=False, unit='ep'):
      arm.epoch()
    return arm.finish()

  def start(self, params, model_state, method, lr, seed, tune, val, test, hparam=None) -> 'Arm':
    """One run, set up and advanced epoch by epoch by its caller (`Arm.epoch`), so that
    a method can advance several runs side by side and stop some early."""
    return Arm(self, params, model_state, method, lr, seed, tune, val, test, hparam)


class Arm:
  """One fine-tuning run in progress: `epoch()` trains one epoch over the tune set and
  evaluates it on validation, keeping the best epoch's parameters; `finish()` scores
  those on the test set."""

  def __init__(self, runner, params, model_state, method, lr, seed, tune, val, test, hparam):
    cfg = runner.config
    self.runner, self.method = runner, method
    x_tune = tune[0]
    self.n, self.bs = len(x_tune), cfg.batch_size
    self.steps_per_epoch = math.ceil(self.n / self.bs)
    mask = trainable_mask(params, runner.spec.groups, method.groups)
    settings = registry.settings(method, cfg) if method.section else None
    ctx = Context(self.steps_per_epoch, assign_groups(params, runner.spec.groups),
                  runner.spec.groups, settings, hparam)
    tx = make_optimizer(cfg, method, lr, mask, ctx)
    module, self.bn_train = runner._module(mask, model_state)
    cut = runner._cut(mask, method)
    if cut and not runner._fits(cut, params, model_state, (tune, val, test)):
      cut = 0
    # The test set is read once, at the end; with a frozen prefix its activations are
    # computed then (`_test_set`).
    self._test_of = (cut, params, model_state, (tune, val, test))
    if cut:  # train and evaluate from the frozen prefix's activations
      tune, val = runner._prefix_sets(cut, params, model_state, (tune, val, test), (0, 1))
      x_tune = tune[0]
      module = module.clone(start=cut)
    self.tune, self.val = (x_tune, tune[1]), val
    self.predict = runner._predict_at(cut)
    extra_loss = method.extra_loss(params, hparam) if method.extra_loss else None
    self.step = runner._step((method.name, self.steps_per_epoch, cut, module.bn_train_layers
                              if hasattr(module, 'bn_train_layers') else None), module, tx,
                             extra_loss)
    self.epoch_ctx = EpochContext(runner.spec.module, model_state, runner.mesh, settings, hparam,
                                  self.tune)
    self.state = surgery.replicate(runner.mesh, surgery.init_train_state(params, tx, model_state))
    self.names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    self.rng = np.random.RandomState(seed)
    self.epochs_done = 0
    self.best_val, self.best_epoch, self.best, self.best_metrics = -math.inf, 0, None, None
    self.history, self.records = [], []

  def epoch(self) -> dict:
    """Trains one more epoch; returns its validation metrics."""
    runner, method, mesh = self.runner, self.method, self.runner.mesh
    x_tune, y_tune = self.tune
    bs, state = self.bs, self.state
    self.epochs_done += 1
    epoch = self.epochs_done
    order = self.rng.permutation(self.n)
    if method.before_epoch is not None:
      state = method.before_epoch(self.epoch_ctx, state, order)
    step_metrics = []
    for b in range(self.steps_per_epoch):
      idx = order[b * bs:(b + 1) * bs]
      weights = np.ones(len(idx) if self.bn_train else bs, np.float32)
      if len(idx) < bs and not self.bn_train:  # pad the short last batch; padding weighs 0
        weights[len(idx):] = 0
        idx = np.concatenate([idx, np.resize(idx, bs - len(idx))])
      # (BatchNorm layers in train mode see the short batch unpadded instead, so
      # padding never enters batch statistics.)
      x, y, w = surgery.shard_batch(mesh, x_tune[idx], y_tune[idx].astype(np.int32), weights)
      state, metrics = self.step(state, x, y, w)
      step_metrics.append(metrics)
    self.state = state
    _check_finite(step_metrics, self.names, (epoch - 1) * self.steps_per_epoch)
    val_metrics = runner.metrics(state.params, state.model_state, self.val, self.predict)
    losses = jax.device_get([m['loss'] for m in step_metrics])
    accs = jax.device_get([m['accuracy'] for m in step_metrics])
    self.history.append({'epoch': epoch, 'train_loss': float(losses[-1]),
                         'train_loss_mean': float(np.mean(losses)),
                         'train_acc_mean': float(np.mean(accs)),
                         **{f'val_{k}': v for k, v in val_metrics.items()}})
    if method.epoch_record is not None:  # e.g. Auto-RGN's weights, for Fig. 6
      self.records.append(method.epoch_record(state.opt_state))
    if val_metrics[runner.metric] > self.best_val:
      self.best_val, self.best_epoch, self.best_metrics = (val_metrics[runner.metric], epoch,
                                                           val_metrics)
      self.best = jax.device_get((state.params, state.model_state))
    return val_metrics

  def _test_set(self):
    cut, params, model_state, sets = self._test_of
    return self.runner._prefix_sets(cut, params, model_state, sets, (2,))[0] if cut else sets[2]

  def finish(self):
    """(row fields, per-epoch history, the method's `epoch_record` per epoch), the test
    metrics those of the best epoch on validation."""
    test_metrics = self.runner.metrics(self.best[0], self.best[1], self._test_set(), self.predict)
    fields = dict(best_epoch=self.best_epoch,
                  **{f'val_{k}': v for k, v in self.best_metrics.items()},
                  **{f'test_{k}': v for k, v in test_metrics.items()})
    return fields, self.history, [r for r in self.records if r is not None]


def first_tuned_group(mask, groups) -> int:
  """The index, in network order, of the first group `mask` tunes (0 if none): every
  group before it is frozen."""
  names = group_names(groups)
  labels = assign_groups(mask, groups)
  tuned = {g for g, m in zip(jax.tree_util.tree_leaves(labels), jax.tree_util.tree_leaves(mask))
           if m}
  return min((names.index(g) for g in tuned), default=0)


def _check_finite(step_metrics, names, first_step):
  flags = np.stack(jax.device_get([m['nonfinite'] for m in step_metrics]))
  if flags.any():
    i, leaf = np.argwhere(flags)[0]
    raise NonFiniteError(f'non-finite update or loss at step {first_step + i + 1} in tensor '
                         f'{names[leaf]}; lower the learning rate or check the data')


def source_variables(config, workdir, spec):
  """Stage 1: the source model's variables. With `config.source_stage` (LP-FT from
  `init_checkpoint` on the source split), trained or resumed in the workdir; else
  `init_checkpoint` as it is, or a model pre-trained from scratch."""
  if config.init_checkpoint and not config.get('source_stage'):
    return spec.load(config.init_checkpoint)
  try:
    if config.get('source_stage'):
      from experiments import source_stage
      return source_stage.train_or_load(config, workdir, spec)
    from experiments import pretrain
    return pretrain.pretrain_or_load(config, workdir, spec)
  except KeyboardInterrupt:
    where = 'source_stage' if config.get('source_stage') else 'source_model_partial'
    raise Interrupted(f'interrupted in the source stage, before any fine-tuning run: its '
                      f'checkpoint is in {os.path.join(workdir, where)}; run the same command '
                      'to resume from it') from None

