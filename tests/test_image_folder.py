"""surgery/datasets/image_folder.py, added as one file: a dataset generated here as
image-folder trees, found by name, split per class, and run by the unchanged runner."""
import csv
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import cifar10c
from experiments import sweep
from experiments.plan import make_plan
from surgery import datasets, models
from surgery.checkpoints import save_params
from surgery.errors import SurgeryError

CLASSES = ('cat', 'dog', 'eel')


def _tree(root, folders=('source', 'dusk', 'fog'), per_class=6, size=40):
  rng = np.random.RandomState(0)
  for f in folders:
    for c, name in enumerate(CLASSES):
      d = root / f / name
      d.mkdir(parents=True)
      for i in range(per_class):
        img = np.clip(rng.normal(80 * c, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f'{i}.png')


def _config(root, **overrides):
  config = cifar10c.get_config()
  config.dataset = 'image_folder'
  config.image_folder = ml_collections.ConfigDict(dict(
      root=str(root), shifts=(), image_size=32, tune_per_class=2, val_per_class=1))
  config.image_folder.update(overrides)
  config.model.resnet26.depth = 8
  config.model.num_classes = 3
  return config


def test_found_by_name_and_split_per_class(tmp_path):
  _tree(tmp_path / 'd')
  assert 'image_folder' in datasets.names()
  ds = datasets.create('image_folder', _config(tmp_path / 'd'))
  assert ds.num_classes == 3 and ds.shift_names() == ['dusk', 'fog']
  tune, val, test = ds.target_sets('fog', seed=0)
  assert tune[0].shape == (6, 32, 32, 3) and tune[0].dtype == np.uint8  # resized from 40
  assert [np.bincount(s[1], minlength=3).tolist() for s in (tune, val, test)] == [
      [2, 2, 2], [1, 1, 1], [3, 3, 3]]
  assert len(ds.source()) == 18
  other = ds.target_sets('fog', seed=1)
  assert not np.array_equal(tune[0], other[0][0])  # the split is seeded


def test_bad_trees_are_one_line_errors(tmp_path):
  with pytest.raises(SurgeryError, match='image_folder.root'):
    datasets.create('image_folder', _config(tmp_path / 'missing'))
  _tree(tmp_path / 'd', folders=('fog',))
  (tmp_path / 'd' / 'rain' / 'cat').mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'd' / 'rain' / 'cat' / '0.png')
  ds = datasets.create('image_folder', _config(tmp_path / 'd'))
  with pytest.raises(SurgeryError, match='same class folders'):
    ds.target_sets('rain', 0)
  with pytest.raises(SurgeryError, match='no folder snow'):
    datasets.create('image_folder', _config(tmp_path / 'd', shifts=('snow',))).shift_names()


def test_the_runner_sweeps_it_and_its_root_is_not_in_the_fingerprint(tmp_path, monkeypatch):
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  _tree(tmp_path / 'd')
  config = _config(tmp_path / 'd')
  config.methods, config.lrs, config.last_lrs = ('all', 'last'), (1e-3,), (1e-2,)
  config.epochs, config.batch_size, config.eval_batch_size = 1, 8, 8
  spec = models.create('resnet26', depth=8, num_classes=3)
  config.init_checkpoint = save_params(str(tmp_path / 'source'), spec.init()['params'])
  plan = make_plan(config)
  assert plan.shifts == ['dusk', 'fog'] and 'image_folder.root' not in plan.result_fields
  sweep.train_and_evaluate(config, str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert sorted((r['shift'], r['method']) for r in rows) == [
      ('dusk', 'all'), ('dusk', 'last'), ('fog', 'all'), ('fog', 'last')]
  assert all(r['n_tune'] == '6' and r['n_test'] == '9' for r in rows)
  recorded = json.loads((tmp_path / 'work' / 'config.json').read_text())['image_folder']['root']
  assert recorded == '.../d'  # no machine path in config.json
  moved = tmp_path / 'moved'
  (tmp_path / 'd').rename(moved)
  config.image_folder.root = str(moved)
  assert make_plan(config).fingerprint == plan.fingerprint  # the data moved, the runs resume
