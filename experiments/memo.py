"""MEMO test-time adaptation on shifted test sets with freezing options (paper Section 2.2).

One row of results.csv per shift x (mode/option): the accuracy of adapt-then-predict
over a stream of test images. Per-image correctness goes to streams/ for the plot of
online accuracy along the stream (paper Fig. 4, right).

The model comes from `surgery.models.create(config.model.name, ...)` and must declare
MEMO freezing options (`extra_group_maps['memo']`); `config.options` names them. Target
data comes from the dataset contract (`surgery.datasets`). Every row carries the
fingerprint of the config fields that affect results; rerunning a workdir whose rows
were made under other values stops before any run and names the fields.
"""
import functools
import json
import math
import os
import time
from typing import Any, NamedTuple

import ml_collections
import numpy as np

import surgery
from surgery import datasets, distributed
from surgery.data.sources import to_arrays
from surgery.errors import SurgeryError
from surgery.memo import adapt
from surgery.methods.baselines import NO_ADAPTATION
from surgery.optim import BASE_OPTIMIZERS
from experiments import memo_tuning, paper_tables, skeleton
from surgery.report import store, summary
from surgery.report.fingerprint import fingerprint
from experiments.plan import ADDED_LATER, as_list, dataset_name, model_spec, result_fields

# Run axes: they choose which rows exist (each row's key holds its shift, method and
# seed), never what a row holds, so a rerun may change them; the fingerprint leaves
# them out. (`corruptions`, `eval_batch_size`, `data_dir`, `title` are left out by
# `experiments.plan.result_fields` already.)
RUN_AXES = ('modes', 'options', 'settings', 'no_adaptation', 'seed', 'stream_save_every',
            'compare_with')


class MemoPlan(NamedTuple):
  config: Any
  spec: Any  # surgery.models.ModelSpec
  dataset: Any
  shifts: list
  modes: list
  options: list
  methods: list  # 'no_adaptation' and '<mode>/<option>', in run order
  tuning: Any  # None, or (search stages per mode, tuning-set size)
  group_map: tuple  # the model's MEMO (groups, {option: group spec})
  result_fields: dict
  fingerprint: str


def memo_result_fields(config) -> dict:
  """The config fields that change a MEMO row's result (flattened, json-normalised).

  Without tuning (`tune.images` 0, or no `tune`) the tuning grid changes nothing, so it
  stays out, and fingerprints of configs from before the tuned protocol are unchanged.
  """
  fields = {k: v for k, v in result_fields(config).items() if k not in RUN_AXES}
  if not fields.get('tune.images'):
    fields = {k: v for k, v in fields.items()
              if not k.startswith('tune.') and not k.endswith('.tune_lrs')}
  return fields


def _int_field(config, field, low):
  value = config[field]
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise SurgeryError(f'{field} must be an integer >= {low}, got {value!r}')
  return value


def _check_mode_settings(config):
  """`<mode>.optimizer/learning_rate/weight_decay`: '' / 0 / negative keep the default."""
  for mode in adapt.MODES:
    mc = config[mode]
    if mc.optimizer and mc.optimizer not in BASE_OPTIMIZERS:
      raise SurgeryError(f'{mode}.optimizer must be empty (the default) or one of '
                         f'{", ".join(BASE_OPTIMIZERS)}, got {mc.optimizer!r}')
    for field in ('learning_rate', 'weight_decay'):
      value = mc[field]
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SurgeryError(f'{mode}.{field} must be a finite number, got {value!r}')
    if mc.learning_rate < 0:
      raise SurgeryError(f'{mode}.learning_rate must be >= 0 (0: the default), got '
                         f'{mc.learning_rate!r}')


def _names(config, field, valid):
  """A list field (tuple or comma string) checked against `valid`."""
  values = as_list(config[field], field)
  bad = [v for v in values if v not in valid]
  if bad:
    raise SurgeryError(f'{field}: unknown {field[:-1]} {", ".join(map(repr, bad))}; valid: '
                       f'{", ".join(valid)}')
  return list(dict.fromkeys(values))


def make_plan(config) -> MemoPlan:
  """Checks every field of a MEMO config once, before any run: one SurgeryError line
  naming the field on the first bad value."""
  spec = model_spec(config)
  group_map = adapt.memo_group_map(spec)
  dataset = datasets.create(dataset_name(config), config)
  if spec.num_classes != dataset.num_classes:
    raise SurgeryError(f'model.num_classes is {spec.num_classes} but dataset '
                       f'{dataset_name(config)} has {dataset.num_classes} classes')
  if isinstance(config.severity, bool) or config.severity not in (1, 2, 3, 4, 5):
    raise SurgeryError(f'severity must be 1 to 5, got {config.severity!r}')
  # No model groups: parameter-noise shifts start from a perturbed model, which MEMO's
  # stream does not build, so they are rejected as unknown shifts here.
  shifts = dataset.shift_names()
  sized = [s for s in shifts if '@' in s]
  if sized:
    raise SurgeryError(f'corruptions: MEMO uses no labelled target examples; drop the '
                       f'@<n> of {", ".join(sized)} (num_images sets the stream length)')
  modes = _names(config, 'modes', adapt.MODES)
  options = _names(config, 'options', tuple(group_map[1]))
  if not isinstance(config.no_adaptation, bool):
    raise SurgeryError(f'no_adaptation must be True or False, got {config.no_adaptation!r}')
  settings = [f'{m}/{o}' for m in modes for o in options]
  if config.get('settings'):
    valid = [f'{m}/{o}' for m in adapt.MODES for o in group_map[1]]
    settings = _names(config, 'settings', valid)
  methods = ([NO_ADAPTATION] if config.no_adaptation else []) + settings
  if not methods:
    raise SurgeryError('modes, options: no run asked for (give a mode and an option, or '
                       'no_adaptation=True)')
  k = dataset.num_classes if _class_balanced(config) else 1
  num_images = config.num_images
  if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < k or num_images % k:
    raise SurgeryError(f'num_images must be a positive multiple of {k} (the number of '
                       f'classes), got {num_images!r}')
  for field in ('steps', 'num_copies', 'eval_batch_size'):
    _int_field(config, field, 1)
  for field in ('seed', 'corruption_seed'):
    _int_field(config, field, 0)
  _check_mode_settings(config)
  if 'stream_save_every' in config:
    _int_field(config, 'stream_save_every', 1)
  tuning = _tuning_plan(config, [m.split('/')[0] for m in methods if '/' in m], k)
  if config.get('compare_with') and config.compare_with not in paper_tables.TABLES:
    raise SurgeryError(f'compare_with: unknown table {config.compare_with!r}; valid: '
                       f'{", ".join(paper_tables.TABLES)} (or empty)')
  if not config.init_checkpoint:
    raise SurgeryError('init_checkpoint: MEMO adapts a source model; set '
                       '--config.init_checkpoint')
  if not os.path.exists(config.init_checkpoint):
    raise SurgeryError(f'init_checkpoint: {config.init_checkpoint} does not exist')
  fields = memo_result_fields(config)
  return MemoPlan(config, spec, dataset, shifts, modes, options, methods, tuning, group_map,
                  fields, fingerprint(fields))


def _tuning_plan(config, modes, num_classes):
  """None without tuning; else ({mode: search stages}, tuning-set size), every grid
  value checked here, before any run."""
  tune = config.get('tune')
  if tune is None or not tune.images:
    return None
  n = tune.images
  if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n % num_classes:
    raise SurgeryError(f'tune.images must be 0 (no tuning) or a positive multiple of '
                       f'{num_classes}, got {n!r}')
  multipliers = as_list(tune.lr_multipliers, 'tune.lr_multipliers', float)
  steps = as_list(tune.steps, 'tune.steps', int)
  decays = as_list(tune.weight_decays, 'tune.weight_decays', float)
  if not steps or min(steps) < 1:
    raise SurgeryError(f'tune.steps must be integers >= 1, got {tune.steps!r}')
  if not decays or min(decays) < 0:
    raise SurgeryError(f'tune.weight_decays must be numbers >= 0, got {tune.weight_decays!r}')
  if any(m <= 0 for m in multipliers):
    raise SurgeryError(f'tune.lr_multipliers must be > 0, got {tune.lr_multipliers!r}')
  stages = {}
  for mode in dict.fromkeys(modes):
    lrs = as_list(config[mode].get('tune_lrs', ()), f'{mode}.tune_lrs', float)
    if not lrs or min(lrs) <= 0:
      raise SurgeryError(f'{mode}.tune_lrs: tuning needs learning rates > 0 to start from, '
                         f'got {config[mode].get("tune_lrs")!r}')
    stages[mode] = memo_tuning.search_stages(lrs, multipliers, steps, decays, tune.search)
  return stages, n


def _old_result_fields(config_path):
  """The result fields of the config.json a workdir's rows were made with; configs from
  before the model contract (`model_depth`, no `dataset`) read as what they meant."""
  with open(config_path) as f:
    old = json.load(f)
  if 'model_depth' in old and 'model' not in old:
    old['model'] = {'name': ADDED_LATER['model.name'], 'depth': old.pop('model_depth')}
  old.setdefault('dataset', ADDED_LATER['dataset'])
  return memo_result_fields(ml_collections.ConfigDict(old))


def _class_balanced(config) -> bool:
  # Absent from configs older than it, whose fingerprints therefore stay as they were.
  return config.get('class_balanced', True)


def stream_subset(labels, n, seed, num_classes, balanced=True):
  """A class-balanced, seeded, shuffled subset of n indices (the order of the stream);
  with `balanced=False` any n of them (`class_balanced`: a test set whose classes are
  unequal, such as the 1,017 exact CIFAR-10 images, can be used whole)."""
  labels = np.asarray(labels)
  if not balanced:
    if n > len(labels):
      raise SurgeryError(f'num_images and tune.images ask for {n} images; there are '
                         f'{len(labels)} here')
    return np.random.default_rng(seed).permutation(len(labels))[:n]
  per_class = n // num_classes
  fewest = min(int(np.sum(labels == c)) for c in range(num_classes))
  if n % num_classes or per_class > fewest:
    raise SurgeryError(f'num_images must be a multiple of {num_classes} and at most '
                       f'{num_classes * fewest} here (class-balanced), got {n}')
  rng = np.random.default_rng(seed)
  idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                        for c in range(num_classes)])
  return rng.permutation(idx)


def _mode_kwargs(config, mode):
  mc = config[mode]
  kwargs = {}
  if mc.optimizer:
    kwargs['optimizer'] = mc.optimizer
  if mc.learning_rate > 0:
    kwargs['learning_rate'] = mc.learning_rate
  if mc.weight_decay >= 0:
    kwargs['weight_decay'] = mc.weight_decay
  return kwargs


def train_and_evaluate(config, workdir):
  plan = make_plan(config)
  shifts, methods = plan.shifts, plan.methods
  # Every process computes every stream (MEMO adapts one image at a time, on one
  # device); only the first writes results, streams, checkpoints and reports.
  primary = distributed.is_primary()
  table = skeleton.open_results(workdir)
  todo = [(s, m) for s in shifts for m in methods if not _done(table, s, m, config.seed)]
  if config.get('report_only'):
    print(f'report only: {len(shifts) * len(methods) - len(todo)} of '
          f'{len(shifts) * len(methods)} planned runs in results.csv')
    skeleton.report(write_outputs, workdir, table.rows, plan)
    return table.rows
  skeleton.resume(workdir, table, plan, todo, _old_result_fields)
  tuning = plan.tuning
  print(f'{len(shifts) * len(methods)} runs planned, {len(todo)} to go; '
        f'{config.num_images} images per shift'
        + (f' (after {tuning[1]} for tuning)' if tuning else '')
        + f', {config.num_copies} augmented copies, '
        f'{"tuned" if tuning else config.steps} step(s). Model {plan.spec.name}.', flush=True)
  # Loaded before config.json is written, so an unusable checkpoint changes nothing.
  variables = plan.spec.load(config.init_checkpoint) if todo else None
  skeleton.save_config(workdir, config, RUN_AXES)
  if not todo:
    skeleton.report(write_outputs, workdir, table.rows, plan)
    return table.rows

  run = _Runner(plan, workdir, variables, primary)
  for shift in shifts:
    if not any(t[0] == shift for t in todo):
      continue
    target = to_arrays(plan.dataset.target(shift))
    k = plan.dataset.num_classes
    if tuning:
      tune_idx, order = tuning_split(plan, target['label'], config.seed)
      tune_set = (target['image'][tune_idx], target['label'][tune_idx])
    else:
      order = stream_subset(target['label'], config.num_images, config.seed, k,
                            _class_balanced(config))
    x, y = target['image'][order], target['label'][order]
    tuned = {}  # method -> (setting, its tuning accuracy), tuned before its stream

    def setting_of(method):
      if tuning and method not in tuned:
        mode, option = method.split('/')
        tuned[method] = run.tune(shift, mode, option, *tune_set, tuning[0][mode])
      return tuned.get(method, (None, ''))

    shared = {}  # method -> its held-out stream, run in a pass shared with another
    for method in methods:
      if _done(table, shift, method, config.seed):
        continue
      start = time.time()
      row = dict(shift=shift, method=method, lr=0.0, seed=config.seed, best_epoch=0,
                 val_acc='', fingerprint=plan.fingerprint)
      note = ''
      if method == NO_ADAPTATION:
        preds = surgery.train.predictions(run.predict, run.params, run.model_state, x,
                                          config.eval_batch_size)
        out = {'correct': preds == y, 'predictions': preds,
               'images_per_second': float('nan')}
      else:
        mode, option = method.split('/')
        setting, tune_acc = setting_of(method)
        if tuning:
          row.update(lr=setting.lr, hparam=setting.hparam, val_acc=tune_acc,
                     n_tune=tuning[1])
          start = time.time()  # the row's seconds and images/s are the held-out stream's
        if mode == 'episodic' and method not in shared:
          # Tunes the later episodic settings now, to learn which can share this pass.
          group = [m for m in methods[methods.index(method):]
                   if m.startswith('episodic/') and not _done(table, shift, m, config.seed)
                   and run.one_step_episodic(m, setting_of(m)[0])]
          if method in group and len(group) > 1:
            settings = [setting_of(m)[0] for m in group]
            print(f'{shift}: MEMO held-out streams of {", ".join(group)} in one pass'
                  + ''.join(f'; {m.split("/")[1]} lr {s.lr:g} {s.hparam}'
                            for m, s in zip(group, settings) if s), flush=True)
            began = time.time()
            outs = run.streams_together(shift, group, settings, x, y)
            shared = {m: (o, round(time.time() - began, 1), len(group))
                      for m, o in zip(group, outs)}
        if method in shared:
          out, seconds, k = shared.pop(method)
          # Every row of the pass gets the pass's seconds.
          start, note = time.time() - seconds, f' (one pass for {k} settings)'
        else:
          print(f'{shift}: MEMO {mode} {option}' + (f', lr {setting.lr:g} {setting.hparam}'
                                                    if setting else ''), flush=True)
          out = run.stream(shift, method, x, y, setting)
      correct = np.asarray(out['correct'], bool)
      if primary:
        _save_stream(workdir, shift, method, config.seed, correct, out['predictions'])
      rate = out['images_per_second']  # NaN for no adaptation: nothing was adapted
      speed = f'{rate:.3f} images/s{note}' if np.isfinite(rate) else ''
      table.add(dict(row, test_acc=float(correct.mean()), n_test=len(correct),
                     seconds=round(time.time() - start, 1), extra=speed))
      print(f'{shift:16s} {method:24s} accuracy {correct.mean():.4f}'
            + (f' ({speed})' if speed else ''), flush=True)
      if primary:
        write_outputs(workdir, table.rows, plan)
      distributed.barrier(f'{shift} {method}')  # the processes go on in step
  skeleton.report(write_outputs, workdir, table.rows, plan)
  return table.rows


def tuning_split(plan, labels, seed):
  """(tuning images, held-out stream): the runner's index arrays into a corruption's
  test set under a tuned plan, for `seed`."""
  subset = functools.partial(stream_subset, balanced=_class_balanced(plan.config))
  return memo_tuning.split_tune_stream(labels, plan.tuning[1], plan.config.num_images, seed,
                                       plan.dataset.num_classes, subset)


def _done(table, shift, method, seed):
  """Whether results.csv holds the run (any lr/hparam: tuning picks them)."""
  return any(r['shift'] == shift and r['method'] == method and str(r['seed']) == str(seed)
             for r in table.rows)


class _Runner:
  """The source model and the MEMO streams of one run of the config."""

  def __init__(self, plan, workdir, variables, primary=True):
    self.plan, self.workdir, self.config, self.primary = plan, workdir, plan.config, primary
    self.params = variables['params']
    self.model_state = {k: v for k, v in variables.items() if k != 'params'}
    self.model = plan.spec.module
    self.predict = surgery.make_predict(self.model)
    self.tuning_table = store.ResultsCsv(os.path.join(workdir, 'tuning.csv'), write=primary)
    self._compiled = {}

  def _optimizer(self, mode, option, setting):
    """(build, hyper): the mode's optimizer (config overrides, then the setting's lr and
    weight decay), frozen outside `option`, with its lr and decay traced
    (`adapt.traced_optimizer`)."""
    kwargs = _mode_kwargs(self.config, mode)
    if setting is not None:
      kwargs.update(learning_rate=setting.lr, weight_decay=setting.weight_decay)
    return adapt.traced_optimizer(
        mode, adapt.memo_mask(self.params, option, self.plan.group_map), **kwargs)

  def _function(self, key, make):
    """`make()`'s compiled function, made once per `key`: the lrs and decays of a search
    are traced arguments, so its candidates and the held-out stream share a program."""
    if key not in self._compiled:
      self._compiled[key] = make()
    return self._compiled[key]

  def _adapt(self, images, labels, mode, option, setting, checkpoint=None):
    """One MEMO stream; compiled once per (mode, option, steps, which of lr and weight
    decay are traced)."""
    build, hyper = self._optimizer(mode, option, setting)
    steps = self._steps(setting)
    fn = self._function((mode, option, steps, tuple(hyper)), lambda: adapt.make_adapt_predict(
        self.model, build, steps, self.config.num_copies, model_state=self.model_state))
    opt_state = build(**hyper).init(self.params)
    start, params, predictions = 0, self.params, ()
    if checkpoint is not None:
      start, params, opt_state, predictions = (checkpoint.restore(params, opt_state)
                                               or (0, params, opt_state, ()))
    return adapt.run_stream(
        fn, params, opt_state, images, labels, mode, self.config.seed, start=start,
        predictions=predictions, on_progress=checkpoint and checkpoint.save,
        progress_every=self.config.get('stream_save_every', 500), hyper=hyper)

  def tune(self, shift, mode, option, images, labels, stages):
    """The best setting on the tuning set and its accuracy; each candidate's stream is a
    row of tuning.csv, read back instead of rerun. Episodic one-step candidates of a
    stage run as one pass (`adapt.make_episodic_predict_many`): same streams, one
    gradient per image."""
    method, seed, fp = f'{mode}/{option}', self.config.seed, self.plan.fingerprint

    def saved(setting):
      for r in self.tuning_table.rows:
        if (store.row_key(r) == store.run_key(shift, method, setting.lr, seed, setting.hparam)
            and r.get('fingerprint') == fp):
          return float(r['test_acc'])
      return None

    def record(setting, out, seconds, shared=1):
      # Per-image predictions of every candidate, so a collapse can be read afterwards.
      if self.primary:
        _save_stream(self.workdir, shift, f'{method}_lr{setting.lr:g}_{setting.hparam}',
                     seed, out['correct'], out['predictions'], folder='tuning')
      self.tuning_table.add(dict(
          shift=shift, method=method, lr=setting.lr, hparam=setting.hparam, seed=seed,
          best_epoch=0, val_acc='', test_acc=out['accuracy'], n_test=len(labels),
          seconds=seconds, fingerprint=fp,
          extra=f'{out["images_per_second"]:.3f} images/s'
          + (f' (one pass for {shared} candidates)' if shared > 1 else '')))
      return out['accuracy']

    def score(candidates):
      scores = {c: saved(c) for c in candidates}
      todo = [c for c in candidates if scores[c] is None]
      together = [c for c in todo if mode == 'episodic' and c.steps == 1]
      if len(together) > 1:
        print(f'{shift}: tuning MEMO {mode} {option}, one pass for '
              + ', '.join(f'lr {c.lr:g} {c.hparam}' for c in together), flush=True)
        start = time.time()
        outs = self._adapt_together(images, labels, [(option, c) for c in together])
        seconds = round(time.time() - start, 1)
        for c, out in zip(together, outs):
          scores[c] = record(c, out, seconds, len(together))
      for c in todo:
        if scores[c] is None:
          print(f'{shift}: tuning MEMO {mode} {option}, lr {c.lr:g} {c.hparam}', flush=True)
          start = time.time()
          out = self._adapt(images, labels, mode, option, c)
          scores[c] = record(c, out, round(time.time() - start, 1))
      return [scores[c] for c in candidates]

    best, acc, _ = memo_tuning.run_search(stages, score)
    return best, acc

  def _adapt_together(self, images, labels, pairs, checkpoint=None):
    """The episodic one-step streams of `pairs` [(option, setting)], in one pass over
    the images (resumed from `checkpoint` when given)."""
    built = [self._optimizer('episodic', option, s) for option, s in pairs]
    hypers = tuple(hyper for _, hyper in built)
    key = ('episodic x', tuple((option, tuple(h)) for (option, _), h in zip(pairs, hypers)))
    fn = self._function(key, lambda: adapt.make_episodic_predict_many(
        self.model, [build for build, _ in built], self.config.num_copies,
        model_state=self.model_state))
    states = tuple(build(**hyper).init(self.params) for build, hyper in built)
    start, predictions = 0, ()
    if checkpoint is not None:
      start, _, _, predictions = (checkpoint.restore(self.params, states)
                                  or (0, None, None, ()))
    return adapt.run_episodic_many(
        fn, self.params, states, images, labels, self.config.seed, start=start,
        predictions=predictions,
        on_progress=checkpoint and (lambda done, p: checkpoint.save(done, None, None, p)),
        progress_every=self.config.get('stream_save_every', 500), hypers=hypers)

  def one_step_episodic(self, method, setting):
    """Whether `method` is episodic with one step: its held-out stream can share a pass
    (and each image's gradient) with the others that are."""
    return method.startswith('episodic/') and self._steps(setting) == 1

  def _steps(self, setting):
    """Adaptation steps per image: the tuned setting's, else the config's."""
    return self.config.steps if setting is None else setting.steps

  def streams_together(self, shift, methods, settings, images, labels):
    """The held-out streams of episodic one-step `methods` in one pass, equal to their
    streams one by one (`adapt.make_episodic_predict_many`); saved every
    `stream_save_every` images and resumed."""
    options = [m.split('/')[1] for m in methods]
    name = _stream_name(shift, 'episodic/' + '+'.join(options), self.config.seed)
    key = (f'{name} {" | ".join(str(s or "untuned") for s in settings)} '
           f'seed {self.config.seed} {self.plan.fingerprint}')
    ckpt = memo_tuning.StreamCheckpoint(
        os.path.join(self.workdir, 'streams', name + '.partial.npz'), key, keep_state=False,
        write=self.primary)
    outs = self._adapt_together(images, labels, list(zip(options, settings)), ckpt)
    ckpt.remove()
    return outs

  def stream(self, shift, method, images, labels, setting):
    """The held-out stream; saved every `stream_save_every` images and resumed."""
    mode, option = method.split('/')
    name = _stream_name(shift, method, self.config.seed)
    key = f'{name} {setting or "untuned"} seed {self.config.seed} {self.plan.fingerprint}'
    ckpt = memo_tuning.StreamCheckpoint(
        os.path.join(self.workdir, 'streams', name + '.partial.npz'), key,
        keep_state=mode == 'online', write=self.primary)
    out = self._adapt(images, labels, mode, option, setting, ckpt)
    ckpt.remove()
    return out


def _stream_name(shift, method, seed=0):
  """The file stem of a stream: '<shift>_<mode>_<option>' (a tuning candidate's method
  carries its setting, whose spaces and '=' are dropped), then '_seed<n>' for seeds
  other than 0, so that the seeds of one workdir keep their own streams."""
  name = f'{shift}_{method}'.replace('/', '_').replace(' ', '_').replace('=', '')
  return f'{name}_seed{seed}' if int(seed) else name


def _save_stream(workdir, shift, method, seed, correct, predictions, folder='streams'):
  """<folder>/<stream name>.json: per-image correctness in stream order (what the plot
  reads); .predictions.json beside it: the predicted classes."""
  path = os.path.join(workdir, folder, _stream_name(shift, method, seed))
  store.atomic_write(path + '.json', json.dumps([int(c) for c in correct]))
  store.atomic_write(path + '.predictions.json', json.dumps([int(p) for p in predictions]))


def load_stream(workdir, shift, method, seed, what=''):
  """A stream's per-image correctness ('') or predicted classes ('.predictions')."""
  path = os.path.join(workdir, 'streams', f'{_stream_name(shift, method, seed)}{what}.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return np.asarray(json.load(f), float)


def _collapse_markdown(workdir, methods, shifts, seed):
  """The share of the stream given to the most-predicted class: entropy minimisation
  can collapse a stream onto one class, which shows here before accuracy says why."""
  lines = []
  for m in methods:
    cells = []
    for s in shifts:
      preds = load_stream(workdir, s, m, seed, '.predictions')
      cells.append('-' if preds is None or not len(preds) else
                   f'{100 * np.bincount(preds.astype(int)).max() / len(preds):.0f}')
    if any(c != '-' for c in cells):
      lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
  if not lines:
    return ''
  return '\n'.join(['Most-predicted class, % of the stream:', '',
                    '| setting | ' + ' | '.join(shifts) + ' |', '|---|' + '---|' * len(shifts)]
                   + lines) + '\n\n'


def write_outputs(workdir, rows, plan):
  config, shifts = plan.config, plan.shifts
  shown = [m for m in plan.methods if any(r['method'] == m for r in rows)]
  title = f'{config.get("title") or f"MEMO, {plan.spec.name}"} (severity {config.severity})'
  if plan.tuning:
    tune = config.tune
    protocol = (f'per corruption and setting, lr, steps and weight decay tuned on '
                f'{plan.tuning[1]} test images (App. A.6), accuracy on the '
                f'{config.num_images} held-out ones.')
    values = lambda field, kind=float: ', '.join(f'{v:g}' for v in as_list(field, '', kind))
    grid = '; '.join(f'{mode} {config[mode].optimizer or adapt.DEFAULTS[mode]["optimizer"]} '
                     f'from lrs {values(config[mode].tune_lrs)}' for mode in plan.tuning[0])
    notes = (f'{tune.search} search: {grid}; then the best lr x '
             f'{values(tune.lr_multipliers)}; steps {values(tune.steps, int)}; weight decay '
             f'{values(tune.weight_decays)}. Each candidate is one stream over the tuning '
             'images (tuning.csv); val_acc in '
             'results.csv is the chosen one\'s tuning accuracy.')
  else:
    protocol = 'one MEMO setting per mode, no tuning.'
    notes = 'Optimizers: ' + '; '.join(
        f'{mode}: ' + ', '.join(f'{k} {v:g}' if isinstance(v, float) else f'{k} {v}'
                                for k, v in {**adapt.DEFAULTS[mode], **_mode_kwargs(config, mode)}.items())
        for mode in adapt.MODES) + '.'
  text, _ = summary.markdown_summary(
      rows, shown, shifts, title, protocol=protocol, show_lrs=bool(plan.tuning),
      notes=(f'{config.num_images} test images per shift, adapted in one seeded'
             + (', class-balanced' if _class_balanced(config) else '')
             + f' stream; {config.num_copies} augmented copies'
             + ('' if plan.tuning else f', {config.steps} step(s)') + '. Episodic resets to '
             'the source model after every image; online keeps the updates. ' + notes
             + '\n\n' + _paper_markdown(rows, shown, shifts, config)
             + _collapse_markdown(workdir, shown, shifts, config.seed)
             + _speed_markdown(rows, shown)))
  store.atomic_write(os.path.join(workdir, 'summary.md'), text)
  plot_online_stream(workdir, shifts, [m for m in shown if m.startswith('online/')
                                       or m == NO_ADAPTATION], config.seed)
  return text


def _paper_markdown(rows, methods, shifts, config):
  """Our gain over no adaptation beside the paper's, per setting and corruption, for
  the table `config.compare_with` names (experiments/paper_tables.py); '' for none."""
  name = config.get('compare_with', '')
  if not name:
    return ''
  paper = paper_tables.TABLES[name]
  ours = {(r['shift'], r['method']): 100 * float(r['test_acc']) for r in rows
          if str(r['seed']) == str(config.seed)}
  lines = [f'Gain over no adaptation (accuracy points), ours / {paper["title"]}; "yes" '
           'where ours is within 3 points of the paper\'s; n/q: a cell not quoted here.', '',
           '| setting | ' + ' | '.join(shifts) + ' |', '|---|' + '---|' * len(shifts)]
  for m in [m for m in methods if m != NO_ADAPTATION]:
    cells = []
    for s in shifts:
      ref = paper['gains'].get(m, {}).get(s)
      mine, base = ours.get((s, m)), ours.get((s, NO_ADAPTATION))
      gain = None if mine is None or base is None else mine - base
      # 'n/q': a cell of the paper's table that we do not have (paper_tables.py).
      cell = ('-' if gain is None else f'{gain:+.1f}') + ' / ' + (
          'n/q' if ref is None else f'{ref:+.1f}')
      if gain is not None and ref is not None:
        cell += f' {"yes" if abs(gain - ref) <= 3 else "no"}'
      cells.append(cell)
    lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n\n'


def _speed_markdown(rows, methods):
  """Adapted images per second per setting: median over corruptions of each run's rate
  (the runner's `extra` column; compilation excluded)."""
  lines = ['Adapted images per second (median over corruptions):', '']
  for m in methods:
    rates = [float(r['extra'].split()[0]) for r in rows
             if r['method'] == m and 'images/s' in r.get('extra', '')]
    rates = [x for x in rates if not np.isnan(x)]
    if rates:
      lines.append(f'- {m}: {np.median(rates):.2f}')
  return '\n'.join(lines)


def _stream_panels(have, shifts, methods):
  """(methods to plot, [(title, shifts averaged)]) for the (shift, method) pairs in
  `have`: a panel per shift with an adapted stream, and first the mean over the shifts
  where every plotted method has one, when there are several."""
  shown = [sh for sh in shifts if any((sh, m) in have for m in methods if m != NO_ADAPTATION)]
  plotted = [m for m in methods if any((sh, m) in have for sh in shown)]
  common = [sh for sh in shown if all((sh, m) in have for m in plotted)]
  panels = [(f'mean over {len(common)} corruptions', common)] if len(common) > 1 else []
  return plotted, panels + [(sh, [sh]) for sh in shown]


def plot_online_stream(workdir, shifts, methods, seed=0):
  """Running accuracy along the test stream (Fig. 4, right): a panel per corruption with
  an online stream, and first, when there are several, their mean over the corruptions
  that every plotted setting has finished (a mean over different corruptions per
  setting would compare different things)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  streams = {}
  for sh in shifts:
    for m in methods:
      s = load_stream(workdir, sh, m, seed)
      if s is not None:
        streams[sh, m] = s
  plotted, panels = _stream_panels(set(streams), shifts, methods)
  if not panels:
    return
  ncols = min(len(panels), 3)
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.4 * nrows), squeeze=False)
  for ax, (title, shs) in zip(axes.flat, panels):
    for m in plotted:
      curves = [streams[sh, m] for sh in shs if (sh, m) in streams]
      if len(curves) != len(shs):
        continue
      n = min(len(c) for c in curves)
      mean = np.mean([c[:n] for c in curves], axis=0)
      style = dict(color='0.4', linestyle='--') if m == NO_ADAPTATION else {}
      ax.plot(np.arange(1, n + 1), 100 * np.cumsum(mean) / np.arange(1, n + 1), label=m, **style)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('test images seen')
    ax.set_ylabel('online accuracy so far (%)')
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  axes.flat[0].legend(fontsize=8)
  fig.suptitle('MEMO online: running accuracy along the stream')
  fig.tight_layout()
  store.atomic_write(os.path.join(workdir, 'online_accuracy.png'),
                     lambda f: fig.savefig(f, format='png', dpi=100), mode='wb')
  plt.close(fig)
