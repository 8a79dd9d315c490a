"""Entry point: `python -m experiments.main --config=configs/cifar10c.py --workdir=DIR`.

Every config field can be overridden on the command line, e.g.
`--config.corruptions=gaussian_noise,snow --config.seeds=0,1,2`. A user's mistake (a bad
value, missing data, an unusable checkpoint) prints one line and exits with status 1;
rows already in DIR/results.csv are kept and skipped on the next run.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from surgery import distributed
from surgery.errors import Interrupted, SurgeryError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'ml_collections config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for results and checkpoints.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, "Multi-process runs: process 0's host:port (else "
    '$JAX_COORDINATOR_ADDRESS, else the cluster JAX detects: Cloud TPU, SLURM, Open MPI).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat', 30, 'Seconds without word from another process before this one exits.')
flags.mark_flags_as_required(['config', 'workdir'])

EXPERIMENTS = {
    'finetune': 'experiments.sweep',
    'memo': 'experiments.memo',
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # keep progress output readable
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _HEARTBEAT.value)
    print(distributed.describe(), flush=True)
    if not distributed.is_primary():  # one process reports progress
      os.environ['TQDM_DISABLE'] = '1'
      sys.stdout = open(os.devnull, 'w')
    try:  # ml_collections reports a missing or broken config file on first access
      config = _CONFIG.value
      config.experiment  # noqa: B018
    except OSError as e:
      raise SurgeryError(f'--config: {str(e).strip().splitlines()[-1].strip()}') from None
    if config.experiment not in EXPERIMENTS:
      raise SurgeryError(f'unknown experiment {config.experiment!r}; valid: {sorted(EXPERIMENTS)}')
    module = __import__(EXPERIMENTS[config.experiment], fromlist=['train_and_evaluate'])
    module.train_and_evaluate(config, _WORKDIR.value)
    distributed.barrier('finished')  # nobody leaves while another still needs it
    distributed.stop_watchdog()
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt as e:
    print(_interrupted_message(e), file=sys.stderr)
    sys.exit(130)


def _interrupted_message(e: KeyboardInterrupt) -> str:
  if isinstance(e, Interrupted):
    return str(e)
  if os.path.exists(os.path.join(_WORKDIR.value, 'results.csv')):
    return (f'interrupted: finished runs are in {os.path.join(_WORKDIR.value, "results.csv")}; '
            'run the same command to resume')
  return 'interrupted before any run finished; run the same command to start again'


if __name__ == '__main__':
  app.run(main)
