"""Multi-process runs as on a TPU pod, here two local CPU processes with two devices each
(gloo collectives, coordinator on 127.0.0.1): one line and a clean exit when a process
dies, a resume that loses nothing, and the same rows as one process with four devices
(the tiny CIFAR-10-C and Living-17 configs)."""
import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from surgery import models
from surgery.checkpoints import save_params
from tests.test_main import _write_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARED = ('shift', 'method', 'lr', 'hparam', 'seed', 'best_epoch', 'n_tune', 'n_val', 'n_test')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(flags, workdir, processes, devices, extra=(), env_extra=None):
  """Starts the run's processes; returns them (process 0 first)."""
  env = dict(os.environ)
  # conftest's 8 devices give way to JAX_NUM_CPU_DEVICES; its other flags (O0) stay.
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if not f.startswith('--xla_force_host_platform_device_count'))
  env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED='1',
             SURGERY_CACHE_DIR=os.path.join(os.path.dirname(workdir), 'cache'),
             **(env_extra or {}))
  cmd = [sys.executable, '-m', 'experiments.main', *flags, f'--workdir={workdir}', *extra]
  if processes > 1:
    port = _free_port()
    cmd += [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}']
  procs = []
  for p in range(processes):
    which = [f'--process_id={p}'] if processes > 1 else []
    procs.append(subprocess.Popen(cmd + which, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def _run(flags, workdir, processes, devices, env_extra=None):
  return _finish(_launch(flags, workdir, processes, devices, env_extra=env_extra), workdir,
                 processes, devices)


def _finish(procs, workdir, processes, devices):
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  first = outs[0][0].splitlines()[0]
  assert first.startswith(f'process 0 of {processes}: 4 devices in all, {devices} here'), first
  return _rows(workdir)


def _one_and_two(flags, root, env_extra=None):
  """The rows of one process on 4 devices and of two processes on 2 + 2, run at the
  same time: most of each run is one core compiling, so the three processes overlap."""
  one = _launch(flags, str(root / 'one'), 1, 4)
  two = _launch(flags, str(root / 'two'), 2, 2, env_extra=env_extra)
  with _killed_on_exit(one + two):
    return _finish(one, str(root / 'one'), 1, 4), _finish(two, str(root / 'two'), 2, 2)


@contextlib.contextmanager
def _killed_on_exit(procs):
  """Kills whichever of `procs` still runs when the block is left, as when an assertion
  fails before they were waited for."""
  try:
    yield
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()


def _rows(workdir):
  with open(os.path.join(workdir, 'results.csv'), newline='') as f:
    return list(csv.DictReader(f))


def _assert_same_rows(got, want):
  for g, w in zip(got, want):  # side by side in the log (pytest -s)
    print(f"{g['method']:14s} lr={g['lr']:7s} epoch {w['best_epoch']}/{g['best_epoch']}  "
          f"test_acc one process {float(w['test_acc']):.4f}  two {float(g['test_acc']):.4f}")
  assert [[r[c] for c in COMPARED] for r in got] == [[r[c] for c in COMPARED] for r in want]
  for g, w in zip(got, want):  # all-reduce order may differ: within one test example
    n = int(w['n_test'])
    assert abs(float(g['test_acc']) - float(w['test_acc'])) * n <= 1 + 1e-6, (g, w)


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
  root = tmp_path_factory.mktemp('mp_cifar')
  _write_folder(root / 'data', 'test', 8, 0)
  source = save_params(str(root / 'source'), models.create('resnet26', depth=8).init()['params'])
  flags = ['--config=configs/cifar10c.py', f'--config.data_dir={root / "data"}',
           f'--config.init_checkpoint={source}', '--config.model.resnet26.depth=8',
           '--config.corruptions=gaussian_noise', '--config.methods=no_adaptation,all,last',
           '--config.lrs=1e-3', '--config.last_lrs=1e-2', '--config.epochs=2',
           '--config.batch_size=16', '--config.eval_batch_size=16',
           '--config.tune_per_class=3', '--config.val_per_class=2']
  return flags, root


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_one_line_and_the_run_resumes(cifar):
  flags, root = cifar
  one = _launch(flags, str(root / 'one'), 1, 4)  # the reference, alongside
  with _killed_on_exit(one):
    workdir = str(root / 'killed')
    procs = _launch(flags, workdir, 2, 2, extra=['--heartbeat=5'])
    results = os.path.join(workdir, 'results.csv')
    deadline = time.time() + 240
    while not (os.path.exists(results) and len(_rows(workdir)) >= 1):
      assert time.time() < deadline and procs[0].poll() is None, 'no row written'
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = procs[0].communicate(timeout=120)
    waited = time.time() - killed
    procs[1].communicate()
    assert procs[0].returncode == 1
    assert waited <= 60, waited
    last = err.strip().splitlines()[-1].split('\r')[-1]
    assert 'error: process 1 of 2 stopped responding' in last, err[-2000:]
    print(f'surviving process exited {waited:.1f} s after the kill')
    assert len(_rows(workdir)) < 3
    # Resumed, every row (those before the kill too) equals the one-process run's: two
    # processes on 2 + 2 devices compute what one process does on 4.
    single = _finish(one, str(root / 'one'), 1, 4)
    _assert_same_rows(_run(flags, workdir, 2, 2), single)
    assert len(single) == 3
    assert sorted(os.listdir(workdir)) == ['accuracy_by_method.png', 'config.json',
                                           'metrics.jsonl', 'results.csv', 'summary.md']


@pytest.mark.slow
def test_living17_two_processes_match_one_process(tmp_path):
  from tests.test_living17 import TINY, _write_tree
  _write_tree(tmp_path / 'imagenet', {'train': 3, 'val': 1})
  start = save_params(str(tmp_path / 'start'), models.create('resnet50', **TINY).init(1))
  flags = ['--config=configs/living17.py', f'--config.data_dir={tmp_path / "imagenet"}',
           f'--config.init_checkpoint={start}', '--config.model.resnet50.width=2',
           '--config.model.resnet50.stage_sizes=1,1,1,1', '--config.methods=last',
           '--config.seeds=0', '--config.lrs=1e-3', '--config.last_lrs=1e-2',
           '--config.epochs=1', '--config.batch_size=8', '--config.eval_batch_size=16',
           '--config.tune_per_class=2', '--config.val_per_class=1',
           '--config.source_stage.head_epochs=1', '--config.source_stage.all_epochs=1',
           '--config.source_stage.batch_size=8', '--config.source_stage.workers=0']
  single, two = _one_and_two(flags, tmp_path)
  _assert_same_rows(two, single)


# Loaded into each process (PYTHONPATH): logs every file it opens for writing, per process.
_WRITE_LOGGER = """
import os, sys
_log = os.environ['WRITE_LOG'] + '.' + next(
    (a.split('=', 1)[1] for a in sys.argv if a.startswith('--process_id=')), '0')
_busy = []

def _hook(event, args):
  if _busy or event not in ('open', 'os.rename'):
    return
  path, writes = args[0], event == 'os.rename'
  if event == 'open':
    mode, flags = args[1], args[2]
    writes = (mode is not None and any(c in str(mode) for c in 'wax+')) or (
        mode is None and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
  if writes and isinstance(path, (str, bytes, os.PathLike)):
    _busy.append(1)
    with open(_log, 'a') as f:
      f.write(os.fsdecode(path) + '\\n')
    _busy.pop()

sys.addaudithook(_hook)
"""


@pytest.mark.slow
def test_memo_two_processes_match_one_process_and_only_the_first_writes(tmp_path):
  _write_folder(tmp_path / 'data', 'test', 3, 0)
  params = models.create('resnet26', depth=8).init()['params']
  source = save_params(str(tmp_path / 'source'), params)
  flags = ['--config=configs/memo_cifar10c.py', f'--config.data_dir={tmp_path / "data"}',
           f'--config.init_checkpoint={source}', '--config.model.depth=8',
           '--config.corruptions=gaussian_noise', '--config.modes=online,episodic',
           '--config.options=first_layer', '--config.num_images=10', '--config.num_copies=2',
           '--config.eval_batch_size=10']
  (tmp_path / 'hook').mkdir()
  (tmp_path / 'hook' / 'sitecustomize.py').write_text(_WRITE_LOGGER)
  env = dict(PYTHONPATH=f'{tmp_path / "hook"}{os.pathsep}{REPO}',
             WRITE_LOG=str(tmp_path / 'writes'))
  single, two = _one_and_two(flags, tmp_path, env_extra=env)
  columns = COMPARED + ('test_acc', 'fingerprint')
  assert [[r[c] for c in columns] for r in two] == [[r[c] for c in columns] for r in single]
  assert [r['method'] for r in single] == ['no_adaptation', 'online/first_layer',
                                           'episodic/first_layer']
  for name in ('gaussian_noise_online_first_layer', 'gaussian_noise_episodic_first_layer'):
    for suffix in ('.json', '.predictions.json'):
      path = os.path.join('streams', name + suffix)
      assert (tmp_path / 'two' / path).read_bytes() == (tmp_path / 'one' / path).read_bytes()
  workdir = str(tmp_path / 'two')
  first = [p for p in open(f'{tmp_path / "writes"}.0').read().split() if p.startswith(workdir)]
  second = [p for p in open(f'{tmp_path / "writes"}.1').read().split()
            if p.startswith(workdir)] if os.path.exists(f'{tmp_path / "writes"}.1') else []
  assert first, 'process 0 wrote nothing into its workdir'
  assert second == [], second[:5]


def test_initialize_is_a_no_op_alone_and_names_missing_settings(monkeypatch):
  from surgery import distributed
  from surgery.errors import SurgeryError
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
              'OMPI_MCA_orte_hnp_uri', 'SLURM_JOB_ID'):
    monkeypatch.delenv(var, raising=False)
  distributed.initialize()  # a plain single-process run: nothing to join
  distributed.initialize(num_processes=1)
  with pytest.raises(SurgeryError, match='needs coordinator_address, num_processes and '
                     'process_id'):
    distributed.initialize(coordinator_address='127.0.0.1:1', num_processes=2)
  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('JAX_PROCESS_ID', '5')
  with pytest.raises(SurgeryError, match=r'process_id must be in \[0, 2\)'):
    distributed.initialize(coordinator_address='127.0.0.1:1')
  assert distributed.is_primary()
