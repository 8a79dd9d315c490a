"""No adaptation on each corruption's MEMO tuning images: the score a tuning stream must
beat, and the source model's most-predicted class there.

    python -m experiments.tools.memo_tuning_baseline --config=configs/memo_paper.py \
        --config.init_checkpoint=../shared/weights/memo_resnet26_gn_cifar10.pth --seeds=0,1

The tuning images are the ones the runner draws (`experiments.memo.tuning_split`) for
each seed. Seconds on 2 CPU cores per corruption, after the corruption is generated.
"""
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

import surgery
from surgery.data.sources import to_arrays
from surgery.errors import SurgeryError
from experiments import memo as runner

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A MEMO config with tune.images.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds whose tuning sets to score.')
flags.mark_flags_as_required(['config'])


def baseline(config, seeds):
  """[(shift, seed, accuracy, top class, its share)] of the source model on each tuning set."""
  plan = runner.make_plan(config)
  if not plan.tuning:
    raise SurgeryError('the config tunes nothing (tune.images is 0)')
  variables = plan.spec.load(config.init_checkpoint)
  predict = surgery.make_predict(plan.spec.module)
  state = {k: v for k, v in variables.items() if k != 'params'}
  k, out = plan.dataset.num_classes, []
  for shift in plan.shifts:
    target = to_arrays(plan.dataset.target(shift))
    for seed in seeds:
      idx, _ = runner.tuning_split(plan, target['label'], seed)
      preds = surgery.train.predictions(predict, variables['params'], state,
                                        target['image'][idx], config.eval_batch_size)
      counts = np.bincount(preds, minlength=k)
      out.append((shift, seed, float(np.mean(preds == target['label'][idx])),
                  int(counts.argmax()), float(counts.max() / len(preds))))
      print(f'{shift:16s} seed {seed}: no adaptation {100 * out[-1][2]:.1f}% on the '
            f'{len(idx)} tuning images; class {out[-1][3]} takes {100 * out[-1][4]:.0f}%',
            flush=True)
  return out


def main(argv):
  del argv
  try:
    baseline(_CONFIG.value, [int(s) for s in _SEEDS.value])
  except (SurgeryError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
