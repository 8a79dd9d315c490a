"""The one-run selection methods against Cross-Val, per family of shifts (issue 26).

    python -m experiments.tools.selection_summary --markdown=results/selection/summary.md \\
        input=results/selection/cifar10c_seed0:results/cifar10c/full_seed0 \\
        output=results/selection/cifar_flip_seed0:results/cifar_flip ...

Each argument is FAMILY=NEW:BASELINE (the same folder twice where it holds both): NEW
holds rows of methods with their own loop (e.g. probe_commit; its other rows are not
read), BASELINE the rows of the model's surgical options (Cross-Val's candidates), `all`
and `auto_rgn`, made under the same fingerprint (else an error). Per (shift, seed) that
NEW has and BASELINE has finished (every method as many runs as in its fullest case; the
others are named as left out), it compares each new method with Cross-Val (the candidate
with the best validation accuracy), `all` and `auto_rgn` (their lr chosen on validation,
per shift and seed), and the oracle: the best test accuracy among Cross-Val's candidates
and `all`'s lrs. Per family: mean test accuracy, the paired difference from Cross-Val
with its standard error over (shift, seed) and its one-sided 90 % lower bound (mean -
1.28 s.e.), the worst single case, and the gap to the oracle. Cost: per case, the wall
seconds of every run a method needs (Cross-Val's candidates; `all` and `auto_rgn`, their
whole lr grid, since choosing the lr on validation takes every run) over that case's
mean `all` run; the median over cases, since a row's `seconds` carry the load of the
time it ran (a process paused for a benchmark, say). `python -m
experiments.bench.selection` measures it side by side. The figure beside the markdown
plots accuracy against that cost, one panel per family.
"""
import argparse
import collections
import json
import math
import os
import statistics
import sys


from experiments.plan import ADDED_LATER, read_result_fields
from surgery import models
from surgery.errors import SurgeryError
from surgery.io import atomic_write
from surgery.methods import registry
from surgery.methods.cross_val import select
from surgery.report.fingerprint import fingerprint
from surgery.report.store import ResultsCsv
from surgery.report.summary import mean_se, select_lr

FULL, RGN = 'all', 'auto_rgn'  # the paper's baselines beside Cross-Val
ONE_ALL = 'one `all` run'  # the cost unit, per case


def read_rows(workdir):
  """The workdir's rows; a row made before rows carried fingerprints gets its
  config.json's (the fingerprint under which the folder resumes)."""
  path = os.path.join(workdir, 'results.csv')
  if not os.path.exists(path):
    raise SurgeryError(f'{path}: no such file')
  rows = ResultsCsv(path, write=False).rows
  if any(not r.get('fingerprint') for r in rows):
    own = fingerprint(read_result_fields(os.path.join(workdir, 'config.json')))
    rows = [{**r, 'fingerprint': r.get('fingerprint') or own} for r in rows]
  return rows


def own_loop_methods() -> set:
  """The registry's methods that run their own loop (`Method.train`): the new methods."""
  return {n for n, m in registry.all_methods().items() if m.train is not None}


def model_of(workdir):
  """The model spec (its options and groups) that `workdir`'s config.json names."""
  with open(os.path.join(workdir, 'config.json')) as f:
    name = (json.load(f).get('model') or {}).get('name') or ADDED_LATER['model.name']
  return models.create(name)


def surgical_options_of(workdir):
  """Cross-Val's candidates for the model that `workdir`'s config.json names."""
  return registry.surgical_options(model_of(workdir))


def compare(new_rows, base_rows, options):
  """{method: {(shift, seed): test accuracy}} for the new methods, cross_val, all,
  auto_rgn and oracle, over the (shift, seed) cases the new rows hold; plus
  {method: {(shift, seed): wall seconds of every run it needs}}, whose ONE_ALL entry
  is the case's mean seconds of one `all` run (the cost unit)."""
  fps = {r['fingerprint'] for r in new_rows} | {r['fingerprint'] for r in base_rows}
  if len(fps) != 1:
    raise SurgeryError(f'the rows were made under different fingerprints {sorted(fps)}: '
                       'not the same configuration, so not comparable')
  # Cross-Val's candidates: the model's options that the baseline ran (param_noise's
  # leaves out first_layer), in network order.
  options = [o for o in options if any(r['method'] == o for r in base_rows)]
  new = sorted({r['method'] for r in new_rows})
  cases, pending = _finished(sorted({(r['shift'], str(r['seed'])) for r in new_rows}),
                             base_rows, options + [FULL, RGN])
  acc = {m: {} for m in new + ['cross_val', FULL, RGN, 'oracle']}
  cost = {m: {} for m in acc if m != 'oracle'}
  cost[ONE_ALL] = {}
  for case in cases:
    mine = [r for r in base_rows if (r['shift'], str(r['seed'])) == case]
    cands = [r for r in mine if r['method'] in options]
    # Cross-Val picks only where every candidate option has runs (lr grids: the baseline's).
    if cands and {r['method'] for r in cands} >= set(options):
      cv = select(cands, options)
      acc['cross_val'][case] = float(cv[0]['test_acc'])
      cost['cross_val'][case] = math.fsum(float(r['seconds']) for r in cands)
    for (_, m), (pick,) in select_lr([r for r in mine if r['method'] in (FULL, RGN)]).items():
      acc[m][case] = float(pick['test_acc'])
      cost[m][case] = math.fsum(float(r['seconds']) for r in mine if r['method'] == m)
    full_runs = [float(r['seconds']) for r in mine if r['method'] == FULL]
    if full_runs:
      cost[ONE_ALL][case] = math.fsum(full_runs) / len(full_runs)
    pool = cands + [r for r in mine if r['method'] == FULL]
    if pool:
      acc['oracle'][case] = max(float(r['test_acc']) for r in pool)
    for r in new_rows:
      if (r['shift'], str(r['seed'])) == case:
        acc[r['method']][case] = float(r['test_acc'])
        cost[r['method']][case] = float(r['seconds'])
  return new, cases, acc, cost, pending


def _finished(cases, base_rows, methods):
  """(finished, pending): a case is finished when each baseline method has as many runs
  in it as in the baseline's fullest case, so a sweep still running (its grids half done
  in one case) is summarised over the cases it has finished, not over part of a grid."""
  count = collections.Counter((r['method'], (r['shift'], str(r['seed'])))
                              for r in base_rows if r['method'] in methods)
  full = {}
  for (m, _), n in count.items():
    full[m] = max(full.get(m, 0), n)
  done = [c for c in cases if all(count.get((m, c), 0) == n for m, n in full.items())]
  return done, [c for c in cases if c not in done]


def family_lines(name, new, cases, acc, cost, pending=()):
  """The markdown of one family, and {method: (its cost in `all` runs, mean accuracy)}.
  Cost is a ratio within each case, whose runs mostly share one load, and its median
  over cases, so one run made under another load (paused, or alone on the machine)
  does not move it."""
  unit = cost.get(ONE_ALL, {})
  shown = new + ['cross_val', FULL, RGN]
  lines = [f'## {name}: {len(cases)} (shift, seed) case(s)', '',
           '| method | test acc (%) | minus Cross-Val (points) ± s.e. | 90 % lower bound | '
           'worst case | gap to oracle | cost (x `all`) |', '|---|---|---|---|---|---|---|']
  points = {}
  for m in shown:
    have = [c for c in cases if c in acc[m]]
    if not have:
      continue
    mean_acc = 100 * math.fsum(acc[m][c] for c in have) / len(have)
    paired = [c for c in have if c in acc['cross_val']]
    diff = [100 * (acc[m][c] - acc['cross_val'][c]) for c in paired]
    oracle = [100 * (acc['oracle'][c] - acc[m][c]) for c in have if c in acc['oracle']]
    ratios = [cost[m][c] / unit[c] for c in have if c in cost[m] and c in unit]
    c_mean = statistics.median(ratios) if ratios else float('nan')
    points[m] = (c_mean, mean_acc)
    if diff and m != 'cross_val':
      d, se = mean_se(diff)
      worst = min(zip(diff, paired))
      cells = [f'{d:+.2f} ± {se:.2f}', f'{d - 1.28 * se:+.2f}' if se == se else 'n/a',
               f'{worst[0]:+.1f} ({worst[1][0]}, seed {worst[1][1]})']
    else:
      cells = ['', '', '']
    gap = f'{math.fsum(oracle) / len(oracle):.2f}' if oracle else ''
    label = m if len(have) == len(cases) else f'{m} ({len(have)} of {len(cases)} cases)'
    lines.append(f'| {label} | {mean_acc:.2f} | ' + ' | '.join(cells) + f' | {gap} | {c_mean:.2f} |')
  if pending:
    lines += ['', f'Left out, their baseline runs not all made yet: '
              + ', '.join(f'{shift} seed {seed}' for shift, seed in pending) + '.']
  return lines + [''], points


def _plot(panels, path):
  import matplotlib
  import matplotlib.ticker
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
  for ax, (name, points) in zip(axes[0], panels):
    for m, (c, a) in points.items():
      ax.scatter(c, a)
      ax.annotate(m, (c, a), fontsize=8, xytext=(3, 3), textcoords='offset points')
    ax.set_xscale('log')
    # Powers of two: a panel's costs may span less than one power of ten.
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel('wall time / one `all` run')
    ax.set_ylabel('test accuracy (%)')
    ax.set_title(name)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--markdown', required=True, help='the markdown file to write')
  ap.add_argument('families', nargs='+', metavar='FAMILY=NEW_WORKDIR:BASELINE_WORKDIR')
  args = ap.parse_args(argv)
  try:
    lines = ['# One-run selection against Cross-Val', '',
             f'Written by `python -m experiments.tools.selection_summary '
             f'--markdown={args.markdown} ' + ' '.join(args.families) + '`. Cost: per '
             'case, the seconds of every run a method needs (for `all` and auto_rgn, their '
             'lr grid) over one `all` run\'s, the median over cases, from the rows\' '
             '`seconds` (made at different times on a shared machine); see the benchmark '
             'for a side-by-side figure.', '']
    panels = []
    for arg in args.families:
      name, _, dirs = arg.partition('=')
      new_dir, _, base_dir = dirs.partition(':')
      if not (name and new_dir and base_dir):
        raise SurgeryError(f'{arg!r} is not FAMILY=NEW_WORKDIR:BASELINE_WORKDIR')
      own_loop = own_loop_methods()
      new_rows = [r for r in read_rows(new_dir) if r['method'] in own_loop]
      if not new_rows:
        raise SurgeryError(f'{new_dir}: no rows of a method with its own loop '
                           f'({", ".join(sorted(own_loop))})')
      new, cases, acc, cost, pending = compare(new_rows, read_rows(base_dir),
                                               surgical_options_of(base_dir))
      text, points = family_lines(name, new, cases, acc, cost, pending)
      lines += text
      panels.append((name, points))
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  out = args.markdown
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  figure = os.path.splitext(out)[0] + '.png'
  _plot(panels, figure)
  lines += [f'![accuracy against cost]({os.path.basename(figure)})', '']
  atomic_write(out, '\n'.join(lines))
  print(f'wrote {out} and {figure}')


if __name__ == '__main__':
  main()
