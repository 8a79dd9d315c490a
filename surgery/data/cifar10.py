"""CIFAR-10 as uint8 arrays, from whichever copy is at hand.

    images, labels = load_cifar10('test')          # [10000, 32, 32, 3] uint8, [10000] int32

Where it looks, in order: the `data_dir` argument, else `$SURGERY_DATA_DIR`; in that
directory an image-folder tree `cifar10/{train,test}/<class>/*` (class folders in
sorted order = label) or the official `cifar-10-batches-py/` (or the directory itself
being either). With neither given it falls back to TFDS `cifar10`. Decoding the 60k
JPEGs of a folder tree takes seconds, so the arrays are cached as .npz in
`$SURGERY_CACHE_DIR` (default ~/.cache/surgery), keyed by the folder's path, file
count and newest mtime.
"""
import codecs
import concurrent.futures
import dataclasses
import hashlib
import importlib
import os
import pickle
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from surgery.data.common import (DATA_DIR_ENV, DataNotFoundError, cache_dir,  # noqa: F401
                                 cached_arrays)
from surgery.errors import SurgeryError

CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
           'truck')
SPLITS = ('train', 'test')
IMAGE_SHAPE = (32, 32, 3)
FOLDER_NAME = 'cifar10'
BATCHES_NAME = 'cifar-10-batches-py'
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.webp')
_BATCH_FILES = {'train': tuple(f'data_batch_{i}' for i in range(1, 6)), 'test': ('test_batch',)}
_CACHE_VERSION = 1  # bump when the cached arrays' meaning changes


# --------------------------------------------------------------- image folders

def _list_image_folder(split_dir):
  """([(path, label)], fingerprint) of a `<class>/<image>` tree; classes in sorted order.

  The fingerprint (file count and newest mtime) costs one stat per file, about 0.1 s
  for 50k files, against seconds to decode them.
  """
  classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
  items, newest = [], os.stat(split_dir).st_mtime_ns
  for label, name in enumerate(classes):
    with os.scandir(os.path.join(split_dir, name)) as entries:
      files = [e for e in entries if e.name.lower().endswith(_IMAGE_SUFFIXES)]
    newest = max([newest] + [e.stat().st_mtime_ns for e in files])
    items.extend((path, label) for path in sorted(e.path for e in files))
  return items, f'{len(items)}:{newest}'


def _decode_into(out, paths, start):
  for i, path in enumerate(paths):
    with Image.open(path) as image:
      array = np.asarray(image.convert('RGB'))
    if array.shape != IMAGE_SHAPE:
      raise SurgeryError(f'{path} is {array.shape[1]}x{array.shape[0]}, expected 32x32 RGB')
    out[start + i] = array


def decode_images(paths, workers=None):
  """Decode image files into one uint8 [N, 32, 32, 3] array, a few threads at a time.

  Pillow releases the GIL while decoding, but for 32x32 images the Python overhead
  dominates, so threads gain less than the core count (2 cores: 10k JPEGs in 2.6 s
  with one thread, 1.0 s with four). PIL's draft mode cannot help: it only speeds up
  decoding to a reduced size.
  """
  out = np.empty((len(paths),) + IMAGE_SHAPE, np.uint8)
  workers = workers or min(8, 2 * (os.cpu_count() or 1))
  chunk = max(1, -(-len(paths) // (workers * 8)))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    jobs = [pool.submit(_decode_into, out, paths[s:s + chunk], s)
            for s in range(0, len(paths), chunk)]
    for job in jobs:
      job.result()
  return out


def read_image_folder(root, split, cache=None):
  """(images, labels) of `root/<split>/<class>/*`, through the .npz cache."""
  split_dir = os.path.join(root, split)
  items, fingerprint = _list_image_folder(split_dir)
  if not items:
    raise DataNotFoundError(f'no images under {split_dir}/<class>/')
  key = hashlib.sha256(
      f'{os.path.abspath(split_dir)}|{fingerprint}|{_CACHE_VERSION}'.encode()).hexdigest()[:16]

  def build():
    return {'images': decode_images([p for p, _ in items]),
            'labels': np.array([label for _, label in items], np.int32)}

  if cache is False:
    arrays = build()
  else:
    arrays = cached_arrays(os.path.join(cache_dir(cache), f'cifar10-{split}-{key}.npz'), build)
  return arrays['images'], arrays['labels']


# ------------------------------------------------------ official python batches

def _numpy_internal(module, name):
  try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles name the former
    return getattr(importlib.import_module(f'numpy._core.{module}'), name)
  except ImportError:
    return getattr(importlib.import_module(f'numpy.core.{module}'), name)


# Everything a pickled dict of numpy arrays refers to, and nothing else.
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): lambda: _numpy_internal('multiarray',
                                                                       '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'): lambda: _numpy_internal('multiarray',
                                                                        '_reconstruct'),
    ('numpy.core.numeric', '_frombuffer'): lambda: _numpy_internal('numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'): lambda: _numpy_internal('numeric', '_frombuffer'),
    ('numpy', 'ndarray'): lambda: np.ndarray,
    ('numpy', 'dtype'): lambda: np.dtype,
    # Python 3 writes bytes under protocol 2 as _codecs.encode(str, 'latin1').
    ('_codecs', 'encode'): lambda: codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles the CIFAR python batches and nothing else.

  A pickle can name any importable callable (os.system, ...) and have it called; this
  one resolves only the numpy globals that a dict of arrays needs. Python 2 pickles
  keep their byte strings as bytes (pass encoding='bytes').
  """

  def find_class(self, module, name):
    resolve = _ALLOWED_GLOBALS.get((module, name))
    if resolve is None:
      raise pickle.UnpicklingError(f'refusing to unpickle {module}.{name}: CIFAR batch '
                                   'files may only hold numpy arrays')
    return resolve()


def _field(batch, name):
  value = batch.get(name.encode(), batch.get(name))
  if value is None:
    raise SurgeryError(f'CIFAR batch has no {name!r} entry')
  return value


def read_batch_file(path):
  """(images [N, 32, 32, 3] uint8, labels [N] int32) of one python batch file."""
  with open(path, 'rb') as f:
    batch = RestrictedUnpickler(f, encoding='bytes').load()
  if not isinstance(batch, dict):
    raise SurgeryError(f'{path} is not a CIFAR batch (a dict)')
  data = np.asarray(_field(batch, 'data'))
  labels = np.asarray(_field(batch, 'labels'), dtype=np.int32)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape != (len(labels), 3 * 32 * 32):
    raise SurgeryError(f'{path}: data is {data.dtype} {data.shape}, expected uint8 '
                       f'[{len(labels)}, 3072]')
  # Rows are channel-planar (1024 red, 1024 green, 1024 blue).
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def read_batches(root, split):
  parts = [read_batch_file(os.path.join(root, name)) for name in _BATCH_FILES[split]]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ------------------------------------------------------------------------ TFDS

def tfds_arrays(name, split, data_dir=None):
  """(images, labels) of a TFDS image dataset, prepared in array_record format if needed.

  TFDS is imported lazily; any failure (not installed, no network, no TensorFlow for
  the preparation step) becomes a DataNotFoundError.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataNotFoundError(f'TFDS {name} unavailable: tensorflow_datasets is not '
                            'installed') from None
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
    if not builder.is_prepared():
      builder.download_and_prepare()
    source = builder.as_data_source(split=split)
    examples = [source[i] for i in range(len(source))]
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [''])[0][:200]
    raise DataNotFoundError(f'TFDS could not provide {name} ({type(e).__name__}: '
                            f'{reason})') from None
  images = np.stack([np.asarray(ex['image'], np.uint8) for ex in examples])
  labels = np.array([int(ex['label']) for ex in examples], np.int32)
  return images, labels


# --------------------------------------------------------------------- locating

@dataclasses.dataclass(frozen=True)
class Source:
  """One copy of CIFAR-10: its kind ('folder', 'batches', 'tfds') and location."""
  kind: str
  path: Optional[str]

  def load(self, split, cache=None):
    if self.kind == 'folder':
      return read_image_folder(self.path, split, cache)
    if self.kind == 'batches':
      return read_batches(self.path, split)
    return tfds_arrays('cifar10', split, self.path)


def _is_folder_tree(path, split):
  split_dir = os.path.join(path, split)
  return os.path.isdir(split_dir) and any(e.is_dir() for e in os.scandir(split_dir))


def _is_batches(path, split):
  return all(os.path.isfile(os.path.join(path, f)) for f in _BATCH_FILES[split])


def data_root(data_dir=None):
  """The directory to search: `data_dir`, else $SURGERY_DATA_DIR, else None."""
  root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
  return os.path.abspath(os.path.expanduser(str(root))) if root else None


def locate_cifar10(split, data_dir=None) -> Source:
  """Where CIFAR-10's `split` will be read from; DataNotFoundError if nowhere."""
  if split not in SPLITS:
    raise SurgeryError(f'unknown CIFAR-10 split {split!r}; valid: {", ".join(SPLITS)}')
  root = data_root(data_dir)
  if root is None:
    return Source('tfds', None)
  folder, batches = os.path.join(root, FOLDER_NAME), os.path.join(root, BATCHES_NAME)
  for path, kind in ((folder, 'folder'), (batches, 'batches'), (root, 'folder'),
                     (root, 'batches')):
    found = _is_folder_tree if kind == 'folder' else _is_batches
    if found(path, split):
      return Source(kind, path)
  origin = 'data_dir' if data_dir is not None else f'${DATA_DIR_ENV}'
  raise DataNotFoundError(
      f'CIFAR-10 {split} not found under {root} (from {origin}): looked for '
      f'{folder}/{split}/<class>/*.jpg, {batches}/{_BATCH_FILES[split][0]} and the same '
      f'directly in {root}; put the image-folder tree or the official python batches there')


def load_cifar10(split, data_dir=None, cache=None) -> Tuple[np.ndarray, np.ndarray]:
  """CIFAR-10 `split` ('train' or 'test') as (uint8 [N, 32, 32, 3], int32 [N]).

  `cache`: a cache directory, None for the default, False to skip the cache.
  """
  source = locate_cifar10(split, data_dir)
  try:
    return source.load(split, cache)
  except DataNotFoundError as e:
    if source.kind != 'tfds':
      raise
    raise DataNotFoundError(
        f'CIFAR-10 not found: no data_dir given and ${DATA_DIR_ENV} is unset, and {e}; set '
        f'{DATA_DIR_ENV} to a directory holding {FOLDER_NAME}/{{train,test}}/<class>/*.jpg '
        f'or {BATCHES_NAME}/') from None
