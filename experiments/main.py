"""Entry point: `python -m experiments.main --config=configs/cifar10c.py --workdir=DIR`.

Every config field can be overridden on the command line, e.g.
`--config.corruptions=gaussian_noise,snow --config.seeds=0,1,2`. A user's mistake (a bad
value, missing data, an unusable checkpoint) prints one line and exits with status 1;
rows already in DIR/results.csv are kept and skipped on the next run.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from surgery.errors import SurgeryError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'ml_collections config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for results and checkpoints.')
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
    try:  # ml_collections reports a missing or broken config file on first access
      config = _CONFIG.value
      config.experiment  # noqa: B018
    except OSError as e:
      raise SurgeryError(f'--config: {str(e).strip().splitlines()[-1].strip()}') from None
    if config.experiment not in EXPERIMENTS:
      raise SurgeryError(f'unknown experiment {config.experiment!r}; valid: {sorted(EXPERIMENTS)}')
    module = __import__(EXPERIMENTS[config.experiment], fromlist=['train_and_evaluate'])
    module.train_and_evaluate(config, _WORKDIR.value)
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print('interrupted: finished runs are in results.csv; run the same command to resume',
          file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(main)
