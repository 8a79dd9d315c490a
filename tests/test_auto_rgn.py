import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import surgery

PARAMS = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'b': jnp.array([0.5, -0.5])}


def _grads(scale=1.0):
  return {'w': scale * jnp.array([[0.3, 0.1], [-0.2, 0.4]]), 'b': scale * jnp.array([0.05, 0.2])}


def _rgn(g, p):
  return {k: float(np.linalg.norm(g[k]) / np.linalg.norm(p[k])) for k in p}


def test_update_ratio_to_adam_is_the_normalised_rgn():
  tx = surgery.auto_rgn(optax.adam(1e-2))
  updates, state = jax.jit(tx.update)(_grads(), tx.init(PARAMS), PARAMS)
  ref, _ = optax.adam(1e-2).update(_grads(), optax.adam(1e-2).init(PARAMS), PARAMS)
  rgn = _rgn(_grads(), PARAMS)
  top = max(rgn.values())
  for k in PARAMS:
    np.testing.assert_allclose(np.asarray(updates[k]) / np.asarray(ref[k]), rgn[k] / top, rtol=1e-6)
    np.testing.assert_allclose(state.weights[k], rgn[k] / top, rtol=1e-6)
  assert max(float(w) for w in jax.tree_util.tree_leaves(state.weights)) == pytest.approx(1.0)


def test_weights_refresh_per_period_from_window_mean():
  tx = surgery.auto_rgn(optax.sgd(1.0), refresh_every=3, window=2)
  update = jax.jit(tx.update)
  state = tx.init(PARAMS)
  g0, g1, g2, g3 = _grads(), {'w': _grads()['w'], 'b': 4 * _grads()['b']}, _grads(9.0), _grads()
  expected = []
  for g in (g0, g1, g2, g3):
    _, state = update(g, state, PARAMS)
    expected.append({k: float(state.weights[k]) for k in PARAMS})
  r0, r1 = _rgn(g0, PARAMS), _rgn(g1, PARAMS)
  mean = {k: (r0[k] + r1[k]) / 2 for k in PARAMS}
  norm = {k: mean[k] / max(mean.values()) for k in PARAMS}
  for k in PARAMS:
    assert expected[1][k] == pytest.approx(norm[k], rel=1e-6)
    assert expected[2][k] == pytest.approx(norm[k], rel=1e-6)  # outside the window: held
    assert expected[3][k] == pytest.approx(r0[k] / max(r0.values()), rel=1e-6)  # new period


def test_excluded_tensors_get_zero_weight_and_leave_the_normaliser():
  params = {'conv': PARAMS['w'], 'norm1': {'scale': PARAMS['b']}}
  grads = {'conv': _grads()['w'], 'norm1': {'scale': 100 * _grads()['b']}}
  tx = surgery.auto_rgn(optax.sgd(1.0), exclude=surgery.is_norm_tensor)
  updates, state = tx.update(grads, tx.init(params), params)
  assert float(state.weights['conv']) == pytest.approx(1.0)
  assert float(state.weights['norm1']['scale']) == 0.0
  np.testing.assert_array_equal(updates['norm1']['scale'], 0.0)


def test_inside_a_surgical_partition():
  tx = surgery.surgical(surgery.auto_rgn(optax.adam(1e-2)), {'w': True, 'b': False})
  updates, _ = jax.jit(tx.update)(_grads(), tx.init(PARAMS), PARAMS)
  np.testing.assert_array_equal(updates['b'], 0.0)
  ref, _ = optax.adam(1e-2).update(_grads()['w'], optax.adam(1e-2).init(PARAMS['w']))
  np.testing.assert_allclose(updates['w'], ref, rtol=1e-6)  # the only tensor: weight 1


def test_bad_cadence():
  with pytest.raises(ValueError, match='window'):
    surgery.auto_rgn(optax.adam(1e-3), refresh_every=2, window=3)


def _run(tx, grads, params=PARAMS, state=None):
  """State after feeding `grads` (a list) through `tx` at fixed params."""
  update = jax.jit(tx.update)
  state = tx.init(params) if state is None else state
  for g in grads:
    _, state = update(g, state, params)
  return state


def test_reset_inner_restarts_the_inner_state_at_each_refresh():
  grads = [_grads(s) for s in (1.0, -2.0, 0.5, 3.0)]
  adam = optax.adam(1e-2)
  _, fresh = adam.update(grads[3], adam.init(PARAMS), PARAMS)
  reset = _run(surgery.auto_rgn(adam, refresh_every=3, reset_inner=True), grads).inner_state
  kept = _run(surgery.auto_rgn(adam, refresh_every=3), grads).inner_state
  assert int(reset[0].count) == 1
  for k in PARAMS:
    np.testing.assert_allclose(reset[0].mu[k], fresh[0].mu[k], rtol=1e-6)
    np.testing.assert_allclose(reset[0].nu[k], fresh[0].nu[k], rtol=1e-6)
  assert int(kept[0].count) == 4  # the default carries the moments over
  assert not np.allclose(kept[0].mu['w'], fresh[0].mu['w'])
  # Within a period nothing is reset.
  mid = _run(surgery.auto_rgn(adam, refresh_every=3, reset_inner=True), grads[:3]).inner_state
  assert int(mid[0].count) == 3


def test_reset_inner_keeps_an_injected_learning_rate():
  tx = surgery.auto_rgn(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
                        refresh_every=2, reset_inner=True)
  state = tx.init(PARAMS)
  inner = state.inner_state
  # As a compiled step shared across an lr grid sets it: in the state, after init.
  state = state._replace(inner_state=inner._replace(
      hyperparams={**inner.hyperparams, 'learning_rate': jnp.asarray(0.5)}))
  inner = _run(tx, [_grads()] * 3, state=state).inner_state
  assert float(inner.hyperparams['learning_rate']) == 0.5
  assert int(inner.count) == 3  # the schedule's step count runs on
  assert int(inner.inner_state[0].count) == 1  # the moments were reset


def test_relative_grad_norms_mark_zero_tensors_and_bad_gradients():
  rgn = surgery.relative_grad_norms(
      {'z': jnp.ones(2), 'zz': jnp.zeros(2), 'nan': jnp.array([jnp.nan, 1.0])},
      {'z': jnp.zeros(2), 'zz': jnp.zeros(2), 'nan': jnp.ones(2)})
  assert float(rgn['z']) == np.inf
  assert float(rgn['zz']) == np.inf  # 0 / 0: still a zero tensor, not a bad gradient
  assert np.isnan(rgn['nan'])


def test_a_zero_tensor_gets_full_weight_and_leaves_the_normaliser():
  params = {**PARAMS, 'z': jnp.zeros(2)}
  grads = {**_grads(), 'z': jnp.array([0.3, -0.1])}
  tx = surgery.auto_rgn(optax.sgd(1.0))
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  _, ref = tx.update(_grads(), tx.init(PARAMS), PARAMS)
  assert float(state.weights['z']) == 1.0
  for k in PARAMS:
    assert float(state.weights[k]) == pytest.approx(float(ref.weights[k]), rel=1e-6)


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_a_non_finite_gradient_leaves_the_other_weights_alone(bad):
  params = {**PARAMS, 'n': jnp.array([1.0, 2.0])}
  grads = {**_grads(), 'n': jnp.array([bad, 0.1])}
  tx = surgery.auto_rgn(optax.sgd(1.0))
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  _, ref = tx.update(_grads(), tx.init(PARAMS), PARAMS)
  assert float(state.weights['n']) == 0.0
  for k in PARAMS:
    assert np.isfinite(state.weights[k])
    assert float(state.weights[k]) == pytest.approx(float(ref.weights[k]), rel=1e-6)


def test_the_fig6_section_names_picked_runs_whose_weights_are_missing(tmp_path):
  """A folder rebuilt from results.csv alone keeps its Fig. 6 heading and says which
  shifts lack weights, rather than dropping the section; shifts with weights plot."""
  import json
  from surgery import models
  from surgery.methods import auto_rgn, registry
  groups = models.create('resnet26', depth=8).groups
  rows = [dict(shift=s, method='auto_rgn', lr=lr, hparam='', seed='0', val_acc=acc)
          for s in ('snow', 'fog') for lr, acc in (('0.001', '0.7'), ('0.0001', '0.6'))]
  ctx = registry.ReportContext(str(tmp_path), rows, ['snow', 'fog'], groups, 'acc')
  lines = auto_rgn.METHOD.report(ctx)
  assert lines[0] == '## Auto-RGN weights accumulated over training (Fig. 6)'
  assert 'No weights in auto_rgn/ for the picked run of: snow, fog' in '\n'.join(lines)
  assert not (tmp_path / 'auto_rgn_weights.png').exists()

  (tmp_path / 'auto_rgn').mkdir()  # the picked run (lr 1e-3) of snow wrote its weights
  (tmp_path / 'auto_rgn' / 'snow_lr0.001_seed0.json').write_text(json.dumps(
      {'tensors': ['stage1/block0/conv1/kernel', 'head/kernel'],
       'weights': [[1.0, 0.5], [0.8, 0.2]]}))
  text = '\n'.join(auto_rgn.METHOD.report(ctx))
  assert 'No weights in auto_rgn/ for the picked run of: fog (' in text
  assert '| block1 | **1.80** |' in text
  assert (tmp_path / 'auto_rgn_weights.png').stat().st_size > 1000
  assert auto_rgn.METHOD.report(registry.ReportContext(str(tmp_path), [], ['snow'], groups,
                                                       'acc')) == []
