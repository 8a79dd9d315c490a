"""One-off migration: results folders made while `init_checkpoint` entered the run
fingerprint as a path now carry it by content (`experiments.plan.CONTENT_FIELDS`).

    python -m experiments.tools.migrate_fingerprints \\
        --checkpoint=../shared/weights/memo_resnet26_gn_cifar10.pth results

For every folder under the given roots with a config.json whose `init_checkpoint` is a
path whose file name is the given checkpoint's, it
- computes the fingerprint the rows were made under (the old rule: the path's text) and
  refuses the folder unless its rows carry exactly that one;
- replaces that fingerprint by the new one (the checkpoint's sha256) in every file of
  the folder (results.csv, tuning.csv, metrics.jsonl, the tuning and stream states; a
  sub-folder with a config.json of its own is a folder of its own), and checks that
  nothing else in any file changed: reverting the one string gives the old bytes back,
  and each CSV differs in the `fingerprint` column only;
- rewrites config.json as the runners now write it (`experiments.plan.config_record`).

It writes each file atomically, prints one line per folder, and changes nothing with
`--dry_run`. A folder already migrated, or with no checkpoint, is left alone.
"""
import csv
import io
import json
import os
import sys

import ml_collections
from absl import app, flags

from surgery.report import store
from surgery.report.fingerprint import fingerprint
from experiments.plan import SHA_PREFIX, content_id, record_text, result_fields
from surgery.errors import SurgeryError

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'The checkpoint file the rows used.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Report what would change; write nothing.')
flags.mark_flag_as_required('checkpoint')


def _fields(record: dict) -> dict:
  """The result fields as the folder's runner computes them (MEMO leaves its run axes
  and, untuned, its tuning grid out)."""
  config = ml_collections.ConfigDict(record)
  if record.get('experiment') == 'memo':
    from experiments.memo import memo_result_fields
    return memo_result_fields(config)
  return result_fields(config)


def _folder_files(folder: str) -> list:
  """Files of `folder`, down into sub-folders that are not folders of their own."""
  out = []
  for d, subdirs, names in os.walk(folder):
    subdirs[:] = sorted(s for s in subdirs
                        if not os.path.exists(os.path.join(d, s, 'config.json')))
    out += [os.path.join(d, n) for n in sorted(names) if n != 'config.json']
  return out


def _fingerprints_in(folder: str) -> set:
  found = set()
  for name in ('results.csv', 'tuning.csv'):
    path = os.path.join(folder, name)
    if os.path.exists(path):
      found |= store.ResultsCsv(path, write=False).fingerprints()
  return found


def _check_csv(old: bytes, new: bytes, path: str) -> None:
  a = list(csv.reader(io.StringIO(old.decode())))
  b = list(csv.reader(io.StringIO(new.decode())))
  if len(a) != len(b) or a[:1] != b[:1]:
    raise SurgeryError(f'{path}: rows or header changed')
  column = a[0].index('fingerprint')
  for x, y in zip(a[1:], b[1:]):
    if x[:column] + x[column + 1:] != y[:column] + y[column + 1:]:
      raise SurgeryError(f'{path}: a column other than fingerprint changed')


def migrate(folder: str, checkpoint: str, sha: str, dry_run: bool) -> str:
  """One folder; returns the line to print."""
  config_path = os.path.join(folder, 'config.json')
  with open(config_path) as f:
    record = json.load(f)
  path = record.get('init_checkpoint') or ''
  if not path or path.startswith(SHA_PREFIX):
    return f'{folder}: nothing to do (init_checkpoint {path or "empty"})'
  if os.path.basename(path) != os.path.basename(checkpoint):
    return f'{folder}: skipped, it used {os.path.basename(path)}, not {os.path.basename(checkpoint)}'
  new_record = dict(record, init_checkpoint=SHA_PREFIX + sha)
  new_fields = _fields(new_record)
  old_fp = fingerprint(dict(new_fields, init_checkpoint=path))
  new_fp = fingerprint(new_fields)
  held = _fingerprints_in(folder)
  if held - {old_fp}:
    raise SurgeryError(f'{folder}: rows carry fingerprint(s) {sorted(held - {old_fp})}, not '
                       f'{old_fp} (config.json under the old rule); not migrated')
  changed = []
  for name in _folder_files(folder) if held else []:
    with open(name, 'rb') as f:
      old = f.read()
    new = old.replace(old_fp.encode(), new_fp.encode())
    if new == old:
      continue
    if new.replace(new_fp.encode(), old_fp.encode()) != old:
      raise SurgeryError(f'{name}: holds {new_fp} already; not migrated')
    if name.endswith('.csv'):
      _check_csv(old, new, name)
    changed.append((name, new, old.count(old_fp.encode())))
  text = record_text(record, {'init_checkpoint': SHA_PREFIX + sha})
  if not dry_run:
    for name, data, _ in changed:
      store.atomic_write(name, data, mode='wb')
    store.atomic_write(config_path, text)
  replaced = ', '.join(f'{os.path.relpath(n, folder)} ({k})' for n, _, k in changed)
  return (f'{folder}: fingerprint {old_fp} -> {new_fp}' if held else
          f'{folder}: rows carry no fingerprint') + (
      f' in {replaced}' if changed else '') + '; config.json rewritten'


def main(argv):
  roots = argv[1:] or ['results']
  try:
    if not os.path.isfile(_CHECKPOINT.value):
      raise SurgeryError(f'--checkpoint: {_CHECKPOINT.value} is not a file')
    sha = content_id(_CHECKPOINT.value)[len(SHA_PREFIX):]
    folders = sorted(d for root in roots for d, _, names in os.walk(root)
                     if 'config.json' in names)
    for folder in folders:
      print(migrate(folder, _CHECKPOINT.value, sha, _DRY_RUN.value), flush=True)
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
