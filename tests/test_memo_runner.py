"""The MEMO runner end to end on a tiny image folder and a depth-8 ResNet."""
import csv
import dataclasses
import json
import os

import pytest

from configs import memo_cifar10c
from experiments import memo as runner
from surgery import models
from surgery.checkpoints import save_params
from surgery.errors import SurgeryError
from test_main import _write_folder


def tiny_memo_config(config, tmp_path, monkeypatch):
  """`config` on a 30-image folder and a depth-8 ResNet saved as the source model."""
  _write_folder(tmp_path / 'data', 'test', 3, 0)
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config.data_dir = str(tmp_path / 'data')
  config.model.depth = 8
  params = models.create('resnet26', depth=8).init()['params']
  config.init_checkpoint = save_params(str(tmp_path / 'source'), params)
  config.corruptions = ('gaussian_noise',)
  return config


@pytest.fixture
def tiny(tmp_path, monkeypatch):
  config = tiny_memo_config(memo_cifar10c.get_config(), tmp_path, monkeypatch)
  config.modes = ('online',)
  config.options = ('first_layer',)
  config.num_images = 10
  config.num_copies = 2
  config.eval_batch_size = 5
  return config, tmp_path


def _rows(workdir):
  with open(os.path.join(workdir, 'results.csv'), newline='') as f:
    return list(csv.DictReader(f))


def _files(workdir, names=('results.csv', 'config.json')):
  return {f: open(os.path.join(workdir, f), 'rb').read() for f in names}


@pytest.mark.slow
def test_memo_sweep_outputs_and_safe_resume(tiny, monkeypatch):
  config, tmp = tiny
  workdir = str(tmp / 'work')
  runner.train_and_evaluate(config, workdir)
  rows = _rows(workdir)
  assert [r['method'] for r in rows] == ['no_adaptation', 'online/first_layer']
  assert all(r['n_test'] == '10' and 0 <= float(r['test_acc']) <= 1 for r in rows)
  # A rate only where images were adapted.
  assert rows[0]['extra'] == '' and rows[1]['extra'].endswith(' images/s')
  assert float(rows[1]['extra'].split()[0]) > 0
  with open(os.path.join(workdir, 'streams', 'gaussian_noise_online_first_layer.json')) as f:
    stream = json.load(f)
  assert len(stream) == 10 and sum(stream) / 10 == pytest.approx(float(rows[1]['test_acc']))
  assert os.path.getsize(os.path.join(workdir, 'online_accuracy.png')) > 1000
  assert '| online/first_layer |' in open(os.path.join(workdir, 'summary.md')).read()
  fingerprints = {r['fingerprint'] for r in rows}
  assert fingerprints == {runner.make_plan(config).fingerprint} and len(rows[0]['fingerprint']) == 12

  # Changed result fields stop before any run, name every differing field, and leave
  # config.json and results.csv byte for byte alone.
  calls = []
  original = runner.adapt.memo_mask
  monkeypatch.setattr(runner.adapt, 'memo_mask',
                      lambda *a, **k: calls.append(a[1]) or original(*a, **k))
  before = _files(workdir)
  config.steps, config.num_copies = 2, 3
  with pytest.raises(SurgeryError) as err:
    runner.train_and_evaluate(config, workdir)
  assert 'num_copies, steps differ' in str(err.value) and '\n' not in str(err.value)
  assert _files(workdir) == before and calls == []
  config.steps, config.num_copies = 1, 2

  # Run axes (options, modes, no_adaptation, seed) may change: only the new runs run,
  # under the same fingerprint. Given as one comma string (what
  # `--config.options=first_layer,last` leaves), config.json records the items.
  config.options = ('first_layer,last',)
  config.no_adaptation = False
  runner.train_and_evaluate(config, workdir)
  assert calls == ['last']
  assert json.loads(_files(workdir)['config.json'])['options'] == ['first_layer', 'last']
  again = _rows(workdir)
  assert [r['method'] for r in again] == ['no_adaptation', 'online/first_layer', 'online/last']
  assert again[:2] == rows and {r['fingerprint'] for r in again} == fingerprints


def test_rows_from_before_fingerprints_resume_when_config_json_agrees(tiny):
  config, tmp = tiny
  workdir = tmp / 'work'
  config.modes, config.no_adaptation = (), True
  runner.train_and_evaluate(config, str(workdir))
  # As the runner wrote them before the model contract: no fingerprint column, and
  # `model_depth` instead of `model` in config.json.
  rows = _rows(workdir)
  with open(workdir / 'results.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, [c for c in rows[0] if c != 'fingerprint'], extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  old = json.loads((workdir / 'config.json').read_text())
  old['model_depth'] = old.pop('model')['depth']
  del old['dataset']
  config.modes = ('online',)

  # config.json disagrees on a result field: stop, name it, touch nothing.
  (workdir / 'config.json').write_text(json.dumps({**old, 'severity': 3}))
  before = _files(workdir)
  with pytest.raises(SurgeryError, match='different settings: severity differ'):
    runner.train_and_evaluate(config, str(workdir))
  assert _files(workdir) == before

  (workdir / 'config.json').write_text(json.dumps(old))
  runner.train_and_evaluate(config, str(workdir))
  assert [r['method'] for r in _rows(workdir)] == ['no_adaptation', 'online/first_layer']


@pytest.mark.parametrize('field,value,message', [
    ('options', ('first_layer', 'stem_only'), "options: unknown option 'stem_only'; valid: all, "),
    ('modes', ('online', 'sideways'), "modes: unknown mode 'sideways'; valid: episodic, online"),
    ('num_images', 7, 'num_images must be a positive multiple of 10'),
    ('severity', 6, 'severity must be 1 to 5, got 6'),
    ('steps', 0, 'steps must be an integer >= 1, got 0'),
    ('num_copies', -2, 'num_copies must be an integer >= 1, got -2'),
    ('eval_batch_size', 0, 'eval_batch_size must be an integer >= 1'),
    ('seed', -1, 'seed must be an integer >= 0'),
    ('corruptions', ('fog_of_war',), "corruptions: unknown shift 'fog_of_war'"),
    ('corruptions', ('noise_block1',), "corruptions: unknown shift 'noise_block1'"),
    ('corruptions', ('gaussian_noise@100',), 'corruptions: MEMO uses no labelled target'),
    ('online.optimizer', 'lamb', 'online.optimizer must be empty (the default) or one of adam'),
    ('episodic.learning_rate', -0.1, 'episodic.learning_rate must be >= 0'),
    ('model.name', 'resnet9000', "unknown model 'resnet9000'; valid: "),
    ('model.depth', 9, 'model.depth must be 6n+2'),
    ('init_checkpoint', '/nonexistent.pth', 'init_checkpoint: /nonexistent.pth does not exist'),
    ('init_checkpoint', '', 'init_checkpoint: MEMO adapts a source model'),
])
def test_user_errors_stop_before_anything_is_written(tiny, field, value, message):
  assert_stops_with_one_line(*tiny, field, value, message)


def assert_stops_with_one_line(config, tmp, field, value, message):
  """Setting `field` (dotted) to `value` stops the run with one line containing
  `message`, before anything is written."""
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(SurgeryError) as err:
    runner.train_and_evaluate(config, str(tmp / 'work'))
  assert message in str(err.value) and '\n' not in str(err.value)
  assert not os.path.exists(tmp / 'work')


def test_no_run_asked_for(tiny):
  config, tmp = tiny
  config.modes, config.no_adaptation = (), False
  with pytest.raises(SurgeryError, match='no run asked for'):
    runner.train_and_evaluate(config, str(tmp / 'work'))


def test_comma_strings_are_lists(tiny):
  config, _ = tiny
  # What `--config.options=first_layer,last` gives a tuple field.
  config.modes = ('episodic,online',)
  config.options = ('first_layer, last',)
  plan = runner.make_plan(config)
  assert plan.methods == ['no_adaptation', 'episodic/first_layer', 'episodic/last',
                          'online/first_layer', 'online/last']
  # Run axes are not result fields: the fingerprint does not move with them.
  assert plan.fingerprint == runner.make_plan(memo_cifar10c_like(config)).fingerprint


def memo_cifar10c_like(config):
  other = config.copy_and_resolve_references()
  other.modes, other.options, other.no_adaptation, other.seed = ('online',), ('last',), False, 3
  return other


def test_model_without_memo_options_is_one_line_error(tiny, monkeypatch):
  config, tmp = tiny
  bare = dataclasses.replace(models.create('resnet26', depth=8), extra_group_maps={})
  monkeypatch.setattr(runner, 'model_spec', lambda config: bare)
  with pytest.raises(SurgeryError) as err:
    runner.train_and_evaluate(config, str(tmp / 'work'))
  assert 'declares no MEMO freezing options' in str(err.value) and '\n' not in str(err.value)


def test_report_only_rewrites_the_summary_of_a_partial_table_and_runs_nothing(tiny, monkeypatch):
  config, tmp = tiny
  workdir = str(tmp / 'work')
  runner.train_and_evaluate(config, workdir)
  os.remove(os.path.join(workdir, 'summary.md'))
  config.options = ('first_layer', 'last')  # 'last' is planned but never run
  config.report_only = True
  monkeypatch.setattr(runner, '_Runner', None)  # any adaptation would fail
  before = _files(workdir)
  runner.train_and_evaluate(config, workdir)
  assert _files(workdir) == before
  summary = open(os.path.join(workdir, 'summary.md')).read()
  assert '| online/first_layer |' in summary and len(_rows(workdir)) == 2


def test_stream_plot_averages_only_corruptions_every_setting_finished():
  have = {('fog', 'no_adaptation'), ('fog', 'online/all'), ('snow', 'no_adaptation'),
          ('snow', 'online/all'), ('snow', 'online/last'), ('frost', 'no_adaptation'),
          ('glass', 'online/all'), ('glass', 'online/last'), ('glass', 'no_adaptation')}
  shifts = ('fog', 'snow', 'frost', 'glass')
  plotted, panels = runner._stream_panels(have, shifts, ('no_adaptation', 'online/all', 'online/last'))
  assert plotted == ['no_adaptation', 'online/all', 'online/last']
  # frost has no adapted stream; fog lacks online/last, so the mean is over snow and glass.
  assert panels == [('mean over 2 corruptions', ['snow', 'glass']), ('fog', ['fog']),
                    ('snow', ['snow']), ('glass', ['glass'])]
  assert runner._stream_panels(have, ('frost',), ('no_adaptation', 'online/all')) == ([], [])


@pytest.mark.slow
def test_each_seed_keeps_its_own_streams(tiny):
  config, tmp = tiny
  config.no_adaptation = False
  workdir = str(tmp / 'work')
  runner.train_and_evaluate(config, workdir)
  streams = os.path.join(workdir, 'streams')
  seed0 = open(os.path.join(streams, 'gaussian_noise_online_first_layer.json')).read()
  config.seed = 1  # a run axis: the same workdir takes the new seed's rows
  runner.train_and_evaluate(config, workdir)
  assert open(os.path.join(streams, 'gaussian_noise_online_first_layer.json')).read() == seed0
  assert os.path.exists(os.path.join(streams, 'gaussian_noise_online_first_layer_seed1.json'))
  assert [r['seed'] for r in _rows(workdir)] == ['0', '1']
