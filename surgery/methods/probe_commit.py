"""Probe, then commit: surgical fine-tuning's choice of block and lr inside one run.

Cross-Val trains every (option, lr) arm to the end and keeps the one validation likes
best: 15 runs for ResNet-26. This method starts its arms side by side, trains each for
a few epochs, drops the worse ones at each rung by their best validation metric so far
(successive halving; Jamieson & Talwalkar 2016, the inner loop of Li et al.'s
Hyperband), and trains the one left on to `epochs`, keeping its best epoch as any run
does. Its row is that run's, with the arm in the `picked` column; every arm's
validation curve goes to WORKDIR/probe_commit/<shift>_seed<seed>.json.

Arms (config section `probe_commit`): each body option of the model (a surgical option
not swept over the head's lr grid) at `body_lr`; each head option at each lr of
`head_lrs`; each whole-model method of `also` at `body_lr`. Or, when `arms` is given,
exactly those ('<method>@<lr>'). `rungs` are the epochs after which arms are cut and
`keep` how many survive each cut, the last keeping one: by default 8 arms train one
epoch, 3 of them a second, and one goes on. Ties go to the arm listed first. Only the
validation set chooses; the test set is scored once, for the committed arm.

The arms share the runner's compiled steps (the lr is an argument) and its
frozen-prefix cache, so a head arm costs about one pass over cached features. The
settings are the same for every shift and dataset; nothing is tuned per shift.
"""
import json
import os
from typing import Sequence

from surgery.errors import SurgeryError
from surgery.io import atomic_write
from surgery.methods.registry import Method
from surgery.report.store import PICKED

FOLDER = 'probe_commit'
DEFAULTS = dict(body_lr=1e-3, head_lrs=(1e-1, 1e-2, 1e-3), also=('auto_rgn',), arms=(),
                rungs=(1, 2), keep=(3, 1))


def halve(alive: Sequence[int], scores: dict, keep: int) -> list:
  """The `keep` arms of `alive` (indices) with the highest `scores`, in index order;
  ties go to the lower index."""
  ranked = sorted(alive, key=lambda i: (-scores[i], i))
  return sorted(ranked[:keep])


def schedule(curves: Sequence[Sequence[float]], rungs: Sequence[int], keep: Sequence[int]):
  """(the arms alive after each rung, the committed arm) of successive halving over
  validation `curves` (per arm, its metric after each epoch): at a rung an arm scores
  its best metric up to that epoch. What a run of this method decides, as a function
  of the curves alone."""
  alive, kept = list(range(len(curves))), []
  for rung, k in zip(rungs, keep):
    alive = halve(alive, {i: max(curves[i][:rung]) for i in alive}, k)
    kept.append(alive)
  return kept, alive[0]


def arms(settings, options: Sequence[str], head_options: Sequence[str]) -> list:
  """[(method name, lr)] of a run, in the order ties are broken."""
  if settings['arms']:
    out = []
    for a in settings['arms']:
      name, _, lr = str(a).partition('@')
      try:
        out.append((name, float(lr)))
      except ValueError:
        raise SurgeryError(f"probe_commit.arms: '{a}' is not '<method>@<lr>'") from None
    return out
  body = [o for o in options if o not in head_options]
  return ([(o, float(settings['body_lr'])) for o in body]
          + [(h, float(lr)) for h in head_options for lr in settings['head_lrs']]
          + [(m, float(settings['body_lr'])) for m in settings['also']])


def _check(section):
  rungs, keep = [int(r) for r in section['rungs']], [int(k) for k in section['keep']]
  if not rungs or any(b <= a for a, b in zip([0] + rungs, rungs)):
    raise SurgeryError(f'probe_commit.rungs must be increasing epochs >= 1, got {rungs}')
  if len(keep) != len(rungs) or keep[-1] != 1 or any(
      b > a for a, b in zip(keep, keep[1:])) or min(keep) < 1:
    raise SurgeryError('probe_commit.keep must give, per rung, how many arms survive it: '
                       f'non-increasing, ending at 1; got {keep} for rungs {rungs}')


def _check_epochs(settings, epochs):
  last = int(settings['rungs'][-1])
  if last >= int(epochs):
    raise SurgeryError(f'probe_commit.rungs end at epoch {last}, but runs have {epochs} '
                       'epochs: the committed arm would not train on')


def probe(ctx):
  """(the committed arm's run, its (method, lr), every arm's validation curve)."""
  s = ctx.settings
  _check_epochs(s, ctx.epochs)
  rungs, keep = [int(r) for r in s['rungs']], [int(k) for k in s['keep']]
  chosen = arms(s, ctx.options, ctx.head_options)
  runs = [ctx.start(name, lr) for name, lr in chosen]

  def train_to(i, epochs):
    while runs[i].epochs_done < epochs:
      runs[i].epoch()

  metric = f'val_{runs[0].runner.metric}'
  curves = [None] * len(runs)
  alive = list(range(len(runs)))
  for rung, k in zip(rungs, keep):
    for i in alive:
      train_to(i, rung)
    scores = {i: runs[i].best_val for i in alive}
    alive = halve(alive, scores, k)
    print(f'probe_commit, epoch {rung}: ' + ', '.join(
        f'{n}@{lr:g} {scores[i]:.3f}' + ('*' if i in alive else '')
        for i, (n, lr) in enumerate(chosen) if i in scores) + ' (* kept)', flush=True)
    for i in set(scores) - set(alive):  # a cut arm's weights and state are let go
      curves[i], runs[i] = [h[metric] for h in runs[i].history], None
  committed = alive[0]
  train_to(committed, ctx.epochs)
  curves[committed] = [h[metric] for h in runs[committed].history]
  return runs[committed], chosen[committed], {
      f'{n}@{lr:g}': c for (n, lr), c in zip(chosen, curves)}


def _train(ctx):
  run, (name, lr), curves = probe(ctx)
  fields, history, _ = run.finish()
  return {**fields, PICKED: f'{name} lr={lr:g}'}, history, [curves]


def _save_curves(workdir, run, records):
  path = os.path.join(workdir, FOLDER, f'{run.shift}_seed{run.seed}.json')
  atomic_write(path, json.dumps(records[0], indent=1))


METHOD = Method('probe_commit', train=_train, section='probe_commit', defaults=DEFAULTS,
                check=_check, check_run=lambda s, config: _check_epochs(s, config.epochs),
                save_records=_save_curves, records_folder=FOLDER, order=195)
