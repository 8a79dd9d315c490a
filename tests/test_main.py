"""The whole CIFAR-10-C runner on a tiny image folder and a tiny ResNet (depth 8)."""
import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import cifar10c
from experiments import cifar10c as runner
from experiments import figures
from experiments import finetune
from experiments import shifts
from surgery.checkpoints import save_params
from surgery.errors import SurgeryError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_folder(root, split, per_class, seed):
  rng = np.random.RandomState(seed)
  for c in range(10):
    d = root / 'cifar10' / split / f'class{c}'
    d.mkdir(parents=True)
    for i in range(per_class):
      # Class-dependent colour so a model can learn something in a few steps.
      img = np.clip(rng.normal(25 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(d / f'{i:04d}.png')


@pytest.fixture
def tiny(tmp_path, monkeypatch):
  _write_folder(tmp_path / 'data', 'test', 8, 0)
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = cifar10c.get_config()
  config.data_dir = str(tmp_path / 'data')
  config.init_checkpoint = ''
  config.model.depth = 8
  config.corruptions = 'gaussian_noise'
  config.methods = 'no_adaptation,all,last,auto_rgn'
  config.lrs = '1e-3'
  config.last_lrs = '1e-2,1e-3'
  config.epochs = 2
  config.batch_size = 16
  config.eval_batch_size = 16
  config.tune_per_class = 3
  config.val_per_class = 2
  config.auto_rgn.window = 1
  # Stage 1 from a saved orbax model, so the tests do not pre-train.
  _, variables = finetune.build_model(config)
  config.init_checkpoint = save_params(str(tmp_path / 'source'), variables['params'])
  return config, tmp_path


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_sweep_writes_outputs_and_resumes(tiny, monkeypatch):
  config, tmp = tiny
  workdir = str(tmp / 'work')

  runner.train_and_evaluate(config, workdir)
  rows = _rows(os.path.join(workdir, 'results.csv'))
  assert [(r['method'], r['lr']) for r in rows] == [
      ('no_adaptation', '0'), ('all', '0.001'), ('last', '0.01'), ('last', '0.001'),
      ('auto_rgn', '0.001')]
  for r in rows:
    assert r['shift'] == 'gaussian_noise' and (r['n_tune'], r['n_val'], r['n_test']) == ('30', '20', '30')
    assert 0 <= float(r['test_acc']) <= 1
    assert int(r['best_epoch']) in ((0,) if r['method'] == 'no_adaptation' else (1, 2))
  summary = open(os.path.join(workdir, 'summary.md')).read()
  assert '| auto_rgn |' in summary and 'gaussian_noise' in summary
  assert os.path.getsize(os.path.join(workdir, 'accuracy_by_method.png')) > 1000
  assert os.listdir(os.path.join(workdir, 'auto_rgn')) == ['gaussian_noise_lr0.001_seed0.json']

  # An interrupted sweep: drop the last two rows; a rerun redoes exactly those.
  with open(os.path.join(workdir, 'results.csv')) as f:
    lines = f.readlines()
  with open(os.path.join(workdir, 'results.csv'), 'w') as f:
    f.writelines(lines[:-2])
  calls = []
  original = finetune.Finetuner.run
  monkeypatch.setattr(finetune.Finetuner, 'run',
                      lambda self, *a, **k: calls.append(a[2:4]) or original(self, *a, **k))
  runner.train_and_evaluate(config, workdir)
  assert calls == [('last', 0.001), ('auto_rgn', 0.001)]
  again = _rows(os.path.join(workdir, 'results.csv'))
  assert len(again) == 5 and again[:3] == rows[:3]

  # report_only rewrites the summary from results.csv and runs nothing.
  os.remove(os.path.join(workdir, 'summary.md'))
  config.report_only = True
  config.seeds = '0,1'
  runner.train_and_evaluate(config, workdir)
  assert len(calls) == 2 and len(_rows(os.path.join(workdir, 'results.csv'))) == 5
  assert '| auto_rgn |' in open(os.path.join(workdir, 'summary.md')).read()


@pytest.mark.parametrize('field,value,message', [
    ('corruptions', 'fog_of_war', "unknown corruption ['fog_of_war']; valid: gaussian_noise"),
    ('methods', 'all,block9', "unknown method ['block9']; valid: no_adaptation"),
    ('severity', 6, 'severity must be 1 to 5'),
    ('tune_per_class', 5000, 'cannot take 5000 tune'),
    ('init_checkpoint', '/nonexistent.pth', 'checkpoint not found'),
])
def test_user_errors(tiny, field, value, message):
  config, tmp = tiny
  config[field] = value
  with pytest.raises(SurgeryError) as err:
    runner.train_and_evaluate(config, str(tmp / 'work'))
  assert message in str(err.value) and '\n' not in str(err.value)


def test_cli_error_is_one_line_without_traceback(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.main', '--config=configs/cifar10c.py',
       f'--workdir={tmp_path}', '--config.corruptions=gaussian_noise,fog_of_war'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "error: unknown corruption ['fog_of_war']; valid: " + ', '.join(shifts.BASES) +
      ' (each optionally @<number of target examples>)']


def test_single_run_baselines_sweep_their_own_settings(tiny):
  config, tmp = tiny
  config.methods = 'gradual_unfreeze_last_first,l1_sp,auto_snr'
  config.last_lrs = '1e-2'
  config.l1_sp.lambdas = '1e-4,1e-2'
  config.auto_snr.thresholds = '0.5'
  config.auto_snr.batch_size = 8
  config.auto_snr.chunk_size = 4
  workdir = str(tmp / 'work')
  runner.train_and_evaluate(config, workdir)
  rows = _rows(os.path.join(workdir, 'results.csv'))
  assert [(r['method'], r['hparam']) for r in rows] == [
      ('gradual_unfreeze_last_first', ''), ('l1_sp', 'lam=0.0001'), ('l1_sp', 'lam=0.01'),
      ('auto_snr', 'threshold=0.5')]
  summary = open(os.path.join(workdir, 'summary.md')).read()
  assert '- l1_sp: gaussian_noise: 0.001 (lam=' in summary


def test_label_flip_and_parameter_noise_shifts(tiny):
  config, _ = tiny
  images, labels = shifts.target_data(config, shifts.parse('clean'))
  _, flipped = shifts.target_data(config, shifts.parse('label_flip'))
  np.testing.assert_array_equal(flipped, 9 - labels)

  _, variables = finetune.build_model(config)
  params = variables['params']
  config.param_noise.scale = 0.5
  noised = shifts.source_params(config, shifts.parse('noise_block2'), params)
  for path, a in jax.tree_util.tree_leaves_with_path(params):
    b = dict(jax.tree_util.tree_leaves_with_path(noised))[path]
    name = jax.tree_util.keystr(path)
    if "'stage2'" in name and np.linalg.norm(a) > 0:  # noise is relative: none on zeros
      ratio = np.linalg.norm(np.asarray(b) - np.asarray(a)) / np.linalg.norm(a)
      assert 0.2 < ratio < 0.9, (name, ratio)  # about 0.5, noisier for tiny tensors
    else:
      assert np.array_equal(a, b), name

  # group_scales overrides the scale for its group only; bad entries name the problem.
  config.param_noise.group_scales = 'block2=2.0'
  assert shifts.noise_scale(config, 'block2') == 2.0
  assert shifts.noise_scale(config, 'block1') == 0.5
  for bad, words in [('stage9=1', 'unknown group'), ('block2=x', 'not group=number'),
                     ('block2=0', 'must be positive')]:
    config.param_noise.group_scales = bad
    with pytest.raises(SurgeryError, match=words):
      shifts.noise_scale(config, 'block2')


def test_target_sizes_and_rgn_figure(tiny):
  config, tmp = tiny
  config.corruptions = 'noise_block2'
  config.tune_sizes = '10,20'
  config.methods = 'last,auto_rgn'
  config.last_lrs = '1e-2'
  workdir = str(tmp / 'work')
  runner.train_and_evaluate(config, workdir)
  rows = _rows(os.path.join(workdir, 'results.csv'))
  assert sorted({(r['shift'], r['n_tune']) for r in rows}) == [
      ('noise_block2@10', '10'), ('noise_block2@20', '20')]
  summary = open(os.path.join(workdir, 'summary.md')).read()
  assert '| method | 10 | 20 |' in summary
  for png in ('data_efficiency.png', 'auto_rgn_weights.png'):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000
  assert '## Auto-RGN weights accumulated over training (Fig. 6)' in summary


def test_rgn_group_means_skip_unweighted_tensors_and_bold_the_top_group():
  tensors = ['head/kernel', 'stage1/block0/conv1/kernel', 'stage1/block0/conv2/kernel',
             'stage1/block0/norm1/scale']  # tree order; the table lists groups input first
  groups = ['last', 'block1', 'block1', 'block1']
  panels = [('noise_block1', tensors, groups, np.array([0.5, 1.0, 3.0, 0.0])),
            ('noise_last', tensors, groups, np.array([4.0, 0.2, 0.4, 0.0]))]
  assert figures.rgn_group_means_markdown(panels).splitlines() == [
      '| group | noise_block1 | noise_last |', '|---|---|---|',
      '| block1 | **2.00** | 0.30 |', '| last | 0.50 | **4.00** |']


def test_bad_target_size(tiny):
  config, tmp = tiny
  config.corruptions = 'snow@15'
  with pytest.raises(SurgeryError, match='positive multiple of 10'):
    runner.train_and_evaluate(config, str(tmp / 'work'))


def test_stage1_pretrains_saves_and_reloads(tiny, capsys):
  config, tmp = tiny
  _write_folder(tmp / 'data', 'train', 4, 1)
  config.init_checkpoint = ''
  config.pretrain.epochs = 2
  config.pretrain.batch_size = 8
  workdir = str(tmp / 'work')
  _, variables = finetune.build_model(config)
  params, _ = finetune.source_params(config, workdir, finetune.build_model(config)[0], variables)
  assert os.path.isdir(os.path.join(workdir, 'source_model'))
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params),
                                                     jax.tree_util.tree_leaves(variables['params']))]
  assert all(moved)
  again, _ = finetune.source_params(config, workdir, finetune.build_model(config)[0], variables)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert 'loading' in capsys.readouterr().out

  # Interrupted after epoch 2 of 3: the final model is missing, the partial one is not.
  import shutil
  shutil.rmtree(os.path.join(workdir, 'source_model'))
  config.pretrain.epochs = 3
  finetune.source_params(config, workdir, finetune.build_model(config)[0], variables)
  out = capsys.readouterr().out
  assert 'resuming pre-training after epoch 2' in out and 'pretrain epoch 3:' in out
  assert 'pretrain epoch 1:' not in out


def test_merge_results_of_parallel_sweeps(tmp_path):
  from experiments.merge_results import merge
  from experiments.results import ResultsCsv
  a, b = tmp_path / 'a', tmp_path / 'b'
  row = dict(shift='snow', method='all', lr=1e-3, seed=0, best_epoch=3, val_acc=0.5, test_acc=0.6)
  ResultsCsv(str(a / 'results.csv')).add(row)
  tb = ResultsCsv(str(b / 'results.csv'))
  tb.add(row)
  tb.add({**row, 'shift': 'fog', 'test_acc': 0.7})
  assert merge(str(a), [str(b)]) == 1
  merged = ResultsCsv(str(a / 'results.csv'))
  assert sorted(r['shift'] for r in merged.rows) == ['fog', 'snow']
  tb.add({**row, 'test_acc': 0.9})  # the same run with another result: refuse
  with pytest.raises(SystemExit, match='nothing written'):
    merge(str(a), [str(b)])
  assert len(ResultsCsv(str(a / 'results.csv')).rows) == 2
