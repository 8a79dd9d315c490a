"""Multi-process runs (TPU pod slices, several GPU hosts, or local processes on a CPU).

    surgery.distributed.initialize()          # before anything touches a device
    if surgery.distributed.is_primary(): ...  # the one process that writes files

`initialize` starts JAX's distributed runtime when the run spans several processes:
from explicit arguments (`--coordinator_address`, `--num_processes`, `--process_id`),
else the variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, else
whatever cluster JAX detects (Cloud TPU, SLURM, Open MPI). On CPU the
collectives go through gloo.

Every process then runs the same program on its own devices and its own input shard;
arrays that span processes are built with `surgery.train.shard_batch` (the same global
batch on every process) or `host_local_batch` (each process's own rows).

A lost process would otherwise leave the others blocked in a collective until JAX's
own heartbeat aborts them with a page of C++ stack trace. A watchdog thread instead
exchanges a counter with every peer through the coordination service; when a peer's
counter stops for `heartbeat_s` seconds (or the coordinator stops answering), this
process prints one line naming the lost process and exits with status 1. Files are
written atomically by process 0 alone, so running the same command again resumes.
"""
import os
import sys
import threading
import time
from typing import Optional

import jax
import numpy as np

from surgery.errors import SurgeryError

_WATCHDOG = {}
# Clusters whose launchers start one process per host. Kubernetes is left out: a pod's
# environment says nothing about whether its neighbours belong to this run.
_AUTO_DETECTED = ('OmpiCluster', 'SlurmCluster', 'GceTpuCluster', 'GkeTpuCluster')


def _cluster_detected() -> bool:
  try:
    from jax._src import clusters  # no public way to ask "is this a cluster?"
  except ImportError:
    return False
  for cluster in getattr(clusters.ClusterEnv, '_cluster_types', ()):
    if cluster.__name__ not in _AUTO_DETECTED:
      continue
    try:
      if cluster.is_env_present():
        return True
    except Exception:  # pylint: disable=broad-except  (a detector that cannot tell)
      continue
  return False


def _int_or_none(name: str, value) -> Optional[int]:
  if value in (None, ''):
    return None
  try:
    return int(value)
  except (TypeError, ValueError):
    raise SurgeryError(f'{name} must be an integer, got {value!r}') from None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, heartbeat_s: int = 30) -> None:
  """Joins the run's processes (no-op for a single process). Call once, first.

  Args:
    coordinator_address: 'host:port' of process 0's coordination service.
    num_processes, process_id: this run's size and this process's index.
    heartbeat_s: seconds without word from a peer before this process gives up.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS') or None
  num_processes = _int_or_none('num_processes', num_processes
                               if num_processes is not None else env.get('JAX_NUM_PROCESSES'))
  process_id = _int_or_none('process_id', process_id
                            if process_id is not None else env.get('JAX_PROCESS_ID'))
  explicit = coordinator_address or num_processes is not None or process_id is not None
  if not explicit and not _cluster_detected():
    return
  if explicit and num_processes == 1:
    return
  if explicit and None in (coordinator_address, num_processes, process_id):
    raise SurgeryError('a multi-process run needs coordinator_address, num_processes and '
                       'process_id (flags or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, '
                       'JAX_PROCESS_ID)')
  if explicit and not 0 <= process_id < num_processes:
    raise SurgeryError(f'process_id must be in [0, {num_processes}), got {process_id}')
  if not (isinstance(heartbeat_s, int) and heartbeat_s >= 1):
    raise SurgeryError(f'heartbeat must be an integer >= 1 (seconds), got {heartbeat_s!r}')
  if 'cpu' in (env.get('JAX_PLATFORMS') or 'cpu').split(','):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # JAX's own heartbeat is the backstop; ours fires first with a readable message.
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             heartbeat_timeout_seconds=3 * heartbeat_s + 30)
  if jax.process_count() > 1:
    _start_watchdog(heartbeat_s)


def is_primary() -> bool:
  """True in the process that writes results, plots and logs (process 0)."""
  return jax.process_index() == 0


def describe() -> str:
  return (f'process {jax.process_index()} of {jax.process_count()}: '
          f'{jax.device_count()} devices in all, {jax.local_device_count()} here '
          f'({jax.devices()[0].device_kind})')


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier called `name`."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def agree(name: str, value: str) -> None:
  """Checks that every process computed the same `value` (e.g. the list of runs to do)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  import hashlib
  digest = np.frombuffer(hashlib.sha256(value.encode()).digest()[:8], np.uint32)
  first = multihost_utils.broadcast_one_to_all(digest)
  same = np.array_equal(np.asarray(first), digest)
  everyone = multihost_utils.process_allgather(np.array([same]))
  if not np.all(everyone):
    raise SurgeryError(f'processes disagree on {name} (do they all see the same workdir '
                       'and data?)')


# ------------------------------------------------------------------------- watchdog

def _client():
  from jax._src import distributed as jax_distributed
  return jax_distributed.global_state.client


def _start_watchdog(heartbeat_s: int) -> None:
  me, count = jax.process_index(), jax.process_count()
  state = {'answered': time.monotonic(), 'seen': {}, 'stop': False}
  interval = max(heartbeat_s / 6, 0.2)

  def ping():
    client, beat = _client(), 0
    while not state['stop']:
      beat += 1
      try:
        client.key_value_set(f'surgery/heartbeat/{me}', str(beat), allow_overwrite=True)
        for peer in range(count):
          if peer != me:
            value = client.key_value_try_get(f'surgery/heartbeat/{peer}')
            if state['seen'].get(peer, (None,))[0] != value:
              state['seen'][peer] = (value, time.monotonic())
        state['answered'] = time.monotonic()
      except Exception:  # pylint: disable=broad-except  (peer key not there yet, or no service)
        pass
      time.sleep(interval)

  def check():
    start = time.monotonic()
    while not state['stop']:
      time.sleep(interval)
      now = time.monotonic()
      if now - state['answered'] > heartbeat_s:
        _lost('the coordinator (process 0) stopped answering', heartbeat_s)
      for peer in range(count):
        if peer == me:
          continue
        _, since = state['seen'].get(peer, (None, start))
        if now - since > heartbeat_s:
          _lost(f'process {peer} of {count} stopped responding', heartbeat_s)

  for target in (ping, check):
    threading.Thread(target=target, name=f'surgery-{target.__name__}', daemon=True).start()
  _WATCHDOG['state'] = state


def _lost(what: str, heartbeat_s: int) -> None:
  print(f'error: {what} (no heartbeat for {heartbeat_s} s); finished runs are in '
        'results.csv: launch the same command on every process to resume',
        file=sys.stderr, flush=True)
  os._exit(1)  # the main thread may be blocked in a collective that will never finish


def stop_watchdog() -> None:
  """Stops the heartbeat (at a clean exit, before processes leave one by one)."""
  if 'state' in _WATCHDOG:
    _WATCHDOG['state']['stop'] = True
