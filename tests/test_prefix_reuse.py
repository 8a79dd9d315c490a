"""Frozen-prefix reuse: training from cached activations of the frozen layers gives the
same parameters, curves and picks as training the whole model on images."""
import jax
import numpy as np
import optax
import pytest

import surgery
from configs import cifar10c
from experiments import finetune
from surgery import models
from surgery.methods import registry

SPEC = models.create('resnet26')


def _images(n, seed):
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, 10, n).astype(np.int32)
  # Class-dependent colours plus noise: a few steps have something to learn.
  images = np.clip(rng.normal(20 * labels[:, None, None, None], 50, (n, 32, 32, 3)), 0, 255)
  return images.astype(np.uint8), labels


@pytest.mark.parametrize('method, cut', [('last', 4), ('block3', 3), ('block2', 2)])
def test_params_after_steps_match_the_uncached_step(method, cut):
  variables = SPEC.init(0)
  params = variables['params']
  mask = surgery.trainable_mask(params, SPEC.groups, SPEC.methods[method])
  tx = surgery.surgical(optax.adam(1e-2), mask)
  x, y = _images(16, 0)
  features = np.asarray(surgery.make_predict(SPEC.module.clone(stop=cut))(params, {}, x))
  full = surgery.make_train_step(SPEC.module, tx)
  part = surgery.make_train_step(SPEC.module.clone(start=cut), tx)
  a = b = surgery.init_train_state(params, tx, {})
  for i in range(5):
    batch = slice(8 * (i % 2), 8 * (i % 2) + 8)
    a, ma = full(a, x[batch], y[batch])
    b, mb = part(b, features[batch], y[batch])
    assert float(ma['loss']) == pytest.approx(float(mb['loss']), abs=1e-5)
  moved = 0
  for pa, pb, p0 in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params),
                        jax.tree_util.tree_leaves(params)):
    np.testing.assert_allclose(pa, pb, atol=1e-5, rtol=0)
    moved += not np.array_equal(pa, p0)
  assert moved > 0


def _config(reuse):
  c = cifar10c.get_config()
  c.epochs, c.batch_size, c.eval_batch_size = 3, 16, 64
  c.reuse_frozen_prefix = reuse
  return c


def _assert_same_run(spec, variables, method, lr, cut):
  """One run with and one without the cache: the cached one used activations at `cut`
  only, and both pick the same epoch with the same val and test accuracy and losses."""
  params = variables['params']
  state = {k: v for k, v in variables.items() if k != 'params'}
  sets = (_images(48, 1), _images(32, 2), _images(40, 3))
  out = {}
  for reuse in (False, True):
    runner = finetune.Finetuner(spec, _config(reuse))
    out[reuse] = runner.run(params, state, registry.resolve(method, spec), lr, 0, *sets), runner
  ((f0, h0, _), uncached), ((f1, h1, _), cached) = out[False], out[True]
  assert sorted(cached._prefix) == [(cut, 0), (cut, 1), (cut, 2)] and not uncached._prefix
  assert (f0['best_epoch'], f0['val_acc'], f0['test_acc']) == (f1['best_epoch'], f1['val_acc'],
                                                               f1['test_acc'])
  for e0, e1 in zip(h0, h1):
    assert e0['train_loss_mean'] == pytest.approx(e1['train_loss_mean'], abs=1e-5)


@pytest.mark.parametrize('method, cut', [('last', 4), ('block2', 2)])
def test_a_run_picks_the_same_epoch_and_scores_the_same(method, cut):
  _assert_same_run(SPEC, SPEC.init(1), method, 1e-2, cut)


def test_methods_that_tune_the_first_layer_or_use_hooks_run_uncached():
  runner = finetune.Finetuner(SPEC, _config(True))
  params = SPEC.init(0)['params']
  for method, cut in (('all', 0), ('first_layer', 0), ('block1', 0), ('block2', 2),
                      ('last', 4), ('auto_rgn', 0)):
    m = registry.resolve(method, SPEC)
    mask = surgery.trainable_mask(params, SPEC.groups, m.groups)
    assert runner._cut(mask, m) == cut, method
  off = finetune.Finetuner(SPEC, _config(False))
  mask = surgery.trainable_mask(params, SPEC.groups, 'last')
  assert off._cut(mask, registry.resolve('last', SPEC)) == 0


TINY50 = dict(num_classes=10, new_head=True, width=2, stage_sizes=(1, 1, 1, 1), dtype='float32')


@pytest.mark.parametrize('method, cut', [('last', 5), ('block4', 4), ('block3', 3)])
def test_resnet50_with_batchnorm_state_gives_the_same_run(method, cut):
  spec = models.create('resnet50', **TINY50)
  _assert_same_run(spec, spec.init(2), method, 1e-2, cut)


def test_activations_over_the_memory_budget_are_not_cached(capsys):
  config = _config(True)
  config.prefix_cache_gb = 1e-4  # 105 kB: less than 120 images at 32x32x16 floats
  runner = finetune.Finetuner(SPEC, config)
  sets = (_images(48, 1), _images(32, 2), _images(40, 3))
  runner.run(SPEC.init(0)['params'], {}, registry.resolve('block2', SPEC), 1e-3, 0, *sets)
  assert not runner._prefix
  assert 'frozen prefix not cached' in capsys.readouterr().out


@pytest.mark.parametrize('method, cut', [('head', 3), ('block2', 2)])
def test_clip_vit_gives_the_same_run(method, cut):
  spec = models.create('clip_vit_b16', image_size=32, patch_size=8, width=64, layers=2,
                       heads=4, embed_dim=32, num_classes=10)
  _assert_same_run(spec, spec.init(3), method, 1e-3, cut)


def test_wrn_gives_the_same_run():
  spec = models.create('wrn28_10', depth=10, widen=1, new_head=True)
  _assert_same_run(spec, spec.init(4), 'block3', 1e-2, 3)


def test_arms_advanced_side_by_side_equal_runs_one_after_the_other():
  """`Finetuner.start` gives runs that a method can advance in turn (a probe over
  options): interleaved epoch by epoch, with their frozen prefixes cached at two cuts
  side by side, each ends exactly as the same run made alone."""
  spec = models.create('resnet26', depth=8)
  params, state = spec.init(2)['params'], {}  # one object: the cache keys on identity
  sets = (_images(40, 4), _images(20, 5), _images(20, 6))
  arms = [('last', 1e-2), ('block2', 1e-3), ('all', 1e-3)]
  alone = [finetune.Finetuner(spec, _config(True)).run(
      params, state, registry.resolve(m, spec), lr, 0, *sets) for m, lr in arms]
  runner = finetune.Finetuner(spec, _config(True))
  started = [runner.start(params, state, registry.resolve(m, spec), lr, 0, *sets)
             for m, lr in arms]
  for _ in range(runner.config.epochs):
    for arm in started:
      arm.epoch()
  # Tune and val activations at both cuts; the test set's only once a run finishes.
  assert sorted(runner._prefix) == [(2, 0), (2, 1), (4, 0), (4, 1)]
  for (f0, h0, r0), (f1, h1, r1) in zip(alone, (a.finish() for a in started)):
    assert f0 == f1 and h0 == h1 and r0 == r1
  assert sorted(runner._prefix) == [(c, i) for c in (2, 4) for i in range(3)]
