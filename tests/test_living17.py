"""configs/living17.py end to end on a generated ILSVRC-2012 tree with Living-17's real
wnids: LP-FT source stage (interrupted and resumed), then the surgical sweep, with a
tiny ResNet-50-shaped model."""
import csv
import io
import os

import numpy as np
import pytest
from PIL import Image

from configs import living17
from experiments import source_stage
from experiments import sweep
from surgery import models
from surgery.checkpoints import save_params
from surgery.data import breeds

TINY = dict(num_classes=17, new_head=True, width=2, stage_sizes=(1, 1, 1, 1), dtype='float32')


def _info_dir():
  root = os.environ.get('SURGERY_DATA_DIR')
  path = os.path.join(root, 'breeds') if root else ''
  if not os.path.isfile(os.path.join(path, 'dataset_class_info.json')):
    pytest.skip('needs $SURGERY_DATA_DIR/breeds (the BREEDS hierarchy files)')
  return path


def _write_tree(root, per_split):
  """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG for Living-17's 68 classes; each
  superclass has its own colour so that a few steps can learn something."""
  info = _info_dir()
  ds = breeds.make('living17', info)
  wnid_of = {i: w for w, i in breeds.Hierarchy(info).class_index.items()}
  rng = np.random.RandomState(0)
  for label, classes in enumerate(ds.source):
    for c in classes + ds.target[label]:
      for split, n in per_split.items():
        folder = root / split / wnid_of[c]
        folder.mkdir(parents=True)
        for i in range(n):
          img = np.clip(rng.normal(15 * label, 30, (36, 48, 3)), 0, 255).astype(np.uint8)
          buf = io.BytesIO()
          Image.fromarray(img).save(buf, format='JPEG', quality=90)
          (folder / f'{wnid_of[c]}_{i}.JPEG').write_bytes(buf.getvalue())
  return ds


@pytest.fixture
def tiny(tmp_path, monkeypatch):
  _write_tree(tmp_path / 'imagenet', {'train': 3, 'val': 1})
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = living17.get_config()
  config.data_dir = str(tmp_path / 'imagenet')
  config.model.resnet50.update(TINY)
  config.init_checkpoint = save_params(
      str(tmp_path / 'imagenet_model'), models.create('resnet50', **TINY).init(1))
  config.methods = ('no_adaptation', 'all', 'block3', 'last')
  config.seeds = (0,)
  config.lrs, config.last_lrs = (1e-3,), (1e-2,)
  config.epochs, config.batch_size, config.eval_batch_size = 1, 8, 32
  config.tune_per_class, config.val_per_class = 2, 1
  config.source_stage.update(dict(head_epochs=1, all_epochs=1, batch_size=8, workers=0,
                                  checkpoint_every=4))
  return config, tmp_path


class _Interrupt(Exception):
  pass


@pytest.mark.slow
def test_living17_runs_end_to_end_and_resumes_the_source_stage(tiny, monkeypatch, capsys):
  config, tmp = tiny
  workdir = str(tmp / 'work')
  real = source_stage.surgery.make_train_step
  calls = []

  def interrupted_step(module, tx, **kwargs):
    step = real(module, tx, **kwargs)

    def run(*args):
      calls.append(1)
      if len(calls) == 12 + 6:  # 12 head steps (102 images, batch 8), then 6 of `all`
        raise _Interrupt
      return step(*args)
    return run

  monkeypatch.setattr(source_stage.surgery, 'make_train_step', interrupted_step)
  with pytest.raises(_Interrupt):
    sweep.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'source_model'))
  monkeypatch.setattr(source_stage.surgery, 'make_train_step', real)
  capsys.readouterr()

  sweep.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'resuming phase all at step 4 of 12' in out  # the last checkpoint before step 6
  assert 'source stage (head)' not in out  # the finished phase is not rerun
  assert os.path.isdir(os.path.join(workdir, 'source_model'))
  with open(os.path.join(workdir, 'results.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert {r['method'] for r in rows} == {'no_adaptation', 'all', 'block3', 'last'}
  # 2 tune + 1 val per superclass from the target subclasses' train images; test: the
  # val images of the 34 target subclasses.
  assert all(r['n_tune'] == '34' and r['n_val'] == '17' and r['n_test'] == '34' for r in rows)
  assert os.path.exists(os.path.join(workdir, 'summary.md'))
  # The source stage trained the head: its weights left the checkpoint's values.
  trained = models.create('resnet50', **TINY).load(os.path.join(workdir, 'source_model'))
  start = models.create('resnet50', **TINY).load(config.init_checkpoint)
  assert not np.array_equal(trained['params']['fc']['kernel'], start['params']['fc']['kernel'])


def test_living17_without_imagenet_is_one_line(tmp_path):
  from tests.cli import one_error_line
  _info_dir()
  line, _ = one_error_line('living17', tmp_path, f'--config.data_dir={tmp_path / "nothing"}')
  assert line.startswith('error: ImageNet not found in') and 'train/<wnid>/*.JPEG' in line
