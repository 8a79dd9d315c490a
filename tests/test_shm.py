import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import shared_memory

import numpy as np
import pytest

from surgery.data import shm
from surgery.data.pipeline import batches
from surgery.data.sources import ArraySource

pytestmark = pytest.mark.skipif(not os.path.isdir('/dev/shm'), reason='needs /dev/shm')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run that streams with two workers inside the scope, says when its workers have
# batches waiting in shared memory, then idles until it is killed. Its multiprocessing
# semaphores get a findable name, so the test can remove those of a run it SIGKILLs.
RUN = textwrap.dedent('''
    import os, sys, time
    from multiprocessing import synchronize
    synchronize.SemLock._make_name = staticmethod(
        lambda: f'/mp-shmtest-{os.getpid()}-' + next(synchronize.SemLock._rand))
    import numpy as np
    from surgery.data.pipeline import batches
    from surgery.data.shm import shared_memory_scope
    from surgery.data.sources import ArraySource

    if __name__ == '__main__':
      images = np.zeros((64, 8, 8, 3), np.uint8)
      with shared_memory_scope(sys.argv[1]):
        it = batches(ArraySource(images, np.arange(64) % 10), 8, seed=0, num_epochs=None,
                     worker_count=2, shard_index=0, shard_count=1)
        for step, _ in enumerate(it):
          if step == 5:
            print('ready', flush=True)
          time.sleep(0.05 if step < 5 else 0.5)
''')


def _start_run(tmp_path, workdir):
  script = tmp_path / 'run.py'
  script.write_text(RUN)
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop(shm.ENV, None)
  proc = subprocess.Popen([sys.executable, str(script), str(workdir)], env=env,
                          stdout=subprocess.PIPE, start_new_session=True, text=True)
  if proc.stdout.readline().strip() != 'ready':
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f'the run did not start: exit code {proc.wait()}')
  return proc


def _stat(pid):
  """(state, ppid) of process `pid`, or None once it is gone."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      state, ppid = f.read().rsplit(')', 1)[1].split()[:2]  # past '(command name)'
  except OSError:
    return None
  return state, int(ppid)


def _children(pid):
  """The live (not zombie) children of `pid`."""
  stats = {int(p): _stat(p) for p in os.listdir('/proc') if p.isdigit()}
  return [p for p, st in stats.items() if st and st[1] == pid and st[0] != 'Z']


def _alive(pids):
  return [p for p in pids if (_stat(p) or ('Z',))[0] != 'Z']


def _remove_semaphores(pid):
  for name in os.listdir('/dev/shm'):
    if name.startswith(f'sem.mp-shmtest-{pid}-'):
      os.unlink(os.path.join('/dev/shm', name))


def test_kill_9_of_a_whole_run_is_reclaimed_by_the_next_run(tmp_path):
  workdir = tmp_path / 'workdir'
  prefix = shm.owner_prefix(str(workdir))
  proc = _start_run(tmp_path, workdir)
  try:
    os.killpg(proc.pid, signal.SIGKILL)  # main, workers and resource tracker alike
    proc.wait()
    time.sleep(0.5)  # the workers, not waited for, are surely dead by now too
    left = shm.segments(prefix)
    assert left and all(n.startswith(f'{prefix}{proc.pid}_') for n in left)
    with shm.shared_memory_scope(str(workdir)) as scope:
      assert scope.removed == len(left) and scope.removed_bytes > 0
      assert shm.segments(prefix) == []
    assert shm.segments(prefix) == []
  finally:
    _remove_semaphores(proc.pid)


def test_workers_exit_and_clean_up_when_their_run_is_killed(tmp_path):
  workdir = tmp_path / 'workdir'
  prefix = shm.owner_prefix(str(workdir))
  proc = _start_run(tmp_path, workdir)
  try:
    children = _children(proc.pid)  # two workers and the resource tracker
    assert len(children) == 3 and shm.segments(prefix)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while _alive(children) and time.monotonic() < deadline:
      time.sleep(0.2)
    assert _alive(children) == []
    assert shm.segments(prefix) == []
  finally:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGKILL)  # only if the test failed
    proc.wait()


def test_scope_removes_its_own_segments_and_nothing_else(tmp_path):
  workdir = str(tmp_path / 'workdir')
  done = subprocess.Popen(['true'])
  done.wait()
  keep = [shm.owner_prefix(str(tmp_path / 'other')) + f'{done.pid}_00000000',  # other owner
          shm.owner_prefix(workdir) + f'{os.getppid()}_00000000']  # a live run
  decoys = [shared_memory.SharedMemory(name, create=True, size=16) for name in keep]
  try:
    with shm.shared_memory_scope(workdir) as scope:
      assert scope.removed == 0 and os.environ[shm.ENV] == scope.tag
      images = np.zeros((64, 8, 8, 3), np.uint8)
      with batches(ArraySource(images, np.arange(64) % 10), 8, seed=0, num_epochs=None,
                   worker_count=2, shard_index=0, shard_count=1) as it:
        for _ in zip(range(5), it):
          pass
        assert shm.segments(f'psm_{scope.tag}_')  # the workers use the scope's names
    assert shm.ENV not in os.environ
    assert shm.segments(f'psm_{scope.tag}_') == []
    assert all(os.path.exists(f'/dev/shm/{name}') for name in keep)
  finally:
    for decoy in decoys:
      decoy.close()
      decoy.unlink()
