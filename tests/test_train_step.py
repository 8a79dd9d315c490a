"""The jitted train step and evaluation: data parallelism, BatchNorm modes, optimizers."""
import jax
import numpy as np
import optax
import pytest

import surgery
from surgery import models
from surgery.groups import path_str
from surgery.models.batchnorm import tuned_norm_layers

SPEC = models.create('resnet26')
MODEL = SPEC.module


@pytest.fixture(scope='module')
def params():
  return SPEC.init()['params']


def _batch(seed, n):
  rng = np.random.RandomState(seed)
  return rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.randint(0, 10, n)


@pytest.mark.parametrize('spec', ['all', 'block2'])
def test_data_parallel_step_matches_one_device(params, spec):
  assert jax.device_count() == 8, 'conftest asks XLA for 8 host devices'
  images, labels = _batch(0, 16)
  mask = surgery.trainable_mask(params, SPEC.groups, spec)
  tx = surgery.surgical(surgery.base_optimizer('adam', 1e-3, 1e-4), mask)

  single = surgery.make_train_step(MODEL, tx)
  s1, m1 = single(surgery.init_train_state(params, tx), images, labels)

  mesh = surgery.data_mesh()
  sharded = surgery.make_train_step(MODEL, tx, mesh=mesh)
  state = surgery.replicate(mesh, surgery.init_train_state(params, tx))
  x, y = surgery.shard_batch(mesh, images, labels)
  assert len(x.sharding.device_set) == 8
  s8, m8 = sharded(state, x, y)

  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  # Adam's first step is ~lr * sign(g): where |g| ~ eps, float noise moves it by a
  # fraction of lr, so compare updates to 1% of lr (1e-3).
  for a, b, p, m in zip(jax.tree_util.tree_leaves(s8.params), jax.tree_util.tree_leaves(s1.params),
                        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask)):
    np.testing.assert_allclose(np.asarray(a) - np.asarray(p), np.asarray(b) - np.asarray(p),
                               atol=1e-5)
    if not m:  # frozen: bitwise, on one device and on the mesh
      assert np.asarray(a).tobytes() == np.asarray(p).tobytes()
      assert np.asarray(b).tobytes() == np.asarray(p).tobytes()


def test_batch_must_split_over_devices(params):
  with pytest.raises(surgery.SurgeryError, match='divisible by 8'):
    surgery.shard_batch(surgery.data_mesh(), np.zeros((12, 32, 32, 3), np.uint8))


def test_evaluate_pads_the_last_batch(params):
  images, labels = _batch(1, 13)
  predict = surgery.make_predict(MODEL)
  expected = np.mean(np.argmax(predict(params, {}, images), -1) == labels)
  assert surgery.evaluate(predict, params, {}, images, labels, batch_size=8) == pytest.approx(expected)


def test_evaluate_default_batch_splits_over_the_mesh(params):
  # The default batch (512) is rounded up to the device count; 13 images pad to it.
  images, labels = _batch(4, 13)
  mesh = surgery.data_mesh()
  predict = surgery.make_predict(MODEL)
  want = np.argmax(np.asarray(predict(params, {}, images)), -1)
  got = surgery.train.predictions(surgery.make_predict(MODEL, mesh), params, {}, images, mesh=mesh)
  np.testing.assert_array_equal(got, want)
  acc = surgery.evaluate(surgery.make_predict(MODEL, mesh), params, {}, images, labels, mesh=mesh)
  assert acc == pytest.approx(np.mean(want == labels))
  # A batch size the mesh does not divide is rounded up too, not refused.
  acc7 = surgery.evaluate(surgery.make_predict(MODEL, mesh), params, {}, images, labels,
                          batch_size=7, mesh=mesh)
  assert acc7 == acc


def test_sgd_with_injected_hyperparameters_runs_in_a_jitted_step(params):
  # The runner's `--optimizer sgd`: inject_hyperparams traces `momentum`, and a truth
  # test on it used to raise TracerBoolConversionError inside the step.
  base = optax.inject_hyperparams(surgery.base_optimizer, static_args=('name', 'weight_decay'))(
      name='sgd', learning_rate=0.1, weight_decay=1e-4)
  mask = surgery.trainable_mask(params, SPEC.groups, SPEC.methods['block3'])
  tx = surgery.surgical(base, mask)
  state, metrics = surgery.make_train_step(MODEL, tx)(surgery.init_train_state(params, tx),
                                                      *_batch(3, 8))
  assert np.isfinite(float(metrics['loss'])) and not np.asarray(metrics['nonfinite']).any()
  for a, b, m in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(params),
                     jax.tree_util.tree_leaves(mask)):
    assert (np.asarray(a).tobytes() == np.asarray(b).tobytes()) == (not m)


# ----------------------------------------------------------------------------- BatchNorm

@pytest.fixture(scope='module')
def bn():
  spec = models.create('resnet26', norm='batch', depth=8)
  variables = spec.init()
  # Shifted away from the init values (0 and 1), so a layer that wrongly went to train
  # mode and came back could not look unchanged.
  stats = jax.tree_util.tree_map(lambda s: s + 0.5, variables['batch_stats'])
  return spec, variables['params'], {'batch_stats': stats}


def _bn_step(bn, module, tuned):
  spec, params, model_state = bn
  mask = surgery.trainable_mask(params, spec.groups, tuned)
  tx = surgery.surgical(surgery.base_optimizer('adam', 1e-3), mask)
  step = surgery.make_train_step(module, tx)
  state, metrics = step(surgery.init_train_state(params, tx, model_state), *_batch(2, 8))
  assert np.isfinite(float(metrics['loss']))
  return state, mask


def _moved_layers(before, after):
  """BatchNorm layers (paths) whose running statistics changed at all, and those
  whose statistics all changed."""
  moved, layers = set(), {}
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree_util.tree_leaves(after)):
    layer = path_str(path).rsplit('/', 1)[0]
    same = np.asarray(a).tobytes() == np.asarray(b).tobytes()
    layers.setdefault(layer, []).append(same)
    if not same:
      moved.add(layer)
  return moved, set(layers)


def test_batchnorm_default_module_keeps_every_statistic_bitwise(bn):
  spec, _, model_state = bn
  assert spec.module.bn_train_layers == ()  # the authors' eval-mode fine-tuning
  state, _ = _bn_step(bn, spec.module, 'all')
  for a, b in zip(jax.tree_util.tree_leaves(model_state), jax.tree_util.tree_leaves(state.model_state)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize('tuned', ['last', 'block3'])
def test_batchnorm_train_mode_moves_only_the_tuned_layers_statistics(bn, tuned):
  spec, params, model_state = bn
  mask = surgery.trainable_mask(params, spec.groups, tuned)
  layers = tuned_norm_layers(mask, model_state['batch_stats'])
  if tuned == 'last':
    assert layers == ('final_norm',)
  else:
    assert layers and all(layer.startswith('stage3/') for layer in layers)
  state, _ = _bn_step(bn, spec.module.clone(bn_train_layers=layers), tuned)
  moved, all_layers = _moved_layers(model_state['batch_stats'], state.model_state['batch_stats'])
  assert moved == set(layers) and len(all_layers) > len(layers)
  # Every statistic (mean and var) of a tuned layer moves.
  for path, a in jax.tree_util.tree_leaves_with_path(state.model_state['batch_stats']):
    if path_str(path).rsplit('/', 1)[0] in layers:
      b = dict(jax.tree_util.tree_leaves_with_path(model_state['batch_stats']))[path]
      assert not np.array_equal(np.asarray(a), np.asarray(b))
  logits = surgery.make_predict(spec.module)(state.params, state.model_state, _batch(2, 8)[0])
  assert logits.shape == (8, 10) and np.isfinite(np.asarray(logits)).all()


def test_batchnorm_classic_train_mode_moves_every_layer(bn):
  spec, _, model_state = bn
  # bn_train_layers=None: every layer follows `train`, as plain nn.BatchNorm.
  state, _ = _bn_step(bn, spec.module.clone(bn_train_layers=None), 'last')
  before = jax.tree_util.tree_leaves(model_state)
  after = jax.tree_util.tree_leaves(state.model_state)
  assert len(before) == len(after) > 0
  assert all(not np.array_equal(a, b) for a, b in zip(before, after))


def test_cosine_schedule_anneals_every_update_and_keeps_the_step_shared():
  """config.schedule='cosine' scales update t by (1 + cos(pi t / T)) / 2; the lr stays in
  the optimizer state, so one optimizer structure serves every lr."""
  import ml_collections
  from experiments.finetune import make_optimizer
  from surgery.methods.registry import Context
  config = ml_collections.ConfigDict(dict(optimizer='sgd', weight_decay=0.0, epochs=2,
                                          schedule='cosine'))
  method = type('M', (), {'wrap': None})()
  params = {'w': np.zeros(1, np.float32)}
  ctx = Context(steps_per_epoch=5, group_labels=None, groups=(), settings=None, hparam=None)
  steps = {}
  for lr in (0.1, 0.01):
    tx = make_optimizer(config, method, lr, {'w': True}, ctx)
    state, sizes = tx.init(params), []
    for _ in range(10):
      updates, state = tx.update({'w': np.ones(1, np.float32)}, state, params)
      sizes.append(-float(updates['w'][0]))
    steps[lr] = sizes
  momentum = [sum(0.9 ** k for k in range(t + 1)) for t in range(10)]
  want = [0.1 * m * (1 + np.cos(np.pi * t / 10)) / 2 for t, m in enumerate(momentum)]
  np.testing.assert_allclose(steps[0.1], want, rtol=1e-5)
  np.testing.assert_allclose(np.array(steps[0.01]) * 10, steps[0.1], rtol=1e-5)
