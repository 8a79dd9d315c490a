"""Wall-time cost of the one-run selection methods, against one `all` run at one lr.

    python -m experiments.bench.selection --config=configs/cifar10c.py \\
        --config.init_checkpoint=WEIGHTS [--shift=gaussian_noise] [--rounds=3] [--lr=1e-3] \\
        [--out=results/bench/selection.json]

On one shift and seed of the config's target sets, it runs one `all` run at `--lr` and
each method of the registry that runs its own loop (`Method.train`: probe_commit, its
probes included), in alternating rounds in this one process and on one runner, so
compiled steps and frozen-prefix activations are shared as in a sweep. The first round
compiles and is left out of the medians (with `--rounds=1` it is all there is). Per
method: median wall seconds and their ratio to the `all` run's, measured side by side.
The last line printed is one JSON object; `--out` also writes it to a file (atomically,
once every round is done, so a cut benchmark leaves no partial figure behind).
"""
import json
import os
import platform
import statistics
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments import finetune, sweep
from experiments.plan import make_plan
from surgery.errors import SurgeryError
from surgery.io import atomic_write
from surgery.methods import registry

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A fine-tuning config file.')
_SHIFT = flags.DEFINE_string('shift', '', "The shift (default: the config's first).")
_SEED = flags.DEFINE_integer('seed', 0, 'The target sets\' seed.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds; the first compiles.')
_LR = flags.DEFINE_float('lr', 1e-3, 'The lr of the `all` run.')
_OUT = flags.DEFINE_string('out', '', 'Also write the JSON object to this file.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  try:
    config = _CONFIG.value
    plan = make_plan(config)
    shift = _SHIFT.value or plan.shifts[0]
    if shift not in plan.shifts:
      raise SurgeryError(f'--shift: {shift!r} is not a shift of this config; valid: '
                         f'{", ".join(plan.shifts)}')
    if _ROUNDS.value < 1:
      raise SurgeryError('--rounds must be at least 1')
    if _OUT.value and os.path.isdir(_OUT.value):
      raise SurgeryError(f'--out: {_OUT.value!r} is a directory; name a file')
    variables = finetune.source_variables(config, '', plan.model)
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  params = variables['params']
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  start_params = plan.dataset.perturb(shift, params, plan.model.groups)
  data = plan.dataset.target_sets(shift, _SEED.value)
  runner = finetune.Finetuner(plan.model, config, None, plan.select_metric)
  full = plan.method('all')
  jobs = {'all': lambda: runner.run(start_params, model_state, full, _LR.value, _SEED.value,
                                    *data)}
  for name, method in registry.all_methods().items():
    if method.train is not None:
      jobs[name] = lambda m=method: m.train(sweep.train_context(
          runner, plan, m, start_params, model_state, _SEED.value, data))
  times = {name: [] for name in jobs}
  picks = {}
  for r in range(_ROUNDS.value):
    for name, job in jobs.items():
      began = time.perf_counter()
      fields, _, _ = job()
      times[name].append(time.perf_counter() - began)
      picks[name] = fields.get('picked', '')
      print(f'round {r + 1}: {name:14s} {times[name][-1]:7.1f} s  test_acc '
            f'{fields["test_acc"]:.4f} {picks[name]}', flush=True)
  kept = {n: t[1:] or t for n, t in times.items()}
  base = statistics.median(kept['all'])
  out = {'benchmark': 'selection_cost', 'config': config.get('title', ''), 'shift': shift,
         'seed': _SEED.value, 'all_lr': _LR.value, 'rounds': _ROUNDS.value,
         'device': jax.devices()[0].device_kind, 'num_devices': jax.device_count(),
         'machine': platform.machine(), 'jax': jax.__version__, 'methods': {}}
  for name, ts in kept.items():
    med = statistics.median(ts)
    out['methods'][name] = {'seconds': med, 'over_all': med / base, 'picked': picks[name]}
    print(f'{name:14s} {med:7.1f} s  {med / base:5.2f} x one `all` run', flush=True)
  line = json.dumps(out)
  if _OUT.value:
    atomic_write(_OUT.value, line + '\n')
  print(line)


if __name__ == '__main__':
  app.run(main)
