import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import surgery
from surgery.methods import (auto_snr, channel_variance_per_tensor, frozen_set, gradual_unfreeze,
                             l1_sp_penalty, normalise, per_example_grads, set_snr_weights,
                             snr_criterion, snr_per_tensor, snr_weights, unfreeze_order)
from surgery.models.resnet26 import GROUPS as RESNET26_GROUPS

tmap = jax.tree_util.tree_map


def _bits(x):
  return np.asarray(x).view(np.uint32)


# --- gradual unfreezing --------------------------------------------------------------

def _resnet_shaped(rng):
  """One small leaf per ResNet-26 group at its real path, so the real group map
  labels them; each starts with a -0.0, which `p + 0.0` would flip to +0.0."""
  def leaf(*shape):
    x = rng.randn(*shape).astype(np.float32)
    x.flat[0] = -0.0
    return jnp.asarray(x)
  return {'stem': {'conv': {'kernel': leaf(3, 2)}},
          'stage1': {'block0': {'conv1': {'kernel': leaf(2, 2)}}},
          'stage2': {'block0': {'norm1': {'scale': leaf(4)}}},
          'stage3': {'block1': {'conv2': {'kernel': leaf(2, 3)}}},
          'final_norm': {'bias': leaf(3)},
          'head': {'kernel': leaf(3, 2), 'bias': leaf(2)}}


def test_unfreeze_orders_follow_the_network():
  assert unfreeze_order('first_last', RESNET26_GROUPS) == (
      'first_layer', 'block1', 'block2', 'block3', 'last')
  assert unfreeze_order('last_first', RESNET26_GROUPS) == (
      'last', 'block3', 'block2', 'block1', 'first_layer')


@pytest.mark.parametrize('direction', ['first_last', 'last_first'])
def test_gradual_unfreeze_schedule_and_fresh_state(direction):
  rng = np.random.RandomState(0)
  params0 = _resnet_shaped(rng)
  labels = surgery.assign_groups(params0, RESNET26_GROUPS)
  order = unfreeze_order(direction, RESNET26_GROUPS)
  base = optax.chain(optax.add_decayed_weights(0.1), optax.adam(0.05))
  spe = 2
  tx = gradual_unfreeze(base, labels, order, steps_per_epoch=spe)

  @jax.jit
  def step(params, grads, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), updates, state

  flat_labels = jax.tree_util.tree_leaves(labels)
  params, state = params0, tx.init(params0)
  refs = [None] * len(flat_labels)  # per leaf: (params, base state) since its unfreezing
  for t in range((len(order) + 1) * spe):
    epoch = t // spe
    tuned = set(order[:epoch + 1])
    grads = tmap(lambda p: jnp.asarray(rng.randn(*p.shape).astype(np.float32)), params0)
    params, updates, state = step(params, grads, state)
    leaves = zip(flat_labels, jax.tree_util.tree_leaves(params0),
                 jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(updates),
                 jax.tree_util.tree_leaves(grads))
    for k, (group, p0, p, u, g) in enumerate(leaves):
      if group not in tuned:
        assert np.all(np.asarray(u) == 0), (t, group)
        np.testing.assert_array_equal(_bits(p), _bits(p0))  # bitwise, -0.0 included
        continue
      assert np.all(np.asarray(u) != 0), (t, group)
      # The group's optimizer starts at its unfreezing: a fresh base run on the same
      # gradients from then on gives the same updates (Adam bias correction from 1,
      # no weight decay accumulated while frozen).
      if refs[k] is None:
        refs[k] = (p0, base.init(p0))
      ref_p, ref_s = refs[k]
      ref_u, ref_s = base.update(g, ref_s, ref_p)
      np.testing.assert_allclose(u, ref_u, rtol=1e-5, atol=1e-7)
      refs[k] = (ref_p + ref_u, ref_s)
  assert all(r is not None for r in refs)  # every group was unfrozen in the end


def test_gradual_unfreeze_rejects_an_order_missing_a_group():
  params = _resnet_shaped(np.random.RandomState(0))
  labels = surgery.assign_groups(params, RESNET26_GROUPS)
  with pytest.raises(ValueError, match='missing'):
    gradual_unfreeze(optax.sgd(1.0), labels, ('first_layer', 'block1', 'block2', 'block3'), 1)


# --- L1-SP -----------------------------------------------------------------------------

def test_l1_sp_value_and_gradient():
  rng = np.random.RandomState(1)
  params0 = {'a': jnp.asarray(rng.randn(3, 4), jnp.float32), 'b': jnp.asarray(rng.randn(5), jnp.float32)}
  # Offsets of +-[0.1, 1): the distance is never 0, where |.| has no gradient.
  offset = tmap(lambda p: np.sign(rng.randn(*p.shape)) * rng.uniform(0.1, 1.0, p.shape), params0)
  params = tmap(lambda p, o: p + jnp.asarray(o, jnp.float32), params0, offset)
  lam = 0.3
  value, grads = jax.jit(jax.value_and_grad(l1_sp_penalty(params0, lam)))(params)
  diffs = [np.asarray(p) - np.asarray(p0) for p, p0 in
           zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params0))]
  assert float(value) == pytest.approx(lam * sum(np.abs(d).sum() for d in diffs), rel=1e-5)
  for g, d in zip(jax.tree_util.tree_leaves(grads), diffs):
    np.testing.assert_array_equal(g, lam * np.sign(d).astype(np.float32))


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(x)


def test_l1_sp_in_the_train_step():
  model = _Linear()
  x = jnp.asarray(np.random.RandomState(2).rand(4, 5), jnp.float32)
  y = jnp.array([0, 1, 2, 1])
  params0 = model.init(jax.random.PRNGKey(0), x)['params']
  params = tmap(lambda p: p + 0.5, params0)
  lr, lam = 0.1, 0.2
  step = surgery.make_train_step(model, optax.sgd(lr), extra_loss=l1_sp_penalty(params0, lam))
  state, _ = step(surgery.init_train_state(params, optax.sgd(lr)), x, y)
  ce = jax.grad(lambda p: surgery.train.cross_entropy(model.apply({'params': p}, x), y))(params)
  expected = tmap(lambda p, g: p - lr * (g + lam * 1.0), params, ce)  # sign(+0.5) = 1
  for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --- Auto-SNR --------------------------------------------------------------------------

# Per-example gradients of 4 examples with known means and (population) variances.
HAND = {
    # entry 0: mean 2, var 1 -> 4; entry 1: mean 1, var 1 -> 1; tensor: 2.5
    'w': jnp.array([[1., 0.], [3., 2.], [1., 0.], [3., 2.]]),
    'b': jnp.array([[1.], [-1.], [1.], [-1.]]),  # mean 0 -> 0
    'c': jnp.array([[2.], [2.], [2.], [4.]]),  # mean 2.5, var 0.75 -> 25/3
}


def test_snr_matches_hand_computation_and_threshold():
  snr = jax.jit(snr_per_tensor)(HAND)
  assert float(snr['w']) == pytest.approx(2.5, rel=1e-6)
  assert float(snr['b']) == pytest.approx(0.0, abs=1e-7)
  assert float(snr['c']) == pytest.approx(25 / 3, rel=1e-6)
  norm = jax.jit(normalise)(snr)
  assert float(norm['w']) == pytest.approx(0.3, rel=1e-6)
  assert float(norm['c']) == 1.0
  assert frozen_set(norm, 0.31) == {'w': True, 'b': True, 'c': False}
  assert frozen_set(norm, 0.29) == {'w': False, 'b': True, 'c': False}
  assert frozen_set(norm, 1.0) == {'w': True, 'b': True, 'c': False}  # strict <
  minmax = normalise({'x': jnp.array(2.0), 'y': jnp.array(4.0), 'z': jnp.array(6.0)}, 'minmax')
  assert [float(minmax[k]) for k in 'xyz'] == [0.0, 0.5, 1.0]


def test_snr_of_a_noiseless_gradient_is_finite():
  snr = snr_per_tensor({'d': jnp.full((4, 3), 5.0)})
  assert float(snr['d']) == pytest.approx(25 / 1e-8, rel=1e-5)


def test_channel_variance_criterion_matches_hand_computation():
  # Flax kernel [in, out]: the variance runs over `out` (PyTorch's dim 0), unbiased.
  # Rows [1, 2] and [3, 5] have variances 0.5 and 2: mean(1/.5, 4/.5, 9/2, 25/2) = 6.75.
  # Bias [1, 2, 3] has variance 1: mean(1, 4, 9) = 14/3.
  crit = jax.jit(channel_variance_per_tensor)({'k': jnp.array([[1., 2.], [3., 5.]]),
                                               'b': jnp.array([1., 2., 3.])})
  assert float(crit['k']) == pytest.approx(6.75, rel=1e-6)
  assert float(crit['b']) == pytest.approx(14 / 3, rel=1e-6)


def _mlp():
  rng = np.random.RandomState(3)
  params = {'dense1': {'kernel': rng.randn(3, 5), 'bias': rng.randn(5)},
            'norm': {'scale': rng.randn(5)},
            'dense2': {'kernel': rng.randn(5, 2), 'bias': rng.randn(2)}}
  params = tmap(lambda p: jnp.asarray(p, jnp.float32), params)
  batch = {'x': jnp.asarray(rng.randn(7, 3), jnp.float32), 'y': jnp.asarray(rng.randn(7, 2), jnp.float32)}
  return params, batch


def _example_loss(params, ex):
  h = jnp.tanh(ex['x'] @ params['dense1']['kernel'] + params['dense1']['bias'])
  out = (h * params['norm']['scale']) @ params['dense2']['kernel'] + params['dense2']['bias']
  return jnp.sum((out - ex['y']) ** 2)


def _loop_grads(params, batch):
  n = len(batch['x'])
  per = [jax.grad(_example_loss)(params, tmap(lambda a: a[i], batch)) for i in range(n)]
  return tmap(lambda *gs: np.stack(gs), *per)


def test_per_example_grads_match_a_loop_and_chunking():
  params, batch = _mlp()
  loop = _loop_grads(params, batch)
  whole = jax.jit(lambda p, b: per_example_grads(_example_loss, p, b))(params, batch)
  # 7 examples in chunks of 3: the short last chunk must be handled too.
  chunked = jax.jit(lambda p, b: per_example_grads(_example_loss, p, b, chunk_size=3))(params, batch)
  for lp, w, c in zip(*(jax.tree_util.tree_leaves(t) for t in (loop, whole, chunked))):
    assert w.shape == lp.shape
    np.testing.assert_allclose(w, lp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, w, rtol=1e-5, atol=1e-6)  # other chunks, other kernels


def _between(values):
  """A threshold midway between the 2nd and 3rd smallest values: away from float32
  rounding at the boundary."""
  v = sorted(values)
  return (v[1] + v[2]) / 2


def test_snr_weights_freeze_exactly_the_tensors_under_the_threshold():
  params, batch = _mlp()
  loop = _loop_grads(params, batch)
  # Reference in numpy from the loop gradients, norm tensor excluded.
  snr = {k: float(np.mean(g.mean(0) ** 2 / (g.var(0) + 1e-8)))
         for k, g in zip(['d1b', 'd1k', 'd2b', 'd2k', 'norm'], jax.tree_util.tree_leaves(loop))}
  del snr['norm']
  top = max(snr.values())
  threshold = _between(v / top for v in snr.values())
  expected = {k: float(v / top >= threshold) for k, v in snr.items()}
  weights = snr_weights(_example_loss, params, batch, threshold, chunk_size=3,
                        exclude=surgery.is_norm_tensor)
  got = dict(zip(['d1b', 'd1k', 'd2b', 'd2k', 'norm'], map(float, jax.tree_util.tree_leaves(weights))))
  assert got == {**expected, 'norm': 0.0}


def test_channel_variance_variant_thresholds_the_batch_mean_criterion():
  params, batch = _mlp()
  mean_grads = tmap(lambda g: g.mean(0), _loop_grads(params, batch))
  leaves = jax.tree_util.tree_leaves(channel_variance_per_tensor(mean_grads))
  crit = {k: float(v) for k, v in zip(['d1b', 'd1k', 'd2b', 'd2k', 'norm'], leaves)}
  top = max(crit.values())
  threshold = _between(v / top for v in crit.values())
  weights = snr_weights(_example_loss, params, batch, threshold, variant='channel_variance')
  got = dict(zip(crit, map(float, jax.tree_util.tree_leaves(weights))))
  assert got == {k: float(v / top >= threshold) for k, v in crit.items()}
  assert 0 < sum(got.values()) < len(got)


@pytest.mark.parametrize('variant', ['released', 'nope'])
def test_unknown_snr_variant_is_a_user_error_naming_the_valid_ones(variant):
  # 'released' was this variant's old name: it did not do what the released code does.
  params, batch = _mlp()
  valid = r"valid: \['paper', 'channel_variance'\]"
  with pytest.raises(surgery.errors.SurgeryError, match=valid):
    snr_criterion(_example_loss, params, batch, variant=variant)
  with pytest.raises(surgery.errors.SurgeryError, match=f"variant '{variant}'"):
    snr_weights(_example_loss, params, batch, 0.5, variant=variant)


def test_auto_snr_zeroes_frozen_updates_inside_a_surgical_partition():
  params = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'b': jnp.array([-0.0, -0.5]),
            'c': jnp.array([0.1, 0.2])}
  mask = {'w': True, 'b': True, 'c': False}
  tx = surgery.surgical(auto_snr(optax.adam(0.1)), mask)
  update = jax.jit(tx.update)
  grads = [{'w': s * jnp.array([[0.3, 0.1], [-0.2, 0.4]]), 'b': s * jnp.array([0.05, 0.2]),
            'c': jnp.array([1.0, 1.0])} for s in (1.0, -2.0, 0.5)]
  state = set_snr_weights(tx.init(params), {'w': 1.0, 'b': 0.0, 'c': 1.0})
  p = params
  for g in grads[:2]:
    updates, state = update(g, state, p)
    p = optax.apply_updates(p, updates)  # 'b' stays bitwise through its -0.0 update
    np.testing.assert_array_equal(_bits(p['b']), _bits(params['b']))  # -0.0 kept
    np.testing.assert_array_equal(updates['c'], 0.0)
  ref_tx = optax.adam(0.1)
  ref_s = ref_tx.init(params['w'])
  for g in grads[:2]:
    ref_u, ref_s = ref_tx.update(g['w'], ref_s)
  np.testing.assert_allclose(updates['w'], ref_u, rtol=1e-6)
  # Unfrozen again, 'b' steps with the moments it gathered while frozen (as torch
  # Adam at lr 0 would).
  state = set_snr_weights(state, {'w': 1.0, 'b': 1.0, 'c': 1.0})
  updates, _ = update(grads[2], state, p)
  assert update._cache_size() == 1  # a refresh does not recompile the step
  ref_s = ref_tx.init(params['b'])
  for g in grads:
    ref_u, ref_s = ref_tx.update(g['b'], ref_s)
  np.testing.assert_allclose(updates['b'], ref_u, rtol=1e-6)
