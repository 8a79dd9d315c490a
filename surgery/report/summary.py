"""Selection and the summary of a sweep: the chosen lr per method, the table of test
metrics with standard errors and average ranks, summary.md and the bar plot.

Selection and its tie rules (all independent of row order):

- `select_lr`, per (shift, method): the (lr, hparam) setting with the highest mean
  `val_<metric>` over its seeds. Equal means: the smaller lr, then the smaller hparam
  string. Means are exact sums (`math.fsum`), so the same values in any order tie.
  Rows a selection method made (with a `PICKED` field, e.g. Cross-Val's) are selected
  already: `select_lr` keeps all of them, so such a cell is the mean ± s.e. over seeds
  of the per-seed picks, whichever lr each pick used.
- An empty `val_<metric>` (a run without validation, e.g. MEMO) ranks below every number.

Average rank (`average_ranks`): per shift, methods are ranked on their mean test
metric at full float precision (1 = best), and tied methods share the mean of the
positions they span (fractional ranking: 0.9, 0.8, 0.8, 0.7 rank 1, 2.5, 2.5, 4), so
the sum of ranks per shift is always 1 + ... + n and a method's rank never depends on
its place in the method list. Cross-Val always ties with the run it picked; on
results/cifar10c (seed 0) it ranks 2.5, 3.5, 2.5, 3.5, average 3.00 (competition
ranking, 1, 2, 2, 4, would give it 2.50 by crediting both tied runs the better place).
"""
import math
from collections import defaultdict

from surgery.errors import SurgeryError
from surgery.io import atomic_write
from surgery.report.store import DEFAULT_METRIC, PICKED, row_key


def _mean(values):
  # fsum is exactly rounded, so equal multisets of values give bit-equal means
  # whatever their order: ties in selection and ranks do not depend on row order.
  return math.fsum(values) / len(values)


def mean_se(values):
  """(mean, standard error of the mean); the error is NaN for fewer than two values."""
  n = len(values)
  mean = _mean(values)
  if n < 2:
    return mean, float('nan')
  var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
  return mean, math.sqrt(var / n)


def val_metric(row, metric=DEFAULT_METRIC):
  """Validation metric of a run; -inf without one (MEMO), so any number beats it."""
  v = row.get(f'val_{metric}', '')
  return float(v) if v not in ('', None) else -math.inf


def _test(row, metric=DEFAULT_METRIC):
  v = row.get(f'test_{metric}', '')
  if v in ('', None):
    raise SurgeryError(f'run {row_key(row)} has no test_{metric}; is select_metric right?')
  return float(v)


def seed_order(seed):
  s = str(seed)
  return (0, int(s), '') if s.lstrip('-').isdigit() else (1, 0, s)


def _by_seed(rows):
  return sorted(rows, key=lambda r: seed_order(r['seed']))


def select_lr(rows, metric=DEFAULT_METRIC):
  """{(shift, method): the runs, sorted by seed, of the chosen (lr, hparam) setting}.

  The setting with the highest mean `val_<metric>` over seeds; ties go to the smaller
  lr, then the smaller hparam string. Rows a selection method made (with a `PICKED`
  field) are selected already: all of a (shift, method)'s such rows are kept.
  """
  by = defaultdict(lambda: defaultdict(list))
  for r in rows:
    setting = (PICKED,) if r.get(PICKED) else (float(r['lr']), r.get('hparam') or '')
    by[(r['shift'], r['method'])][setting].append(r)
  chosen = {}
  for key, settings in by.items():
    if (PICKED,) in settings:
      chosen[key] = _by_seed(settings[(PICKED,)])
      continue
    best = min(settings, key=lambda k: (-_mean([val_metric(r, metric) for r in settings[k]]),) + k)
    chosen[key] = _by_seed(settings[best])
  return chosen


def describe_run(r):
  hparam = r.get('hparam') or ''
  return f'{r["method"]} lr={r["lr"]}' + (f' ({hparam})' if hparam else '')




def summarize(rows, methods, shifts, metric=DEFAULT_METRIC, report=None):
  """({method: {shift: (mean, se)}} of test_<report> over seeds, `select_lr` picks);
  lr and hparam are chosen on val_<metric>; `report` defaults to `metric`."""
  chosen = select_lr(rows, metric)
  table = {}
  for m in methods:
    table[m] = {}
    for s in shifts:
      runs = chosen.get((s, m))
      if runs:
        table[m][s] = mean_se([_test(r, report or metric) for r in runs])
  return table, chosen


def paired_differences(chosen, methods, shifts, reference='all', metric=DEFAULT_METRIC):
  """{method: (mean, s.e., worst, n)} of test_<metric>(method) − test_<metric>(reference)
  over the (shift, seed) pairs both have, each method's `select_lr` pick (Cross-Val's
  per-seed picks); the paper's claims compare blocks with `all` this way. Methods with
  no pair, and the reference itself, are left out."""
  ref = {(s, str(r['seed'])): _test(r, metric) for s in shifts
         for r in chosen.get((s, reference), ())}
  out = {}
  for m in methods:
    if m == reference:
      continue
    diffs = [_test(r, metric) - ref[(s, str(r['seed']))] for s in shifts
             for r in chosen.get((s, m), ()) if (s, str(r['seed'])) in ref]
    if diffs:
      out[m] = (*mean_se(diffs), min(diffs), len(diffs))
  return out


def _difference_lines(chosen, methods, shifts, reference, metric):
  diffs = paired_differences(chosen, methods, shifts, reference, metric)
  if not diffs or max(d[3] for d in diffs.values()) < 2:
    return []
  lines = ['', f'Difference from `{reference}` (points), paired by (shift, seed): mean ± '
               'standard error over the pairs, and the worst pair:', '',
           '| method | mean ± s.e. | worst | pairs |', '|---|---|---|---|']
  for m, (mean, se, worst, n) in diffs.items():
    spread = '' if math.isnan(se) else f' ± {100 * se:.1f}'
    lines.append(f'| {m} | {100 * mean:+.1f}{spread} | {100 * worst:+.1f} | {n} |')
  return lines


def _fractional_ranks(values):
  """Ranks of `values` (1 = largest); equal values share the mean of their positions."""
  order = sorted(range(len(values)), key=lambda i: -values[i])
  ranks = [0.0] * len(values)
  start = 0
  while start < len(order):
    end = start
    while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
      end += 1
    for i in order[start:end + 1]:
      ranks[i] = (start + end) / 2 + 1  # mean of positions start+1 .. end+1
    start = end + 1
  return ranks


def average_ranks(table, methods, shifts):
  """Mean rank (1 = best) of each method over the shifts where all have results.

  Fractional ranking on the exact means: tied methods share the mean of the
  positions they span (1, 2.5, 2.5, 4), so no method gains from its list position.
  """
  complete = [s for s in shifts if all(s in table[m] for m in methods)]
  ranks = defaultdict(list)
  for s in complete:
    for m, r in zip(methods, _fractional_ranks([table[m][s][0] for m in methods])):
      ranks[m].append(r)
  return {m: _mean(v) for m, v in ranks.items()}


FINETUNE_PROTOCOL = ('learning rate chosen on target validation accuracy, epoch by early '
                     'stopping.')


def _metric_label(metric):
  return 'accuracy' if metric == DEFAULT_METRIC else metric.replace('_', ' ')


def _cell(v):
  if v is None:
    return '–'
  mean, se = v
  return f'{100 * mean:.1f}' + ('' if math.isnan(se) else f' ± {100 * se:.1f}')


def _chosen_lines(chosen, methods, shifts):
  """'- method: shift: lr (hparam), ...'; for Cross-Val the per-seed picks."""
  lines = []
  for m in methods:
    picks = []
    for s in shifts:
      runs = chosen.get((s, m))
      if not runs:
        continue
      if runs[0].get(PICKED):
        picks.append(f'{s}: ' + ' / '.join(r[PICKED] for r in runs))
      else:
        hparam = runs[0].get('hparam') or ''
        picks.append(f'{s}: {runs[0]["lr"]}' + (f' ({hparam})' if hparam else ''))
    if picks:
      lines.append(f'- {m}: ' + ', '.join(picks))
  return lines


def _table_lines(table, methods, shifts):
  ranks = average_ranks(table, methods, shifts)
  header = ['method'] + list(shifts) + ['avg', 'avg rank']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for m in methods:
    vals = [table[m].get(s) for s in shifts]
    present = [v[0] for v in vals if v is not None]
    avg = (_mean(present), float('nan')) if len(present) == len(shifts) and present else None
    rank = f'{ranks[m]:.2f}' if m in ranks else '–'
    lines.append('| ' + ' | '.join([m] + [_cell(v) for v in vals] + [_cell(avg), rank]) + ' |')
  return lines


def markdown_summary(rows, methods, shifts, title, notes='', protocol=FINETUNE_PROTOCOL,
                     show_lrs=True, metric=DEFAULT_METRIC, also=()):
  """(summary.md text, `summarize` table): test_<metric> per method and shift, the
  average, the fractional average rank, and the chosen settings; then, for each metric
  in `also` that the rows hold (e.g. `acc` beside `worst_group_acc`), the same table of
  that test metric for the same selected runs."""
  table, chosen = summarize(rows, methods, shifts, metric)
  seeds = sorted({str(r['seed']) for r in rows}, key=seed_order)
  label = _metric_label(metric)
  lines = [f'# {title}', '',
           (f'Test {label} (%), mean ± standard error over seeds {", ".join(seeds)}; '
            if len(seeds) > 1 else f'Test {label} (%), seed {seeds[0]}; ')
           + protocol + (f' Selection on val_{metric}, table of test_{metric}.'
                         if metric != DEFAULT_METRIC else ''), '']
  lines += _table_lines(table, methods, shifts)
  lines += _difference_lines(chosen, methods, shifts, 'all', metric)
  for other in also:
    if other == metric or not any(r.get(f'test_{other}') not in (None, '') for r in rows):
      continue
    lines += ['', f'Test {_metric_label(other)} (%) of the same runs (selected on '
                  f'val_{metric}):', '']
    lines += _table_lines(summarize(rows, methods, shifts, metric, report=other)[0],
                          methods, shifts)
  if show_lrs:
    picks = _chosen_lines(chosen, methods, shifts)
    if picks:
      lines += ['', 'Chosen learning rates:', ''] + picks
  if notes:
    lines += ['', notes]
  return '\n'.join(lines) + '\n', table


def plot_accuracy_by_method(table, methods, shifts, path, title, metric=DEFAULT_METRIC):
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
  ax.set_ylabel(f'target test {_metric_label(metric)} (%)')
  finite = [100 * v[0] for m in methods for v in table[m].values()]
  if finite:
    ax.set_ylim(max(0, min(finite) - 10), min(100, max(finite) + 5))
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=min(len(methods), 5))
  fig.tight_layout()
  atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120), mode='wb')
  plt.close(fig)
