"""The paper's MEMO protocol: the tuning/held-out split, the staged search, streams that
resume mid-way, and the runner end to end on a tiny image folder."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import memo_paper
from experiments import memo as runner
from experiments import memo_tuning as T
from surgery import models
from surgery.errors import SurgeryError
from surgery.memo.adapt import (image_keys, make_adapt_predict, make_episodic_predict_many,
                                memo_group_map, memo_mask, memo_optimizer, run_stream,
                                traced_optimizer)
from test_main import _rows
from test_memo_runner import assert_stops_with_one_line, tiny_memo_config


def test_split_is_disjoint_class_balanced_and_seeded():
  labels = np.repeat(np.arange(10), 1000)
  np.random.default_rng(3).shuffle(labels)
  tune, stream = T.split_tune_stream(labels, 1000, 9000, 0, 10, runner.stream_subset)
  assert len(tune) == 1000 and len(stream) == 9000
  assert not set(tune) & set(stream)  # with 1,000 per class: every image exactly once
  assert sorted(np.concatenate([tune, stream])) == list(range(10000))
  assert np.bincount(labels[tune]).tolist() == [100] * 10
  assert np.bincount(labels[stream]).tolist() == [900] * 10
  again = T.split_tune_stream(labels, 1000, 9000, 0, 10, runner.stream_subset)
  assert all(np.array_equal(a, b) for a, b in zip((tune, stream), again))
  other = T.split_tune_stream(labels, 1000, 9000, 1, 10, runner.stream_subset)
  assert not np.array_equal(tune, other[0])
  # The stream is shuffled, not grouped by class.
  assert len(set(labels[stream[:20]])) > 3
  with pytest.raises(SurgeryError, match='at most'):
    T.split_tune_stream(labels, 1000, 9010, 0, 10, runner.stream_subset)


def test_coordinate_search_order_ties_and_reuse():
  stages = T.search_stages((1e-2, 1e-3, 1e-4), (0.5, 1.0, 3.0), (1, 2), (0.0, 1e-3))
  table = {1e-2: 0.3, 1e-3: 0.5, 1e-4: 0.5, 5e-4: 0.6, 3e-3: 0.1}
  calls = []

  def score1(s):
    calls.append(s)
    return table.get(s.lr, 0.0) + (0.01 if s.steps == 2 else 0) + (0.0 if s.weight_decay else 0.001)

  stage_sizes = []
  best, acc, scores = T.run_search(
      stages, lambda cands: stage_sizes.append(len(cands)) or [score1(s) for s in cands])
  S = T.Setting
  assert calls == [S(1e-2, 1, 0.0), S(1e-3, 1, 0.0), S(1e-4, 1, 0.0),  # 1e-4 ties 1e-3
                   S(5e-4, 1, 0.0), S(3e-3, 1, 0.0),  # x1.0 is 1e-3, scored already
                   S(5e-4, 2, 0.0), S(5e-4, 2, 1e-3)]
  assert best == S(5e-4, 2, 0.0) and acc == pytest.approx(0.611)
  assert len(scores) == len(calls) and stage_sizes == [3, 2, 1, 1]  # new ones only
  # 3 x 1e-4 is keyed as 3e-4, as a rerun's results.csv reads it back.
  assert T.search_stages((1e-4,), (3.0,), (1,), (0.0,))[1](S(1e-4, 1, 0.0))[0].lr == 3e-4


def test_grid_search_is_the_full_product():
  stages = T.search_stages((1e-2, 1e-3), (0.5, 2.0), (1, 2), (0.0, 1e-4, 1e-3), 'grid')
  _, _, scores = T.run_search(stages, lambda c: [-abs(np.log10(s.lr) + 2.2) for s in c])
  first = {(s.lr, s.steps, s.weight_decay) for s in list(scores)[:12]}
  assert len(scores) == 24 and first == {(lr, st, w) for lr in (1e-2, 1e-3) for st in (1, 2)
                                        for w in (0.0, 1e-4, 1e-3)}
  assert {s.lr for s in list(scores)[12:]} == {5e-3, 2e-2}


@pytest.fixture(scope='module')
def tiny_stream():
  spec = models.create('resnet26', depth=8)
  params = spec.init()['params']
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  return spec, params, images, rng.integers(0, 10, 6)


@pytest.mark.slow
@pytest.mark.parametrize('option', ['first_layer', 'all'])
def test_episodic_candidates_share_one_gradient_and_equal_their_own_streams(tiny_stream, option):
  spec, params, images, _ = tiny_stream
  mask = memo_mask(params, option, memo_group_map(spec))
  built = [traced_optimizer('episodic', mask, learning_rate=lr, weight_decay=wd)
           for lr, wd in ((1e-2, 1e-4), (1e-3, 1e-4), (1e-3, 1e-2))]
  hypers = tuple(hyper for _, hyper in built)
  many = make_episodic_predict_many(spec.module, [b for b, _ in built], num_copies=4)
  states = tuple(b(**h).init(params) for b, h in built)
  keys = image_keys(0, 2)
  traces = []  # the optimizer is built once per trace of the program
  alone = make_adapt_predict(spec.module, lambda **h: traces.append(h) or built[0][0](**h),
                             steps=1, num_copies=4)
  for i in range(2):
    got = np.asarray(many(params, states, images[i], keys[i], hypers))
    for k, (build, hyper) in enumerate(built):
      ref = np.asarray(alone(params, build(**hyper).init(params), images[i], keys[i], hyper)[2])
      np.testing.assert_allclose(got[k], ref, rtol=1e-5, atol=1e-5)
    assert np.abs(got[0] - got[1]).max() > 1e-4  # the candidates do differ
  assert len(traces) == 1  # one program for the three candidates


def test_traced_learning_rates_share_one_program_and_equal_baked_ones_bitwise(tiny_stream):
  spec, params, images, labels = tiny_stream
  mask = memo_mask(params, 'first_layer', memo_group_map(spec))
  leaves = lambda out: jax.tree_util.tree_leaves((out['params'], out['opt_state'],
                                                  out['logits']))
  fn, runs, traces = None, [], []
  for lr, wd in ((0.05, 1e-3), (0.01, 1e-2)):  # SGD with decay: both values traced
    build, hyper = traced_optimizer('online', mask, learning_rate=lr, weight_decay=wd)
    assert hyper == {'learning_rate': lr, 'weight_decay': wd}
    fn = fn or make_adapt_predict(spec.module, lambda **h: traces.append(h) or build(**h),
                                  num_copies=2)
    traced = run_stream(fn, params, build(**hyper).init(params), images[:3], labels[:3],
                        'online', progress=False, hyper=hyper)
    tx = memo_optimizer('online', mask, learning_rate=lr, weight_decay=wd)
    baked = run_stream(make_adapt_predict(spec.module, tx, num_copies=2), params,
                       tx.init(params), images[:3], labels[:3], 'online', progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(leaves(traced), leaves(baked)))
    runs.append(traced)
  assert len(traces) == 1  # the first lr's program ran the second
  assert not np.array_equal(runs[0]['logits'], runs[1]['logits'])
  # A zero decay is baked in (no decay transform): not a traced value.
  assert traced_optimizer('online', mask, learning_rate=0.05)[1] == {'learning_rate': 0.05}


class _Stop(Exception):
  pass


def _save_then_stop_at(done_at):
  """A `StreamCheckpoint.save` that saves, then stops the run once a held-out stream
  has saved `done_at` images (as a killed process would)."""
  original = T.StreamCheckpoint.save

  def save(self, done, *a):
    original(self, done, *a)
    if done == done_at and 'partial' in self.path:
      raise _Stop

  return save


def test_online_stream_resumes_bitwise_from_its_checkpoint(tiny_stream, tmp_path):
  spec, params, images, labels = tiny_stream
  tx = memo_optimizer('online', memo_mask(params, 'first_layer', memo_group_map(spec)),
                      learning_rate=0.05)
  fn = make_adapt_predict(spec.module, tx, num_copies=2)
  run = lambda **k: run_stream(fn, params, tx.init(params), images, labels, 'online',
                               progress=False, progress_every=2, **k)
  whole = run()

  ckpt = T.StreamCheckpoint(str(tmp_path / 's.partial.npz'), 'run A', keep_state=True)
  seen = []

  def save_then_stop(done, p, s, preds):
    ckpt.save(done, p, s, preds)
    seen.append(done)
    if done == 4:
      raise _Stop

  with pytest.raises(_Stop):
    run(on_progress=save_then_stop)
  assert seen == [2, 4]
  start, p, s, preds = ckpt.restore(params, tx.init(params))
  again = run_stream(fn, p, s, images, labels, 'online', progress=False, start=start,
                     predictions=preds)
  assert start == 4 and len(again['logits']) == 2  # only images 5 and 6 ran again
  assert again['predictions'] == whole['predictions']
  assert ([np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(again['params'])]
          == [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(whole['params'])])
  # Saved for another run (another setting or fingerprint): ignored.
  other = T.StreamCheckpoint(ckpt.path, 'run B', keep_state=True)
  assert other.restore(params, None) is None


def test_checkpoint_refuses_weights_of_another_shape(tiny_stream, tmp_path):
  spec, params, _, _ = tiny_stream
  ckpt = T.StreamCheckpoint(str(tmp_path / 's.npz'), 'k', keep_state=True)
  ckpt.save(2, params, (), [1, 2])
  smaller = models.create('resnet26', depth=8, width=1).init()['params']
  assert ckpt.restore(smaller, ()) is not None
  wider = jax.tree_util.tree_map(lambda x: np.zeros(np.shape(x) + (1,)), params)
  assert ckpt.restore(wider, ()) is None


def test_run_stream_needs_the_predictions_before_its_start(tiny_stream):
  spec, params, images, labels = tiny_stream
  tx = memo_optimizer('online', memo_mask(params, 'last', memo_group_map(spec)))
  fn = make_adapt_predict(spec.module, tx, num_copies=2)
  with pytest.raises(SurgeryError, match='needs the 3 predictions'):
    run_stream(fn, params, tx.init(params), images, labels, 'online', start=3,
               predictions=[1], progress=False)


# ----------------------------------------------------------------------------- runner

@pytest.fixture
def tiny(tmp_path, monkeypatch):
  config = tiny_memo_config(memo_paper.get_config(), tmp_path, monkeypatch)
  config.settings = ('online/first_layer', 'episodic/last')
  config.tune.images = 10
  # Few candidates (each compiles a step); the stages are tested on the search alone.
  config.tune.lr_multipliers = (1.0,)
  config.tune.steps = (1, 2)
  config.tune.weight_decays = (0.0,)
  config.online.tune_lrs = (1e-2, 1e-4)
  config.episodic.tune_lrs = (1e-3,)
  config.num_images = 20
  config.num_copies = 2
  config.eval_batch_size = 10
  config.stream_save_every = 5
  return config, tmp_path


@pytest.mark.slow
def test_tuned_protocol_end_to_end_and_resume(tiny, monkeypatch):
  config, tmp = tiny
  workdir = str(tmp / 'work')
  runner.train_and_evaluate(config, workdir)
  rows = _rows(os.path.join(workdir, 'results.csv'))
  tuning = _rows(os.path.join(workdir, 'tuning.csv'))
  assert [r['method'] for r in rows] == ['no_adaptation', 'online/first_layer', 'episodic/last']
  assert all(r['n_test'] == '20' for r in rows)
  for r in rows[1:]:
    cands = [t for t in tuning if t['method'] == r['method']]
    assert all(t['n_test'] == '10' for t in cands)
    # 2 (or 1) coarse lrs + 1 new steps value.
    assert len(cands) == {'online/first_layer': 3, 'episodic/last': 2}[r['method']]
    assert {t['hparam'] for t in cands} == {'steps=1 wd=0', 'steps=2 wd=0'}
    best = max(float(t['test_acc']) for t in cands)
    first_best = next(t for t in cands if float(t['test_acc']) == best)
    assert float(r['val_acc']) == best and r['n_tune'] == '10'
    assert (r['lr'], r['hparam']) == (first_best['lr'], first_best['hparam'])
  summary = open(os.path.join(workdir, 'summary.md')).read()
  assert 'tuned on 10 test images' in summary and 'coordinate search' in summary
  # Our gain beside the paper's Table 9 cell, and whether it is within 3 points.
  acc = {r['method']: 100 * float(r['test_acc']) for r in rows}
  gain = acc['online/first_layer'] - acc['no_adaptation']
  verdict = 'yes' if abs(gain - 16.5) <= 3 else 'no'
  assert f'| online/first_layer | {gain:+.1f} / +16.5 {verdict} |' in summary
  # A setting whose Table 9 cell we do not have still shows our gain.
  other = acc['episodic/last'] - acc['no_adaptation']
  assert f'| episodic/last | {other:+.1f} / n/q |' in summary
  preds = os.path.join(workdir, 'streams', 'gaussian_noise_online_first_layer.predictions.json')
  with open(preds) as f:
    counts = np.bincount(json.load(f))
  assert f'| online/first_layer | {100 * counts.max() / 20:.0f} |' in summary
  assert not [f for f in os.listdir(os.path.join(workdir, 'streams')) if 'partial' in f]
  # Every candidate's per-image predictions, named by its setting.
  saved = sorted(os.listdir(os.path.join(workdir, 'tuning')))
  assert len(saved) == 2 * len(tuning)
  best = next(r for r in rows if r['method'] == 'online/first_layer')['lr']
  assert f'gaussian_noise_online_first_layer_lr{float(best):g}_steps2_wd0.predictions.json' in saved

  # A rerun runs nothing: every tuning stream and row is read back.
  calls = []
  monkeypatch.setattr(runner.adapt, 'run_stream', lambda *a, **k: calls.append(a) or 1 / 0)
  runner.train_and_evaluate(config, workdir)
  assert calls == []


@pytest.mark.slow
def test_held_out_stream_resumes_where_it_stopped(tiny, monkeypatch):
  config, tmp = tiny
  config.settings = ('online/first_layer',)
  config.online.tune_lrs = (1e-2,)
  config.tune.steps = (1,)
  whole_dir, cut_dir = str(tmp / 'whole'), str(tmp / 'cut')
  runner.train_and_evaluate(config, whole_dir)
  # The same tuning result, read back, so only the held-out stream runs below.
  os.makedirs(cut_dir)
  shutil.copy(os.path.join(whole_dir, 'tuning.csv'), cut_dir)

  with monkeypatch.context() as m:
    m.setattr(T.StreamCheckpoint, 'save', _save_then_stop_at(10))
    with pytest.raises(_Stop):
      runner.train_and_evaluate(config, cut_dir)
  assert [r['method'] for r in _rows(os.path.join(cut_dir, 'results.csv'))] == ['no_adaptation']
  starts = []
  real = runner.adapt.run_stream
  monkeypatch.setattr(runner.adapt, 'run_stream',
                      lambda *a, **k: starts.append(k['start']) or real(*a, **k))
  runner.train_and_evaluate(config, cut_dir)
  assert starts == [10]
  keep = ('method', 'lr', 'hparam', 'val_acc', 'test_acc')
  assert ([{k: r[k] for k in keep} for r in _rows(os.path.join(cut_dir, 'results.csv'))]
          == [{k: r[k] for k in keep} for r in _rows(os.path.join(whole_dir, 'results.csv'))])
  name = 'streams/gaussian_noise_online_first_layer.predictions.json'
  assert (open(os.path.join(cut_dir, name)).read() == open(os.path.join(whole_dir, name)).read())


@pytest.mark.parametrize('field, value, message', [
    ('online.tune_lrs', (), 'online.tune_lrs: tuning needs learning rates'),
    ('tune.search', 'random', 'tune.search must be one of coordinate, grid'),
    ('tune.steps', (0,), 'tune.steps must be integers >= 1'),
    ('tune.images', 15, 'tune.images must be 0 (no tuning) or a positive multiple of 10'),
    ('settings', ('online/everything',), "settings: unknown setting 'online/everything'"),
    ('compare_with', 'table99', "compare_with: unknown table 'table99'"),
])
def test_bad_tuning_fields_are_one_line_errors(tiny, field, value, message):
  assert_stops_with_one_line(*tiny, field, value, message)


def test_untuned_configs_keep_their_fingerprints(tiny):
  config, _ = tiny
  config.tune.images = 0
  fields = runner.memo_result_fields(config)
  assert not [k for k in fields if k.startswith('tune.') or k.endswith('tune_lrs')]


@pytest.mark.slow
def test_episodic_search_shares_a_pass_and_scores_as_one_by_one(tiny, monkeypatch):
  config, tmp = tiny
  config.settings = ('episodic/last',)
  config.no_adaptation = False
  config.episodic.tune_lrs = (1e-2, 1e-3)
  config.tune.steps = (1,)
  config.tune.weight_decays = (0.0, 1e-2)
  shared, alone = str(tmp / 'shared'), str(tmp / 'alone')
  runner.train_and_evaluate(config, shared)
  monkeypatch.setattr(runner._Runner, '_adapt_together', lambda self, x, y, pairs: [
      self._adapt(x, y, 'episodic', option, s) for option, s in pairs])
  runner.train_and_evaluate(config, alone)
  a, b = (_rows(os.path.join(w, 'tuning.csv')) for w in (shared, alone))
  # lrs 1e-2 and 1e-3 in one pass; then weight decay 1e-2 alone (the only new candidate).
  assert [r['extra'].endswith('(one pass for 2 candidates)') for r in a] == [True, True, False]
  assert [(r['lr'], r['hparam'], r['test_acc']) for r in a] == [
      (r['lr'], r['hparam'], r['test_acc']) for r in b]
  for name in os.listdir(os.path.join(alone, 'tuning')):
    assert (open(os.path.join(shared, 'tuning', name)).read()
            == open(os.path.join(alone, 'tuning', name)).read())
  assert _rows(os.path.join(shared, 'results.csv'))[0]['test_acc'] == _rows(
      os.path.join(alone, 'results.csv'))[0]['test_acc']


@pytest.mark.slow
def test_episodic_held_out_streams_share_a_pass_equal_one_by_one_and_resume(tiny, monkeypatch):
  config, tmp = tiny
  config.settings = ('episodic/first_layer', 'episodic/last')
  config.tune.steps = (1,)
  shared, alone, cut = (str(tmp / d) for d in ('shared', 'alone', 'cut'))
  runner.train_and_evaluate(config, shared)
  with monkeypatch.context() as m:
    m.setattr(runner._Runner, 'one_step_episodic', lambda self, method, setting: False)
    runner.train_and_evaluate(config, alone)
  a, b = (_rows(os.path.join(w, 'results.csv')) for w in (shared, alone))
  assert [r['extra'].endswith('(one pass for 2 settings)') for r in a] == [False, True, True]
  keep = ('method', 'lr', 'hparam', 'val_acc', 'test_acc')
  assert [{k: r[k] for k in keep} for r in a] == [{k: r[k] for k in keep} for r in b]
  for name in os.listdir(os.path.join(alone, 'streams')):
    assert (open(os.path.join(shared, 'streams', name)).read()
            == open(os.path.join(alone, 'streams', name)).read())

  # Stopped after 10 of the 20 held-out images, the shared pass resumes at image 10.
  os.makedirs(cut)
  shutil.copy(os.path.join(shared, 'tuning.csv'), cut)
  with monkeypatch.context() as m:
    m.setattr(T.StreamCheckpoint, 'save', _save_then_stop_at(10))
    with pytest.raises(_Stop):
      runner.train_and_evaluate(config, cut)
  assert os.path.exists(os.path.join(
      cut, 'streams', 'gaussian_noise_episodic_first_layer+last.partial.npz'))
  starts = []
  real = runner.adapt.run_episodic_many
  monkeypatch.setattr(runner.adapt, 'run_episodic_many',
                      lambda *a, **k: starts.append(k['start']) or real(*a, **k))
  runner.train_and_evaluate(config, cut)
  assert starts == [10]
  assert ([{k: r[k] for k in keep} for r in _rows(os.path.join(cut, 'results.csv'))]
          == [{k: r[k] for k in keep} for r in a])
  assert sorted(os.listdir(os.path.join(cut, 'streams'))) == sorted(
      os.listdir(os.path.join(shared, 'streams')))


def test_tuning_baseline_scores_the_source_model_on_the_runners_tuning_images(tiny):
  from experiments.tools.memo_tuning_baseline import baseline
  config, _ = tiny
  (shift, seed, acc, top, share), = baseline(config, [0])
  plan = runner.make_plan(config)
  target = runner.to_arrays(plan.dataset.target('gaussian_noise'))
  idx, _ = T.split_tune_stream(target['label'], 10, config.num_images, 0, 10, runner.stream_subset)
  variables = plan.spec.load(config.init_checkpoint)
  preds = runner.surgery.train.predictions(
      runner.surgery.make_predict(plan.spec.module), variables['params'], {},
      target['image'][idx], 5)
  assert (shift, seed) == ('gaussian_noise', 0)
  assert acc == np.mean(preds == target['label'][idx])
  assert (top, share) == (np.bincount(preds).argmax(), np.bincount(preds).max() / 10)
  config.tune.images = 0
  with pytest.raises(SurgeryError, match='tunes nothing'):
    baseline(config, [0])
