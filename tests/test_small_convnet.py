"""surgery/models/small_convnet.py, added as one file: the registry finds it, its groups
cover every parameter, and the unchanged runner tunes it surgically."""
import csv

import jax
import numpy as np
import optax
import pytest

import surgery
from configs import cifar10c
from experiments import sweep
from surgery import models
from surgery.checkpoints import save_params
from surgery.errors import SurgeryError
from surgery.groups import assign_groups, group_names, trainable_mask
from tests.test_main import _write_folder


def test_found_by_name_with_every_parameter_in_one_group():
  assert 'small_convnet' in models.names()
  spec = models.create('small_convnet', width=8)
  params = spec.init(0)['params']
  labels = jax.tree_util.tree_leaves(assign_groups(params, spec.groups))  # raises if uncovered
  assert set(labels) == set(group_names(spec.groups)) == {'block1', 'block2', 'block3', 'last'}
  logits = spec.module.apply({'params': params}, np.zeros((2, 32, 32, 3), np.float32))
  assert logits.shape == (2, 10)
  with pytest.raises(SurgeryError, match='no option'):
    models.create('small_convnet', depth=3)


def test_frozen_blocks_stay_bitwise_under_a_surgical_step():
  spec = models.create('small_convnet', width=8)
  params = spec.init(0)['params']
  mask = trainable_mask(params, spec.groups, 'block2')
  tx = surgery.surgical(optax.adam(1e-2), mask)
  step = surgery.make_train_step(spec.module, tx)
  state = surgery.init_train_state(params, tx, {})
  x = np.random.RandomState(0).randint(0, 255, (8, 32, 32, 3)).astype(np.uint8)
  y = np.arange(8, dtype=np.int32) % 10
  state, _ = step(state, x, y)
  for m, a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (mask, params, state.params))):
    assert (np.asarray(a).tobytes() != np.asarray(b).tobytes()) == m


def test_the_runner_tunes_it_from_the_config_alone(tmp_path, monkeypatch):
  _write_folder(tmp_path / 'data', 'test', 4, 0)
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = cifar10c.get_config()
  config.data_dir = str(tmp_path / 'data')
  config.model.name = 'small_convnet'
  config.corruptions, config.methods = ('gaussian_noise',), ('all', 'block1', 'last', 'cross_val')
  config.lrs, config.last_lrs, config.epochs = (1e-3,), (1e-2,), 1
  config.batch_size = config.eval_batch_size = 16
  config.tune_per_class, config.val_per_class = 2, 1
  spec = models.create('small_convnet')
  config.init_checkpoint = save_params(str(tmp_path / 'source'), spec.init()['params'])
  sweep.train_and_evaluate(config, str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert {r['method'] for r in rows} == {'all', 'block1', 'last', 'block2', 'block3'}
  assert '| cross_val |' in (tmp_path / 'work' / 'summary.md').read_text()
