"""Result files of a sweep: results.csv (one row per run), summary.md, plots, metrics.jsonl.

Every write of results.csv, summary.md and the plots replaces the file atomically
(temp file + os.replace), so an interrupted sweep never leaves a half-written result
behind; metrics.jsonl is appended to, one whole line per write (`append_jsonl`).

Metrics. A row has one column per metric and split, `val_<metric>` and
`test_<metric>`. `acc` is always there (so older files with only `val_acc`/`test_acc`
stay valid); a dataset may add others (`worst_group_acc`, `domain_acc`). Selection
reads `val_<metric>` and the summary reports `test_<metric>` of the same metric,
named by the `metric` keyword (the runner passes `config.select_metric`). An empty
`val_<metric>` (a run without validation, e.g. MEMO) ranks below every number.

Selection and its tie rules (all independent of row order):

- `select_lr`, per (shift, method): the (lr, hparam) setting with the highest mean
  `val_<metric>` over its seeds. Equal means: the smaller lr, then the smaller hparam
  string. Means are exact sums (`math.fsum`), so the same values in any order tie.
- `cross_val_rows` (the paper's Cross-Val), per (shift, seed): the candidate run with
  the highest `val_<metric>`. Equal metric: the candidate earlier in the caller's
  `candidates` order (network order), then the smaller lr, then the smaller hparam
  string. Its rows are marked as already selected (`PICKED` field), so `select_lr`
  keeps all of them: the Cross-Val cell is the mean ± s.e. over seeds of the per-seed
  picks, whichever lr each pick used.

Average rank (`average_ranks`): per shift, methods are ranked on their mean test
metric at full float precision (1 = best), and tied methods share the mean of the
positions they span (fractional ranking: 0.9, 0.8, 0.8, 0.7 rank 1, 2.5, 2.5, 4), so
the sum of ranks per shift is always 1 + ... + n and a method's rank never depends on
its place in the method list. Cross-Val always ties with the run it picked; on
results/cifar10c (seed 0) it ranks 2.5, 3.5, 2.5, 3.5, average 3.00 (competition
ranking, 1, 2, 2, 4, would give it 2.50 by crediting both tied runs the better place).

A results.csv that exists but cannot be read as one (not UTF-8, required columns
missing, a row with the wrong number of fields or a bad lr/seed) raises
`SurgeryError` naming the file and the problem, and is left untouched; an empty file
counts as holding no runs.
"""
import csv
import hashlib
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping

from surgery.errors import SurgeryError
from surgery.io import atomic_write  # noqa: F401  (re-exported for the runners)

# Fixed columns before and after the metric columns (val_*/test_*).
KEY_COLUMNS = ('shift', 'method', 'lr', 'hparam', 'seed', 'best_epoch')
TAIL_COLUMNS = ('n_tune', 'n_val', 'n_test', 'seconds', 'fingerprint', 'extra')
DEFAULT_METRIC = 'acc'
METRIC_PREFIXES = ('val_', 'test_')
# The columns without which a file cannot be a results.csv: a run's identity and the
# metric that is always there.
REQUIRED_COLUMNS = ('shift', 'method', 'lr', 'seed', 'val_acc', 'test_acc')
# Kept for callers that want the classic header; the written header adds metrics.
COLUMNS = KEY_COLUMNS + ('val_acc', 'test_acc') + TAIL_COLUMNS
# Field of a row made by `cross_val_rows`: the run it picked. Such rows are selected
# already and `select_lr` must not select among them again.
PICKED = 'picked'


def _fmt(value):
  if value is None:
    return ''
  return f'{value:g}' if isinstance(value, float) and abs(value) < 1e-2 else str(value)


def run_key(shift, method, lr, seed, hparam=''):
  """A run's identity; `hparam` names a method's own setting ('lam=0.001'), or ''."""
  return (str(shift), str(method), f'{float(lr):g}', int(seed), str(hparam or ''))


def row_key(r):
  return run_key(r['shift'], r['method'], r['lr'], r['seed'], r.get('hparam', ''))


def _metric_order(name):
  """Sort key of a metric name: `acc` first, then alphabetical."""
  return (name != DEFAULT_METRIC, name)


def metric_columns(names):
  """The val_*/test_* columns among `names` plus val_acc/test_acc, in header order:
  per metric (acc first, then alphabetical) its val_ then its test_ column."""
  metrics = {DEFAULT_METRIC}
  for n in names:
    for prefix in METRIC_PREFIXES:
      if n.startswith(prefix) and len(n) > len(prefix):
        metrics.add(n[len(prefix):])
  return tuple(p + m for m in sorted(metrics, key=_metric_order) for p in METRIC_PREFIXES)


def _is_metric_column(name):
  return any(name.startswith(p) and len(name) > len(p) for p in METRIC_PREFIXES)


def _header(names):
  """Fixed columns, the metric columns seen, then other columns already in a file
  (kept, in their order, so a rewrite never drops data)."""
  known = set(KEY_COLUMNS) | set(TAIL_COLUMNS)
  others = [n for n in names if n not in known and not _is_metric_column(n)]
  return KEY_COLUMNS + metric_columns(names) + TAIL_COLUMNS + tuple(dict.fromkeys(others))


def _bad_file(path, what):
  return SurgeryError(f'{path} is not a valid results.csv: {what}; fix or move it away')


def _check_row(path, r, line):
  # DictReader files surplus fields under None and fills missing ones with None.
  if None in r:
    raise _bad_file(path, f'line {line} has more fields than the header')
  if None in r.values():
    raise _bad_file(path, f'line {line} has fewer fields than the header')
  try:
    row_key(r)
  except ValueError:
    raise _bad_file(path, f'line {line} has lr {r["lr"]!r}, seed {r["seed"]!r}') from None


def _read_rows(path):
  """Rows of an existing results.csv as dicts of strings, every header column filled.

  Raises:
    SurgeryError: the file is not a results.csv (undecodable, required columns
      missing, a row with the wrong number of fields, or a bad lr/seed).
  """
  try:
    with open(path, newline='', encoding='utf-8') as f:
      text = f.read()
  except UnicodeDecodeError:
    raise _bad_file(path, 'not UTF-8 text') from None
  if not text.strip():
    return (), []  # holds no runs; the first add() writes a header
  reader = csv.DictReader(io.StringIO(text))
  try:
    fields = tuple(reader.fieldnames or ())
    missing = [c for c in REQUIRED_COLUMNS if c not in fields]
    if missing:
      raise _bad_file(path, f'missing column(s) {", ".join(missing)}')
    rows = []
    for r in reader:
      _check_row(path, r, reader.line_num)
      rows.append(r)
  except csv.Error as e:
    raise _bad_file(path, f'CSV error on line {reader.line_num}: {e}') from None
  header = _header(fields)
  return fields, [{c: r.get(c, '') for c in header} for r in rows]


class ResultsCsv:
  """results.csv with resume: rows already present are runs that finished.

  The header is `KEY_COLUMNS`, the metric columns seen (val_acc, test_acc, then
  other metrics' val_/test_ pairs sorted by name), `TAIL_COLUMNS`, then any other
  column the file already had. Files written before the `fingerprint` column (or any
  metric beyond acc) read fine; missing cells read as ''.
  """

  def __init__(self, path: str, write: bool = True):
    """Reads `path` if it exists; never writes it. With `write=False`, `add` keeps rows
    in memory only (the processes of a multi-process run other than process 0).

    Raises:
      SurgeryError: `path` exists but is not a results.csv.
    """
    self.path = path
    self.write = write
    self._file_columns = ()
    self.rows = []
    if os.path.exists(path):
      self._file_columns, self.rows = _read_rows(path)

  def columns(self):
    """The header the next write uses."""
    names = list(self._file_columns)
    for r in self.rows:
      names += [n for n in r if n not in names]
    return _header(names)

  def keys(self):
    return {row_key(r) for r in self.rows}

  def has(self, shift, method, lr, seed, hparam='') -> bool:
    return run_key(shift, method, lr, seed, hparam) in self.keys()

  def fingerprints(self):
    """The set of non-empty `fingerprint` values in the file."""
    return {r['fingerprint'] for r in self.rows if r.get('fingerprint')}

  def add(self, row: dict):
    """Adds (or replaces, same run key) one run and rewrites the file atomically.

    Keys of `row` that are neither a header column nor a val_*/test_* metric are
    not written.
    """
    self.add_many([row])

  def add_many(self, rows):
    """`add` for several runs, with one rewrite of the file (a merge adds hundreds)."""
    new, metrics = {}, []
    for row in rows:
      key = row_key({'hparam': '', **row})
      new.pop(key, None)  # a later row of the same run replaces it, last, as `add` would
      new[key] = row
      # A replaced row's metric columns stay too, as after an add per row.
      metrics += [k for k in row if _is_metric_column(k)]
    if not new:
      return
    self.rows = [r for r in self.rows if row_key(r) not in new]
    header = _header(list(self.columns()) + metrics)
    # Stored as the strings a reread of the CSV gives (every column, '' if unset), so
    # fresh and resumed rows agree.
    self.rows = ([{c: r.get(c, '') for c in header} for r in self.rows]
                 + [{c: _fmt(row.get(c, '')) for c in header} for row in new.values()])
    if not self.write:
      return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval='')
    writer.writeheader()
    writer.writerows(self.rows)
    atomic_write(self.path, buf.getvalue())


def _plain(value):
  """`value` with mappings as dicts (str keys) and sequences as lists, for JSON."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _canonical(value):
  # default=str so a path or enum hashes by its text instead of failing.
  return json.dumps(_plain(value), sort_keys=True, separators=(',', ':'), default=str)


def fingerprint(fields: dict) -> str:
  """A short stable hash of `fields`: the first 12 hex digits of the SHA-256 of its
  canonical JSON (sorted keys, tuples as lists), equal across processes and runs."""
  return hashlib.sha256(_canonical(fields).encode('utf-8')).hexdigest()[:12]


def _flatten(value, prefix=''):
  if isinstance(value, Mapping) and value:
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
    return out
  return {prefix: value}


def diff_fields(old: dict, new: dict) -> list:
  """Sorted dotted names of the fields (nested dicts flattened) whose values differ
  between `old` and `new`, including fields present in only one of them.

  Values are compared as `fingerprint` hashes them (canonical JSON), so two dicts
  with equal fingerprints have no differing fields and vice versa.
  """
  a, b = _flatten(_plain(old)), _flatten(_plain(new))
  return sorted(k for k in set(a) | set(b)
                if k not in a or k not in b or _canonical(a[k]) != _canonical(b[k]))


def append_jsonl(path: str, record: dict) -> None:
  """Appends `record` to `path` as one JSON line, creating the file if needed.

  The line goes out in one write() on a descriptor opened with O_APPEND, then is
  fsynced, so concurrent appenders never interleave within a line and a crash loses
  at most the line being written. A torn last line (from a crash) is ended first so
  it cannot swallow this record. NaN/inf floats are written as Python's json does.
  """
  data = (json.dumps(_plain(record), sort_keys=True) + '\n').encode('utf-8')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b'\n':
      data = b'\n' + data
    written = os.write(fd, data)
    while written < len(data):  # a short write to a regular file is rare but legal
      written += os.write(fd, data[written:])
    os.fsync(fd)
  finally:
    os.close(fd)


def _mean(values):
  # fsum is exactly rounded, so equal multisets of values give bit-equal means
  # whatever their order: ties in selection and ranks do not depend on row order.
  return math.fsum(values) / len(values)


def _mean_se(values):
  n = len(values)
  mean = _mean(values)
  if n < 2:
    return mean, float('nan')
  var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
  return mean, math.sqrt(var / n)


def _val(row, metric=DEFAULT_METRIC):
  """Validation metric of a run; -inf without one (MEMO), so any number beats it."""
  v = row.get(f'val_{metric}', '')
  return float(v) if v not in ('', None) else -math.inf


def _test(row, metric=DEFAULT_METRIC):
  v = row.get(f'test_{metric}', '')
  if v in ('', None):
    raise SurgeryError(f'run {row_key(row)} has no test_{metric}; is select_metric right?')
  return float(v)


def _seed_order(seed):
  s = str(seed)
  return (0, int(s), '') if s.lstrip('-').isdigit() else (1, 0, s)


def _by_seed(rows):
  return sorted(rows, key=lambda r: _seed_order(r['seed']))


def select_lr(rows, metric=DEFAULT_METRIC):
  """{(shift, method): the runs, sorted by seed, of the chosen (lr, hparam) setting}.

  The setting with the highest mean `val_<metric>` over seeds; ties go to the smaller
  lr, then the smaller hparam string. Rows made by `cross_val_rows` (with a `PICKED`
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
    best = min(settings, key=lambda k: (-_mean([_val(r, metric) for r in settings[k]]),) + k)
    chosen[key] = _by_seed(settings[best])
  return chosen


def _describe(r):
  hparam = r.get('hparam') or ''
  return f'{r["method"]} lr={r["lr"]}' + (f' ({hparam})' if hparam else '')


def cross_val_rows(rows, candidates, name='cross_val', metric=DEFAULT_METRIC, planned=None):
  """The paper's Cross-Val, which needs no new runs: per shift and seed, the
  candidate run (method x lr x hparam) with the best `val_<metric>`, relabelled as
  `name` with hparam '' and a `PICKED` field naming the run.

  Ties go to the method earlier in `candidates`, then the smaller lr, then the
  smaller hparam string, whatever the order of `rows`. With `planned` (the run keys,
  `run_key(...)`, a sweep plans), a shift and seed gets a pick only once every planned
  candidate run of it is in `rows`: a pick among some of them is another method.
  """
  order = {m: i for i, m in enumerate(candidates)}
  if planned is not None:
    have = {row_key(r) for r in rows}
    missing = {(k[0], k[3]) for k in planned if k[1] in order and k not in have}
    rows = [r for r in rows if (str(r['shift']), int(r['seed'])) not in missing]

  def rank(r):
    return (-_val(r, metric), order[r['method']], float(r['lr']), r.get('hparam') or '')

  best = {}
  for r in rows:
    if r['method'] not in order:
      continue
    key = (r['shift'], str(r['seed']))
    if key not in best or rank(r) < rank(best[key]):
      best[key] = r
  return [{**r, 'method': name, 'hparam': '', PICKED: _describe(r),
           'extra': f'picked {_describe(r)}'}
          for _, r in sorted(best.items(), key=lambda kv: (kv[0][0], _seed_order(kv[0][1])))]


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
        table[m][s] = _mean_se([_test(r, report or metric) for r in runs])
  return table, chosen


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
  seeds = sorted({str(r['seed']) for r in rows}, key=_seed_order)
  label = _metric_label(metric)
  lines = [f'# {title}', '',
           (f'Test {label} (%), mean ± standard error over seeds {", ".join(seeds)}; '
            if len(seeds) > 1 else f'Test {label} (%), seed {seeds[0]}; ')
           + protocol + (f' Selection on val_{metric}, table of test_{metric}.'
                         if metric != DEFAULT_METRIC else ''), '']
  lines += _table_lines(table, methods, shifts)
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
