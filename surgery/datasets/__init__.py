"""The dataset contract: `ds = surgery.datasets.create(name, config)`.

Each dataset lives in its own module here and defines `create(config, name) -> Dataset`;
the module serves the names in its `NAMES` (default: its own name), found by listing
this package (`surgery.discovery`), so a new dataset is one new file. `register(name,
module_path)` adds one defined outside the package. A module declares the config fields it
reads in `READS`; `create` hands it a view of just those (`ConfigView`), so a dataset
cannot depend on a runner's or another dataset's field without saying so.
A dataset declares:

  ds.num_classes, ds.image_size
  ds.metrics               metric names it reports ('acc' always; 'group_balanced_acc'
                           and 'worst_group_acc' where examples carry groups;
                           'acc_<domain>' per name in ds.domain_names)
  ds.select_metric         the metric that picks the epoch, lr and Cross-Val unless
                           `config.select_metric` names one ('acc' if absent)
  ds.eval_transform, ds.train_transform   the deterministic and the random example
                           transform stage 1 streams with (None where images are arrays)
  ds.shift_names(config)   the target shifts a config asks for, validated
  ds.source(split)         the source (pre-training) distribution, random access
  ds.target_sets(shift, seed)   (tune, val, test) for one seed, each a tuple of
                           uint8 HWC images (an array, or `LazyImages` decoding slices
                           on demand for large test sets), int labels, then int groups
                           and int domains where examples have them (groups None if
                           only domains)
  ds.report(table, methods, shifts)   optional: extra summary.md lines (ImageNet-C's mCE)
  ds.target(shift), ds.split(shift, labels, seed)   where the target is one pool that
                           tune / validation / test are drawn from (CIFAR-10-C), that
                           pool as a random-access source (index -> dict with uint8
                           HWC 'image', 'label', and 'group'/'domain' if any) and the
                           draw (TargetSplit); `target_sets` is built from them
  ds.perturb(shift, params, groups)   the source model a shift starts from (identity
                                      except for parameter-noise shifts)

Small target sets are turned into arrays (`surgery.data.sources.to_arrays`); large ones
stream through `surgery.data.pipeline` (grain, sharded per host).
"""
import importlib

from surgery.datasets.metrics import compute_metrics, metric_names  # noqa: F401
from surgery import discovery
from surgery.errors import SurgeryError

def _modules() -> dict:
  return discovery.find(__name__)


def names() -> list:
  return sorted(_modules())


def register(name: str, module_path: str) -> None:
  """Adds a dataset module defined outside this package under `name`."""
  discovery.register(__name__, name, module_path)


def where_from_fields() -> tuple:
  """'section.field' of every dataset's fields that say where its data is, not what it
  is (a module's `SECTION` and `WHERE_FROM`): left out of run fingerprints, like
  `data_dir`, and written to config.json without a machine's folders."""
  out = []
  for path in sorted(set(_modules().values())):
    module = importlib.import_module(path)
    section = getattr(module, 'SECTION', '')
    out += [f'{section}.{f}' for f in getattr(module, 'WHERE_FROM', ()) if section]
  return tuple(out)


class ConfigView:
  """The fields of a config that a dataset module declares in `READS`, and nothing else:
  reading an undeclared field is an error rather than a silent default."""

  def __init__(self, config, fields, owner: str):
    self._data = {f: config[f] for f in fields if f in config}
    self._fields, self._owner = tuple(fields), owner

  def _check(self, key):
    if key not in self._fields:
      raise SurgeryError(f'dataset module {self._owner} reads config field {key!r}, which its '
                         'READS does not declare')

  def get(self, key, default=None):
    self._check(key)
    return self._data.get(key, default)

  def __getitem__(self, key):
    self._check(key)
    return self._data[key]

  def __getattr__(self, key):
    if key.startswith('_'):
      raise AttributeError(key)
    self._check(key)
    try:
      return self._data[key]
    except KeyError:
      raise AttributeError(key) from None

  def __contains__(self, key):
    self._check(key)
    return key in self._data


def create(name: str, config):
  """Dataset `name` configured from `config`: the module sees only the fields its
  `READS` declares (all of `config` if it declares none, for a user's own module)."""
  path = _modules().get(name)
  if path is None:
    raise SurgeryError(f'unknown dataset {name!r}; valid: {", ".join(names())}')
  module = importlib.import_module(path)
  fields = getattr(module, 'READS', None)
  view = config if fields is None else ConfigView(config, fields, module.__name__)
  return module.create(view, name)
