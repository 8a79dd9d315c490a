"""ImageNet-C (Hendrycks & Dietterich, ICLR 2019) as random-access sources of encoded
images; never imports TensorFlow.

    source = imagenet_c_source('gaussian_noise', 5)            # the released folders
    source[0]       # {'encoded': b'\\xff\\xd8...', 'label': 0, 'class_index': 0}
    source.labels   # ImageNet class indices, one per image (50 per class)

Examples are those of `surgery.data.imagenet` ('encoded' image-file bytes, decoded by a
`surgery.data.transforms` transform; 'label' = 'class_index' = the ImageNet class index,
the position of the wnid in the sorted list of the 1000 ILSVRC wnids).

Where: the `data_dir` argument, else `$SURGERY_DATA_DIR/imagenet-c`. Two copies exist
and they are not the same images, so the caller names the one it wants (`layout`) and
results say which they came from:

- 'release': the tarballs of Hendrycks & Dietterich (zenodo record 2235448: noise.tar,
  blur.tar, weather.tar, digital.tar, extra.tar) unpacked into one directory:
  `<root>/<corruption>/<severity>/<wnid>/*.JPEG`, 224x224 JPEGs of the 50,000 ILSVRC-2012
  validation images (50 per class). These are the images the paper and RobustBench use.
- 'tfds': TFDS `imagenet2012_corrupted`, config `<corruption>_<severity>` (e.g.
  `gaussian_noise_5`), prepared as array_record: `<root>/imagenet2012_corrupted/
  <corruption>_<severity>/<version>/`. TFDS regenerates the corruptions itself (its own
  crop, seeds and code), so its pixels differ from the release's; accuracies are close
  but not interchangeable. Features: 'image' (224x224 JPEG), 'label' (ClassLabel over the
  1000 sorted wnids), 'file_name'; one split, 'validation'. Built with TensorFlow:
      tfds build imagenet2012_corrupted/gaussian_noise_5 --file_format=array_record \\
          --manual_dir=DIR_WITH_ILSVRC_TARS --data_dir=$SURGERY_DATA_DIR/imagenet-c
  and read like TFDS imagenet2012 in `surgery.data.imagenet` (`TfdsImagenetSource`).

Class indices: a copy holding all 1000 wnids gets them from the sorted wnids; a partial
copy needs `class_index` (wnid -> index, e.g. from BREEDS' dataset_class_info.json:
`read_class_index`).
"""
import json
import os
from typing import Dict, Mapping, Optional

import numpy as np

from surgery.data.common import DATA_DIR_ENV, DataNotFoundError
from surgery.data.imagenet import (IMAGE_SUFFIXES, ImageFolderSource, TfdsImagenetSource,
                                   _has_format, _lookup, _tfds_versions, list_split)
from surgery.errors import SurgeryError

DATA_SUBDIR = 'imagenet-c'
TFDS_NAME = 'imagenet2012_corrupted'
LAYOUTS = ('release', 'tfds')
NUM_CLASSES = 1000
SEVERITIES = (1, 2, 3, 4, 5)
# The 15 benchmark corruptions, in Hendrycks & Dietterich's order (noise, blur, weather,
# digital), and the 4 held-out extras that both copies also ship (no mCE for these).
CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
               'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
               'elastic_transform', 'pixelate', 'jpeg_compression')
EXTRA_CORRUPTIONS = ('gaussian_blur', 'saturate', 'spatter', 'speckle_noise')


def check_corruption(name: str, severity: int) -> None:
  """One-line SurgeryError for an unknown corruption or a severity outside 1..5."""
  if name not in CORRUPTIONS + EXTRA_CORRUPTIONS:
    raise SurgeryError(f'unknown ImageNet-C corruption {name!r}; valid: '
                       f'{", ".join(CORRUPTIONS + EXTRA_CORRUPTIONS)}')
  if isinstance(severity, bool) or severity not in SEVERITIES:
    raise SurgeryError(f'ImageNet-C severity must be one of 1, 2, 3, 4, 5, got {severity!r}')


# -------------------------------------------------------------------------- locating

def imagenet_c_root(data_dir=None):
  """(directory to look in, where it came from): `data_dir`, else $SURGERY_DATA_DIR/imagenet-c."""
  if data_dir:
    return os.path.abspath(os.path.expanduser(str(data_dir))), 'data_dir'
  base = os.environ.get(DATA_DIR_ENV)
  if not base:
    raise DataNotFoundError(
        f'ImageNet-C not found: no data_dir given and ${DATA_DIR_ENV} is unset; set it to a '
        f'directory whose {DATA_SUBDIR}/ holds <corruption>/<severity>/<wnid>/*.JPEG '
        f'(release) or TFDS {TFDS_NAME}/<corruption>_<severity>/<version>/ as array_record')
  return os.path.abspath(os.path.join(os.path.expanduser(base), DATA_SUBDIR)), f'${DATA_DIR_ENV}'


def _release_dir(root: str, corruption: str, severity: int) -> str:
  return os.path.join(root, corruption, str(severity))


def _has_wnid_folder(path: str) -> bool:
  if not os.path.isdir(path):
    return False
  with os.scandir(path) as entries:
    return any(e.is_dir() and not e.name.startswith('.') for e in entries)


def _tfds_dir(root: str, corruption: str, severity: int) -> Optional[str]:
  """The newest version directory of the TFDS config that holds array_record files."""
  for version_dir in _tfds_versions(os.path.join(root, TFDS_NAME, f'{corruption}_{severity}')):
    if _has_format(version_dir, 'array_record'):
      return version_dir
  return None


def locate_imagenet_c(corruption: str, severity: int, layout: str = 'release',
                      data_dir=None) -> str:
  """The directory holding `corruption` at `severity` in `layout`: the release's
  `<root>/<corruption>/<severity>/`, or TFDS's version directory. A missing copy is a
  one-line DataNotFoundError naming the path looked at and both layouts."""
  check_corruption(corruption, severity)
  if layout not in LAYOUTS:
    raise SurgeryError(f'source_layout must be one of {", ".join(LAYOUTS)}, got {layout!r}')
  root, origin = imagenet_c_root(data_dir)
  release = _release_dir(root, corruption, severity)
  tfds_dir = _tfds_dir(root, corruption, severity)
  if layout == 'release' and _has_wnid_folder(release):
    return release
  if layout == 'tfds' and tfds_dir:
    return tfds_dir
  tfds_path = os.path.join(root, TFDS_NAME, f'{corruption}_{severity}', '<version>')
  if layout == 'release':
    hint = (f'; TFDS {TFDS_NAME} is there: set source_layout=tfds to use it' if tfds_dir
            else f', or set source_layout=tfds for TFDS {TFDS_NAME} as array_record in '
                 f'{tfds_path}/')
    raise DataNotFoundError(
        f'ImageNet-C {corruption} severity {severity} not found in {root} (from {origin}): '
        f'source_layout=release expects {release}/<wnid>/*.JPEG (Hendrycks & Dietterich\'s '
        f'tarballs unpacked){hint}')
  hint = ('; the released folders are there: set source_layout=release to use them'
          if _has_wnid_folder(release) else
          f', or set source_layout=release for {release}/<wnid>/*.JPEG (Hendrycks & '
          f'Dietterich\'s tarballs unpacked)')
  raise DataNotFoundError(
      f'ImageNet-C {corruption} severity {severity} not found in {root} (from {origin}): '
      f'source_layout=tfds expects TFDS {TFDS_NAME} as array_record in {tfds_path}/{hint}')


def read_class_index(path: str) -> Dict[str, int]:
  """wnid -> ImageNet class index from a [[index, wnid, name], ...] json file (BREEDS'
  dataset_class_info.json is one), for copies that hold fewer than the 1000 wnids."""
  if not os.path.isfile(path):
    raise DataNotFoundError(f'no class index file at {path}: a partial ImageNet-C copy needs '
                            'dataset_class_info.json ([[index, wnid, name], ...], from BREEDS)')
  try:
    with open(path) as f:
      return {str(wnid): int(i) for i, wnid, _ in json.load(f)}
  except (ValueError, TypeError) as e:
    raise SurgeryError(f'{path}: not a list of [index, wnid, name] ({e})') from None


def _class_index_for(wnids, class_index: Optional[Mapping[str, int]], where: str):
  """`class_index`, else the sorted order, which is ImageNet's only for all 1000 wnids."""
  if class_index is not None:
    return class_index
  if len(wnids) != NUM_CLASSES:
    raise DataNotFoundError(f'{where} holds {len(wnids)} wnids, not {NUM_CLASSES}: ImageNet '
                            'class indices for a partial copy need a class index file '
                            '(dataset_class_info.json)')
  return {w: i for i, w in enumerate(sorted(wnids))}


# ---------------------------------------------------------------------------- sources

class ReleaseFolderSource(ImageFolderSource):
  """`<root>/<corruption>/<severity>/<wnid>/*.JPEG` as examples {'encoded', 'label',
  'class_index'}, label = class index. File lists are cached like ImageNet's
  (`surgery.data.imagenet.list_split`).

  Attributes: `wnids` (sorted), `labels` and `class_indices` (int64, one per example).
  Reading is ImageFolderSource's, over the severity folder instead of a split folder.
  """

  def __init__(self, severity_dir, *, class_index=None, cache=None):  # pylint: disable=super-init-not-called
    self.severity_dir = self.split_dir = os.path.abspath(str(severity_dir))
    if not _has_wnid_folder(self.severity_dir):
      raise DataNotFoundError(f'no <wnid>/ folders in {self.severity_dir}')
    with os.scandir(self.severity_dir) as entries:
      self.wnids = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith('.'))
    class_index = _class_index_for(self.wnids, class_index, self.severity_dir)
    self._names, counts = list_split(self.severity_dir, self.wnids, cache)
    if len(self._names) == 0:
      raise DataNotFoundError(f'no images ({", ".join(IMAGE_SUFFIXES)}) under '
                              f'{self.severity_dir}/<wnid>/')
    self.class_indices = np.repeat(_lookup(class_index, self.wnids, 'the class index'), counts)
    self.labels = self.class_indices

  def __repr__(self) -> str:
    return (f'ReleaseFolderSource({len(self)} images of {len(self.wnids)} wnids in '
            f'{self.severity_dir})')


def _tfds_label_names(version_dir: str) -> list:
  """The wnids of the 'label' feature, from dataset_info's features.json (no TF needed)."""
  import tensorflow_datasets as tfds
  return list(tfds.builder_from_directory(version_dir).info.features['label'].names)


def imagenet_c_source(corruption: str, severity: int = 5, data_dir=None, *,
                      layout: str = 'release', class_index=None, cache=None):
  """`corruption` at `severity` from the copy in `layout` ('release' or 'tfds').

  Examples are {'encoded': image file bytes, 'label': class index, 'class_index'}, to be
  decoded by a `surgery.data.transforms` transform; `.labels` holds every label.
  """
  path = locate_imagenet_c(corruption, severity, layout, data_dir)
  if layout == 'release':
    return ReleaseFolderSource(path, class_index=class_index, cache=cache)
  if class_index is None:
    class_index = _class_index_for(_tfds_label_names(path), None, path)
  # TFDS imagenet2012_corrupted has the 'validation' split only (TfdsImagenetSource: 'val').
  return TfdsImagenetSource(path, 'val', class_index=class_index, cache=cache)
