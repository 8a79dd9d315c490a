"""The library on any Flax model: Linen with or without `train`, and Flax NNX.

Each case tunes one group with `surgical(adam)` for a few jitted steps and checks that
frozen leaves come back bitwise unchanged while tuned ones move.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import surgery

RNG = np.random.RandomState(0)
IMAGES = RNG.randint(0, 256, (16, 8, 8, 3)).astype(np.uint8)
LABELS = RNG.randint(0, 10, 16)
STEPS = 5


class LinenMLP(nn.Module):
  """No `train` argument."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(16, name='hidden')(x))
    return nn.Dense(10, name='head')(x)


MLP_GROUPS = [('hidden', r'^hidden/'), ('head', r'^head/')]


class LinenCNN(nn.Module):
  """Takes `train`, which BatchNorm and Dropout read."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, name='bn')(x)
    x = nn.relu(x).mean((1, 2))
    # Rate 0 keeps dropout in the graph without asking for a 'dropout' rng.
    x = nn.Dropout(0.0, deterministic=not train)(x)
    return nn.Dense(10, name='head')(x)


CNN_GROUPS = [('stem', r'^(conv|bn)/'), ('head', r'^head/')]


class NNXNet(nnx.Module):
  """Conv + BatchNorm + Dropout (with its own rng stream) + a list of Linear layers."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(4, 16, rngs=rngs), nnx.Linear(16, 10, rngs=rngs)])

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x))).mean((1, 2))
    return self.layers[1](self.drop(nnx.relu(self.layers[0](x))))


NNX_GROUPS = [('stem', r'^(conv|bn)/'), ('hidden', r'^layers/0/'), ('head', r'^layers/1/')]


def host(tree):
  """A host copy, so later steps cannot alias what we compare against."""
  return jax.tree_util.tree_map(np.array, jax.device_get(tree))


def tune(model, params, model_state, groups, spec, mesh=None):
  """`STEPS` jitted surgical Adam steps; (mask, final state, first-step loss)."""
  mask = surgery.trainable_mask(params, groups, spec)
  tx = surgery.surgical(optax.adam(1e-2), mask)
  step = surgery.make_train_step(model, tx, mesh=mesh)
  state = surgery.replicate(mesh, surgery.init_train_state(params, tx, model_state))
  images, labels = surgery.shard_batch(mesh, IMAGES, LABELS)
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, images, labels)
    losses.append(float(metrics['loss']))
    assert not np.asarray(metrics['nonfinite']).any()
  assert int(state.step) == STEPS
  return mask, state, losses[0]


def assert_bitwise(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def assert_surgical(before, after, mask):
  """Frozen leaves bitwise equal, tuned leaves moved, and both kinds present."""
  kinds = set()
  for (path, b), a, m in zip(jax.tree_util.tree_leaves_with_path(before),
                             jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(mask)):
    name = jax.tree_util.keystr(path)
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, name
    if m:
      assert not np.array_equal(a, b), f'tuned {name} did not move'
    else:
      assert a.tobytes() == b.tobytes(), f'frozen {name} changed'
    kinds.add(bool(m))
  assert kinds == {True, False}


def test_linen_without_train_argument():
  model = LinenMLP()
  assert not surgery.train.takes_train_flag(model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))['params']
  before = host(params)
  mask, state, _ = tune(model, params, {}, MLP_GROUPS, 'hidden')
  assert_surgical(before, state.params, mask)
  logits = surgery.make_predict(model)(state.params, {}, IMAGES)
  np.testing.assert_allclose(logits, model.apply({'params': state.params}, IMAGES / 255.0),
                             rtol=1e-5, atol=1e-6)


def test_linen_with_train_argument_and_batch_stats():
  model = LinenCNN()
  assert surgery.train.takes_train_flag(model)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  params, model_state = variables['params'], {'batch_stats': variables['batch_stats']}
  before, stats_before = host(params), host(model_state)
  mask, state, _ = tune(model, params, model_state, CNN_GROUPS, 'head')
  assert_surgical(before, state.params, mask)
  # `train=True` reached BatchNorm: its running statistics moved.
  for b, a in zip(jax.tree_util.tree_leaves(stats_before),
                  jax.tree_util.tree_leaves(state.model_state)):
    assert not np.array_equal(a, b)
  logits = surgery.make_predict(model)(state.params, state.model_state, IMAGES)
  assert logits.shape == (16, 10) and np.isfinite(np.asarray(logits)).all()


def nnx_setup():
  module = NNXNet(nnx.Rngs(0))
  model, params, model_state = surgery.nnx_model(module)
  return module, model, params, model_state


def test_nnx_paths_and_collections():
  _, model, params, model_state = nnx_setup()
  paths = [surgery.groups.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert paths == ['bn/bias', 'bn/scale', 'conv/bias', 'conv/kernel', 'layers/0/bias',
                   'layers/0/kernel', 'layers/1/bias', 'layers/1/kernel']
  assert set(model_state) == {'batch_stats', 'rngs'}
  assert surgery.group_sizes(params, NNX_GROUPS) == {'stem': 120, 'hidden': 80, 'head': 170}
  # Train mode turns Dropout on; eval mode is deterministic.
  x = IMAGES / 255.0
  variables = {'params': params, **model_state}
  train_out, _ = model.apply(variables, x, train=True, mutable=True)
  assert not np.allclose(train_out, model.apply(variables, x))
  np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


@pytest.mark.parametrize('spec', ['hidden', 'stem'])
def test_nnx_module(spec):
  module, model, params, model_state = nnx_setup()
  before, stats_before = host(params), host(model_state['batch_stats'])
  mask, state, _ = tune(model, params, model_state, NNX_GROUPS, spec)
  assert_surgical(before, state.params, mask)
  for b, a in zip(jax.tree_util.tree_leaves(stats_before),
                  jax.tree_util.tree_leaves(state.model_state['batch_stats'])):
    assert not np.array_equal(a, b)  # module.train() reached BatchNorm
  assert int(state.model_state['rngs']['drop']['rngs']['count']) == STEPS  # fresh masks

  # Training never touched the module; writing back makes it the tuned model.
  assert_bitwise(nnx.to_pure_dict(nnx.state(module, nnx.Param)), before)
  surgery.nnx_update(module, state.params, state.model_state)
  written = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  assert_surgical(before, written, mask)
  assert_bitwise(written, state.params)
  module.eval()
  logits = surgery.make_predict(model)(state.params, state.model_state, IMAGES)
  np.testing.assert_allclose(module(IMAGES / 255.0), logits, rtol=1e-5, atol=1e-6)


def test_nnx_module_with_train_argument():
  class Net(nnx.Module):

    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 10, rngs=rngs)

    def __call__(self, x, train: bool):
      return self.linear(x.mean((1, 2))) * (2.0 if train else 1.0)

  model, params, _ = surgery.nnx_model(Net(nnx.Rngs(0)))
  x = IMAGES / 255.0
  train_out, _ = surgery.train.forward(model, params, {}, x, train=True)
  eval_out, _ = surgery.train.forward(model, params, {}, x, train=False)
  np.testing.assert_allclose(train_out, 2 * eval_out, rtol=1e-6)


def test_nnx_data_parallel_matches_one_device():
  assert jax.device_count() == 8, 'conftest asks XLA for 8 host devices'
  module, model, params, model_state = nnx_setup()
  before = host(params)
  _, _, loss1 = tune(model, params, model_state, NNX_GROUPS, 'hidden')
  mesh = surgery.data_mesh()
  mask, state, loss8 = tune(model, params, model_state, NNX_GROUPS, 'hidden', mesh=mesh)
  assert len(jax.tree_util.tree_leaves(state.params)[0].sharding.device_set) == 8
  assert_surgical(before, state.params, mask)
  # Sharding changes neither BatchNorm's global-batch statistics nor the dropout mask.
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
