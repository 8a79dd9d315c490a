"""Reading a TFDS dataset prepared as array_record without TensorFlow: one split's
records with the image left encoded, and per-record columns scanned once and cached.

    builder, records = open_split(version_dir, 'train')
    columns = scan(records, version_dir, 'train', cache, 'imagenet-labels',
                   lambda r: (int(r['label']),), ('labels',))

array_record gives a field only by reading whole records, so a column over every record
(ImageNet's labels, CelebA's attributes) is one pass over the split; it is cached as .npz
in $SURGERY_CACHE_DIR, keyed by the version directory, the split and its shard files'
names, sizes and mtimes.
"""
import hashlib
import os
from typing import Callable, Sequence

import numpy as np

from surgery.data.common import DataNotFoundError, cache_dir, cached_arrays

_CACHE_VERSION = 1
_SCAN_CHUNK = 1024


def open_split(version_dir: str, tfds_split: str):
  """(builder, records) of `tfds_split`; a one-line DataNotFoundError if the directory
  is not a readable TFDS dataset or lacks the split."""
  import tensorflow_datasets as tfds  # only these layouts need it (0.4 s to import)
  try:
    builder = tfds.builder_from_directory(version_dir)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [''])[0][:200]
    raise DataNotFoundError(f'cannot read TFDS dataset at {version_dir} '
                            f'({type(e).__name__}: {reason})') from None
  if tfds_split not in builder.info.splits:
    raise DataNotFoundError(f'TFDS dataset at {version_dir} has no {tfds_split!r} split '
                            f'(has {", ".join(builder.info.splits)})')
  records = builder.as_data_source(split=tfds_split,
                                   decoders={'image': tfds.decode.SkipDecoding()})
  return builder, records


def scan(records, version_dir: str, tfds_split: str, cache, name: str,
         read: Callable[[dict], Sequence[int]], columns: Sequence[str]) -> dict:
  """{column: int64 array over every record}, `read(record)` giving one value per
  column; cached as `<name>-<key>.npz` unless `cache` is False."""
  def build():
    values = np.empty((len(records), len(columns)), np.int64)
    for start in range(0, len(records), _SCAN_CHUNK):
      keys = range(start, min(start + _SCAN_CHUNK, len(records)))
      values[start:keys.stop] = [tuple(read(r)) for r in records.__getitems__(keys)]
    return {c: values[:, i] for i, c in enumerate(columns)}

  if cache is False:
    return build()
  shards = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                  for e in os.scandir(version_dir) if f'-{tfds_split}.array_record-' in e.name)
  key = hashlib.sha256(f'{os.path.abspath(version_dir)}|{tfds_split}|{shards}|'
                       f'{_CACHE_VERSION}'.encode()).hexdigest()[:16]
  return cached_arrays(os.path.join(cache_dir(cache), f'{name}-{key}.npz'), build)
