"""Waterbirds (Sagawa et al., ICLR 2020) in its released folder, as encoded-image sources.

Layout (the tarball of kohpangwei/group_DRO, `waterbird_complete95_forest2water2.tar.gz`;
WILDS ships the same files as `waterbirds_v1.0/`), under `data_dir`, else
`$SURGERY_DATA_DIR/waterbirds`, or that directory itself:

    waterbird_complete95_forest2water2/metadata.csv   img_id, img_filename, y, split, place
    waterbird_complete95_forest2water2/<img_filename>  e.g. 001.Black_footed_Albatross/....jpg

`split` 0 / 1 / 2 is train / val / test; `y` 1 is a waterbird; `place` 1 a water
background. The group is 2 * y + place, group_DRO's numbering (data/cub_dataset.py:
`y * (n_groups / 2) + place`): 0 landbird on land, 1 landbird on water, 2 waterbird on
land, 3 waterbird on water.
"""
import os

import numpy as np

from surgery.data.common import DATA_DIR_ENV, DataNotFoundError
from surgery.data.image_table import ImageTable, int_column, read_csv

FOLDERS = ('waterbird_complete95_forest2water2', 'waterbirds_v1.0')
SPLITS = {'train': 0, 'val': 1, 'test': 2}
COLUMNS = ('img_filename', 'y', 'split', 'place')
GROUP_NAMES = ('landbird on land', 'landbird on water', 'waterbird on land', 'waterbird on water')


def locate(data_dir=None) -> str:
  """The folder holding metadata.csv, or a one-line DataNotFoundError."""
  root = data_dir or (os.path.join(os.environ[DATA_DIR_ENV], 'waterbirds')
                      if os.environ.get(DATA_DIR_ENV) else None)
  if not root:
    raise DataNotFoundError('Waterbirds: set $SURGERY_DATA_DIR or --config.data_dir (expected '
                            f'<dir>/{FOLDERS[0]}/metadata.csv + the image folders)')
  root = os.path.abspath(os.path.expanduser(str(root)))
  for folder in (root,) + tuple(os.path.join(root, f) for f in FOLDERS):
    if os.path.isfile(os.path.join(folder, 'metadata.csv')):
      return folder
  raise DataNotFoundError(
      f'Waterbirds not found in {root}: expected {os.path.join(root, FOLDERS[0])}/metadata.csv '
      '(columns img_id, img_filename, y, split, place) and the image folders it lists, from '
      f'group_DRO\'s {FOLDERS[0]}.tar.gz (or WILDS\' {FOLDERS[1]}/)')


def read(data_dir=None) -> dict:
  """{'train' | 'val' | 'test': ImageTable with labels y and groups 2y + place}."""
  folder = locate(data_dir)
  path = os.path.join(folder, 'metadata.csv')
  table = read_csv(path, COLUMNS)
  y, split, place = (int_column(table, c, path) for c in ('y', 'split', 'place'))
  for name, values in (('y', y), ('place', place)):
    if not np.isin(values, (0, 1)).all():
      raise DataNotFoundError(f'{path}: column {name} must hold 0 or 1')
  everything = ImageTable(folder, table['img_filename'], y, groups=2 * y + place)
  out = {name: everything.subset(split == code) for name, code in SPLITS.items()}
  missing = everything.missing_files()
  if missing:
    raise DataNotFoundError(f'Waterbirds: {missing[0]} is listed in {path} but missing')
  return out
