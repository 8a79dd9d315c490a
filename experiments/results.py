"""Result files of a sweep: results.csv (one row per run), summary.md, plots.

Every write replaces the file atomically (temp file + os.replace), so an interrupted
sweep never leaves a half-written result behind.
"""
import csv
import io
import math
import os
from collections import defaultdict

from surgery.io import atomic_write  # noqa: F401  (re-exported for the runners)

COLUMNS = ('shift', 'method', 'lr', 'hparam', 'seed', 'best_epoch', 'val_acc', 'test_acc',
           'n_tune', 'n_val', 'n_test', 'seconds', 'extra')


def _fmt(value):
  return f'{value:g}' if isinstance(value, float) and abs(value) < 1e-2 else str(value)


def run_key(shift, method, lr, seed, hparam=''):
  """A run's identity; `hparam` names a method's own setting ('lam=0.001'), or ''."""
  return (str(shift), str(method), f'{float(lr):g}', int(seed), str(hparam or ''))


def row_key(r):
  return run_key(r['shift'], r['method'], r['lr'], r['seed'], r.get('hparam', ''))


class ResultsCsv:
  """results.csv with resume: rows already present are runs that finished."""

  def __init__(self, path: str):
    self.path = path
    self.rows = []
    if os.path.exists(path):
      with open(path, newline='') as f:
        self.rows = list(csv.DictReader(f))

  def keys(self):
    return {row_key(r) for r in self.rows}

  def has(self, shift, method, lr, seed, hparam='') -> bool:
    return run_key(shift, method, lr, seed, hparam) in self.keys()

  def add(self, row: dict):
    key = row_key({'hparam': '', **row})
    self.rows = [r for r in self.rows if row_key(r) != key]
    # Stored as the strings a reread of the CSV gives, so fresh and resumed rows agree.
    self.rows.append({c: _fmt(row.get(c, '')) for c in COLUMNS})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(self.rows)
    atomic_write(self.path, buf.getvalue())


def _mean_se(values):
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, float('nan')
  var = sum((v - mean) ** 2 for v in values) / (n - 1)
  return mean, math.sqrt(var / n)


def _val(row):
  return float(row['val_acc']) if row['val_acc'] != '' else 0.0  # no validation (MEMO)


def select_lr(rows):
  """{(shift, method): rows of the (lr, hparam) with the best mean validation accuracy}."""
  by = defaultdict(lambda: defaultdict(list))
  for r in rows:
    by[(r['shift'], r['method'])][(float(r['lr']), r.get('hparam', ''))].append(r)
  chosen = {}
  for key, settings in by.items():
    best = max(settings, key=lambda k: (
        sum(_val(r) for r in settings[k]) / len(settings[k]), -k[0], k[1]))
    chosen[key] = settings[best]
  return chosen


def cross_val_rows(rows, candidates, name='cross_val'):
  """Per shift and seed, the run (candidate method x lr) with the best validation
  accuracy, relabelled as `name`: the paper's Cross-Val, which needs no new runs."""
  best = {}
  for r in rows:
    if r['method'] not in candidates:
      continue
    key = (r['shift'], r['seed'])
    if key not in best or float(r['val_acc']) > float(best[key]['val_acc']):
      best[key] = r
  return [{**r, 'method': name, 'hparam': '', 'extra': f'picked {r["method"]} lr={r["lr"]}'}
          for r in best.values()]


def summarize(rows, methods, shifts):
  """{method: {shift: (mean, se)}} on test accuracy, lr chosen on validation."""
  chosen = select_lr(rows)
  table = {}
  for m in methods:
    table[m] = {}
    for s in shifts:
      runs = chosen.get((s, m))
      if runs:
        table[m][s] = _mean_se([float(r['test_acc']) for r in runs])
  return table, chosen


def average_ranks(table, methods, shifts):
  """Mean rank (1 = best) of each method across the shifts where all have results."""
  complete = [s for s in shifts if all(s in table[m] for m in methods)]
  ranks = defaultdict(list)
  for s in complete:
    order = sorted(methods, key=lambda m: -table[m][s][0])
    for i, m in enumerate(order, 1):
      ranks[m].append(i)
  return {m: sum(v) / len(v) for m, v in ranks.items()}


FINETUNE_PROTOCOL = ('learning rate chosen on target validation accuracy, epoch by early '
                     'stopping.')


def markdown_summary(rows, methods, shifts, title, notes='', protocol=FINETUNE_PROTOCOL,
                     show_lrs=True):
  table, chosen = summarize(rows, methods, shifts)
  ranks = average_ranks(table, methods, shifts)
  seeds = sorted({r['seed'] for r in rows})

  def cell(v):
    if v is None:
      return '–'
    mean, se = v
    return f'{100 * mean:.1f}' + ('' if math.isnan(se) else f' ± {100 * se:.1f}')

  lines = [f'# {title}', '',
           f'Test accuracy (%), mean ± standard error over seeds {", ".join(seeds)}; {protocol}', '']
  header = ['method'] + list(shifts) + ['avg', 'avg rank']
  lines.append('| ' + ' | '.join(header) + ' |')
  lines.append('|' + '---|' * len(header))
  for m in methods:
    vals = [table[m].get(s) for s in shifts]
    present = [v[0] for v in vals if v is not None]
    avg = (sum(present) / len(present), float('nan')) if len(present) == len(shifts) and present else None
    rank = f'{ranks[m]:.2f}' if m in ranks else '–'
    lines.append('| ' + ' | '.join([m] + [cell(v) for v in vals] + [cell(avg), rank]) + ' |')
  if show_lrs:
    lines += ['', 'Chosen learning rates:', '']
    for m in methods:
      picks = [f'{s}: {chosen[(s, m)][0]["lr"]}' + (f' ({chosen[(s, m)][0]["hparam"]})'
                                                   if chosen[(s, m)][0].get('hparam') else '')
               for s in shifts if (s, m) in chosen]
      if picks:
        lines.append(f'- {m}: ' + ', '.join(picks))
  if notes:
    lines += ['', notes]
  return '\n'.join(lines) + '\n', table


def plot_accuracy_by_method(table, methods, shifts, path, title):
  """Grouped bars like the paper's Figure 2: one group per shift, one bar per method."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np

  cols = list(shifts) + (['average'] if len(shifts) > 1 else [])
  fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cols) * max(1, len(methods)) / 4), 4))
  width = 0.8 / max(len(methods), 1)
  for i, m in enumerate(methods):
    vals, errs = [], []
    for s in shifts:
      mean, se = table[m].get(s, (np.nan, np.nan))
      vals.append(100 * mean)
      errs.append(0 if math.isnan(se) else 100 * se)
    if len(shifts) > 1:
      vals.append(np.nanmean(vals[:len(shifts)]) if not np.all(np.isnan(vals)) else np.nan)
      errs.append(0)
    ax.bar(np.arange(len(cols)) + (i - (len(methods) - 1) / 2) * width, vals, width,
           yerr=errs, label=m, capsize=2)
  ax.set_xticks(np.arange(len(cols)))
  ax.set_xticklabels(cols, rotation=30, ha='right')
  ax.set_ylabel('target test accuracy (%)')
  finite = [100 * v[0] for m in methods for v in table[m].values()]
  if finite:
    ax.set_ylim(max(0, min(finite) - 10), min(100, max(finite) + 5))
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=min(len(methods), 5))
  fig.tight_layout()
  atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120), mode='wb')
  plt.close(fig)
