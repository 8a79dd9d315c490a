"""results.csv, the store of a sweep's runs (one row per run), and metrics.jsonl.

Every write of results.csv replaces the file atomically (temp file + os.replace), so an
interrupted sweep never leaves a half-written result behind; metrics.jsonl is appended
to, one whole line per write (`append_jsonl`).

Metrics. A row has one column per metric and split, `val_<metric>` and
`test_<metric>`. `acc` is always there (so older files with only `val_acc`/`test_acc`
stay valid); a dataset may add others (`worst_group_acc`, `domain_acc`).

A results.csv that exists but cannot be read as one (not UTF-8, required columns
missing, a row with the wrong number of fields or a bad lr/seed) raises
`SurgeryError` naming the file and the problem, and is left untouched; an empty file
counts as holding no runs.
"""
import csv
import io
import json
import os

from surgery.errors import SurgeryError
from surgery.io import atomic_write
from surgery.report.fingerprint import plain

KEY_COLUMNS = ('shift', 'method', 'lr', 'hparam', 'seed', 'best_epoch')
TAIL_COLUMNS = ('n_tune', 'n_val', 'n_test', 'seconds', 'fingerprint', 'extra')
DEFAULT_METRIC = 'acc'
METRIC_PREFIXES = ('val_', 'test_')
HISTORY = 'metrics.jsonl'  # a sweep's per-epoch history, one line per run
# The columns without which a file cannot be a results.csv: a run's identity and the
# metric that is always there.
REQUIRED_COLUMNS = ('shift', 'method', 'lr', 'seed', 'val_acc', 'test_acc')
# Kept for callers that want the classic header; the written header adds metrics.
COLUMNS = KEY_COLUMNS + ('val_acc', 'test_acc') + TAIL_COLUMNS
# Field of a row a selection method made (Cross-Val's `select`): the run it picked. Such
# rows are selected already and `select_lr` must not select among them again.
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

    Keys of `row` that are neither a header column, a val_*/test_* metric nor `PICKED`
    (the arm a one-run method committed to) are not written.
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
      metrics += [k for k in row if _is_metric_column(k) or k == PICKED]
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



def append_jsonl(path: str, record: dict) -> None:
  """Appends `record` to `path` as one JSON line, creating the file if needed.

  The line goes out in one write() on a descriptor opened with O_APPEND, then is
  fsynced, so concurrent appenders never interleave within a line and a crash loses
  at most the line being written. A torn last line (from a crash) is ended first so
  it cannot swallow this record. NaN/inf floats are written as Python's json does.
  """
  data = (json.dumps(plain(record), sort_keys=True) + '\n').encode('utf-8')
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


def read_histories(workdir: str) -> dict:
  """{run key: its history record} of `workdir`'s HISTORY, for the runs its results.csv
  holds.

  The sweep appends a run's line just before its row, so a line without a row is of a
  run cut short (rerun later, the last line of a key is the one its row came with), and
  an unreadable line is one torn by that cut: neither is a finished run's history."""
  path = os.path.join(workdir, HISTORY)
  if not os.path.exists(path):
    return {}
  finished = ResultsCsv(os.path.join(workdir, 'results.csv'), write=False).keys()
  found = {}
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        record = json.loads(line)
        key = row_key(record)
      except (ValueError, KeyError, TypeError):
        continue
      if key in finished:
        found[key] = record
  return found
