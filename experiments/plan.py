"""One validated plan per command: the config is parsed and checked once, before any
run, and every bad value fails here with one line naming the field.

    plan = make_plan(config)      # SurgeryError on any bad field
    plan.runs                     # [Run(shift, method, lr, seed, hparam), ...]
    plan.fingerprint              # hash of every field that affects results
"""
import dataclasses
import json
import math
import os
from typing import Any, Callable, Optional

import ml_collections

from surgery import datasets, models
from surgery.errors import SurgeryError
from surgery.io import content_sha256
from surgery.methods import registry
from surgery.optim import BASE_OPTIMIZERS
from surgery.report.fingerprint import diff_fields, fingerprint

# Fields that never change a run's result: where things are written or read from,
# what is reported, how evaluation is batched. The run axes (shifts, methods, seeds,
# lr and hparam grids) are in every row's key instead; each method's swept grid is
# added from its declaration (`registry.grid_fields`).
NOT_RESULT_FIELDS = ('title', 'report_only', 'eval_batch_size', 'data_dir', 'breeds_info_dir',
                     'init_checkpoint_file', 'corruptions',
                     'tune_sizes', 'methods', 'seeds', 'lrs', 'last_lrs',
                     'select_metric', 'reuse_frozen_prefix', 'prefix_cache_gb')
# Fields added to the runner after results were committed, with the value that
# reproduces what ran before them: a config.json without one reads as that value, so
# its folder still resumes. Methods declare their own (`Method.added_later`).
ADDED_LATER = {'dataset': 'cifar10', 'model.name': 'resnet26', 'model.bn_mode': 'eval'}
# Fields that name a file whose content, not its path, makes the result: they enter the
# fingerprint as 'sha256:<hex>', so a run resumes (and committed rows are reused) after the
# checkout or the weights move.
CONTENT_FIELDS = ('init_checkpoint',)
SHA_PREFIX = 'sha256:'
# (select_metric does change a run, since it picks the epoch: `make_plan` adds the
# resolved metric to the result fields when it is not 'acc', so rows made before it
# was recorded keep their fingerprints.)


@dataclasses.dataclass(frozen=True)
class Run:
  shift: str
  method: str
  lr: float
  seed: int
  hparam: str = ''  # 'lam=1e-05': the method's own setting, or ''

  @property
  def hparam_value(self):
    return float(self.hparam.split('=', 1)[1]) if self.hparam else None


@dataclasses.dataclass
class Plan:
  config: Any
  model: Any  # surgery.models.ModelSpec
  dataset: Any
  shifts: list
  methods: list  # requested names, for the report
  seeds: list
  runs: list
  result_fields: dict
  fingerprint: str
  select_metric: str = 'acc'  # picks the epoch, the lr and Cross-Val

  def method(self, name):
    return registry.resolve(name, self.model)


def as_list(value, field, kind=str):
  """A config list: a tuple/list, or a comma string. On the command line
  `--config.methods=all,last` reaches a tuple field as ('all,last',) (ml_collections
  splits only what parses as a Python literal), so string items are split too."""
  items = _split_items(value)
  try:
    out = [kind(i) for i in items]
  except (TypeError, ValueError):
    raise SurgeryError(f'{field}: expected a list of {kind.__name__}s, got {value!r}') from None
  if kind is float and not all(math.isfinite(v) for v in out):
    raise SurgeryError(f'{field}: values must be finite, got {value!r}')
  return out


def _split_items(value) -> list:
  """A list value's items, each comma string split into its stripped, non-empty parts."""
  items = value if isinstance(value, (list, tuple)) else [value]
  items = [p.strip() if isinstance(p, str) else p
           for i in items for p in (i.split(',') if isinstance(i, str) else [i])]
  return [i for i in items if i != '']


def _int_at_least(config, field, low):
  value = config
  for part in field.split('.'):
    value = value[part]
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise SurgeryError(f'{field} must be an integer >= {low}, got {value!r}')
  return value


def _one_of(value, field, valid):
  if value not in valid:
    raise SurgeryError(f'{field} must be one of {", ".join(map(str, valid))}, got {value!r}')
  return value


def content_id(value: str) -> str:
  """'sha256:<hex>' of the file or folder at `value`; `value` itself when it is already
  such an id, empty, or no longer exists (then it differs from any id, by name)."""
  if not value or value.startswith(SHA_PREFIX) or not os.path.exists(value):
    return value
  from surgery.data.common import cache_dir
  return SHA_PREFIX + content_sha256(value, os.path.join(cache_dir(), 'checksums.json'))


def _portable_path(value):
  """A path as config.json records it: relative paths as given, absolute ones by their
  last component only, so that no committed file names a machine's folders."""
  if isinstance(value, str) and os.path.isabs(value):
    return '.../' + os.path.basename(value.rstrip('/'))
  return value


def config_record(config, run_axes=()) -> str:
  """config.json's text: the config, with each `CONTENT_FIELDS` path replaced by its
  content id (the path kept beside it as `<field>_file`) and absolute paths cut to their
  last component. List fields among `NOT_RESULT_FIELDS` and a runner's own `run_axes`
  are recorded as their items."""
  record = json.loads(config.to_json())
  ids = {f: content_id(record[f]) for f in CONTENT_FIELDS if record.get(f)}
  return record_text(record, ids, run_axes)


def record_text(record: dict, ids: dict, run_axes=()) -> str:
  """`config_record` of a config as a dict, given the content ids of its CONTENT_FIELDS."""
  record = dict(record)
  # Only named run axes: a result field's string (a regex, say) may hold a comma.
  for field in (*NOT_RESULT_FIELDS, *run_axes):  # `--config.methods=a,b` arrives as ['a,b']
    if isinstance(record.get(field), list):
      record[field] = _split_items(record[field])
  for field, cid in ids.items():
    if not record[field].startswith(SHA_PREFIX):
      record[f'{field}_file'] = _portable_path(record[field])
      record[field] = cid
  for field in ('data_dir', 'breeds_info_dir'):
    if field in record:
      record[field] = _portable_path(record[field])
  for dotted in datasets.where_from_fields():
    section, field = dotted.split('.', 1)
    if isinstance(record.get(section), dict) and field in record[section]:
      record[section] = {**record[section], field: _portable_path(record[section][field])}
  return json.dumps(record, indent=2)


def result_fields(config) -> dict:
  """The flattened config fields that affect results (json-normalised); checkpoints
  by content (`CONTENT_FIELDS`)."""
  flat = {}

  def walk(prefix, d):
    for k, v in d.items():
      name = f'{prefix}{k}'
      if isinstance(v, dict):
        walk(name + '.', v)
      elif name not in skip:
        flat[name] = v

  skip = set(NOT_RESULT_FIELDS) | set(registry.grid_fields()) | set(datasets.where_from_fields())

  fields = json.loads(config.to_json())
  if isinstance(fields.get('model'), dict):
    # Only the chosen model's options, at `model.<option>` however the config nests them.
    name, options = model_options(fields['model'])
    fields['model'] = {**{k: v for k, v in fields['model'].items() if k in _MODEL_FIELDS},
                       **options}
  for field in CONTENT_FIELDS:
    if isinstance(fields.get(field), str):
      fields[field] = content_id(fields[field])
  walk('', fields)
  return flat


def _check_training_fields(config):
  _int_at_least(config, 'epochs', 1)
  _int_at_least(config, 'batch_size', 1)
  _int_at_least(config, 'eval_batch_size', 1)
  _one_of(config.optimizer, 'optimizer', BASE_OPTIMIZERS)
  from experiments.finetune import SCHEDULES
  _one_of(config.get('schedule', 'constant'), 'schedule', SCHEDULES)
  if not float(config.weight_decay) >= 0:
    raise SurgeryError(f'weight_decay must be >= 0, got {config.weight_decay!r}')
  _one_of(config.model.get('bn_mode', 'eval'), 'model.bn_mode', ('eval', 'train'))
  registry.check_config(config)
  if config.init_checkpoint and not os.path.exists(config.init_checkpoint):
    raise SurgeryError(f'init_checkpoint: {config.init_checkpoint} does not exist')
  if config.get('source_stage'):
    from experiments import source_stage
    source_stage.check(config)


_MODEL_FIELDS = ('name', 'bn_mode')  # of the runner; every other key is the model's


def model_options(model_config) -> tuple:
  """(model name, its create() options) from a config's `model` section.

  Options sit either directly in the section (`model.depth`) or in a sub-section named
  after a model (`model.wrn28_10.new_head`), so that one config can hold options for
  several models and `--config.model.name` switches between them; sections of other
  models are ignored. The same option in both places is an error.
  """
  name = model_config.get('name')
  if not name:
    raise SurgeryError(f'model.name: not set; one of {", ".join(models.names())}')
  sections = set(models.names())
  flat = {k: v for k, v in model_config.items() if k not in _MODEL_FIELDS and k not in sections}
  section = dict(model_config.get(name) or {})
  both = sorted(set(flat) & set(section))
  if both:
    raise SurgeryError(f'model.{both[0]} and model.{name}.{both[0]} are both set; keep one')
  return name, {**section, **flat}


def dataset_name(config) -> str:
  """`config.dataset`, which every config names (no default: the runner names none)."""
  name = config.get('dataset')
  if not name:
    raise SurgeryError(f'dataset: not set; one of {", ".join(datasets.names())}')
  return name


def model_spec(config):
  name, options = model_options(config.model)
  return models.create(name, **options)


def make_plan(config) -> Plan:
  """Checks every field of a fine-tuning config and lists its runs."""
  model = model_spec(config)
  dataset = datasets.create(dataset_name(config), config)
  if model.num_classes != dataset.num_classes:
    raise SurgeryError(f'model.num_classes is {model.num_classes} but dataset '
                       f'{dataset_name(config)} has {dataset.num_classes} classes')
  _check_training_fields(config)
  # '' means the dataset's own (worst-group accuracy for the group datasets).
  metric = config.get('select_metric') or getattr(dataset, 'select_metric', 'acc')
  _one_of(metric, 'select_metric', dataset.metrics)
  shifts = dataset.shift_names(model.groups)
  valid = registry.names(model)
  methods = as_list(config.methods, 'methods')
  for m in methods:
    if m not in valid:
      raise SurgeryError(f'methods: unknown method {m!r}; valid: {", ".join(valid)}')
  if not methods:
    raise SurgeryError('methods: no method given')
  seeds = as_list(config.seeds, 'seeds', int)
  if not seeds:
    raise SurgeryError('seeds: no seed given')
  grids = {'lrs': as_list(config.lrs, 'lrs', float),
           'last_lrs': as_list(config.last_lrs, 'last_lrs', float)}
  for field, grid in grids.items():
    if not grid or min(grid) <= 0:
      raise SurgeryError(f'{field} must be positive numbers, got {config[field]!r}')

  need = set(methods)
  for m in methods:  # a selection method's candidates run, requested or not
    method = registry.resolve(m, model)
    if method.select is not None:
      need |= set(method.candidates(model))
    if method.check_run is not None:
      method.check_run(registry.settings(method, config), config)
  run_methods = [m for m in valid if m in need and registry.resolve(m, model).select is None]
  runs = []
  for shift in shifts:
    for seed in seeds:
      for name in run_methods:
        method = registry.resolve(name, model)
        one = method.evaluate_only or method.train is not None  # no lr grid of its own
        lrs = [0.0] if one else grids['last_lrs' if method.head_lrs else 'lrs']
        for lr in lrs:
          for hp in _hparam_grid(config, method):
            runs.append(Run(shift, name, lr, seed, hp))
  fields = result_fields(config)
  if metric != 'acc':
    fields['select_metric'] = metric
  return Plan(config, model, dataset, shifts, methods, seeds, runs, fields, fingerprint(fields),
              metric)


def _hparam_grid(config, method) -> list:
  if not method.hparam:
    return ['']
  field = method.grid_path
  values = as_list(registry.settings(method, config)[method.grid_field], field, float)
  if not values or min(values) < 0:
    raise SurgeryError(f'{field} must be numbers >= 0, got {values!r}')
  return [f'{method.hparam}={v:g}' for v in values]


def read_result_fields(config_path: str) -> dict:
  """The result fields of a workdir's config.json, by `result_fields`' rules; a field
  added later (`added_later`) that it lacks reads as the value that ran before it."""
  with open(config_path) as f:
    record = json.load(f)
  for dotted, value in added_later().items():
    *sections, field = dotted.split('.')
    node = record
    for section in sections:  # a section the file lacks altogether stays absent
      node = node.get(section) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.setdefault(field, value)
  return result_fields(ml_collections.ConfigDict(record))


def added_later() -> dict:
  """{field: value before it existed} of the runner's and every method's later fields."""
  out = dict(ADDED_LATER)
  for m in registry.all_methods().values():
    out.update({f'{m.section}.{k}': v for k, v in m.added_later.items()})
  return out


def check_resume(workdir: str, table, fingerprint_now: str, fields_now: dict,
                 read_old_fields: Callable[[str], dict] = read_result_fields) -> None:
  """Stops before any run, naming the differing fields, if `table` (results.csv) holds
  rows made under other result fields. Rows from before fingerprints are checked
  against config.json when there is one; `read_old_fields(path)` reads its fields."""
  stale = {f for f in table.fingerprints() if f != fingerprint_now}
  legacy = bool(table.rows) and not table.fingerprints()
  if not stale and not legacy:
    return
  config_path = os.path.join(workdir, 'config.json')
  old_fields: Optional[dict] = (read_old_fields(config_path) if os.path.exists(config_path)
                                else None)
  differ = diff_fields(old_fields, fields_now) if old_fields is not None else []
  if legacy and old_fields is None:
    return  # rows from before fingerprints with nothing to compare them to
  if not differ and not stale:
    return  # rows from before fingerprints, and config.json agrees
  if differ:
    named = ', '.join(differ)
  elif old_fields is None:
    named = 'unknown fields (no config.json to compare)'
  else:
    named = (f'unknown fields (rows carry fingerprint {", ".join(sorted(stale))}, this config '
             f'{fingerprint_now})')
  raise SurgeryError(f'{workdir} holds results made with different settings: {named} differ; '
                     'use a new --workdir or restore those values')
