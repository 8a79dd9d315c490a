"""Atomic file writes (readers, and an interrupted run, never see a partial file) and
content digests."""
import hashlib
import json
import os
import tempfile


def atomic_write(path: str, data, mode: str = 'w') -> None:
  """Writes `data` (str/bytes, or a callable given the open file) to `path` via a
  temp file in the same directory and `os.replace`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.')
  try:
    with os.fdopen(fd, mode) as f:
      if callable(data):
        data(f)
      else:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results and caches may be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def content_sha256(path: str, cache_file: str = '') -> str:
  """The SHA-256 (hex) of a file's bytes, or of a directory's files (relative paths and
  bytes, in sorted order), so that a checkpoint is known by what it holds, wherever it
  lies. With `cache_file`, digests are remembered by real path, size and mtime: a
  CLIP checkpoint is read once, not at every start."""
  real = os.path.realpath(path)
  files = ([real] if os.path.isfile(real) else
           sorted(os.path.join(d, n) for d, _, names in os.walk(real) for n in names))
  # Names, sizes and mtimes: a file rewritten or renamed misses the cache.
  listing = [(os.path.relpath(f, real), st.st_size, st.st_mtime_ns)
             for f, st in ((f, os.stat(f)) for f in files)]
  stamp = hashlib.sha256(repr(listing).encode()).hexdigest()
  cache = _read_json(cache_file) if cache_file else {}
  hit = cache.get(real)
  if hit and hit.get('stamp') == stamp:
    return hit['sha256']
  digest = hashlib.sha256()
  for f in files:
    if f != real:  # a directory: its layout counts too
      digest.update(os.path.relpath(f, real).encode() + b'\0')
    with open(f, 'rb') as fh:
      for chunk in iter(lambda: fh.read(1 << 20), b''):
        digest.update(chunk)
  sha = digest.hexdigest()
  if cache_file:
    cache[real] = {'stamp': stamp, 'sha256': sha}
    try:
      atomic_write(cache_file, json.dumps(cache, indent=1, sort_keys=True))
    except OSError:  # a read-only cache costs time, not correctness
      pass
  return sha


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      value = json.load(f)
    return value if isinstance(value, dict) else {}
  except (OSError, ValueError):
    return {}
