"""The shift suite of the one-run selection methods, in one command (issue 26).

    python -m experiments.selection_suite --out=results/selection \\
        --init_checkpoint=WEIGHTS [--seeds=0,1,2] [--families=input,output,parameter,feature] \\
        [--methods=probe_commit,lp_ft,lp_rgn] [--report_only]

WEIGHTS is the MEMO ResNet-26 (`memo_resnet26_gn_cifar10.pth`), the source model of the
first three families; the feature family trains its own source in its workdir (stage 1
of `configs/cifar10_subpop.py`). Per family, one workdir OUT/<family> gets the runs of
the new methods and of what they are compared with: `all`, `auto_rgn` and Cross-Val's
candidates, every config's full lr grids, each seed. Then OUT/summary.md (and
summary.png) compares them per family (`experiments.tools.selection_summary`).

  - input: the paper's 14 CIFAR-10-C corruptions (`configs/cifar10c.py`);
  - output: CIFAR-Flip (`configs/cifar_flip.py`);
  - parameter: Gaussian noise in block1, block2, block3 or the head
    (`configs/param_noise.py`);
  - feature: the CIFAR-10 subpopulation shift (`configs/cifar10_subpop.py`).

Every workdir resumes: the same command after an interruption runs only what is
missing, and rows already there (merged in with `experiments.tools.merge_results`, of
the same fingerprint) are not run again. Several hundred runs on CPU; minutes on a GPU.
"""
import argparse
import importlib
import os
import sys

from surgery.errors import SurgeryError

# family -> (config module, whether it takes the CIFAR weights)
FAMILIES = {
    'input': ('configs.cifar10c', True),
    'output': ('configs.cifar_flip', True),
    'parameter': ('configs.param_noise', True),
    'feature': ('configs.cifar10_subpop', False),
}
COMPARED = ('no_adaptation', 'all', 'auto_rgn', 'cross_val')
NEW = ('probe_commit', 'lp_ft', 'lp_rgn')


def family_config(family, seeds, methods, init_checkpoint):
  """The config of one family's workdir."""
  module, takes_weights = FAMILIES[family]
  config = importlib.import_module(module).get_config()
  config.methods = tuple(COMPARED) + tuple(methods)
  config.seeds = tuple(seeds)
  if takes_weights:
    config.init_checkpoint = init_checkpoint
  return config


def _csv(text, what, cast=str):
  try:
    values = tuple(cast(v) for v in text.split(',') if v.strip())
  except ValueError:
    raise SurgeryError(f'--{what}: {text!r} is not a comma-separated list') from None
  if not values:
    raise SurgeryError(f'--{what}: nothing given')
  return values


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--out', required=True, help='folder of the per-family workdirs')
  ap.add_argument('--init_checkpoint', required=True, help='the MEMO ResNet-26 weights')
  ap.add_argument('--seeds', default='0,1,2')
  ap.add_argument('--families', default=','.join(FAMILIES))
  ap.add_argument('--methods', default=','.join(NEW), help='the one-run methods compared')
  ap.add_argument('--report_only', action='store_true',
                  help='rewrite the summaries from the rows there and run nothing (e.g. of '
                       'a suite still running, over its finished cases)')
  args = ap.parse_args(argv)
  from experiments import sweep
  from experiments.plan import make_plan
  from experiments.tools import selection_summary
  try:
    seeds = _csv(args.seeds, 'seeds', int)
    families = _csv(args.families, 'families')
    for f in families:
      if f not in FAMILIES:
        raise SurgeryError(f'--families: unknown family {f!r}; valid: {", ".join(FAMILIES)}')
    if not os.path.exists(args.init_checkpoint):
      raise SurgeryError(f'--init_checkpoint: {args.init_checkpoint} does not exist')
    methods = _csv(args.methods, 'methods')
    configs = {f: family_config(f, seeds, methods, args.init_checkpoint) for f in families}
    for config in configs.values():  # every family's config is checked before any run
      config.report_only = args.report_only
      make_plan(config)
    for f, config in configs.items():
      print(f'== {f} family: {os.path.join(args.out, f)}', flush=True)
      sweep.train_and_evaluate(config, os.path.join(args.out, f))
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  selection_summary.main([f'--markdown={os.path.join(args.out, "summary.md")}'] + [
      f'{f}={os.path.join(args.out, f)}:{os.path.join(args.out, f)}' for f in families])


if __name__ == '__main__':
  main()
