"""MEMO workdirs run on the same images, side by side (issue 28: exact pixels against their
JPEG copy): per corruption and setting, accuracy, the gain over no adaptation with its
paired standard error, the share of the most predicted class, and the paper's Table 9
gain where we have it.

    python -m experiments.tools.memo_compare --markdown=results/memo_exact/summary.md \\
        exact=results/memo_exact/exact jpeg=results/memo_exact/jpeg

The gain's standard error is paired: both are read on the same held-out stream, image by
image (`streams/<corruption>_<setting>.json`), so it is sd(correct_setting -
correct_none) / sqrt(n). "within 3" marks gains within 3 points of Table 9's.
"""
import os
import sys

import numpy as np
from absl import app, flags

from experiments import paper_tables
from surgery.report import store
from experiments.memo import load_stream
from surgery.errors import SurgeryError
from surgery.methods.baselines import NO_ADAPTATION as NONE

_OUT = flags.DEFINE_string('markdown', None, 'The markdown file to write.')
flags.mark_flag_as_required('markdown')


def gain(workdir, shift, method):
  """(accuracy, gain over no adaptation, its paired s.e., top-class share), in points,
  of seed 0's held-out stream, read as the runner saved it."""
  mine, none = (load_stream(workdir, shift, m, 0) for m in (method, NONE))
  if mine is None or none is None or len(mine) != len(none):
    return None
  diffs = mine - none
  se = diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else float('nan')
  predicted = load_stream(workdir, shift, method, 0, '.predictions')
  top = (np.bincount(predicted.astype(int)).max() / len(predicted)
         if predicted is not None and len(predicted) else float('nan'))
  return 100 * mine.mean(), 100 * diffs.mean(), 100 * se, 100 * top


def _settings(workdir):
  rows = store.ResultsCsv(os.path.join(workdir, 'results.csv'), write=False).rows
  shifts = list(dict.fromkeys(r['shift'] for r in rows))
  methods = list(dict.fromkeys(r['method'] for r in rows))
  chosen = {(r['shift'], r['method']): f'lr {float(r["lr"]):g} {r["hparam"]}'.strip()
            for r in rows if r['method'] != NONE}
  return shifts, methods, chosen


def report(named: dict) -> str:
  """Markdown: one table per corruption, settings down, workdirs across."""
  table9 = paper_tables.MEMO_CIFAR10C_TABLE9_GAINS
  info = {name: _settings(w) for name, w in named.items()}
  shifts = list(dict.fromkeys(s for v in info.values() for s in v[0]))
  methods = list(dict.fromkeys(m for v in info.values() for m in v[1]))
  names = list(named)
  lines = ['# MEMO side by side: ' + ', '.join(f'{n} ({w})' for n, w in named.items()), '',
           'Per cell: held-out accuracy (%); gain over no adaptation ± its paired standard '
           'error (points); the most predicted class\'s share (%), a collapse shows as '
           'about 100; the setting tuning chose. Table 9: the paper\'s gain, where we have '
           'it; **within 3** marks our gain within 3 points of it.', '']
  for shift in shifts:
    lines += [f'## {shift}', '',
              '| setting | ' + ' | '.join(names) + ' | Table 9 |',
              '|---|' + '---|' * (len(names) + 1)]
    for m in methods:
      paper = table9.get(m, {}).get(shift)
      cells = []
      for name in names:
        got = gain(named[name], shift, m)
        if got is None:
          cells.append('–')
          continue
        acc, g, se, top = got
        if m == NONE:
          cells.append(f'{acc:.1f} (top class {top:.0f})')
          continue
        mark = ' **within 3**' if paper is not None and abs(g - paper) <= 3 else ''
        cells.append(f'{acc:.1f}: {g:+.1f} ± {se:.1f}{mark} (top {top:.0f}; '
                     f'{info[name][2].get((shift, m), "?")})')
      quoted = '' if m == NONE else 'n/q' if paper is None else f'{paper:+.1f}'
      lines.append(f'| {m} | ' + ' | '.join(cells) + f' | {quoted} |')
    lines.append('')
  return '\n'.join(lines)


def main(argv):
  try:
    named = {}
    for arg in argv[1:]:
      name, _, workdir = arg.partition('=')
      if not workdir or not os.path.exists(os.path.join(workdir, 'results.csv')):
        raise SurgeryError(f'{arg!r}: give name=workdir, a workdir with a results.csv')
      named[name] = workdir
    if not named:
      raise SurgeryError('give at least one name=workdir')
    store.atomic_write(_OUT.value, report(named))
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
