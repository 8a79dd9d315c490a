"""The method contract: one file per fine-tuning method, found by name.

A module of this package that defines `METHOD` (a `Method`), or `METHODS` (a tuple of
them), is a method file; the runner finds it by listing the package, so adding
`surgery/methods/<name>.py` is all a new method needs. A `Method` declares everything a
runner needs to know about it:

  - what it tunes (`groups`, a group spec) and how: an optimizer wrapper (`wrap`), an
    extra loss (`extra_loss`), a hook run before every epoch (`before_epoch`);
  - its config section (`section`): `defaults`, checked by `check`, of which the field
    `grid_field` is swept beside the lr (values named `hparam`, chosen on validation
    like the lr); `added_later` gives, for settings added after results were made, the
    value that reproduces what ran before them (a config.json without them reads so);
  - what it leaves beside its rows (`epoch_record`, `save_records` into
    `records_folder`) and the summary section made from them (`report`);
  - `evaluate_only` (no training: no adaptation) or `select` (not a run but a choice
    over other runs, `candidates`: Cross-Val);
  - or `train`, its own loop over runs of other methods (`TrainContext.start`), one
    row per shift and seed (probe_commit: a probe over arms, then one of them).

Surgical methods (tune one block) come from the model spec (`spec.methods`), since only
a model knows its groups. `register` adds a method defined outside this package.
`resolve` turns a name into a `Method` for a model; an unknown name is an error listing
every valid one.
"""
import dataclasses
from typing import Any, Callable, Optional

import optax

from surgery import discovery
from surgery.errors import SurgeryError


@dataclasses.dataclass(frozen=True)
class Context:
  """What a method's wrapper may read when the optimizer of one run is built."""
  steps_per_epoch: int
  group_labels: Any  # params-shaped pytree of group names
  groups: tuple  # the model's (name, regex) pairs
  settings: Any  # the method's config section (ConfigDict or dict), or None
  hparam: Optional[float]  # this run's value of the method's own setting


@dataclasses.dataclass(frozen=True)
class EpochContext:
  """What a `before_epoch` hook may read: the run's whole model and target tune set."""
  module: Any  # the model's Flax module
  model_state: dict  # its non-trainable variables (batch statistics)
  mesh: Any  # the data-parallel mesh, or None
  settings: Any
  hparam: Optional[float]
  tune: tuple  # (images, labels) of the target tune set


@dataclasses.dataclass(frozen=True)
class TrainContext:
  """What a method with its own loop (`Method.train`) may use, for one shift and seed."""
  # start(method name, lr, hparam=None, init=None) -> a run of that method on this shift
  # and seed, from the source model or from `init` (params, model state: another run's
  # `.best`), advanced by `.epoch()` (-> validation metrics; `.best_val` is the best so
  # far on the selection metric) and scored by `.finish()` (-> row fields, history,
  # records).
  start: Callable
  settings: Any  # the method's config section over its defaults
  epochs: int  # the config's epochs per run
  options: tuple  # the model's surgical options, in network order
  head_options: tuple  # those of them swept over the head's lr grid


@dataclasses.dataclass(frozen=True)
class ReportContext:
  """What a method's `report` may read when summary.md is written."""
  workdir: str
  rows: list  # results.csv rows
  shifts: list
  groups: tuple  # the model's (name, regex) pairs
  metric: str  # the selection metric


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  groups: str = 'all'  # group spec of the tuned parameters
  wrap: Optional[Callable[[optax.GradientTransformation, Context],
                          optax.GradientTransformation]] = None
  # before_epoch(ctx: EpochContext, state, order) -> state; `order` is the epoch's
  # permutation of the tune set. A method with this hook trains the whole model.
  before_epoch: Optional[Callable] = None
  extra_loss: Optional[Callable[[Any, float], Callable]] = None  # (start params, hparam)
  section: str = ''  # config section holding its settings
  defaults: dict = dataclasses.field(default_factory=dict)  # of that section
  check: Optional[Callable[[Any], None]] = None  # raises SurgeryError on a bad section
  # check_run(settings, config): raises SurgeryError where its settings cannot run under
  # the config (probe_commit's rungs against the epochs); called before any run when
  # the method is requested.
  check_run: Optional[Callable[[Any, Any], None]] = None
  added_later: dict = dataclasses.field(default_factory=dict)
  hparam: str = ''  # name of its swept setting, e.g. 'lam'
  grid_field: str = ''  # field of `section` holding that setting's grid (floats)
  head_lrs: bool = False  # swept over the head's lr grid (`last_lrs`)
  evaluate_only: bool = False
  # select(rows, candidates, metric, planned) -> rows: a choice among other runs.
  select: Optional[Callable] = None
  candidates: Optional[Callable[[Any], list]] = None  # (model spec) -> method names
  # train(ctx: TrainContext) -> (row fields, history, records): runs its own loop; planned
  # once per shift and seed (lr 0 in its key).
  train: Optional[Callable] = None
  epoch_record: Optional[Callable[[Any], Any]] = None  # (opt_state) -> kept per epoch
  save_records: Optional[Callable] = None  # (workdir, run, records) after a run
  records_folder: str = ''  # where in the workdir save_records writes (one file per run)
  report: Optional[Callable[[ReportContext], list]] = None  # -> summary.md lines
  order: float = 100.0  # place in the canonical method order (< 10: before surgical)

  @property
  def trains(self) -> bool:
    return not (self.evaluate_only or self.select)

  @property
  def grid_path(self) -> str:
    """'section.field' of its swept grid, or ''."""
    return f'{self.section}.{self.grid_field}' if self.hparam else ''


BEFORE_SURGICAL = 10.0  # methods ordered below this come before the model's own
_REGISTERED: dict = {}
_FOUND: Optional[dict] = None


def register(method: Method) -> Method:
  """Adds a method defined outside this package (a user's own); returns it."""
  if method.name in all_methods() and all_methods()[method.name] is not method:
    raise SurgeryError(f'method {method.name!r} is already registered')
  _REGISTERED[method.name] = method
  return method


def all_methods() -> dict:
  """{name: Method} of every method file in this package and every registered one, in
  canonical order."""
  global _FOUND
  if _FOUND is None:
    found = {}
    for module in discovery.modules(__package__):
      declared = getattr(module, 'METHODS', ()) + ((module.METHOD,) if hasattr(module, 'METHOD')
                                                   else ())
      for m in declared:
        if m.name in found:
          raise SurgeryError(f'method {m.name!r} is declared twice ({module.__name__})')
        found[m.name] = m
    _FOUND = found
  every = {**_FOUND, **_REGISTERED}
  return dict(sorted(every.items(), key=lambda kv: (kv[1].order, kv[0])))


def names(model_spec) -> list:
  """Every method valid for the model, in canonical order."""
  every = all_methods()
  surgical = [m for m in model_spec.methods if m not in every]
  first = [n for n, m in every.items() if m.order < BEFORE_SURGICAL]
  return first + surgical + [n for n, m in every.items() if m.order >= BEFORE_SURGICAL]


def resolve(name: str, model_spec) -> Method:
  every = all_methods()
  if name in every:
    return every[name]
  if name in model_spec.methods:
    return Method(name, groups=model_spec.methods[name], head_lrs=name in model_spec.head_methods)
  raise SurgeryError(f'unknown method {name!r} for model {model_spec.name}; valid: '
                     f'{", ".join(names(model_spec))}')


def surgical_options(model_spec) -> list:
  """The model's surgical options: its methods that tune a strict subset of the groups,
  in network order."""
  every = all_methods()
  return [m for m in model_spec.methods if m not in every and model_spec.methods[m] != 'all']


def grid_fields() -> tuple:
  """'section.field' of every method's swept grid: run axes, in each row's key."""
  return tuple(m.grid_path for m in all_methods().values() if m.grid_path)


def settings(method: Method, config) -> dict:
  """The method's section of `config` over its defaults."""
  given = config.get(method.section) if method.section else None
  return {**method.defaults, **(dict(given) if given is not None else {})}


def check_config(config) -> None:
  """Every method's own check of its section (the sections exist whether or not the
  method runs, as their values enter the fingerprint)."""
  for m in all_methods().values():
    if m.check is not None and m.section and config.get(m.section) is not None:
      m.check(config[m.section])
