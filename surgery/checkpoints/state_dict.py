"""Reading a researcher's PyTorch checkpoint as a flat {key: numpy array} state dict,
safely, and mapping it onto a Flax variables template all-or-nothing.

Formats read by `read_state_dict`:
  - zip pickles (`.pth`, `.pt`, `.bin`; torchvision, RobustBench, open_clip, Hugging
    Face) through the restricted unpickler of `torch_zip` (never `torch.load`);
  - `.safetensors` (no pickle at all);
  - OpenAI's TorchScript `.pt` archives are refused with one line saying how to convert.
Nesting is undone: a dict holding the state dict under 'state_dict', 'model', 'net' or
'model_state_dict' (RobustBench, training scripts), and 'module.' prefixes (DataParallel).
"""
import os
import re
import zipfile
from typing import Callable, Iterable, Optional

import jax
import numpy as np

from surgery.checkpoints.torch_zip import load_torch_zip
from surgery.errors import CheckpointError
from surgery.groups import path_str

_NESTED_KEYS = ('state_dict', 'model_state_dict', 'model', 'net')


def read_state_dict(path: str, prefix: str = '') -> dict:
  """{key: np.ndarray} from a checkpoint file; keys starting with `prefix` only, with
  the prefix removed (e.g. 'visual.' for a whole CLIP model)."""
  if not os.path.isfile(path):
    raise CheckpointError(f'checkpoint not found: {path}')
  if path.endswith('.safetensors'):
    state = _read_safetensors(path)
  else:
    if _is_torchscript(path):
      raise CheckpointError(
          f'{path} is a TorchScript archive, which cannot be read without running its '
          'code; convert it once with torch: torch.save(torch.jit.load(p).state_dict(), '
          "'state_dict.pth') and pass that file")
    state = _unnest(load_torch_zip(path), path)
  state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
  if prefix:
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not state:
      raise CheckpointError(f'{path} holds no key starting with {prefix!r}')
  return state


def _read_safetensors(path):
  try:
    from safetensors.numpy import load_file
  except ImportError:
    raise CheckpointError('reading .safetensors needs the safetensors package '
                          '(pip install safetensors)') from None
  try:
    return dict(load_file(path))
  except Exception as e:  # the package raises its own error types
    raise CheckpointError(f'cannot read {path} as safetensors: {e}') from None


def _is_torchscript(path):
  try:
    with zipfile.ZipFile(path) as z:
      return any(n.endswith('/constants.pkl') or n.endswith('/code/__torch__.py')
                 or '/code/__torch__/' in n for n in z.namelist())
  except zipfile.BadZipFile:
    return False


def _unnest(obj, path):
  for _ in range(3):
    if isinstance(obj, dict) and not _looks_like_state_dict(obj):
      inner = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
      if inner is None:
        break
      obj = inner
  if not isinstance(obj, dict) or not _looks_like_state_dict(obj):
    raise CheckpointError(f'{path} holds no state dict of arrays')
  return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def _looks_like_state_dict(obj):
  arrays = [v for v in obj.values() if isinstance(v, np.ndarray)]
  return bool(arrays) and len(arrays) >= len(obj) // 2


def torch_to_flax(array: np.ndarray, kind: str) -> np.ndarray:
  """A torch tensor in Flax layout: 'conv' OIHW -> HWIO, 'dense' (out, in) -> (in, out)."""
  if kind == 'conv':
    return array.transpose(2, 3, 1, 0)
  if kind == 'dense':
    return array.T
  return array


def convert(state: dict, template: dict, key_of: Callable[[str], tuple],
            source: str, model: str, ignore: Iterable[str] = (),
            new_head: Optional[Callable[[str], bool]] = None) -> dict:
  """Variables shaped like `template` from a flat torch state dict.

  `key_of(flax_path)` gives (torch key, kind) for each template leaf ('conv', 'dense',
  or '' for as-is). All-or-nothing: a missing or unexpected key or a wrong shape raises
  one CheckpointError listing the problems. `ignore` are regexes of torch keys to skip
  (e.g. num_batches_tracked). `new_head(flax_path)` marks leaves that keep their fresh
  initialisation (a new classifier) and whose checkpoint keys are not required.
  """
  problems, used = [], set()

  def leaf(path, init):
    name = path_str(path)
    key, kind = key_of(name)
    if new_head is not None and new_head(name):
      used.add(key)
      return init
    if key not in state:
      problems.append(f'missing {key}')
      return init
    used.add(key)
    value = torch_to_flax(np.asarray(state[key]), kind)
    if value.shape != tuple(init.shape):
      problems.append(f'{key} has shape {tuple(np.asarray(state[key]).shape)}, the model '
                      f'expects {tuple(init.shape)} in Flax layout')
      return init
    return np.asarray(value, dtype=np.asarray(init).dtype)

  out = jax.tree_util.tree_map_with_path(leaf, template)
  skip = [re.compile(rx) for rx in ignore]
  unexpected = sorted(k for k in set(state) - used if not any(rx.search(k) for rx in skip))
  problems += [f'unexpected {k}' for k in unexpected]
  if problems:
    raise CheckpointError(f'{source} does not fit {model}: {"; ".join(problems[:6])}'
                          f'{" ..." if len(problems) > 6 else ""} ({len(problems)} problem(s))')
  return out
