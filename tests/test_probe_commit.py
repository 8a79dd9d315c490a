"""surgery/methods/probe_commit.py: successive halving over (option, lr) arms inside one
run, then the committed arm trained on; one row per shift and seed."""
import copy
import json
import os

import jax
import numpy as np
import pytest

from experiments import finetune
from experiments import sweep as runner
from experiments.plan import make_plan
from surgery.errors import SurgeryError
from surgery.groups import trainable_mask
from surgery.methods import probe_commit
from tests.test_main import _rows, tiny  # noqa: F401 (fixture)


def test_schedule_commits_to_the_arm_the_curves_say():
  curves = [[0.50, 0.55],
            [0.60, 0.58],  # survives rung 1; at rung 2 scores its best so far, 0.60
            [0.40, 0.90],  # would win later, but is cut at the first rung
            [0.62, 0.61],
            [0.62, 0.70],  # ties arm 3 at rung 1 (both kept), wins rung 2
            [0.10, 0.95]]
  kept, committed = probe_commit.schedule(curves, rungs=(1, 2), keep=(3, 1))
  assert kept == [[1, 3, 4], [4]] and committed == 4
  # Ties go to the arm listed first, at every rung.
  assert probe_commit.schedule([[0.5, 0.5]] * 3, (1, 2), (2, 1)) == ([[0, 1], [0]], 0)
  assert probe_commit.schedule([[0.3, 0.8], [0.8, 0.3]], (2,), (1,)) == ([[0]], 0)
  assert probe_commit.halve([5, 2, 9], {5: 0.1, 2: 0.7, 9: 0.7}, 2) == [2, 9]


def test_default_arms_and_bad_settings():
  settings = dict(probe_commit.DEFAULTS)
  options = ('first_layer', 'block1', 'block2', 'block3', 'last')
  assert probe_commit.arms(settings, options, ('last',)) == [
      ('first_layer', 1e-3), ('block1', 1e-3), ('block2', 1e-3), ('block3', 1e-3),
      ('last', 1e-1), ('last', 1e-2), ('last', 1e-3), ('auto_rgn', 1e-3)]
  assert probe_commit.arms({**settings, 'arms': ('block2@3e-4', 'all@1e-5')}, options,
                           ('last',)) == [('block2', 3e-4), ('all', 1e-5)]
  with pytest.raises(SurgeryError, match="'block2' is not '<method>@<lr>'"):
    probe_commit.arms({**settings, 'arms': ('block2',)}, options, ('last',))
  for rungs, keep, words in [((2, 1), (3, 1), 'increasing'), ((1, 2), (3, 2), 'ending at 1'),
                             ((1, 2), (1, 2), 'non-increasing'), ((1,), (3, 1), 'per rung')]:
    with pytest.raises(SurgeryError, match=words):
      probe_commit._check({'rungs': rungs, 'keep': keep})


def _probe_config(config):
  config.methods = ('probe_commit',)
  config.epochs = 3
  # Large lrs, so that the tiny model's arms part within 3 epochs; four arms.
  config.probe_commit = dict(probe_commit.DEFAULTS, body_lr=3e-2, head_lrs=(1e-1,),
                             arms=('block1@3e-2', 'block3@3e-2', 'last@1e-1', 'auto_rgn@3e-2'),
                             rungs=(1, 2), keep=(2, 1))
  return config


class _Killed(Exception):
  pass


@pytest.mark.slow
def test_one_row_per_shift_and_seed_that_follows_its_curves_and_resumes(tiny, monkeypatch):
  config, tmp = tiny
  config = _probe_config(config)
  whole = str(tmp / 'whole')
  runner.train_and_evaluate(config, whole)
  rows = _rows(os.path.join(whole, 'results.csv'))
  assert [(r['method'], r['lr'], r['seed']) for r in rows] == [('probe_commit', '0', '0')]
  row = rows[0]
  with open(os.path.join(whole, 'probe_commit', 'gaussian_noise_seed0.json')) as f:
    curves = json.load(f)
  names = list(curves)
  assert names == ['block1@0.03', 'block3@0.03', 'last@0.1', 'auto_rgn@0.03']
  # Arms cut at rung 1 trained 1 epoch, the other at rung 2 trained 2, the committed 3;
  # the pick is the one `schedule` makes from those curves.
  kept, committed = probe_commit.schedule(
      [c + [c[-1]] * (3 - len(c)) for c in curves.values()], (1, 2), (2, 1))
  assert sorted(len(c) for c in curves.values()) == [1, 1, 2, 3]
  assert len(curves[names[committed]]) == 3 and len(kept[0]) == 2
  method, lr = names[committed].split('@')
  assert row['picked'] == f'{method} lr={float(lr):g}'
  best = max(curves[names[committed]])
  assert float(row['val_acc']) == best
  assert int(row['best_epoch']) == curves[names[committed]].index(best) + 1

  # The committed run is the run that method makes alone at that lr.
  alone_config = copy.deepcopy(config)
  alone_config.methods = (method,)
  alone_config.lrs = alone_config.last_lrs = (float(lr),)
  alone = runner.train_and_evaluate(alone_config, str(tmp / 'alone'))
  keep = ('best_epoch', 'val_acc', 'test_acc', 'n_tune', 'n_val', 'n_test')
  assert [{k: r[k] for k in keep} for r in alone] == [{k: row[k] for k in keep}]

  # Killed mid-probe (after 3 arm-epochs), then rerun: the same row.
  assert_killed_and_rerun_gives(rows, config, str(tmp / 'cut'), monkeypatch, after_epochs=3)


def assert_killed_and_rerun_gives(rows, config, workdir, monkeypatch, after_epochs):
  """A sweep killed after `after_epochs` arm-epochs (as by kill -9: no row of the
  unfinished run is written), then run again in the same workdir, gives `rows`."""
  real, calls = finetune.Arm.epoch, []

  def epoch_then_die(self):
    calls.append(1)
    if len(calls) > after_epochs:
      raise _Killed
    return real(self)

  with monkeypatch.context() as m:
    m.setattr(finetune.Arm, 'epoch', epoch_then_die)
    with pytest.raises(_Killed):
      runner.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, 'results.csv')
  assert not os.path.exists(path) or not _rows(path)
  runner.train_and_evaluate(config, workdir)
  drop = ('seconds',)
  assert [{k: v for k, v in r.items() if k not in drop} for r in _rows(path)] == [
      {k: v for k, v in r.items() if k not in drop} for r in rows]


def train_context(config, tmp, name):
  """(plan, source params, the TrainContext a sweep gives method `name`) on the tiny
  config's gaussian_noise, seed 0."""
  plan = make_plan(config)
  variables = finetune.source_variables(config, str(tmp / 'w'), plan.model)
  params = variables['params']
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  ft = finetune.Finetuner(plan.model, config, None, plan.select_metric)
  return plan, params, runner.train_context(ft, plan, plan.method(name), params, model_state, 0,
                                            plan.dataset.target_sets('gaussian_noise', 0))


def test_the_committed_run_leaves_frozen_leaves_bitwise_unchanged(tiny):
  config, tmp = tiny
  config = _probe_config(config)
  config.epochs = 2
  config.probe_commit = dict(probe_commit.DEFAULTS, arms=('block2@1e-2', 'last@1e-2'),
                             rungs=(1,), keep=(1,))
  plan, params, ctx = train_context(config, tmp, 'probe_commit')
  run, (name, _), curves = probe_commit.probe(ctx)
  assert run.epochs_done == 2 and sorted(map(len, curves.values())) == [1, 2]
  mask = trainable_mask(params, plan.model.groups, plan.method(name).groups)
  run.epoch()  # make sure the committed weights moved from the start
  after = run.state.params
  moved = 0
  for m, p, q in zip(*(jax.tree_util.tree_leaves(t) for t in (mask, params, after))):
    if m:
      moved += not np.array_equal(np.asarray(p), np.asarray(q))
    else:
      assert np.asarray(p).tobytes() == np.asarray(q).tobytes()
  assert moved > 0


def test_rungs_past_the_runs_epochs_are_refused_before_any_run():
  from configs import cifar10c
  config = cifar10c.get_config()
  config.init_checkpoint = ''
  config.epochs = 2
  config.methods = ('all',)
  make_plan(config)  # not requested: its settings are not held against the epochs
  config.methods = ('all', 'probe_commit')
  with pytest.raises(SurgeryError, match='rungs end at epoch 2, but runs have 2 epochs'):
    make_plan(config)
  config.epochs = 3
  make_plan(config)
