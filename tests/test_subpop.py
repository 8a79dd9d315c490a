"""Subpopulation shifts through the runner: CIFAR-10 split into BREEDS superclasses."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

from configs import cifar10_subpop
from experiments import sweep
from surgery import datasets
from surgery.data import breeds


def _write_cifar_folder(root, per_class):
  rng = np.random.RandomState(0)
  for split, n in per_class.items():
    for c in range(10):
      d = root / 'cifar10' / split / f'class{c}'
      d.mkdir(parents=True)
      for i in range(n):
        # The class index is written in the top-left pixel, so a test can read it back.
        img = rng.randint(0, 256, (32, 32, 3)).astype(np.uint8)
        img[:4, :4] = 20 * c
        Image.fromarray(img).save(d / f'{i:04d}.png')


@pytest.fixture
def tiny(tmp_path, monkeypatch):
  _write_cifar_folder(tmp_path / 'data', {'train': 12, 'test': 4})
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = cifar10_subpop.get_config()
  config.data_dir = str(tmp_path / 'data')
  config.model.resnet26.depth = 8
  config.methods = ('no_adaptation', 'all', 'block2', 'last', 'cross_val')
  config.seeds = (0,)
  config.lrs, config.last_lrs = (1e-3,), (1e-2,)
  config.epochs, config.batch_size, config.eval_batch_size = 1, 8, 16
  config.tune_per_class, config.val_per_class = 3, 2
  config.pretrain.epochs, config.pretrain.batch_size = 1, 16
  return config, tmp_path


def test_target_sets_hold_only_target_subclasses_labelled_by_superclass(tiny):
  config, _ = tiny
  dataset = datasets.create('cifar10_subpop', config)
  split = breeds.cifar10_subpop('rand')
  superclass_of = {c: s for s, classes in enumerate(split.target) for c in classes}
  tune, val, test = dataset.target_sets('cifar10_subpop', seed=0)
  for images, labels in (tune, val, test):
    classes = images[:, 0, 0, 0] // 20  # PNG is lossless: the class survives
    assert all(superclass_of[int(c)] == int(y) for c, y in zip(classes, labels))
  assert np.bincount(tune[1]).tolist() == [3] * 5 and np.bincount(val[1]).tolist() == [2] * 5
  assert len(test[1]) == 5 * 4  # every target test image
  source = dataset.source('train')
  source_classes = {c for classes in split.source for c in classes}
  assert len(source) == 5 * 12
  assert {int(source[i]['image'][0, 0, 0]) // 20 for i in range(len(source))} == source_classes
  other = dataset.target_sets('cifar10_subpop', seed=1)[0]
  assert not np.array_equal(other[0], tune[0])


@pytest.mark.slow
def test_runner_pretrains_on_the_source_and_sweeps_the_target(tiny):
  config, tmp = tiny
  workdir = str(tmp / 'work')
  sweep.train_and_evaluate(config, workdir)
  assert os.path.isdir(os.path.join(workdir, 'source_model'))
  with open(os.path.join(workdir, 'results.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert {'no_adaptation', 'all', 'block2', 'last'} <= {r['method'] for r in rows}
  assert all(r['shift'] == 'cifar10_subpop' and r['n_tune'] == '15' and r['n_test'] == '20'
             for r in rows)
  assert 'cross_val' in open(os.path.join(workdir, 'summary.md')).read()
