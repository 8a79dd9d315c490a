"""Run fingerprints know a checkpoint by its content, never by its path, and config.json
names no machine's folders; the one-off migration of committed results changes only the
fingerprint column."""
import csv
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

from configs import cifar10c
from surgery.report import store
from surgery.report.fingerprint import fingerprint
from experiments.plan import check_resume, config_record, read_result_fields, result_fields
from surgery.errors import SurgeryError
from surgery.io import content_sha256

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(checkpoint, data_dir=''):
  config = cifar10c.get_config()
  config.init_checkpoint = str(checkpoint)
  config.data_dir = str(data_dir)
  return config


def _fp(config):
  return fingerprint(result_fields(config))


def test_fingerprint_follows_the_checkpoints_bytes_not_its_path(tmp_path, monkeypatch):
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  a = tmp_path / 'here' / 'model.pth'
  a.parent.mkdir()
  a.write_bytes(b'weights' * 1000)
  b = tmp_path / 'elsewhere' / 'renamed.pth'
  b.parent.mkdir()
  shutil.copy(a, b)
  assert _fp(_config(a)) == _fp(_config(b))
  assert _fp(_config(a)) == _fp(_config(os.path.relpath(a)))
  other = tmp_path / 'other.pth'
  other.write_bytes(b'weightz' * 1000)
  assert _fp(_config(other)) != _fp(_config(a))
  # An orbax directory: its files and their names count.
  d1, d2 = tmp_path / 'ckpt1', tmp_path / 'moved' / 'ckpt1'
  (d1 / 'sub').mkdir(parents=True)
  (d1 / 'sub' / 'x').write_bytes(b'1')
  (d1 / 'y').write_bytes(b'2')
  shutil.copytree(d1, d2)
  assert _fp(_config(d1)) == _fp(_config(d2))
  (d2 / 'y').rename(d2 / 'z')
  assert _fp(_config(d1)) != _fp(_config(d2))


def test_digest_cache_notices_a_changed_file(tmp_path):
  f, cache = tmp_path / 'w.bin', str(tmp_path / 'sums.json')
  f.write_bytes(b'a' * 100)
  first = content_sha256(str(f), cache)
  assert json.load(open(cache))[os.path.realpath(f)]['sha256'] == first
  assert content_sha256(str(f), cache) == first  # from the cache
  f.write_bytes(b'b' * 100)  # same size, newer mtime
  os.utime(f, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns + 10**9))
  assert content_sha256(str(f), cache) != first


def test_config_json_names_no_machine_path_and_resumes_after_a_move(tmp_path, monkeypatch):
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  ckpt = tmp_path / 'weights' / 'memo.pth'
  ckpt.parent.mkdir()
  ckpt.write_bytes(b'\x00\x01' * 500)
  config = _config(ckpt, data_dir=tmp_path / 'data')
  text = config_record(config)
  assert str(tmp_path) not in text
  record = json.loads(text)
  assert record['init_checkpoint'] == 'sha256:' + content_sha256(str(ckpt))
  assert record['init_checkpoint_file'] == '.../memo.pth' and record['data_dir'] == '.../data'
  workdir = tmp_path / 'work'
  workdir.mkdir()
  (workdir / 'config.json').write_text(text)
  fp = _fp(config)
  table = store.ResultsCsv(str(workdir / 'results.csv'))
  table.add(dict(shift='snow', method='all', lr=1e-3, seed=0, val_acc=0.5, test_acc=0.5,
                 fingerprint=fp))
  # The checkout and the weights move: the same rows resume.
  moved = tmp_path / 'new_home' / 'memo.pth'
  moved.parent.mkdir()
  shutil.move(ckpt, moved)
  now = _config(moved, data_dir='/somewhere/else')
  assert _fp(now) == fp and read_result_fields(str(workdir / 'config.json')) == result_fields(now)
  check_resume(str(workdir), table, _fp(now), result_fields(now))


def _old_workdir(tmp_path, checkpoint_path):
  """A results folder as the old runner left it: config.json naming the checkpoint by a
  path of a machine that is not this one, rows fingerprinted by that path's text."""
  config = _config(checkpoint_path)
  folder = tmp_path / 'results' / 'old'
  folder.mkdir(parents=True)
  (folder / 'config.json').write_text(config.to_json(indent=2))
  old_fp = _fp(config)  # the path does not exist here, so it enters by its text
  table = store.ResultsCsv(str(folder / 'results.csv'))
  for lr, acc in ((1e-3, 0.61), (1e-4, 0.58)):
    table.add(dict(shift='snow', method='all', lr=lr, seed=0, best_epoch=3, val_acc=acc,
                   test_acc=acc - 0.01, n_tune=1000, n_val=100, n_test=8900, seconds=60.0,
                   fingerprint=old_fp))
  (folder / 'metrics.jsonl').write_text(json.dumps({'fingerprint': old_fp, 'lr': 0.001}) + '\n')
  return folder, old_fp


def test_migration_changes_only_the_fingerprint_and_the_rows_resume(tmp_path):
  weights = tmp_path / 'shared' / 'memo.pth'
  weights.parent.mkdir()
  weights.write_bytes(b'memo' * 4096)
  folder, old_fp = _old_workdir(tmp_path, '/old/machine/weights/memo.pth')
  before = (folder / 'results.csv').read_text()
  env = {**os.environ, 'SURGERY_CACHE_DIR': str(tmp_path / 'cache'), 'PYTHONPATH': REPO}
  proc = subprocess.run([sys.executable, '-m', 'experiments.tools.migrate_fingerprints',
                         f'--checkpoint={weights}', str(tmp_path / 'results')],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  new_fp = _fp(_config(weights))
  assert f'fingerprint {old_fp} -> {new_fp}' in proc.stdout
  after = (folder / 'results.csv').read_text()
  assert after == before.replace(old_fp, new_fp) and old_fp not in after
  old_rows, new_rows = (list(csv.DictReader(t.splitlines())) for t in (before, after))
  assert [dict(r, fingerprint='') for r in old_rows] == [dict(r, fingerprint='') for r in new_rows]
  assert json.loads((folder / 'metrics.jsonl').read_text())['fingerprint'] == new_fp
  assert '/old/machine' not in (folder / 'config.json').read_text()
  # The migrated folder resumes under the weights' new home.
  table = store.ResultsCsv(str(folder / 'results.csv'))
  now = _config(weights)
  check_resume(str(folder), table, _fp(now), result_fields(now))
  # Run again, it finds nothing to do.
  again = subprocess.run([sys.executable, '-m', 'experiments.tools.migrate_fingerprints',
                          f'--checkpoint={weights}', str(tmp_path / 'results')],
                         env=env, capture_output=True, text=True, timeout=120)
  assert again.returncode == 0 and 'nothing to do' in again.stdout
  assert (folder / 'results.csv').read_text() == after


def test_migration_refuses_rows_of_another_fingerprint(tmp_path):
  weights = tmp_path / 'memo.pth'
  weights.write_bytes(b'memo')
  folder, old_fp = _old_workdir(tmp_path, '/old/machine/memo.pth')
  text = (folder / 'results.csv').read_text().replace(old_fp, 'abcdefabcdef', 1)
  (folder / 'results.csv').write_text(text)
  env = {**os.environ, 'SURGERY_CACHE_DIR': str(tmp_path / 'cache'), 'PYTHONPATH': REPO}
  proc = subprocess.run([sys.executable, '-m', 'experiments.tools.migrate_fingerprints',
                         f'--checkpoint={weights}', str(tmp_path / 'results')],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and 'abcdefabcdef' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert (folder / 'results.csv').read_text() == text
  assert '/old/machine' in (folder / 'config.json').read_text()


def test_committed_results_carry_no_machine_path():
  bad = []
  for d, _, names in os.walk(os.path.join(REPO, 'results')):
    for n in names:
      if n.endswith(('.json', '.csv', '.md', '.jsonl')):
        text = open(os.path.join(d, n), encoding='utf-8', errors='replace').read()
        bad += [os.path.join(d, n) for marker in ('/work/', '/home/', '/root/', '/Users/', '/tmp/')
                if marker in text]
  assert not bad, bad


def test_config_record_keeps_a_config_without_checkpoint_as_it_was():
  config = _config('')
  assert json.loads(config_record(config)) == json.loads(config.to_json())
  assert ml_collections.ConfigDict(json.loads(config_record(config))).init_checkpoint == ''


def test_config_record_splits_command_line_lists_without_moving_the_fingerprint():
  config = _config('')
  config.methods = ('lp_ft,lp_rgn',)  # what `--config.methods=lp_ft,lp_rgn` leaves there
  config.corruptions = ('frost, snow', 'fog')
  before = _fp(config)
  record = json.loads(config_record(config))
  assert record['methods'] == ['lp_ft', 'lp_rgn']
  assert record['corruptions'] == ['frost', 'snow', 'fog']
  assert record['seeds'] == list(config.seeds)
  assert fingerprint(result_fields(ml_collections.ConfigDict(record))) == before


def _legacy_folder(tmp_path, old_record):
  """A workdir as committed before fingerprints: rows without the column, config.json."""
  folder = tmp_path / 'legacy'
  folder.mkdir()
  (folder / 'config.json').write_text(json.dumps(old_record))
  with open(folder / 'results.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['shift', 'method', 'lr', 'hparam', 'seed', 'best_epoch', 'val_acc', 'test_acc'])
    w.writerow(['snow', 'all', '0.001', '', '0', '3', '0.5', '0.5'])
  return folder


def test_a_config_json_older_than_a_setting_reads_it_as_the_value_that_ran(tmp_path):
  """results/cifar_flip's config.json predates `dataset`, `model.name`, `model.bn_mode`
  and `auto_rgn.reset_inner`: it resumes under today's config, and a setting that truly
  differs is still named."""
  config = cifar10c.get_config()
  record = json.loads(config.to_json())
  old = json.loads(json.dumps(record))
  del old['dataset'], old['model']['name'], old['model']['bn_mode'], old['auto_rgn']['reset_inner']
  old['model'] = old['model'].pop('resnet26')  # the flat model section of that time
  folder = _legacy_folder(tmp_path, old)
  table = store.ResultsCsv(str(folder / 'results.csv'), write=False)
  now = result_fields(config)
  check_resume(str(folder), table, fingerprint(now), now)  # no error
  old['auto_rgn']['window'] = 3
  (folder / 'config.json').write_text(json.dumps(old))
  with pytest.raises(SurgeryError, match=r'auto_rgn\.window differ'):
    check_resume(str(folder), table, fingerprint(now), now)
  config.auto_rgn.reset_inner = True  # now a real difference from what ran then
  old['auto_rgn']['window'] = 5
  (folder / 'config.json').write_text(json.dumps(old))
  now = result_fields(config)
  with pytest.raises(SurgeryError, match=r'auto_rgn\.reset_inner differ'):
    check_resume(str(folder), table, fingerprint(now), now)


def test_committed_legacy_folders_read_as_todays_config(tmp_path):
  """The committed folders made before those settings: their fields equal today's config
  with the same run axes, so they resume with nothing to do."""
  from configs import cifar_flip, data_efficiency, param_noise
  for name, module in (('cifar_flip', cifar_flip), ('param_noise', param_noise),
                       ('data_efficiency', data_efficiency)):
    path = os.path.join(REPO, 'results', name, 'config.json')
    config = module.get_config()
    config.init_checkpoint = json.load(open(path))['init_checkpoint']  # its sha256 id
    assert read_result_fields(path) == result_fields(config), name
