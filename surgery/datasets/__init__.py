"""The dataset contract: `ds = surgery.datasets.create(name, config)`.

Each dataset lives in its own module here and defines `create(config) -> Dataset`.
A dataset declares:

  ds.num_classes, ds.image_size
  ds.metrics               metric names it reports ('acc' always; 'worst_group_acc'
                           where examples carry groups; 'acc_<domain>' per domain)
  ds.shift_names(config)   the target shifts a config asks for, validated
  ds.source(split)         the source (pre-training) distribution, random access
  ds.target(shift)         the target pool: a random-access source (index -> dict with
                           uint8 HWC 'image', 'label', and 'group'/'domain' if any)
  ds.split(shift, target, seed)   how tune / validation / test are drawn (TargetSplit)
  ds.perturb(shift, params, groups)   the source model a shift starts from (identity
                                      except for parameter-noise shifts)

Small target sets are turned into arrays (`surgery.data.sources.to_arrays`); large ones
stream through `surgery.data.pipeline` (grain, sharded per host).
"""
import importlib

from surgery.datasets.metrics import compute_metrics, metric_names  # noqa: F401
from surgery.errors import SurgeryError

_REGISTRY = {
    'cifar10': 'surgery.datasets.cifar10',
}


def names() -> list:
  return sorted(_REGISTRY)


def register(name: str, module_path: str) -> None:
  _REGISTRY[name] = module_path


def create(name: str, config):
  """Dataset `name` configured from `config` (the fields its module documents)."""
  if name not in _REGISTRY:
    raise SurgeryError(f'unknown dataset {name!r}; valid: {", ".join(names())}')
  return importlib.import_module(_REGISTRY[name]).create(config)
