"""PyTorch twins of the models, used only as references in tests and benchmarks: our
ResNet-26 (the TTT/MEMO architecture), torchvision's ResNet-50, RobustBench's
`Standard` WideResNet (written here from its description) and open_clip's CLIP
visual tower with a linear classifier. Feed them contiguous NCHW tensors: torch
2.13's CPU GroupNorm backward segfaults on channels-last inputs that need no gradient.

Their parameters map one to one onto the Flax model's through the checkpoint
importers' names (`surgery.checkpoints.resnet26_torch.torch_name` for ResNet-26, each model
module's `torch_key` otherwise), so a Flax trainable mask says which torch parameters
to tune (`tuned_parameters`): no group is named here.
"""
import jax
import torch
from torch import nn

from surgery.checkpoints.resnet26_torch import torch_name
from surgery.groups import path_str


class _Shortcut(nn.Module):
  def __init__(self, c_in, c_out, stride):
    super().__init__()
    self.pool, self.extra = nn.AvgPool2d(stride), c_out - c_in

  def forward(self, x):
    x = self.pool(x)
    return torch.cat([x, x.new_zeros(x.shape[0], self.extra, *x.shape[2:])], 1)


class _Block(nn.Module):
  def __init__(self, c_in, c_out, stride, groups):
    super().__init__()
    self.bn1 = nn.GroupNorm(groups, c_in)
    self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    self.bn2 = nn.GroupNorm(groups, c_out)
    self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    self.shortcut = _Shortcut(c_in, c_out, stride) if (stride != 1 or c_in != c_out) else None

  def forward(self, x):
    h = self.conv1(torch.relu(self.bn1(x)))
    h = self.conv2(torch.relu(self.bn2(h)))
    return (x if self.shortcut is None else self.shortcut(x)) + h


class TorchResNet26(nn.Module):
  def __init__(self, num_classes=10, width=1, groups=8, depth=26):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    c_in, layers = 16, []
    for features, stride in ((16, 1), (32, 2), (64, 2)):
      blocks = []
      for i in range((depth - 2) // 6):
        blocks.append(_Block(c_in, features * width, stride if i == 0 else 1, groups))
        c_in = features * width
      layers.append(nn.Sequential(*blocks))
    self.layer1, self.layer2, self.layer3 = layers
    self.bn = nn.GroupNorm(groups, c_in)
    self.fc = nn.Linear(c_in, num_classes)

  def forward(self, x):
    """x: normalised NCHW float."""
    x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
    x = torch.relu(self.bn(x)).mean((2, 3))
    return self.fc(x)


class _WideBasicBlock(nn.Module):
  """Pre-activation bn1-relu1-conv1-bn2-relu2-conv2. Where the widths differ the
  shortcut is a 1x1 `convShortcut` of the pre-activated input, else the raw input."""

  def __init__(self, c_in, c_out, stride):
    super().__init__()
    self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
    self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    self.bn2, self.relu2 = nn.BatchNorm2d(c_out), nn.ReLU()
    self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    self.convShortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if c_in != c_out else None

  def forward(self, x):
    pre = self.relu1(self.bn1(x))
    out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
    return (x if self.convShortcut is None else self.convShortcut(pre)) + out


class _WideStage(nn.Module):
  """RobustBench's NetworkBlock: its blocks sit under `.layer`, hence 'block1.layer.0'."""

  def __init__(self, num_layers, c_in, c_out, stride):
    super().__init__()
    self.layer = nn.Sequential(*[_WideBasicBlock(c_in if i == 0 else c_out, c_out,
                                                 stride if i == 0 else 1)
                                 for i in range(num_layers)])

  def forward(self, x):
    return self.layer(x)


class TorchWideResNet(nn.Module):
  """RobustBench's `Standard` CIFAR WideResNet-depth-widen: conv1, block1..3, bn1, fc.
  Inputs are [0, 1] images (no normalisation), as the Flax model takes them."""

  def __init__(self, depth=28, widen=10, num_classes=10):
    super().__init__()
    n, widths = (depth - 4) // 6, [16 * widen, 32 * widen, 64 * widen]
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.block1 = _WideStage(n, 16, widths[0], 1)
    self.block2 = _WideStage(n, widths[0], widths[1], 2)
    self.block3 = _WideStage(n, widths[1], widths[2], 2)
    self.bn1, self.relu = nn.BatchNorm2d(widths[2]), nn.ReLU()
    self.fc = nn.Linear(widths[2], num_classes)

  def forward(self, x):
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    # RobustBench's avg_pool2d(8) is the global mean of the 8x8 maps of 32x32 inputs.
    return self.fc(self.relu(self.bn1(x)).mean((2, 3)))


def clip_classifier(cfg, num_classes, quick_gelu=True, device=None):
  """open_clip's `VisionTransformer` (OpenAI CLIP's visual tower, QuickGELU for OpenAI
  weights) with a linear classifier `head` on its projected embedding. The tower's
  parameters keep their visual state-dict names ('conv1.weight', 'transformer.
  resblocks.0.attn.in_proj_weight', 'proj'), as `surgery.models.clip_vit.torch_key`
  names them, beside 'head.weight' and 'head.bias'.

  Args:
    cfg: image_size, patch_size, width, layers, heads, embed_dim (clip_vit.VARIANTS).
    device: e.g. 'meta' for shapes only.

  Raises:
    ImportError: open_clip (or the torchvision it imports) is not installed.
  """
  import_torchvision()  # open_clip imports torchvision, which needs the op schemas first
  from open_clip.transformer import QuickGELU, VisionTransformer

  class CLIPClassifier(VisionTransformer):
    def __init__(self):
      super().__init__(
          image_size=cfg['image_size'], patch_size=cfg['patch_size'], width=cfg['width'],
          layers=cfg['layers'], heads=cfg['heads'], mlp_ratio=4.0,
          output_dim=cfg['embed_dim'], act_layer=QuickGELU if quick_gelu else nn.GELU)
      self.head = nn.Linear(cfg['embed_dim'], num_classes)

    def forward(self, x):
      """x: CLIP-normalised NCHW float."""
      return self.head(super().forward(x))

  with torch.device(device or 'cpu'):
    return CLIPClassifier()


def load_state_dict_numpy(model, state_dict):
  model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state_dict.items()})
  return model


def to_input(images, spec=None):
  """uint8 NHWC images -> the normalised, contiguous NCHW float tensor the net takes
  (the Flax model normalises inside, with its module's mean and std: 0.5 for ResNet-26,
  none for the WideResNet, which takes [0, 1] images)."""
  import numpy as np
  mean = np.asarray(getattr(spec.module, 'mean', 0.0) if spec is not None else 0.5, np.float32)
  std = np.asarray(getattr(spec.module, 'std', 1.0) if spec is not None else 0.5, np.float32)
  x = (np.asarray(images) / 255.0 - mean) / std
  return torch.from_numpy(np.ascontiguousarray(x.astype(np.float32).transpose(0, 3, 1, 2)))


def import_torchvision():
  """torchvision beside a CPU torch: PyPI's wheel is built for the CUDA torch, and its
  pure-Python models only need the two op schemas its meta registrations refer to."""
  import importlib
  import sys
  try:
    return importlib.import_module('torchvision')
  except RuntimeError:
    lib = torch.library.Library('torchvision', 'DEF')
    for op in ('nms', 'qnms'):
      lib.define(f'{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _KEEP.append(lib)
    for name in [m for m in sys.modules if m.split('.')[0] == 'torchvision']:
      del sys.modules[name]
    return importlib.import_module('torchvision')


_KEEP = []


def from_spec(spec):
  """The torch twin of a `surgery.models` spec (BatchNorm in eval mode, as the authors
  fine-tune), or None where there is none."""
  overrides = dict(spec.overrides)
  if spec.name == 'resnet26' and overrides.get('norm', 'group') == 'group':
    return TorchResNet26(num_classes=spec.num_classes, width=overrides.get('width', 1),
                         depth=overrides.get('depth', 26))
  if spec.name == 'resnet50' and overrides.get('width', 64) == 64 and tuple(
      overrides.get('stage_sizes', (3, 4, 6, 3))) == (3, 4, 6, 3):
    try:
      tv = import_torchvision()
    except ImportError:
      return None
    return tv.models.resnet50(weights=None, num_classes=spec.num_classes).eval()
  if spec.name == 'wrn28_10':
    return TorchWideResNet(overrides['depth'], overrides['widen'], spec.num_classes).eval()
  if spec.name.startswith('clip_vit_'):
    from surgery.models.clip_vit import VARIANTS
    cfg = {k: overrides[k] for k in VARIANTS[spec.name]}
    try:
      net = clip_classifier(cfg, spec.num_classes, overrides['quick_gelu'])
    except ImportError:
      return None
    return net.eval()  # no dropout either way; eval is what the Flax model computes
  return None


def _torch_name(spec, path):
  if spec is not None and spec.name != 'resnet26':
    from surgery import models
    return models.get_module(spec.name).torch_key('params/' + path)[0]
  return torch_name(path)


def tuned_parameters(net, mask, spec=None):
  """The parameters of `net` whose Flax twins `mask` (a Flax params-shaped pytree of
  bools) tunes, in `net.parameters()` order.

  Raises:
    ValueError: a tuned Flax parameter has no torch twin (the models disagree).
  """
  return [p for _, p in tuned_named_parameters(net, mask, spec)]


def tuned_named_parameters(net, mask, spec=None):
  """(Flax path, torch parameter) of each parameter `tuned_parameters` returns."""
  tuned = {_torch_name(spec, path_str(p)): path_str(p)
           for p, m in jax.tree_util.tree_leaves_with_path(mask) if m}
  named = dict(net.named_parameters())
  missing = sorted(set(tuned) - set(named))
  if missing:
    raise ValueError(f'no torch parameter for {missing[:4]}')
  return [(tuned[name], p) for name, p in named.items() if name in tuned]


def auto_rgn_twin(groups, paths, lr, steps_per_epoch, settings):
  """Auto-RGN in torch (`surgery.methods.auto_rgn` with `settings`), for the benchmark:
  `groups` are one-tensor Adam param groups, `paths` their Flax paths; the returned
  function, called after each backward, sets each group's lr to `lr` times the tensor's
  relative gradient norm, averaged over the first `window` steps of each refresh
  period and divided by the largest; norm tensors are left out (weight 0) when
  `exclude_norm`. Adam is not reset (`reset_inner` False, the default)."""
  from surgery.methods.auto_rgn import is_norm_tensor
  every = steps_per_epoch if settings['refresh'] == 'epoch' else 1
  window = min(int(settings['window']), every)
  keep = [not (settings['exclude_norm'] and is_norm_tensor(p)) for p in paths]
  state = {'count': 0, 'sums': torch.zeros(len(groups))}

  def after_backward():
    phase = state['count'] % every
    state['count'] += 1
    if phase >= window:
      return
    with torch.no_grad():
      rgn = torch.stack([g['params'][0].grad.norm() / g['params'][0].norm().clamp_min(1e-12)
                         for g in groups])
    state['sums'] = (state['sums'] if phase else 0) + rgn
    mean = [float(m) if k else 0.0 for m, k in zip(state['sums'] / (phase + 1), keep)]
    top = max(mean) or 1.0
    for g, m in zip(groups, mean):
      g['lr'] = lr * m / top

  return after_backward


# A wrapper method's torch twin, by method name (the benchmark's torch column).
METHOD_TWINS = {'auto_rgn': auto_rgn_twin}
