"""Checkpoint import (PyTorch zip, read safely) and the project's orbax checkpoints."""
import os

from surgery.checkpoints.resnet26_torch import (load_memo_params, load_memo_variables,
                                               state_dict_to_params)
from surgery.checkpoints.orbax_io import load_params as load_orbax_params
from surgery.checkpoints.orbax_io import save_params
from surgery.checkpoints.torch_zip import load_torch_zip
from surgery.errors import CheckpointError


def load_orbax_variables(path: str, template: dict) -> dict:
  """Variables shaped like `template` ({'params': ..., 'batch_stats': ...}) from an orbax
  directory saved by this project, in any of its layouts: bare params, {'params',
  'model_state'} (pre-training's output) or a variables dict. A model's `load` sends
  its own file formats elsewhere."""
  if not os.path.isdir(path):
    raise CheckpointError(f'checkpoint not found: {path}' if not os.path.exists(path)
                          else f'{path} is not an orbax checkpoint directory')
  params = template['params']
  collections = {k: v for k, v in template.items() if k != 'params'}
  layouts = [
      (template, lambda r: dict(r)),
      ({'params': params, 'model_state': collections}, lambda r: {'params': r['params'], **r['model_state']}),
  ]
  if not collections:
    layouts.append((params, lambda r: {'params': r}))
  first_error = None
  for layout, unpack in layouts:
    try:
      return unpack(load_orbax_params(path, layout))
    except CheckpointError as e:
      first_error = first_error or e
    except ValueError as e:  # orbax: same leaves, other tree structure; try the next
      first_error = first_error or CheckpointError(f'{path} does not fit the model: {e}')
  raise first_error
