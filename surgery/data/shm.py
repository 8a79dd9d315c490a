"""Shared memory that a killed run cannot leak: grain's worker segments, named per run.

    with shared_memory_scope(workdir):      # around a run that streams with worker_count > 0
      for batch in batches(source, 256, seed=0, worker_count=8):
        ...

grain's worker processes hand each batch over in a POSIX shared-memory segment, and a
run killed with SIGKILL leaves those segments in /dev/shm (RAM, until reboot) and its
workers running. Inside the scope, workers name their segments
`psm_sf<hash of workdir>_<pid of the run>_<random>`, so that

  - the scope unlinks its own leftovers on exit, however the run ends short of SIGKILL;
  - the next run in the same workdir unlinks those of a dead earlier run on entry;
  - a worker whose parent has died unlinks them and exits.

Everything but the naming is Linux-only (it lists /dev/shm).
"""
import contextlib
import dataclasses
import hashlib
import os
import secrets
import threading
import time
from multiprocessing import resource_tracker, shared_memory

ENV = 'SURGERY_SHM_TAG'
_SHM_DIR = '/dev/shm'
_PREFIX = 'psm_'  # Python's own prefix, so tools that know it recognise ours


@dataclasses.dataclass(frozen=True)
class Scope:
  tag: str            # 'sf<hash>_<pid>': every segment of this run has it in its name
  removed: int        # segments of dead earlier runs of the same owner removed on entry
  removed_bytes: int


def owner_prefix(owner: str) -> str:
  """The name prefix of every segment of every run of `owner`: 'psm_sf<6 hex>_'."""
  digest = hashlib.sha256(os.path.realpath(owner).encode()).hexdigest()[:6]
  return f'{_PREFIX}sf{digest}_'


def segments(prefix: str) -> list:
  """Names in /dev/shm that start with `prefix` (none where there is no /dev/shm)."""
  try:
    return sorted(n for n in os.listdir(_SHM_DIR) if n.startswith(prefix))
  except FileNotFoundError:
    return []


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


def _unlink(name: str, tracked: bool) -> int:
  """Unlink /dev/shm/`name`; its size in bytes, or -1 if it was already gone.

  `tracked`: the segment is registered with this process's resource tracker (this run's
  segments are: the workers share the run's tracker), which must forget it, or it warns
  of a leak and unlinks it again when it exits.
  """
  path = os.path.join(_SHM_DIR, name)
  try:
    size = os.stat(path).st_size
    os.unlink(path)
  except FileNotFoundError:  # another worker, or grain itself, got there first
    return -1
  if tracked:
    resource_tracker.unregister('/' + name, 'shared_memory')
  return size


def _remove_dead_runs(prefix: str) -> tuple:
  """Unlink segments under `prefix` whose run's pid is dead: (count, bytes)."""
  count = total = 0
  alive = {}
  for name in segments(prefix):
    pid = name[len(prefix):].split('_')[0]
    if not pid.isdigit():
      continue
    if alive.setdefault(pid, _alive(int(pid))):
      continue  # a live run, or its pid reused: keeping the segments is the safe mistake
    # Not tracked here: the dead run had its own resource tracker.
    size = _unlink(name, tracked=False)
    if size >= 0:
      count, total = count + 1, total + size
  return count, total


@contextlib.contextmanager
def shared_memory_scope(owner: str):
  """Name the segments of worker processes started inside after `owner` and this process.

  On entry, unlinks what a dead earlier run of `owner` (a workdir) left; on exit, normal
  or not, unlinks what this run's workers left. Yields a `Scope`.
  """
  prefix = owner_prefix(owner)
  tag = f'{prefix[len(_PREFIX):]}{os.getpid()}'
  removed, removed_bytes = _remove_dead_runs(prefix)
  if removed:
    print(f'removed {removed} shared-memory segments ({removed_bytes / 2**20:.1f} MB) '
          f'left by a dead run of {owner}', flush=True)
  previous = os.environ.get(ENV)
  os.environ[ENV] = tag  # spawned workers inherit it
  try:
    yield Scope(tag, removed, removed_bytes)
  finally:
    if previous is None:
      os.environ.pop(ENV, None)
    else:
      os.environ[ENV] = previous
    for name in segments(f'{_PREFIX}{tag}_'):
      _unlink(name, tracked=True)


_installed = False


def install_in_worker() -> None:
  """In a worker process of a scope (a process with the scope's tag and another pid):
  name shared memory after the tag, and exit, unlinking it, once the parent dies.

  Called when a worker imports `surgery.data.pipeline`; does nothing elsewhere or twice.
  """
  global _installed
  tag = os.environ.get(ENV, '')
  if _installed or not tag or tag.rsplit('_', 1)[-1] == str(os.getpid()):
    return
  _installed = True
  # At most 30 characters ('/psm_sf' + 6 + '_' + 7-digit pid + '_' + 8), for macOS.
  shared_memory._make_filename = lambda: f'/{_PREFIX}{tag}_{secrets.token_hex(4)}'
  if os.path.isdir(_SHM_DIR):
    threading.Thread(target=_watch_parent, args=(os.getppid(), tag), daemon=True,
                     name='shm-watchdog').start()


def _watch_parent(ppid: int, tag: str) -> None:
  # SIGKILL of the run reparents its workers, which would otherwise live on (keeping
  # its resource tracker alive too) and hold their segments forever.
  while os.getppid() == ppid:
    time.sleep(1.0)
  for name in segments(f'{_PREFIX}{tag}_'):
    _unlink(name, tracked=True)
  os._exit(1)
