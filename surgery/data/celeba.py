"""CelebA (Liu et al., 2015) for the Blond_Hair task with the Male spurious attribute
(Sagawa et al., ICLR 2020), as encoded-image sources.

Layout 'raw' (the Kaggle release group_DRO reads), under `data_dir`, else
`$SURGERY_DATA_DIR/celeba`:

    img_align_celeba/<image_id>          000001.jpg ... (178x218 aligned crops)
    list_attr_celeba.csv                 image_id + 40 attribute columns in -1 / 1
    list_eval_partition.csv              image_id, partition (0 train, 1 val, 2 test)

(The folder `img_align_celeba/img_align_celeba/` of the Kaggle zip is found as well.)
The label is Blond_Hair (1 blond), the spurious attribute Male; the group is
2 * blond + male, group_DRO's numbering: 0 dark-haired woman, 1 dark-haired man,
2 blond woman, 3 blond man.
"""
import os

import numpy as np

from surgery.data.cifar10 import DATA_DIR_ENV, DataNotFoundError
from surgery.data.image_table import ImageTable, int_column, read_csv

TARGET, SPURIOUS = 'Blond_Hair', 'Male'
SPLITS = {'train': 0, 'val': 1, 'test': 2}
GROUP_NAMES = ('dark-haired woman', 'dark-haired man', 'blond woman', 'blond man')
ATTR_FILE, PARTITION_FILE, IMAGES = 'list_attr_celeba.csv', 'list_eval_partition.csv', 'img_align_celeba'


def locate(data_dir=None) -> str:
  root = data_dir or (os.path.join(os.environ[DATA_DIR_ENV], 'celeba')
                      if os.environ.get(DATA_DIR_ENV) else None)
  layout = (f'{IMAGES}/*.jpg, {ATTR_FILE} and {PARTITION_FILE} (the Kaggle CelebA release), '
            'or TFDS celeb_a/<version>/ as array_record with --config.source_layout=tfds')
  if not root:
    raise DataNotFoundError(f'CelebA: set $SURGERY_DATA_DIR or --config.data_dir (expected {layout})')
  if not all(os.path.exists(os.path.join(root, f)) for f in (IMAGES, ATTR_FILE, PARTITION_FILE)):
    raise DataNotFoundError(f'CelebA not found in {root}: expected {layout}')
  return root


def _image_dir(root: str) -> str:
  nested = os.path.join(root, IMAGES, IMAGES)  # the Kaggle zip's double folder
  return nested if os.path.isdir(nested) else os.path.join(root, IMAGES)


def read(data_dir=None) -> dict:
  """{'train' | 'val' | 'test': ImageTable with labels (blond) and groups 2 * blond + male}."""
  root = locate(data_dir)
  attr_path = os.path.join(root, ATTR_FILE)
  part_path = os.path.join(root, PARTITION_FILE)
  attrs = read_csv(attr_path, ('image_id', TARGET, SPURIOUS))
  parts = read_csv(part_path, ('image_id', 'partition'))
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
  gone = everything.missing_files()
  if gone:
    raise DataNotFoundError(f'CelebA: {gone[0]} is listed in {attr_path} but missing')
  return {name: everything.subset(split == code) for name, code in SPLITS.items()}
