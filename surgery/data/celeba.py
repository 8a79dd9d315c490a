"""CelebA (Liu et al., 2015) for the Blond_Hair task with the Male spurious attribute
(Sagawa et al., ICLR 2020), as encoded-image sources; never imports TensorFlow.

The label is Blond_Hair (1 blond), the spurious attribute Male; the group is
2 * blond + male, group_DRO's numbering (data/celebA_dataset.py: `y * (n_groups / 2) +
confounder`): 0 dark-haired woman, 1 dark-haired man, 2 blond woman, 3 blond man. The
split is the official list_eval_partition (0 train, 1 val, 2 test), which TFDS keeps as
its train / validation / test splits.

Where: `data_dir`, else `$SURGERY_DATA_DIR/celeba`. Layouts (`layout`, the config's
`source_layout`):

- raw: the Kaggle release that group_DRO reads, in the root or in its `data/`
  subfolder (group_DRO's `<root_dir>/data/`):
      img_align_celeba/<image_id>      000001.jpg ... (178x218 aligned crops; the Kaggle
                                       zip's doubled img_align_celeba/img_align_celeba/ too)
      list_attr_celeba.csv             image_id + 40 attribute columns in -1 / 1
      list_eval_partition.csv          image_id, partition
- tfds: TFDS `celeb_a` prepared as array_record, `celeb_a/<version>/` (features 'image'
  JPEG 218x178, 'attributes' {name: bool}, 'landmarks'; built with
  `tfds build celeb_a --file_format=array_record`, which needs TensorFlow; reading does
  not). Read with `tfds.builder_from_directory(...).as_data_source(...)` and the image
  left encoded (`tfds.decode.SkipDecoding()`). Labels and groups need every record's
  attributes, which array_record only gives by reading whole records: that one pass is
  cached as .npz in $SURGERY_CACHE_DIR, keyed by the shard files' names, sizes and mtimes.
"""
import os

import numpy as np

from surgery.data import tfds_records
from surgery.data.common import DATA_DIR_ENV, DataNotFoundError
from surgery.data.imagenet import _has_format, _tfds_versions
from surgery.data.sources import _index_in
from surgery.data.image_table import ImageTable, int_column, read_csv
from surgery.errors import SurgeryError

TARGET, SPURIOUS = 'Blond_Hair', 'Male'
SPLITS = {'train': 0, 'val': 1, 'test': 2}
TFDS_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}
GROUP_NAMES = ('dark-haired woman', 'dark-haired man', 'blond woman', 'blond man')
ATTR_FILE, PARTITION_FILE, IMAGES = 'list_attr_celeba.csv', 'list_eval_partition.csv', 'img_align_celeba'
TFDS_NAME = 'celeb_a'
LAYOUTS = ('raw', 'tfds')


def _root(data_dir=None) -> str:
  if data_dir:
    return os.path.abspath(os.path.expanduser(str(data_dir)))
  if not os.environ.get(DATA_DIR_ENV):
    raise DataNotFoundError(
        f'CelebA: set ${DATA_DIR_ENV} or --config.data_dir (expected <dir>/celeba/ holding '
        f'{IMAGES}/*.jpg, {ATTR_FILE} and {PARTITION_FILE}, or TFDS {TFDS_NAME}/<version>/)')
  return os.path.abspath(os.path.join(os.path.expanduser(os.environ[DATA_DIR_ENV]), 'celeba'))


def locate(data_dir=None, layout: str = 'raw') -> str:
  """The folder holding the raw files, or the TFDS version directory; else one line."""
  if layout not in LAYOUTS:
    raise SurgeryError(f'source_layout must be one of {", ".join(LAYOUTS)}, got {layout!r}')
  root = _root(data_dir)
  if layout == 'raw':
    for folder in (root, os.path.join(root, 'data')):
      if all(os.path.exists(os.path.join(folder, f)) for f in (IMAGES, ATTR_FILE, PARTITION_FILE)):
        return folder
    raise DataNotFoundError(
        f'CelebA not found in {root} (source_layout raw): expected {IMAGES}/*.jpg, {ATTR_FILE} '
        f'(image_id + 40 attributes in -1/1) and {PARTITION_FILE} (image_id, partition) there '
        'or in its data/ (the Kaggle release group_DRO reads)')
  versions = _tfds_versions(os.path.join(root, TFDS_NAME))
  for version_dir in versions:
    if _has_format(version_dir, 'array_record'):
      return version_dir
  if versions:
    raise DataNotFoundError(
        f'TFDS {TFDS_NAME} at {versions[0]} has no array_record files (tfrecord only?); '
        f'convert it with: tfds convert_format --root_data_dir={root} '
        '--out_file_format=array_record')
  raise DataNotFoundError(
      f'CelebA not found in {root} (source_layout tfds): expected TFDS {TFDS_NAME} as '
      f'array_record under {root}/{TFDS_NAME}/<version>/')


def read(data_dir=None, layout: str = 'raw', cache=None) -> dict:
  """{'train' | 'val' | 'test': source with .labels (blond) and .groups (2 * blond + male),
  examples {'encoded', 'label', 'group'}}."""
  where = locate(data_dir, layout)
  if layout == 'tfds':
    return {name: TfdsCelebaSource(where, name, cache=cache) for name in SPLITS}
  return _read_raw(where)


# ----------------------------------------------------------------------------- raw

def _image_dir(root: str) -> str:
  nested = os.path.join(root, IMAGES, IMAGES)  # the Kaggle zip's double folder
  return nested if os.path.isdir(nested) else os.path.join(root, IMAGES)


def _read_raw(root: str) -> dict:
  attr_path = os.path.join(root, ATTR_FILE)
  part_path = os.path.join(root, PARTITION_FILE)
  attrs = read_csv(attr_path, ('image_id', TARGET, SPURIOUS))
  parts = read_csv(part_path, ('image_id', 'partition'))
  # Joined on image_id, not row order: the two files are separate downloads.
  partition_of = dict(zip(parts['image_id'], int_column(parts, 'partition', part_path)))
  missing = [i for i in attrs['image_id'] if i not in partition_of]
  if missing:
    raise DataNotFoundError(f'{part_path} has no partition for {missing[0]} '
                            f'(and {len(missing) - 1} more)')
  values = {}
  for column in (TARGET, SPURIOUS):
    v = int_column(attrs, column, attr_path)
    if not np.isin(v, (-1, 1)).all():
      raise DataNotFoundError(f'{attr_path}: column {column} must hold -1 or 1')
    values[column] = (v == 1).astype(np.int64)
  split = np.array([partition_of[i] for i in attrs['image_id']])
  everything = ImageTable(_image_dir(root), attrs['image_id'], values[TARGET],
                          groups=2 * values[TARGET] + values[SPURIOUS])
  gone = everything.missing_files(sample=2000)  # stat-ing all 202,599 costs seconds a run
  if gone:
    raise DataNotFoundError(f'CelebA: {gone[0]} is listed in {attr_path} but missing')
  return {name: everything.subset(split == code) for name, code in SPLITS.items()}


# ---------------------------------------------------------------------------- TFDS

def _scan_attributes(records, version_dir: str, tfds_split: str, cache) -> dict:
  """{'label', 'group'} of every record, by one pass over the records (cached)."""
  def read(record):
    blond = int(bool(record['attributes'][TARGET]))
    return blond, 2 * blond + int(bool(record['attributes'][SPURIOUS]))
  return tfds_records.scan(records, version_dir, tfds_split, cache, 'celeba-groups', read,
                           ('label', 'group'))


class TfdsCelebaSource:
  """One split of TFDS celeb_a (array_record) as {'encoded', 'label', 'group'} examples.

  TensorFlow is never imported; the TFDS data source reopens its files when a grain
  worker unpickles it.
  """

  def __init__(self, version_dir, split: str, cache=None):
    if split not in TFDS_SPLITS:
      raise SurgeryError(f'unknown CelebA split {split!r}; valid: {", ".join(TFDS_SPLITS)}')
    self.version_dir = os.path.abspath(str(version_dir))
    tfds_split = TFDS_SPLITS[split]
    builder, records = tfds_records.open_split(self.version_dir, tfds_split)
    attributes = builder.info.features['attributes'] if 'attributes' in builder.info.features else {}
    absent = [a for a in (TARGET, SPURIOUS) if a not in attributes]
    if absent:
      raise DataNotFoundError(f'TFDS dataset at {self.version_dir} has no attribute(s) '
                              f'{", ".join(absent)}: not celeb_a?')
    self._records = records
    self._split, self._cache, self._columns = tfds_split, cache, None

  def __len__(self) -> int:
    return len(self._records)

  def _scanned(self) -> dict:
    if self._columns is None:
      self._columns = _scan_attributes(self._records, self.version_dir, self._split, self._cache)
    return self._columns

  @property
  def labels(self) -> np.ndarray:
    return self._scanned()['label']

  @property
  def groups(self) -> np.ndarray:
    return self._scanned()['group']

  def __getitem__(self, i) -> dict:
    record = self._records[_index_in(i, len(self))]
    blond = int(bool(record['attributes'][TARGET]))
    male = int(bool(record['attributes'][SPURIOUS]))
    return {'encoded': bytes(record['image']), 'label': blond, 'group': 2 * blond + male}

  def __repr__(self) -> str:
    return f'TfdsCelebaSource({len(self)} {self._split} images in {self.version_dir})'
