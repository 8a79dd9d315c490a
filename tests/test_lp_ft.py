"""surgery/methods/lp_ft.py: a head fitted on frozen features, then one run of the body
method from it, the probed head its start (and never a row of its own)."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from experiments import sweep as runner
from surgery.errors import SurgeryError
from surgery.groups import trainable_mask
from surgery.methods import lp_ft, registry
from tests.test_main import _rows, tiny  # noqa: F401 (fixture)
from tests.test_probe_commit import assert_killed_and_rerun_gives, train_context


def test_best_head_and_bad_settings():
  assert lp_ft.best_head([0.5, 0.7, 0.7, 0.6]) == 1  # ties go to the run listed first
  assert lp_ft.best_head([0.9]) == 0
  check = registry.all_methods()['lp_rgn'].check
  check(dict(lp_ft.DEFAULTS))
  for bad, words in [(dict(head_lrs=()), 'lp_rgn.head_lrs'),
                     (dict(head_lrs=(1e-2, -1.0)), 'lp_rgn.head_lrs'),
                     (dict(body_lr=0.0), 'lp_rgn.body_lr')]:
    with pytest.raises(SurgeryError, match=words):
      check({**lp_ft.DEFAULTS, **bad})


def test_the_body_starts_from_the_probed_head_and_frozen_leaves_stay_bitwise(tiny):
  config, tmp = tiny
  config.epochs = 2
  config.lp_rgn = dict(lp_ft.DEFAULTS, head_lrs=(1e-1, 1e-3), body_lr=1e-2)
  plan, params, ctx = train_context(config, tmp, 'lp_rgn')
  starts = []
  real_start = ctx.start

  def spy(n, lr, hp=None, init=None):
    starts.append((n, lr, init))
    return real_start(n, lr, hp, init)

  ctx = dataclasses.replace(ctx, start=spy)
  run, (head, lr), curves = lp_ft.fit(ctx, 'auto_rgn')
  assert [(n, lr) for n, lr, _ in starts] == [('last', 0.1), ('last', 1e-3), ('auto_rgn', 1e-2)]
  assert list(curves) == ['last@0.1', 'last@0.001', 'auto_rgn@0.01']
  picked = f'{head}@{lr:g}'
  assert picked == ['last@0.1', 'last@0.001'][lp_ft.best_head(
      [max(curves['last@0.1']), max(curves['last@0.001'])])]
  # The body's start is the probed head's best epoch: scored on the whole model, it
  # scores what the head scored on cached features; only head leaves moved from source.
  init_params, init_state = starts[-1][2]
  assert run.runner.metrics(init_params, init_state, run.val)['acc'] == max(curves[picked])
  head_mask = trainable_mask(params, plan.model.groups, plan.method('last').groups)
  moved = 0
  for m, p, q in zip(*map(jax.tree_util.tree_leaves, (head_mask, params, init_params))):
    if m:
      moved += not np.array_equal(np.asarray(p), np.asarray(q))
    else:
      assert np.asarray(p).tobytes() == np.asarray(q).tobytes()
  assert moved > 0
  # Auto-RGN leaves norm tensors out: after the body trained they are still its start's
  # (the head's own norm layer included, which the probe moved).
  from surgery.groups import path_str
  from surgery.methods.auto_rgn import is_norm_tensor
  after = jax.tree_util.tree_leaves_with_path(run.state.params)
  norms = [(p, q) for (path, p), q in zip(after, jax.tree_util.tree_leaves(init_params))
           if is_norm_tensor(path_str(path))]
  assert norms and all(np.asarray(p).tobytes() == np.asarray(q).tobytes() for p, q in norms)


@pytest.mark.slow
def test_one_row_per_shift_and_seed_the_body_runs_best_epoch_and_it_resumes(tiny, monkeypatch):
  config, tmp = tiny
  config.methods = ('lp_ft',)
  config.epochs = 2
  config.lp_ft = dict(lp_ft.DEFAULTS, head_lrs=(1e-1,), body_lr=1e-2)
  work = str(tmp / 'work')
  runner.train_and_evaluate(config, work)
  rows = _rows(os.path.join(work, 'results.csv'))
  assert [(r['method'], r['lr'], r['picked']) for r in rows] == [
      ('lp_ft', '0', 'last lr=0.1, then all lr=0.01')]
  with open(os.path.join(work, 'lp_ft', 'gaussian_noise_seed0.json')) as f:
    curves = json.load(f)
  assert list(curves) == ['last@0.1', 'all@0.01'] and len(curves['all@0.01']) == 2
  body = curves['all@0.01']
  assert float(rows[0]['val_acc']) == max(body)
  assert int(rows[0]['best_epoch']) == body.index(max(body)) + 1
  # Killed in the body stage (after the head's 2 epochs and one of the body's), then
  # rerun: the same row.
  assert_killed_and_rerun_gives(rows, config, str(tmp / 'cut'), monkeypatch, after_epochs=3)
