"""What every data reader shares: where the data is (`$SURGERY_DATA_DIR`), the error for
data that is not there, and the .npz cache of decoded arrays (`$SURGERY_CACHE_DIR`)."""
import os
import warnings
from typing import Callable

import numpy as np

from surgery.errors import SurgeryError
from surgery.io import atomic_write

DATA_DIR_ENV = 'SURGERY_DATA_DIR'
CACHE_DIR_ENV = 'SURGERY_CACHE_DIR'


class DataNotFoundError(SurgeryError):
  """No copy of a dataset was found; the message says where we looked."""


def cache_dir(explicit=None):
  return os.path.abspath(os.path.expanduser(
      explicit or os.environ.get(CACHE_DIR_ENV) or os.path.join('~', '.cache', 'surgery')))


def save_npz_atomic(path, **arrays):
  """Write an .npz so that readers never see a partial file."""
  atomic_write(path, lambda f: np.savez(f, **arrays), mode='wb')


def cached_arrays(path, build: Callable[[], dict]):
  """The arrays stored at `path`, building and saving them first if absent."""
  if os.path.isfile(path):
    with np.load(path, allow_pickle=False) as stored:
      return {k: stored[k] for k in stored.files}
  arrays = build()
  try:
    save_npz_atomic(path, **arrays)
  except OSError as e:  # a read-only cache costs time, not correctness
    warnings.warn(f'could not write cache {path}: {e}')
  return arrays
