import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import surgery
from surgery import models

SPEC = models.create('resnet26')
MODEL = SPEC.module


@pytest.fixture(scope='module')
def params():
  return SPEC.init()['params']


def _batch(seed=0, n=8):
  rng = np.random.RandomState(seed)
  return rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.randint(0, 10, n)


def _tx(params, spec, name='adam'):
  mask = surgery.trainable_mask(params, SPEC.groups, spec)
  return surgery.surgical(surgery.base_optimizer(name, 1e-2, weight_decay=1e-4), mask), mask


@pytest.mark.parametrize('name', ['adam', 'adamw', 'sgd'])
def test_frozen_leaves_bitwise_unchanged_after_10_steps(params, name):
  # A -0.0 among frozen weights: p + 0.0 would flip its sign bit.
  params = jax.tree_util.tree_map(lambda p: p, params)
  params['stage2']['block0']['conv1']['kernel'] = (
      params['stage2']['block0']['conv1']['kernel'].at[0, 0, 0, 0].set(-0.0))
  tx, mask = _tx(params, SPEC.methods['block1'], name)
  before = jax.tree_util.tree_map(np.array, params)
  step = surgery.make_train_step(MODEL, tx)
  state = surgery.init_train_state(params, tx)
  for i in range(10):
    state, _ = step(state, *_batch(i))
  for b, a, m in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params),
                     jax.tree_util.tree_leaves(mask)):
    if m:
      assert not np.array_equal(b, np.asarray(a)), 'a tuned leaf did not move'
    else:
      assert b.tobytes() == np.asarray(a).tobytes()


def test_frozen_leaves_have_no_optimizer_state(params):
  sizes = {}
  for spec in ('all', 'last'):
    tx, _ = _tx(params, spec)
    sizes[spec] = surgery.state_bytes(tx.init(params))
  n_all = surgery.count_params(params)
  assert sizes['all'] >= 2 * 4 * n_all  # Adam's two moments
  assert sizes['last'] <= 0.01 * sizes['all']


def _step_flops(params, spec):
  tx, mask = _tx(params, spec)
  step = surgery.make_train_step(MODEL, tx)
  state = surgery.init_train_state(params, tx)
  cost = step.lower(state, *_batch()).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost['flops']


def test_frozen_gradients_are_not_computed(params):
  # Forward ~ 1/3 of a full step; tuning only the head leaves the forward and almost
  # nothing else, so its step must cost well under half of tuning everything.
  flops_all = _step_flops(params, 'all')
  flops_last = _step_flops(params, 'last')
  flops_block3 = _step_flops(params, 'block3')
  assert flops_last < 0.45 * flops_all
  assert flops_last < flops_block3 < flops_all


def test_unknown_optimizer_is_a_user_error():
  with pytest.raises(surgery.SurgeryError, match='adamw'):
    surgery.base_optimizer('lamb')


def test_partition_matches_plain_adam_on_tuned_leaves():
  params = {'a': jnp.ones(3), 'b': jnp.full(2, 2.0)}
  grads = {'a': jnp.array([0.1, -0.2, 0.3]), 'b': jnp.array([1.0, 1.0])}
  tx = surgery.surgical(optax.adam(0.1), {'a': True, 'b': False})
  updates, _ = tx.update(grads, tx.init(params), params)
  ref, _ = optax.adam(0.1).update(grads['a'], optax.adam(0.1).init(params['a']))
  np.testing.assert_array_equal(updates['a'], ref)
  np.testing.assert_array_equal(updates['b'], 0.0)
  # -0.0, so that optax.apply_updates keeps every frozen value's bits, -0.0 included.
  assert np.signbit(np.asarray(updates['b'])).all()
  frozen = jnp.array([-0.0, 1.5])
  out = optax.apply_updates({'b': frozen}, {'b': updates['b']})['b']
  assert np.asarray(out).tobytes() == np.asarray(frozen).tobytes()
