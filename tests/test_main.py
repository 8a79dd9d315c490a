"""The whole fine-tuning runner on a tiny image folder and a tiny ResNet (depth 8)."""
import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import cifar10c
from surgery.report import figures
from experiments import finetune
from experiments import sweep as runner
from experiments.plan import make_plan
import surgery
from surgery import datasets, models
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


TINY = dict(model__resnet26__depth=8, corruptions=('gaussian_noise',),
            methods=('no_adaptation', 'all', 'last', 'auto_rgn'), lrs=(1e-3,),
            last_lrs=(1e-2, 1e-3), epochs=2, batch_size=16, eval_batch_size=16,
            tune_per_class=3, val_per_class=2, auto_rgn__window=1)


def _cli_flags(config_fields):
  out = []
  for k, v in config_fields.items():
    v = ','.join(map(str, v)) if isinstance(v, tuple) else v
    out.append(f'--config.{k.replace("__", ".")}={v}')
  return out


@pytest.fixture
def tiny(tmp_path, monkeypatch):
  _write_folder(tmp_path / 'data', 'test', 8, 0)
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = cifar10c.get_config()
  config.data_dir = str(tmp_path / 'data')
  for k, v in TINY.items():
    *sections, field = k.split('__')
    node = config
    for section in sections:
      node = node[section]
    node[field] = v
  # Stage 1 from a saved orbax model, so the tests do not pre-train.
  spec = models.create('resnet26', depth=8)
  config.init_checkpoint = save_params(str(tmp_path / 'source'), spec.init()['params'])
  return config, tmp_path


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
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
  assert len({r['fingerprint'] for r in rows}) == 1 and len(rows[0]['fingerprint']) == 12
  curves = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [c['method'] for c in curves] == [r['method'] for r in rows]
  assert [e['epoch'] for e in curves[1]['epochs']] == [1, 2]
  assert {'train_loss', 'train_acc_mean', 'val_acc'} <= set(curves[1]['epochs'][0])

  # An interrupted sweep: drop the last two rows; a rerun redoes exactly those.
  with open(os.path.join(workdir, 'results.csv')) as f:
    lines = f.readlines()
  with open(os.path.join(workdir, 'results.csv'), 'w') as f:
    f.writelines(lines[:-2])
  calls = []
  original = finetune.Finetuner.run
  monkeypatch.setattr(finetune.Finetuner, 'run',
                      lambda self, *a, **k: calls.append((a[2].name, a[3])) or original(self, *a, **k))
  runner.train_and_evaluate(config, workdir)
  assert calls == [('last', 0.001), ('auto_rgn', 0.001)]
  again = _rows(os.path.join(workdir, 'results.csv'))
  assert len(again) == 5 and again[:3] == rows[:3]

  # The source checkpoint moves (another checkout, another machine): nothing reruns.
  import shutil
  before = open(os.path.join(workdir, 'results.csv')).read()
  config.init_checkpoint = shutil.copytree(config.init_checkpoint, str(tmp / 'moved' / 'src'))
  runner.train_and_evaluate(config, workdir)
  assert len(calls) == 2 and open(os.path.join(workdir, 'results.csv')).read() == before
  assert str(tmp) not in open(os.path.join(workdir, 'config.json')).read()

  # report_only rewrites the summary from results.csv and runs nothing.
  os.remove(os.path.join(workdir, 'summary.md'))
  config.report_only = True
  config.seeds = (0, 1)
  runner.train_and_evaluate(config, workdir)
  assert len(calls) == 2 and len(_rows(os.path.join(workdir, 'results.csv'))) == 5
  assert '| auto_rgn |' in open(os.path.join(workdir, 'summary.md')).read()


@pytest.mark.parametrize('field,value,message', [
    ('corruptions', ('fog_of_war',), "corruptions: unknown shift 'fog_of_war'; valid: gaussian_noise"),
    ('methods', ('all', 'block9'), "methods: unknown method 'block9'; valid: no_adaptation"),
    ('severity', 6, 'severity must be 1 to 5'),
    ('tune_per_class', 5000, 'cannot take 5000 tune'),
    ('init_checkpoint', '/nonexistent.pth', 'init_checkpoint: /nonexistent.pth does not exist'),
    ('epochs', -3, 'epochs must be an integer >= 1, got -3'),
    ('batch_size', 0, 'batch_size must be an integer >= 1, got 0'),
    ('optimizer', 'lamb', 'optimizer must be one of adam, adamw, sgd'),
    ('auto_rgn.refresh', 'epochs', 'auto_rgn.refresh must be one of epoch, step'),
    ('auto_snr.variant', 'released', 'auto_snr.variant must be one of paper, channel_variance'),
    ('model.bn_mode', 'frozen', 'model.bn_mode must be one of eval, train'),
    ('model.name', 'resnet9000', "unknown model 'resnet9000'; valid: "),
    ('model.depth', 8, 'model.depth and model.resnet26.depth are both set'),
    ('select_metric', 'worst_group_acc', 'select_metric must be one of acc'),
    ('lrs', (0.1, -1.0), 'lrs must be positive numbers'),
])
def test_user_errors(tiny, field, value, message):
  config, tmp = tiny
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(SurgeryError) as err:
    runner.train_and_evaluate(config, str(tmp / 'work'))
  assert message in str(err.value) and '\n' not in str(err.value)
  assert not os.path.exists(tmp / 'work' / 'results.csv')


def test_model_name_switches_to_that_models_own_options(tiny):
  config, _ = tiny
  config.model.name = 'wrn28_10'
  config.model.wrn28_10.depth = 10
  config.model.wrn28_10.widen = 1
  plan = make_plan(config)
  assert plan.model.name == 'wrn28_10'
  assert dict(plan.model.overrides) == dict(depth=10, widen=1, num_classes=10, new_head=False)
  config.model.wrn28_10.width = 3  # a ResNet-26 option, not WideResNet's
  with pytest.raises(SurgeryError, match="wrn28_10 has no option"):
    make_plan(config)


def _cli(*flags, cwd=REPO):
  return _cli_many([flags], cwd)[0]


def _cli_many(runs, cwd=REPO):
  """Runs the CLI once per flag list, side by side (each is mostly Python starting up);
  returns the finished processes, with `stdout` and `stderr` read."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen([sys.executable, '-m', 'experiments.main', *flags], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for flags in runs]
  for p in procs:
    p.stdout, p.stderr = p.communicate(timeout=300)
  return procs


def _assert_one_error_line(proc, words):
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and words in lines[0], lines


@pytest.mark.slow
def test_cli_user_errors_are_one_line_without_traceback(tmp_path):
  bad_csv = tmp_path / 'badcsv'
  bad_csv.mkdir()
  (bad_csv / 'results.csv').write_text('this is,not\na results file\n')
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  cases = [
      (['--config=configs/nope.py', f'--workdir={tmp_path}/w'], 'configs/nope.py'),
      (['--config=configs/cifar10c.py', f'--workdir={a_file}'], 'is not a directory'),
      (['--config=configs/cifar10c.py', f'--workdir={bad_csv}'], 'results.csv'),
      (['--config=configs/cifar10c.py', f'--workdir={tmp_path}/w', '--config.epochs=-3'],
       'epochs must be an integer >= 1, got -3'),
      (['--config=configs/cifar10c.py', f'--workdir={tmp_path}/w', '--config.batch_size=0'],
       'batch_size must be an integer >= 1, got 0'),
      (['--config=configs/cifar10c.py', f'--workdir={tmp_path}/w', '--config.methods=all,block9'],
       "unknown method 'block9'"),
      (['--config=configs/cifar10c.py', f'--workdir={tmp_path}/w',
        '--config.corruptions=gaussian_noise,fog_of_war'], "unknown shift 'fog_of_war'"),
  ]
  for proc, (_, words) in zip(_cli_many([flags for flags, _ in cases]), cases):
    _assert_one_error_line(proc, words)
  assert (bad_csv / 'results.csv').read_text() == 'this is,not\na results file\n'
  assert a_file.read_text() == 'x'


@pytest.mark.slow
def test_cli_resume_with_a_changed_field_stops_and_keeps_old_files(tiny):
  config, tmp = tiny
  workdir = tmp / 'work'
  fields = {**TINY, 'methods': ('last',), 'last_lrs': (1e-2,), 'epochs': 1,
            'init_checkpoint': config.init_checkpoint, 'data_dir': config.data_dir}
  flags = ['--config=configs/cifar10c.py', f'--workdir={workdir}', *_cli_flags(fields)]
  first = _cli(*flags)
  assert first.returncode == 0, first.stderr[-3000:]
  before = {f: (workdir / f).read_bytes() for f in ('results.csv', 'config.json')}
  assert len(_rows(workdir / 'results.csv')) == 1
  again = _cli(*flags, '--config.epochs=7', '--config.severity=3')
  _assert_one_error_line(again, 'epochs, severity differ')
  assert {f: (workdir / f).read_bytes() for f in before} == before
  # Fields that do not change results may change freely.
  ok = _cli(*flags, '--config.eval_batch_size=8', '--config.title=other')
  assert ok.returncode == 0 and '0 to go' in ok.stdout, ok.stderr[-2000:]


def test_sgd_runs_end_to_end(tiny):
  config, tmp = tiny
  config.optimizer = 'sgd'
  config.methods = ('all', 'auto_rgn')
  rows = runner.train_and_evaluate(config, str(tmp / 'work'))
  assert [r['method'] for r in rows] == ['all', 'auto_rgn']
  assert all(0 <= float(r['test_acc']) <= 1 for r in rows)


def test_a_non_finite_update_stops_the_run_naming_step_and_tensor(tiny):
  config, tmp = tiny
  config.optimizer = 'sgd'
  config.methods = ('all',)
  config.lrs = (1e30,)
  with pytest.raises(finetune.NonFiniteError, match=r'non-finite update or loss at step \d+ in tensor \S+/'):
    runner.train_and_evaluate(config, str(tmp / 'work'))


def test_batchnorm_tuned_layers_train_under_bn_mode_train(tiny, monkeypatch):
  config, tmp = tiny
  config.model.resnet26.norm = 'batch'
  config.model.bn_mode = 'train'
  spec = models.create('resnet26', depth=8, norm='batch')
  variables = spec.init()
  config.init_checkpoint = save_params(str(tmp / 'bn_source'), {
      'params': variables['params'], 'model_state': {'batch_stats': variables['batch_stats']}})
  config.methods = ('last',)
  config.last_lrs = (1e-2,)
  config.tune_per_class = 4  # 40 tune examples, batch 16: a short batch of 8, one per device
  calls = []
  original = surgery.train.make_train_step
  monkeypatch.setattr(surgery, 'make_train_step',
                      lambda module, *a, **k: calls.append(module) or original(module, *a, **k))
  runner.train_and_evaluate(config, str(tmp / 'work'))
  tuned_bn = ('final_norm',)  # resnet26's last group: final norm + head
  assert [m.bn_train_layers for m in calls] == [tuned_bn]


@pytest.mark.slow
def test_single_run_baselines_sweep_their_own_settings(tiny):
  config, tmp = tiny
  config.methods = ('gradual_unfreeze_last_first', 'l1_sp', 'auto_snr')
  config.epochs = 1
  config.last_lrs = (1e-2,)
  config.l1_sp.lambdas = (1e-4, 1e-2)
  config.auto_snr.thresholds = (0.5,)
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
  ds = datasets.create('cifar10', config)
  labels = ds.target('clean').labels
  np.testing.assert_array_equal(ds.target('label_flip').labels, 9 - labels)

  spec = models.create('resnet26', depth=8)
  params = spec.init()['params']
  config.param_noise.scale = 0.5
  noised = ds.perturb('noise_block2', params, spec.groups)
  for path, a in jax.tree_util.tree_leaves_with_path(params):
    b = dict(jax.tree_util.tree_leaves_with_path(noised))[path]
    name = jax.tree_util.keystr(path)
    if "'stage2'" in name and np.linalg.norm(a) > 0:  # noise is relative: none on zeros
      ratio = np.linalg.norm(np.asarray(b) - np.asarray(a)) / np.linalg.norm(a)
      assert 0.2 < ratio < 0.9, (name, ratio)  # about 0.5, noisier for tiny tensors
    else:
      assert np.array_equal(a, b), name

  # group_scales overrides the scale for its group only; bad entries name the problem.
  names = spec.group_names()
  config.param_noise.group_scales = 'block2=2.0'
  assert ds.noise_scale('block2', names) == 2.0
  assert ds.noise_scale('block1', names) == 0.5
  for bad, words in [('stage9=1', 'unknown group'), ('block2=x', 'not group=number'),
                     ('block2=0', 'must be positive')]:
    config.param_noise.group_scales = bad
    with pytest.raises(SurgeryError, match=words):
      ds.noise_scale('block2', names)


@pytest.mark.slow
def test_target_sizes_and_rgn_figure(tiny):
  config, tmp = tiny
  config.corruptions = ('noise_block2',)
  config.tune_sizes = (10, 20)
  config.methods = ('last', 'auto_rgn')
  config.last_lrs = (1e-2,)
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
  model_groups = models.create('resnet26').groups
  assert figures.rgn_group_means_markdown(panels, model_groups).splitlines() == [
      '| group | noise_block1 | noise_last |', '|---|---|---|',
      '| block1 | **2.00** | 0.30 |', '| last | 0.50 | **4.00** |']


def test_bad_target_size(tiny):
  config, tmp = tiny
  config.corruptions = ('snow@15',)
  with pytest.raises(SurgeryError, match='positive multiple of 10'):
    runner.train_and_evaluate(config, str(tmp / 'work'))


def test_stage1_pretrains_saves_and_reloads(tiny, capsys):
  config, tmp = tiny
  _write_folder(tmp / 'data', 'train', 4, 1)
  config.init_checkpoint = ''
  config.pretrain.epochs = 2
  config.pretrain.batch_size = 8
  workdir = str(tmp / 'work')
  spec = models.create('resnet26', depth=8)
  initial = spec.init()['params']
  params = finetune.source_variables(config, workdir, spec)['params']
  assert os.path.isdir(os.path.join(workdir, 'source_model'))
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params),
                                                     jax.tree_util.tree_leaves(initial))]
  assert all(moved)
  again = finetune.source_variables(config, workdir, spec)['params']
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert 'loading' in capsys.readouterr().out

  # Interrupted after epoch 2 of 3: the final model is missing, the partial one is not.
  import shutil
  shutil.rmtree(os.path.join(workdir, 'source_model'))
  config.pretrain.epochs = 3
  finetune.source_variables(config, workdir, spec)
  out = capsys.readouterr().out
  assert 'resuming pre-training after epoch 2' in out and 'pretrain epoch 3:' in out
  assert 'pretrain epoch 1:' not in out


def test_merge_results_of_parallel_sweeps(tmp_path):
  from experiments.tools.merge_results import merge
  from surgery.report.store import ResultsCsv
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


def test_merge_results_carries_each_runs_history_once(tmp_path):
  from experiments.tools.merge_results import merge
  from surgery.report.store import ResultsCsv, append_jsonl
  a, b = tmp_path / 'a', tmp_path / 'b'
  row = dict(shift='snow', method='all', lr=1e-3, seed=0, best_epoch=1, val_acc=0.5, test_acc=0.6)
  history = lambda shift, acc: dict(shift=shift, method='all', lr=1e-3, hparam='', seed=0,
                                    fingerprint='f', epochs=[dict(epoch=1, val_acc=acc)])
  ResultsCsv(str(a / 'results.csv')).add(row)  # a has snow's row, not its history
  tb = ResultsCsv(str(b / 'results.csv'))
  tb.add(row)
  tb.add({**row, 'shift': 'fog'})
  append_jsonl(str(b / 'metrics.jsonl'), history('fog', 0.1))  # fog's first try, cut short
  with (b / 'metrics.jsonl').open('a') as f:
    f.write('{"shift": "fog", "epo')  # torn by that cut
  for record in (history('fog', 0.5), history('snow', 0.5), history('hail', 0.9)):
    append_jsonl(str(b / 'metrics.jsonl'), record)  # hail: no row, a run cut short
  assert merge(str(a), [str(b)]) == 1
  lines = [json.loads(x) for x in (a / 'metrics.jsonl').read_text().splitlines()]
  assert sorted((r['shift'], r['epochs'][0]['val_acc']) for r in lines) == [
      ('fog', 0.5), ('snow', 0.5)]
  assert merge(str(a), [str(b)]) == 0
  assert len((a / 'metrics.jsonl').read_text().splitlines()) == 2  # nothing twice


def test_merge_results_carries_memo_tuning_rows_and_streams(tmp_path):
  from experiments.tools.merge_results import merge
  from surgery.report.store import ResultsCsv
  a, b = tmp_path / 'a', tmp_path / 'b'
  row = dict(shift='fog', method='online/all', lr=5e-4, hparam='steps=1 wd=0', seed=0,
             best_epoch=0, val_acc='', test_acc=0.4)
  ResultsCsv(str(a / 'results.csv')).add({**row, 'shift': 'snow'})
  ResultsCsv(str(b / 'results.csv')).add(row)
  ResultsCsv(str(b / 'tuning.csv')).add({**row, 'lr': 5e-3, 'test_acc': 0.3})
  (b / 'streams').mkdir()
  (b / 'streams' / 'fog_online_all.json').write_text('[1, 0]')
  (b / 'streams' / 'fog_online_all.partial.npz').write_bytes(b'unfinished')
  (b / 'tuning').mkdir()
  (b / 'tuning' / 'fog_online_all_lr0.005_steps1_wd0.json').write_text('[0, 0]')

  assert merge(str(a), [str(b)]) == 1
  assert sorted(r['shift'] for r in ResultsCsv(str(a / 'results.csv')).rows) == ['fog', 'snow']
  assert [r['lr'] for r in ResultsCsv(str(a / 'tuning.csv')).rows] == ['0.005']
  assert (a / 'streams' / 'fog_online_all.json').read_text() == '[1, 0]'
  assert (a / 'tuning' / 'fog_online_all_lr0.005_steps1_wd0.json').exists()
  assert not (a / 'streams' / 'fog_online_all.partial.npz').exists()
  assert merge(str(a), [str(b)]) == 0  # idempotent

  # A stream that differs between the workdirs: refuse, and write nothing.
  c = tmp_path / 'c'
  ResultsCsv(str(c / 'results.csv')).add({**row, 'shift': 'frost'})
  (c / 'streams').mkdir()
  (c / 'streams' / 'fog_online_all.json').write_text('[0, 1]')
  with pytest.raises(SystemExit, match='differs'):
    merge(str(a), [str(c)])
  assert len(ResultsCsv(str(a / 'results.csv')).rows) == 2


def _fake_rows(plan, skip_last=0):
  """A results.csv's rows for `plan.runs` (less the last `skip_last`), validation
  accuracy rising with the run's place so that selection has one answer."""
  table = runner.store.ResultsCsv('/nonexistent/results.csv', write=False)
  runs = plan.runs[:len(plan.runs) - skip_last]
  table.add_many([dict(shift=r.shift, method=r.method, lr=r.lr, hparam=r.hparam, seed=r.seed,
                       best_epoch=1, val_acc=0.3 + 0.01 * i, test_acc=0.2 + 0.01 * i,
                       n_tune=30, n_val=20, n_test=30, seconds=1.0)
                  for i, r in enumerate(runs)])
  return table.rows


def test_summary_says_partial_and_shows_cross_vals_candidates(tiny):
  config, tmp = tiny
  config.methods = ('all', 'cross_val')
  plan = make_plan(config)
  candidates = runner._candidates(plan)
  assert candidates[0] == 'first_layer' and 'all' not in candidates and 'last' in candidates
  n = len(plan.runs)
  assert f'{n - 1} run(s) of {", ".join(candidates)}, which cross_val picks among' in \
      runner._candidates_text(plan)
  workdir = str(tmp / 'report')
  text = runner.write_outputs(workdir, _fake_rows(plan, skip_last=2), plan)
  assert text.splitlines()[0].endswith(f'(partial: {n - 2} of {n} runs)')
  assert '| first_layer |' in text  # ran; 'last', whose runs are missing, is not shown yet
  assert 'not requested; run and shown because cross_val picks among them' in text
  text = runner.write_outputs(workdir, _fake_rows(plan), plan)
  for m in candidates:
    assert f'| {m} |' in text
  assert 'partial' not in text and open(os.path.join(workdir, 'summary.md')).read() == text
  assert str(tmp) not in text


def test_a_checkpoint_that_does_not_fit_writes_nothing_and_names_the_shape_fields(tiny):
  config, tmp = tiny
  wide = models.create('resnet26', depth=8, width=2)
  config.init_checkpoint = save_params(str(tmp / 'wide'), wide.init()['params'])
  workdir = tmp / 'never_written'
  with pytest.raises(SurgeryError, match=r'does not fit .*model\.resnet26\.width \(1\)'):
    runner.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_rows_record_the_device_layout_and_a_mixed_layout_is_announced(tiny, capsys):
  config, tmp = tiny
  config.methods = ('last',)
  config.last_lrs = (1e-2,)
  workdir = tmp / 'layout'
  runner.train_and_evaluate(config, str(workdir))
  layout = runner.device_layout()
  assert layout == f'1x{jax.local_device_count()} cpu'
  assert [r['extra'] for r in _rows(workdir / 'results.csv')] == [f'layout={layout}']
  assert 'note: results.csv holds rows' not in capsys.readouterr().out
  table = runner.store.ResultsCsv(str(workdir / 'results.csv'), write=False)
  table.rows[0]['extra'] = 'layout=2x4 TPU_v4'
  runner._warn_mixed_layouts(table, layout, adding=True)
  assert (f'note: results.csv holds rows made on device layout 2x4 TPU_v4; this run adds '
          f'rows made on {layout}') in capsys.readouterr().out


def test_an_interrupted_source_stage_says_where_its_checkpoint_is(tiny, monkeypatch):
  from experiments import pretrain
  from surgery.errors import Interrupted
  config, tmp = tiny
  config.init_checkpoint = ''

  def stop(*args):
    raise KeyboardInterrupt
  monkeypatch.setattr(pretrain, 'pretrain_or_load', stop)
  with pytest.raises(Interrupted, match='source_model_partial; run the same command'):
    finetune.source_variables(config, str(tmp / 'w'), models.create('resnet26', depth=8))


def test_scratch_source_uses_ttts_step_schedule():
  from configs import scratch_source
  from experiments.pretrain import lr_schedule
  pc = scratch_source.get_config().pretrain
  assert (pc.lr, pc.momentum, pc.weight_decay, pc.batch_size, pc.epochs) == (0.1, 0.9, 5e-4, 128, 75)
  f = lr_schedule(pc, 390)
  # torch's MultiStepLR([50, 65], gamma=0.1), stepped once per epoch: epoch e (from 0)
  # trains at 0.1, 0.01 from e = 50, 0.001 from e = 65.
  for epoch, lr in ((0, 0.1), (49, 0.1), (50, 0.01), (64, 0.01), (65, 0.001), (74, 0.001)):
    for step in (epoch * 390, epoch * 390 + 389):
      assert float(f(step)) == pytest.approx(lr, rel=1e-6)
  cosine = lr_schedule(cifar10c.get_config().pretrain, 390)
  assert float(cosine(0)) == pytest.approx(0.1) and float(cosine(75 * 390)) == pytest.approx(0.0)
