"""surgery/methods/llrd.py, added as one file: the runner finds it, sweeps its decay and
scales each group's update by decay ** (depth from the head)."""
import csv

import jax
import jax.numpy as jnp
import numpy as np
import optax

import surgery
from configs import cifar10c
from experiments import sweep
from experiments.plan import make_plan
from surgery import models
from surgery.checkpoints import save_params
from surgery.groups import assign_groups, trainable_mask
from surgery.methods import registry
from tests.test_main import _write_folder
from surgery.methods.llrd import depth_scales

SPEC = models.create('resnet26', depth=8)


def test_depth_scales_follow_network_order_from_the_head():
  assert depth_scales(SPEC.groups, 0.5) == {'last': 1.0, 'block3': 0.5, 'block2': 0.25,
                                            'block1': 0.125, 'first_layer': 0.0625}


def test_each_group_moves_by_its_scaled_lr_and_frozen_leaves_stay_bitwise():
  params = SPEC.init(0)['params']
  method = registry.resolve('llrd', SPEC)
  labels = assign_groups(params, SPEC.groups)
  ctx = registry.Context(1, labels, SPEC.groups, registry.settings(method, {}), 0.5)
  mask = trainable_mask(params, SPEC.groups, 'block2,block3,last')
  tx = surgery.surgical(method.wrap(optax.sgd(0.1), ctx), mask)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  scales = depth_scales(SPEC.groups, 0.5)
  for g, m, p, q in zip(*(jax.tree_util.tree_leaves(t) for t in (labels, mask, params, new))):
    if m:
      np.testing.assert_allclose(np.asarray(p - q), 0.1 * scales[g], rtol=1e-5)
    else:
      assert np.asarray(q).tobytes() == np.asarray(p).tobytes(), g


def _tiny_config(tmp_path, monkeypatch):
  _write_folder(tmp_path / 'data', 'test', 5, 0)
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = cifar10c.get_config()
  config.data_dir = str(tmp_path / 'data')
  config.model.resnet26.depth = 8
  config.corruptions, config.methods, config.lrs = ('gaussian_noise',), ('llrd',), (1e-3,)
  config.epochs, config.batch_size, config.eval_batch_size = 1, 16, 16
  config.tune_per_class, config.val_per_class = 2, 1
  config.init_checkpoint = save_params(str(tmp_path / 'source'), SPEC.init()['params'])
  return config


def test_the_runner_sweeps_the_decay_from_the_method_file_alone(tmp_path, monkeypatch):
  config = _tiny_config(tmp_path, monkeypatch)
  plan = make_plan(config)
  assert [r.hparam for r in plan.runs] == ['decay=0.3', 'decay=0.5', 'decay=0.7']
  assert 'llrd' in registry.names(SPEC) and 'llrd.decays' in registry.grid_fields()
  assert not any(k.startswith('llrd') for k in plan.result_fields)  # a run axis, not a setting
  sweep.train_and_evaluate(config, str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['hparam'] for r in rows) == ['decay=0.3', 'decay=0.5', 'decay=0.7']
  assert '| llrd |' in (tmp_path / 'work' / 'summary.md').read_text()
