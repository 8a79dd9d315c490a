"""Import the MEMO / TTT CIFAR ResNet-26 state dict into `surgery.models.ResNet26` params."""
import re

import jax
import numpy as np

from surgery.checkpoints.torch_zip import load_torch_zip
from surgery.errors import CheckpointError
from surgery.groups import path_str


def torch_name(flax_path: str) -> str:
  """'stage2/block3/norm1/scale' -> 'layer2.3.bn1.weight' (the torch state-dict key)."""
  name = flax_path
  name = re.sub(r'^stem/kernel$', 'conv1.weight', name)
  name = re.sub(r'^stage(\d)/block(\d+)/', r'layer\1.\2.', name)
  name = name.replace('final_norm/', 'bn.').replace('head/', 'fc.')
  name = re.sub(r'norm(\d)/', r'bn\1.', name)
  name = name.replace('/', '.')
  name = re.sub(r'\.(kernel|scale)$', '.weight', name)
  return name


def _to_flax(array: np.ndarray, leaf: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # conv OIHW -> HWIO
    array = array.transpose(2, 3, 1, 0)
  elif array.ndim == 2:  # linear (out, in) -> (in, out)
    array = array.T
  return np.asarray(array, dtype=leaf.dtype)


def state_dict_to_params(state_dict: dict, template: dict, source: str = 'state dict') -> dict:
  """Maps a torch ResNet-26 state dict onto a params pytree shaped like `template`.

  All-or-nothing: a missing or unexpected key or a wrong shape raises CheckpointError
  listing the problems, and no partially filled pytree is ever returned.
  """
  problems, used = [], set()

  def convert(path, leaf):
    key = torch_name(path_str(path))
    if key not in state_dict:
      problems.append(f'missing {key}')
      return leaf
    used.add(key)
    value = np.asarray(state_dict[key])
    value = _to_flax(value, np.asarray(leaf))
    if value.shape != leaf.shape:
      problems.append(f'{key} has shape {tuple(np.asarray(state_dict[key]).shape)}, '
                      f'model expects {tuple(leaf.shape)} (flax layout)')
    return value

  params = jax.tree_util.tree_map_with_path(convert, template)
  ignorable = {k for k in state_dict if k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))}
  unexpected = sorted(set(state_dict) - used - ignorable)
  problems += [f'unexpected {k}' for k in unexpected]
  if problems:
    raise CheckpointError(f'{source} does not fit ResNet26: {"; ".join(problems[:6])}'
                          f'{" ..." if len(problems) > 6 else ""} ({len(problems)} problem(s))')
  return params


def _stats_name(flax_path: str) -> str:
  """'stage1/block0/norm1/mean' -> 'layer1.0.bn1.running_mean'."""
  layer, stat = flax_path.rsplit('/', 1)
  return torch_name(layer + '/x').rsplit('.', 1)[0] + '.running_' + stat


def state_dict_to_batch_stats(state_dict: dict, template: dict, source: str) -> dict:
  """BatchNorm running statistics (`running_mean`/`running_var`) for a BN ResNet-26."""
  missing = []

  def convert(path, leaf):
    key = _stats_name(path_str(path))
    if key not in state_dict:
      missing.append(key)
      return leaf
    value = np.asarray(state_dict[key], dtype=np.asarray(leaf).dtype)
    if value.shape != leaf.shape:
      missing.append(f'{key} (shape {value.shape}, expected {leaf.shape})')
    return value

  stats = jax.tree_util.tree_map_with_path(convert, template)
  if missing:
    raise CheckpointError(f'{source} lacks BatchNorm statistics: {", ".join(missing[:4])}'
                          f'{" ..." if len(missing) > 4 else ""}')
  return stats


def load_memo_variables(path: str, template: dict) -> dict:
  """Variables (params, plus batch_stats for a BatchNorm model) from a MEMO/TTT file."""
  state_dict = _read_state_dict(path)
  out = {'params': state_dict_to_params(state_dict, template['params'], source=path)}
  if 'batch_stats' in template:
    out['batch_stats'] = state_dict_to_batch_stats(state_dict, template['batch_stats'], path)
  return out


def _read_state_dict(path: str) -> dict:
  obj = load_torch_zip(path)
  state_dict = obj.get('net', obj) if isinstance(obj, dict) else None
  if not isinstance(state_dict, dict):
    raise CheckpointError(f'{path} holds no state dict')
  return {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}


def load_memo_params(path: str, template: dict) -> dict:
  """Params for `ResNet26()` from the MEMO checkpoint (`net` holds the state dict)."""
  return state_dict_to_params(_read_state_dict(path), template, source=path)
