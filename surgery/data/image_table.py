"""Image files listed by a metadata table (Waterbirds, CelebA, WILDS) as random-access
sources of encoded images, and the CSV reading they share.

    table = ImageTable(root, paths, labels, groups=groups)
    table[0]        # {'encoded': b'...', 'label': 1, 'group': 3}
    table.subset(table.labels == 1)

Examples hold the file's bytes ('encoded'), decoded later by a `surgery.data.transforms`
transform, so a source stays cheap to pickle into grain workers.
"""
import csv
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from surgery.data.common import DataNotFoundError
from surgery.errors import SurgeryError


def csv_rows(path: str, columns: Sequence[str]) -> Iterator[Tuple[int, List[str]]]:
  """(line number, values of `columns`) per data row of a CSV with a header; only the
  needed columns are kept (FMoW's table has 500k rows of 15 fields). Blank lines are
  skipped, as pandas does (so data-row numbers match WILDS'). One-line errors name the
  file for a missing column or a row of the wrong length."""
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise SurgeryError(f'{path} is empty')
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
      raise SurgeryError(f'{path} has no column(s) {", ".join(missing)} (has '
                         f'{", ".join(header[:12])}{", ..." if len(header) > 12 else ""})')
    where = [header.index(c) for c in columns]
    for row in reader:
      if not row:
        continue
      if len(row) != len(header):
        raise SurgeryError(f'{path}: line {reader.line_num} has {len(row)} fields, the '
                           f'header {len(header)}')
      yield reader.line_num, [row[i].strip() for i in where]


def read_csv(path: str, required: Sequence[str]) -> dict:
  """{column: list of strings} of the `required` columns of a CSV with a header row;
  one-line errors naming the file (see `csv_rows`)."""
  if not os.path.isfile(path):
    raise DataNotFoundError(f'{path} not found')
  table = {c: [] for c in required}
  for _, values in csv_rows(path, required):
    for c, v in zip(required, values):
      table[c].append(v)
  return table


def int_column(table: dict, column: str, path: str) -> np.ndarray:
  try:
    return np.array([int(float(v)) for v in table[column]], np.int64)
  except ValueError:
    raise SurgeryError(f'{path}: column {column} holds a value that is not a number') from None


class ImageTable:
  """Files `paths` (relative to `root`) with int labels and optional groups/domains."""

  def __init__(self, root: str, paths: Sequence[str], labels, groups=None, domains=None):
    self.root = os.path.abspath(root)
    self.paths = np.asarray(list(paths), dtype=object)
    self.labels = np.asarray(labels, np.int64)
    self.columns = {k: np.asarray(v, np.int64) for k, v in
                    (('group', groups), ('domain', domains)) if v is not None}
    for name, values in [('labels', self.labels)] + list(self.columns.items()):
      if len(values) != len(self.paths):
        raise SurgeryError(f'{name}: {len(values)} entries for {len(self.paths)} files')

  def __len__(self) -> int:
    return len(self.paths)

  @property
  def groups(self) -> Optional[np.ndarray]:
    return self.columns.get('group')

  @property
  def domains(self) -> Optional[np.ndarray]:
    return self.columns.get('domain')

  def path(self, i: int) -> str:
    return os.path.join(self.root, self.paths[i])

  def __getitem__(self, i) -> dict:
    i = int(i)
    if not -len(self) <= i < len(self):
      raise IndexError(f'index {i} out of range for {len(self)} images')
    path = self.path(i)
    try:
      with open(path, 'rb') as f:
        encoded = f.read()
    except OSError as e:
      raise DataNotFoundError(f'cannot read {path} ({e.strerror})') from None
    example = {'encoded': encoded, 'label': int(self.labels[i])}
    example.update({k: int(v[i]) for k, v in self.columns.items()})
    return example

  def subset(self, keep) -> 'ImageTable':
    """The rows where `keep` (a bool mask or indices) selects."""
    keep = np.asarray(keep)
    idx = np.flatnonzero(keep) if keep.dtype == bool else keep
    return ImageTable(self.root, self.paths[idx], self.labels[idx],
                      **{k + 's': v[idx] for k, v in self.columns.items()})

  def missing_files(self, limit: int = 1, sample: Optional[int] = None) -> list:
    """Up to `limit` listed files that are not on disk (a partial copy); with `sample`,
    only that many rows, evenly spaced, are looked at."""
    out = []
    rows = range(len(self))
    if sample is not None and len(self) > sample:
      rows = np.unique(np.linspace(0, len(self) - 1, sample).astype(np.int64))
    for i in rows:
      if not os.path.isfile(self.path(i)):
        out.append(self.path(i))
        if len(out) >= limit:
          break
    return out

  def __repr__(self) -> str:
    return f'ImageTable({len(self)} images under {self.root})'
