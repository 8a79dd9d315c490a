"""ImageNet (ILSVRC-2012) as random-access sources of encoded images; never imports TF.

    source = imagenet_source('train', label_of=living17_labels)   # BREEDS: wnid -> superclass
    source[0]       # {'encoded': b'\\xff\\xd8...', 'label': 3, 'class_index': 291}
    TrainTransform()(source[0], rng)['image']                      # uint8 [224, 224, 3]

Examples hold the image file's bytes under 'encoded', not pixels: decoding and cropping
belong to the transform (`surgery.data.transforms`), which grain runs in its worker
processes, and which needs the bytes to let libjpeg decode at reduced size (draft mode).
'label' is what the model learns (`label_of[wnid]`, e.g. a BREEDS superclass, else the
class index); 'class_index' is the ImageNet class index (position of the wnid in the
sorted list of the 1000 ILSVRC wnids).

Where: the `data_dir` argument, else `$SURGERY_DATA_DIR/imagenet`. Layouts accepted there
(`locate_imagenet` says which it found):

- folder: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (validation images sorted into
  wnid folders, as the usual preparation script leaves them). Class indices are the
  sorted folder order unless `class_index` (wnid -> index; BREEDS' dataset_class_info.json
  has them) is given, which a partial copy needs. File lists come from os.scandir, sorted,
  and are cached as .npz in $SURGERY_CACHE_DIR, keyed by the class folders' mtimes.
- tfds: TFDS `imagenet2012` prepared as array_record, `imagenet2012/<version>/`. Build it
  from the two ILSVRC tars (this step needs TensorFlow, reading does not):
      tfds build imagenet2012 --file_format=array_record --manual_dir=DIR_WITH_TARS \\
          --data_dir=$SURGERY_DATA_DIR/imagenet
  or convert a tfrecord copy in place (also needs TensorFlow):
      tfds convert_format --root_data_dir=$SURGERY_DATA_DIR/imagenet \\
          --out_file_format=array_record
  It is read with `tfds.builder_from_directory(...).as_data_source(...)` (what
  `tfds.data_source` does, minus needing the registered builder's code and version) and
  `tfds.decode.SkipDecoding()` for the image, so records come back as JPEG bytes and
  nothing imports TensorFlow. Selecting wnids needs every record's label, which array_record
  can only give by reading whole records: that one pass (minutes for the train split) is
  cached like the file lists.
"""
import dataclasses
import hashlib
import os
import re
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

from surgery.data.common import DATA_DIR_ENV, DataNotFoundError, cache_dir, cached_arrays
from surgery.data import tfds_records
from surgery.data.sources import _index_in
from surgery.errors import SurgeryError

DATA_SUBDIR = 'imagenet'
TFDS_NAME = 'imagenet2012'
# split -> (folder name, TFDS split name)
SPLITS = {'train': ('train', 'train'), 'val': ('val', 'validation'),
          'validation': ('val', 'validation')}
IMAGE_SUFFIXES = ('.jpeg', '.jpg', '.png')
_CACHE_VERSION = 1


# -------------------------------------------------------------------------- locating

@dataclasses.dataclass(frozen=True)
class ImagenetLocation:
  """Where ImageNet is: layout 'folder' (path holds train/ and val/) or 'tfds' (path is
  the TFDS version directory imagenet2012/<version>/)."""
  layout: str
  path: str


def _has_class_folder(split_dir: str) -> bool:
  if not os.path.isdir(split_dir):
    return False
  with os.scandir(split_dir) as entries:
    return any(e.is_dir() and not e.name.startswith('.') for e in entries)


def _version_key(name: str):
  return tuple(int(p) for p in name.split('.')) if re.fullmatch(r'\d+(\.\d+)*', name) else None


def _tfds_versions(dataset_dir: str) -> List[str]:
  """Version directories under `dataset_dir` with a dataset_info.json, newest first."""
  if not os.path.isdir(dataset_dir):
    return []
  versions = [e.name for e in os.scandir(dataset_dir)
              if e.is_dir() and _version_key(e.name) is not None
              and os.path.isfile(os.path.join(e.path, 'dataset_info.json'))]
  return [os.path.join(dataset_dir, v) for v in sorted(versions, key=_version_key, reverse=True)]


def _has_format(version_dir: str, file_format: str) -> bool:
  return any(f'.{file_format}-' in name for name in os.listdir(version_dir))


def imagenet_root(data_dir=None):
  """(directory to look in, where it came from): `data_dir`, else $SURGERY_DATA_DIR/imagenet."""
  if data_dir is not None:
    return os.path.abspath(os.path.expanduser(str(data_dir))), 'data_dir'
  base = os.environ.get(DATA_DIR_ENV)
  if not base:
    raise DataNotFoundError(
        f'ImageNet not found: no data_dir given and ${DATA_DIR_ENV} is unset; set it to a '
        f'directory whose {DATA_SUBDIR}/ holds train/<wnid>/*.JPEG + val/<wnid>/*.JPEG or '
        f'TFDS {TFDS_NAME}/<version>/ as array_record')
  return os.path.abspath(os.path.join(os.path.expanduser(base), DATA_SUBDIR)), f'${DATA_DIR_ENV}'


def locate_imagenet(data_dir=None) -> ImagenetLocation:
  """Which copy of ImageNet `data_dir` (else $SURGERY_DATA_DIR/imagenet) holds."""
  root, origin = imagenet_root(data_dir)
  if any(_has_class_folder(os.path.join(root, s)) for s in ('train', 'val')):
    return ImagenetLocation('folder', root)
  versions = _tfds_versions(os.path.join(root, TFDS_NAME))
  for version_dir in versions:
    if _has_format(version_dir, 'array_record'):
      return ImagenetLocation('tfds', version_dir)
  if versions:
    raise DataNotFoundError(
        f'TFDS {TFDS_NAME} at {versions[0]} has no array_record files (tfrecord only?); '
        f'convert it with: tfds convert_format --root_data_dir={root} '
        f'--out_file_format=array_record')
  raise DataNotFoundError(
      f'ImageNet not found in {root} (from {origin}): expected an image-folder tree '
      f'{root}/train/<wnid>/*.JPEG + {root}/val/<wnid>/*.JPEG, or TFDS {TFDS_NAME} as '
      f'array_record under {root}/{TFDS_NAME}/<version>/')


# ------------------------------------------------------------------------ selection

def _split_names(split: str):
  if split not in SPLITS:
    raise SurgeryError(f'unknown ImageNet split {split!r}; valid: train, val')
  return SPLITS[split]


def _selected_wnids(wnids, label_of, present: Sequence[str], where: str) -> List[str]:
  """The wnids a source holds, sorted: `wnids`, else `label_of`'s keys, else all present."""
  if wnids is None and label_of is not None:
    wnids = list(label_of)
  if wnids is None:
    return sorted(present)
  wnids = sorted({str(w) for w in wnids})
  if not wnids:
    raise SurgeryError('wnids is empty; pass None for all classes')
  present = set(present)
  missing = [w for w in wnids if w not in present]
  if missing:
    raise DataNotFoundError(f'{len(missing)} of the {len(wnids)} requested wnids are not in '
                            f'{where}, e.g. {missing[0]}')
  if label_of is not None:
    unlabelled = [w for w in wnids if w not in label_of]
    if unlabelled:
      raise SurgeryError(f'label_of has no label for wnid {unlabelled[0]} '
                         f'({len(unlabelled)} of {len(wnids)} unlabelled)')
  return wnids


def _lookup(mapping: Mapping[str, int], wnids: Iterable[str], what: str) -> np.ndarray:
  values = []
  for w in wnids:
    if w not in mapping:
      raise SurgeryError(f'{what} has no entry for wnid {w}')
    values.append(int(mapping[w]))
  return np.array(values, np.int64)


def label_of_groups(groups: Sequence[Sequence[int]],
                    class_index: Mapping[str, int]) -> Dict[str, int]:
  """`label_of` for a grouping of class indices, e.g. BREEDS' `source`: wnid -> group k.

  `groups[k]` lists ImageNet class indices; `class_index` maps wnid -> class index.
  """
  wnid_of = {int(i): w for w, i in class_index.items()}
  label_of = {}
  for label, indices in enumerate(groups):
    for i in indices:
      if int(i) not in wnid_of:
        raise SurgeryError(f'class index {i} of group {label} is not in class_index')
      if wnid_of[int(i)] in label_of:
        raise SurgeryError(f'class index {i} is in two groups')
      label_of[wnid_of[int(i)]] = label
  return label_of


# --------------------------------------------------------------------- file listing

class NameTable:
  """Many short strings as one utf-8 buffer plus end offsets.

  A source is pickled into every grain worker; 1.28M paths as Python strings cost about
  100 MB of objects there, this costs the bytes themselves.
  """

  def __init__(self, blob: np.ndarray, ends: np.ndarray):
    self.blob, self.ends = blob, ends

  @classmethod
  def from_strings(cls, strings: Sequence[str]) -> 'NameTable':
    encoded = [s.encode() for s in strings]
    ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
    return cls(np.frombuffer(b''.join(encoded), np.uint8).copy(), ends)

  def __len__(self) -> int:
    return len(self.ends)

  def __getitem__(self, i: int) -> str:
    start = int(self.ends[i - 1]) if i else 0
    return self.blob[start:int(self.ends[i])].tobytes().decode()


def _list_class(folder: str) -> List[str]:
  with os.scandir(folder) as entries:  # names only: no stat per file
    return sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES))


def list_split(split_dir: str, wnids: Sequence[str], cache=None):
  """(NameTable of '<wnid>/<file>', images per wnid) for `wnids` of `split_dir`, sorted.

  Cached in `cache_dir(cache)` (cache=False: not cached) under a key of the path, the
  wnids and their folders' mtimes, which change whenever a file is added or removed.
  """
  def build():
    names, counts = [], []
    for w in wnids:
      files = _list_class(os.path.join(split_dir, w))
      names.extend(f'{w}/{f}' for f in files)
      counts.append(len(files))
    table = NameTable.from_strings(names)
    return {'blob': table.blob, 'ends': table.ends, 'counts': np.array(counts, np.int64)}

  if cache is False:
    arrays = build()
  else:
    stamps = ','.join(f'{w}:{os.stat(os.path.join(split_dir, w)).st_mtime_ns}' for w in wnids)
    key = hashlib.sha256(f'{os.path.abspath(split_dir)}|{stamps}|{_CACHE_VERSION}'.encode())
    path = os.path.join(cache_dir(cache), f'imagenet-files-{key.hexdigest()[:16]}.npz')
    arrays = cached_arrays(path, build)
  return NameTable(arrays['blob'], arrays['ends']), arrays['counts']


# ---------------------------------------------------------------------------- sources

class ImageFolderSource:
  """`<root>/<train|val>/<wnid>/*.JPEG` as examples {'encoded', 'label', 'class_index'}.

  Args:
    root: the directory holding train/ and val/.
    split: 'train' or 'val'.
    wnids: classes to keep (default: `label_of`'s keys, else every folder).
    class_index: wnid -> ImageNet class index (default: sorted folder order, right only
      for a complete copy).
    label_of: wnid -> label (default: the class index).
    cache: file-list cache directory, None for the default, False for none.

  Attributes: `wnids` (sorted), `labels` and `class_indices` (int64, one per example).
  """

  def __init__(self, root, split: str, *, wnids=None, class_index=None, label_of=None,
               cache=None):
    self.split_dir = os.path.join(os.path.abspath(str(root)), _split_names(split)[0])
    if not os.path.isdir(self.split_dir):
      raise DataNotFoundError(f'no ImageNet {split} split: {self.split_dir} is not a directory')
    with os.scandir(self.split_dir) as entries:
      present = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith('.'))
    if class_index is None:
      class_index = {w: i for i, w in enumerate(present)}
    self.wnids = _selected_wnids(wnids, label_of, present, self.split_dir)
    self._names, counts = list_split(self.split_dir, self.wnids, cache)
    if len(self._names) == 0:
      raise DataNotFoundError(f'no images ({", ".join(IMAGE_SUFFIXES)}) under '
                              f'{self.split_dir}/<wnid>/ for the {len(self.wnids)} wnids')
    self.class_indices = np.repeat(_lookup(class_index, self.wnids, 'class_index'), counts)
    labels = self.class_indices if label_of is None else np.repeat(
        _lookup(label_of, self.wnids, 'label_of'), counts)
    self.labels = labels

  def __len__(self) -> int:
    return len(self._names)

  def path(self, i) -> str:
    return os.path.join(self.split_dir, self._names[_index_in(i, len(self))])

  def __getitem__(self, i) -> dict:
    i = _index_in(i, len(self))
    with open(os.path.join(self.split_dir, self._names[i]), 'rb') as f:
      encoded = f.read()
    return {'encoded': encoded, 'label': int(self.labels[i]),
            'class_index': int(self.class_indices[i])}

  def __repr__(self) -> str:
    return f'ImageFolderSource({len(self)} images of {len(self.wnids)} wnids in {self.split_dir})'


def _record_labels(records, version_dir: str, split: str, cache) -> np.ndarray:
  """Every record's TFDS label, by one pass over the records (cached)."""
  return tfds_records.scan(records, version_dir, split, cache, 'imagenet-labels',
                           lambda r: (int(r['label']),), ('labels',))['labels']


class TfdsImagenetSource:
  """TFDS imagenet2012 (array_record) as examples {'encoded', 'label', 'class_index'}.

  `version_dir` is `<data_dir>/imagenet2012/<version>/`; the other arguments are those of
  `ImageFolderSource`, class indices defaulting to TFDS's labels (the sorted wnids).
  TensorFlow is never imported; the TFDS data source reopens its files when a grain
  worker unpickles it.
  """

  def __init__(self, version_dir, split: str, *, wnids=None, class_index=None,
               label_of=None, cache=None):
    self.version_dir = os.path.abspath(str(version_dir))
    tfds_split = _split_names(split)[1]
    builder, self._records = tfds_records.open_split(self.version_dir, tfds_split)
    label_names = list(builder.info.features['label'].names)  # wnids in TFDS label order
    if class_index is None:
      class_index = {w: i for i, w in enumerate(label_names)}
    self.wnids = _selected_wnids(wnids, label_of, label_names, self.version_dir)
    # Per TFDS label: the class index and the label we hand out (-1: not selected).
    chosen = set(self.wnids)
    self._class_index_of = np.array([class_index.get(w, -1) if w in chosen else -1
                                     for w in label_names], np.int64)
    _lookup(class_index, self.wnids, 'class_index')  # one-line error if any is missing
    labels = label_of if label_of is not None else class_index
    self._label_of = np.array([int(labels[w]) if w in chosen else -1 for w in label_names],
                              np.int64)
    self._split, self._cache, self._labels = tfds_split, cache, None
    if chosen == set(label_names):
      self._positions = None
    else:
      record_labels = _record_labels(self._records, self.version_dir, tfds_split, cache)
      self._positions = np.flatnonzero(self._label_of[record_labels] >= 0)
      if self._positions.size == 0:
        raise DataNotFoundError(f'no {tfds_split} records of the {len(self.wnids)} requested '
                                f'wnids in {self.version_dir}')

  def __len__(self) -> int:
    return len(self._records) if self._positions is None else len(self._positions)

  @property
  def labels(self) -> np.ndarray:
    """Every example's label, in order (one pass over the records, cached)."""
    if self._labels is None:
      tfds_labels = _record_labels(self._records, self.version_dir, self._split, self._cache)
      if self._positions is not None:
        tfds_labels = tfds_labels[self._positions]
      self._labels = self._label_of[tfds_labels]
    return self._labels

  def __getitem__(self, i) -> dict:
    i = _index_in(i, len(self))
    record = self._records[i if self._positions is None else int(self._positions[i])]
    tfds_label = int(record['label'])
    return {'encoded': bytes(record['image']), 'label': int(self._label_of[tfds_label]),
            'class_index': int(self._class_index_of[tfds_label])}

  def __repr__(self) -> str:
    return (f'TfdsImagenetSource({len(self)} images of {len(self.wnids)} wnids in '
            f'{self.version_dir})')


def imagenet_source(split: str, data_dir=None, *, wnids=None, class_index=None,
                    label_of=None, cache=None):
  """The ImageNet `split` ('train' or 'val') from whichever layout `locate_imagenet` finds.

  See `ImageFolderSource` for the arguments; examples are {'encoded': bytes of the image
  file, 'label': int, 'class_index': int}, to be decoded by a `surgery.data.transforms`
  transform.
  """
  location = locate_imagenet(data_dir)
  kind = ImageFolderSource if location.layout == 'folder' else TfdsImagenetSource
  return kind(location.path, split, wnids=wnids, class_index=class_index,
              label_of=label_of, cache=cache)
