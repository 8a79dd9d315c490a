"""The method contract: one registry entry per fine-tuning method.

A method is one of:
  - a group spec (`groups`): tune those groups, freeze the rest (surgical methods come
    from the model spec, `spec.methods`, since only a model knows its groups);
  - a per-tensor optimizer wrapper (`wrap`), e.g. Auto-RGN, gradual unfreezing;
  - plus, optionally, a hook run before every epoch (`before_epoch`, Auto-SNR) and an
    extra loss (`extra_loss`, L1-SP) with its own hyperparameter grid (`hparam`,
    floats read from the config section named `section`).
`evaluate_only` methods run no training (no adaptation); `selection` methods are not
runs but a choice over other runs (Cross-Val: the surgical option and lr that
validation picks). `resolve` turns a name into a Method for a model, and an unknown
name is an error listing every valid one.
"""
import dataclasses
from typing import Any, Callable, Optional

import optax

from surgery.auto_rgn import auto_rgn, is_norm_tensor
from surgery.errors import SurgeryError
from surgery.methods.auto_snr import auto_snr
from surgery.methods.gradual_unfreeze import gradual_unfreeze, unfreeze_order
from surgery.methods.l1_sp import l1_sp_penalty


@dataclasses.dataclass(frozen=True)
class Context:
  """What a method's wrapper may read when the optimizer of one run is built."""
  steps_per_epoch: int
  group_labels: Any  # params-shaped pytree of group names
  groups: tuple  # the model's (name, regex) pairs
  settings: Any  # the method's config section (ConfigDict or dict), or None
  hparam: Optional[float]  # this run's value of the method's own setting


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  groups: str = 'all'  # group spec of the tuned parameters
  wrap: Optional[Callable[[optax.GradientTransformation, Context], optax.GradientTransformation]] = None
  before_epoch: Optional[str] = None  # name of a runner hook ('auto_snr')
  extra_loss: Optional[Callable[[Any, float], Callable]] = None
  hparam: str = ''  # name of its own setting, e.g. 'lam'
  section: str = ''  # config section holding its settings and grid
  grid_field: str = ''  # field of `section` holding the hparam grid (floats)
  head_lrs: bool = False  # swept over the head's lr grid (`last_lrs`)
  evaluate_only: bool = False
  selection: bool = False

  @property
  def trains(self) -> bool:
    return not (self.evaluate_only or self.selection)


def _auto_rgn(base, ctx: Context):
  s = ctx.settings
  every = ctx.steps_per_epoch if s['refresh'] == 'epoch' else 1
  return auto_rgn(base, refresh_every=every, window=min(int(s['window']), every),
                  exclude=is_norm_tensor if s['exclude_norm'] else None,
                  **({'reset_inner': bool(s['reset_inner'])} if 'reset_inner' in s else {}))


def _gradual(direction):
  def wrap(base, ctx: Context):
    order = unfreeze_order(direction, ctx.groups)
    return gradual_unfreeze(base, ctx.group_labels, order, ctx.steps_per_epoch)
  return wrap


GENERIC = {
    'no_adaptation': Method('no_adaptation', evaluate_only=True),
    'all': Method('all'),
    'auto_rgn': Method('auto_rgn', wrap=_auto_rgn, section='auto_rgn'),
    'gradual_unfreeze_first_last': Method('gradual_unfreeze_first_last', wrap=_gradual('first_last')),
    'gradual_unfreeze_last_first': Method('gradual_unfreeze_last_first', wrap=_gradual('last_first')),
    'l1_sp': Method('l1_sp', extra_loss=l1_sp_penalty, hparam='lam', section='l1_sp',
                    grid_field='lambdas'),
    'auto_snr': Method('auto_snr', wrap=lambda base, ctx: auto_snr(base), before_epoch='auto_snr',
                       hparam='threshold', section='auto_snr', grid_field='thresholds'),
    'cross_val': Method('cross_val', selection=True),
}
# Where the model's surgical methods go in the canonical order.
_BEFORE_SURGICAL = ('no_adaptation', 'all')


def names(model_spec) -> list:
  """Every method valid for the model, in canonical order."""
  surgical = [m for m in model_spec.methods if m not in GENERIC]
  rest = [m for m in GENERIC if m not in _BEFORE_SURGICAL]
  return list(_BEFORE_SURGICAL) + surgical + rest


def resolve(name: str, model_spec) -> Method:
  if name in GENERIC:
    return GENERIC[name]
  if name in model_spec.methods:
    return Method(name, groups=model_spec.methods[name], head_lrs=name in model_spec.head_methods)
  raise SurgeryError(f'unknown method {name!r} for model {model_spec.name}; valid: '
                     f'{", ".join(names(model_spec))}')


def selection_candidates(model_spec) -> list:
  """Cross-Val's candidates: the model's surgical options (every method of the model
  that tunes a strict subset of the groups), in network order."""
  return [m for m in model_spec.methods if m not in GENERIC and model_spec.methods[m] != 'all']
