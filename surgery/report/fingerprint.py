"""Fingerprints: a short stable hash of the config fields that make a run's result,
stored in every row, so that a workdir resumes only under the settings that made it."""
import hashlib
import json
from collections.abc import Mapping

def plain(value):
  """`value` with mappings as dicts (str keys) and sequences as lists, for JSON."""
  if isinstance(value, Mapping):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  return value


def _canonical(value):
  # default=str so a path or enum hashes by its text instead of failing.
  return json.dumps(plain(value), sort_keys=True, separators=(',', ':'), default=str)


def fingerprint(fields: dict) -> str:
  """A short stable hash of `fields`: the first 12 hex digits of the SHA-256 of its
  canonical JSON (sorted keys, tuples as lists), equal across processes and runs."""
  return hashlib.sha256(_canonical(fields).encode('utf-8')).hexdigest()[:12]


def _flatten(value, prefix=''):
  if isinstance(value, Mapping) and value:
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
    return out
  return {prefix: value}


def diff_fields(old: dict, new: dict) -> list:
  """Sorted dotted names of the fields (nested dicts flattened) whose values differ
  between `old` and `new`, including fields present in only one of them.

  Values are compared as `fingerprint` hashes them (canonical JSON), so two dicts
  with equal fingerprints have no differing fields and vice versa.
  """
  a, b = _flatten(plain(old)), _flatten(plain(new))
  return sorted(k for k in set(a) | set(b)
                if k not in a or k not in b or _canonical(a[k]) != _canonical(b[k]))
