"""ResNet-26's torch names (`torch_name`) and the MEMO / TTT `.pth` reader: the CIFAR
ResNet-26 state dict into `surgery.models.resnet26` variables."""
import re

from surgery.checkpoints.state_dict import convert, read_state_dict


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


def _stats_name(flax_path: str) -> str:
  """'stage1/block0/norm1/mean' -> 'layer1.0.bn1.running_mean'."""
  layer, stat = flax_path.rsplit('/', 1)
  return torch_name(layer + '/x').rsplit('.', 1)[0] + '.running_' + stat


def _key_of(path: str) -> tuple:
  """(torch key, layout kind) of a variables path ('params/...' or 'batch_stats/...')."""
  collection, _, rest = path.partition('/')
  if collection == 'batch_stats':
    return _stats_name(rest), ''
  if rest.endswith('/kernel'):
    return torch_name(rest), 'dense' if rest.startswith('head/') else 'conv'
  return torch_name(rest), ''


def state_dict_to_variables(state_dict: dict, template: dict, source: str = 'state dict') -> dict:
  """Maps a torch ResNet-26 state dict onto variables shaped like `template` ({'params'},
  plus 'batch_stats' for a BatchNorm model). All-or-nothing (`convert`): a missing or
  unexpected key or a wrong shape raises one CheckpointError listing the problems.
  A GroupNorm model ignores running statistics the file may hold."""
  ignore = [r'\.num_batches_tracked$']
  if 'batch_stats' not in template:
    ignore.append(r'\.running_(mean|var)$')
  return convert(state_dict, template, _key_of, source, 'ResNet26', ignore=ignore)


def state_dict_to_params(state_dict: dict, template: dict, source: str = 'state dict') -> dict:
  """Params for a params-shaped `template` (see `state_dict_to_variables`)."""
  return state_dict_to_variables(state_dict, {'params': template}, source)['params']


def load_memo_variables(path: str, template: dict) -> dict:
  """Variables (params, plus batch_stats for a BatchNorm model) from a MEMO/TTT file."""
  return state_dict_to_variables(read_state_dict(path), template, source=path)


def load_memo_params(path: str, template: dict) -> dict:
  """Params for `ResNet26()` from the MEMO checkpoint (`net` holds the state dict)."""
  return state_dict_to_params(read_state_dict(path), template, source=path)
