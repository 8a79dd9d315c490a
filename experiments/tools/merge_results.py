"""Merge the workdirs of sweeps run in parallel (e.g. corruptions split across
processes or hosts) into one workdir.

    python -m experiments.tools.merge_results --into=workdir/a workdir/b [workdir/c ...]

Rows of results.csv (and of a MEMO sweep's tuning.csv) are keyed by (shift, method, lr,
hparam, seed); a run present in several workdirs must have the same result in each.
The per-run files are copied too: each method's `records_folder` (Auto-RGN's weights),
MEMO's per-image streams (`streams/`, `tuning/`; a stream's unfinished `.partial.npz`
stays behind), and each run's per-epoch history in metrics.jsonl, for every row of
`--into` whose history it lacks and a source holds with the same row. A file present
on both sides must be identical. On any conflict nothing is written.
Afterwards, rerun the sweep's command on the merged workdir: every run is found
finished, and summary.md and the plots are rewritten.
"""
import argparse
import filecmp
import os
import shutil
import sys

from surgery.report.store import HISTORY, ResultsCsv, append_jsonl, read_histories, row_key

TABLES = ('results.csv', 'tuning.csv')  # tuning.csv: MEMO's tuning streams
MEMO_FOLDERS = ('streams', 'tuning')  # MEMO's per-image streams


def _folders() -> list:
  """The workdir folders of per-run files: each method's records, MEMO's streams."""
  from surgery.methods import registry
  return [m.records_folder for m in registry.all_methods().values()
          if m.records_folder] + list(MEMO_FOLDERS)
UNFINISHED = '.partial.npz'  # a stream checkpoint, only meaningful to its own process


def _new_histories(into: str, sources) -> list:
  """The history records of rows `into` has (or gets) but whose history it lacks.
  `_new_rows` has checked that a row in two workdirs has one result, so a source's
  history of a key is the history of `into`'s row."""
  have = set(read_histories(into))
  new = {}
  for src in sources:
    for key, record in read_histories(src).items():
      if key not in have and key not in new:
        new[key] = record
  return list(new.values())


def _new_rows(into: str, sources, table: str):
  """The rows of `table` in `sources` that `into` lacks, checked against every copy."""
  known = {row_key(r): (r, into) for r in ResultsCsv(os.path.join(into, table)).rows}
  new = []
  for src in sources:
    path = os.path.join(src, table)
    if not os.path.exists(path):
      if table == 'results.csv':
        raise SystemExit(f'error: no results.csv in {src}')
      continue
    for r in ResultsCsv(path).rows:
      k = row_key(r)
      if k in known:
        other, where = known[k]
        if other['test_acc'] != r['test_acc']:
          raise SystemExit(f'error: run {k} has test_acc {other["test_acc"]} in {where} '
                           f'but {r["test_acc"]} in {src} ({table}); nothing written')
        continue
      known[k] = (r, src)
      new.append(r)
  return new


def _new_files(into: str, sources):
  """(source file, target file) for every per-run file `into` lacks."""
  copies, seen = [], {}
  for src in sources:
    for folder in _folders():
      base = os.path.join(src, folder)
      if not os.path.isdir(base):
        continue
      for name in sorted(os.listdir(base)):
        if name.endswith(UNFINISHED):
          continue
        a, b = os.path.join(base, name), os.path.join(into, folder, name)
        first = seen.get(b) or (b if os.path.exists(b) else None)
        if first is not None:
          if not filecmp.cmp(first, a, shallow=False):
            raise SystemExit(f'error: {a} differs from {first}; nothing written')
          continue
        seen[b] = a
        copies.append((a, b))
  return copies


def merge(into: str, sources) -> int:
  """Merges `sources` into `into`; returns the number of results.csv rows added."""
  rows = {table: _new_rows(into, sources, table) for table in TABLES}
  copies = _new_files(into, sources)
  histories = _new_histories(into, sources)
  for table, new in rows.items():
    if new:
      ResultsCsv(os.path.join(into, table)).add_many(
          [{**r, 'hparam': r.get('hparam', '')} for r in new])
  for a, b in copies:
    os.makedirs(os.path.dirname(b), exist_ok=True)
    shutil.copy2(a, b)
  for record in histories:
    append_jsonl(os.path.join(into, HISTORY), record)
  return len(rows['results.csv'])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--into', required=True)
  ap.add_argument('sources', nargs='+')
  args = ap.parse_args(argv)
  added = merge(args.into, args.sources)
  print(f'merged {added} run(s) into {os.path.join(args.into, "results.csv")}')


if __name__ == '__main__':
  sys.exit(main())
