"""RobustBench's WideResNet-28-10: torch equivalence, safe and strict loading, surgery.

The torch reference below is written here from the architecture's description (not
imported from RobustBench), so a shared misreading would have to be made twice.
"""
import builtins
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest

import surgery
from surgery import CheckpointError, models
from surgery.checkpoints import save_params
from surgery.groups import path_str
from surgery.models.wrn28_10 import torch_key
from tests.torch_refs import torch_or_skip

TINY = dict(depth=10, widen=1)


def _batch(seed=0, n=8):
  rng = np.random.RandomState(seed)
  return rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.randint(0, 10, n)


def _bits(array):
  return np.asarray(array).tobytes()


def _one_line(error):
  assert '\n' not in str(error.value), str(error.value)
  return str(error.value)


# ------------------------------------------------------------------- torch reference

def _torch_wrn(torch, depth, widen, num_classes=10):
  """The WideResNet as torch modules with RobustBench's names, random weights and
  randomised running statistics, in eval mode."""
  nn = torch.nn

  class Block(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1 = nn.BatchNorm2d(cin)
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.convShortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if cin != cout else None

    def forward(self, x):
      pre = torch.relu(self.bn1(x))
      out = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
      return (x if self.convShortcut is None else self.convShortcut(pre)) + out

  class Stage(nn.Module):

    def __init__(self, n, cin, cout, stride):
      super().__init__()
      self.layer = nn.Sequential(*[Block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                   for i in range(n)])

    def forward(self, x):
      return self.layer(x)

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      n, widths = (depth - 4) // 6, [16 * widen, 32 * widen, 64 * widen]
      self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
      self.block1 = Stage(n, 16, widths[0], 1)
      self.block2 = Stage(n, widths[0], widths[1], 2)
      self.block3 = Stage(n, widths[1], widths[2], 2)
      self.bn1 = nn.BatchNorm2d(widths[2])
      self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x):
      x = self.block3(self.block2(self.block1(self.conv1(x))))
      return self.fc(torch.nn.functional.avg_pool2d(torch.relu(self.bn1(x)), 8).flatten(1))

  torch.manual_seed(0)
  net = Net()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.3)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(7)
    net.fc.weight.normal_(0, 1)  # logits of order one, so the relative check has teeth
    net.fc.bias.normal_(0, 0.1)
  return net.eval()


def _save(torch, net, path, robustbench=False):
  state = net.state_dict()
  if robustbench:  # RobustBench nests a DataParallel state dict
    state = {'state_dict': {'module.' + k: v for k, v in state.items()}}
  torch.save(state, str(path))
  return str(path)


@pytest.mark.parametrize('depth,widen,robustbench', [
    (10, 2, False),  # every block has a convShortcut
    (10, 2, True),
    (16, 1, True),  # block1 and every second layer keep the identity residual
])
def test_logits_match_a_torch_reference(tmp_path, depth, widen, robustbench):
  torch = torch_or_skip()
  net = _torch_wrn(torch, depth, widen)
  path = _save(torch, net, tmp_path / 'ref.pt', robustbench)
  spec = models.create('wrn28_10', depth=depth, widen=widen)
  variables = spec.load(path)
  x = np.random.RandomState(1).rand(4, 32, 32, 3).astype(np.float32)
  ours = np.asarray(spec.module.apply(variables, x))
  with torch.no_grad():
    ref = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  diff, scale = np.abs(ours - ref).max(), np.abs(ref).max()
  print(f'depth {depth} widen {widen}: max |dlogit| {diff:.3g}, max |logit| {scale:.3g}')
  assert scale > 0.1 and diff <= 1e-5 * scale


def test_new_head_keeps_a_fresh_classifier_and_loads_the_rest(tmp_path):
  torch = torch_or_skip()
  net = _torch_wrn(torch, 10, 1, num_classes=100)
  path = _save(torch, net, tmp_path / 'c100.pt', robustbench=True)
  with pytest.raises(CheckpointError, match='100-class fc.*new_head=True') as e:
    models.create('wrn28_10', **TINY).load(path)
  _one_line(e)
  spec = models.create('wrn28_10', **TINY, new_head=True)
  variables = spec.load(path)
  fresh = spec.init()['params']['fc']
  for name in ('kernel', 'bias'):
    assert _bits(variables['params']['fc'][name]) == _bits(fresh[name])
  np.testing.assert_array_equal(variables['batch_stats']['bn1']['var'], net.bn1.running_var.numpy())
  np.testing.assert_array_equal(variables['params']['conv1']['kernel'],
                                net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))


# ------------------------------------------------------------------ unsafe and wrong files

class _Gadget:
  """Unpickles into a call that creates a file."""

  def __init__(self, call, arg):
    self.call, self.arg = call, arg

  def __reduce__(self):
    return (self.call, self.arg)


def _zip_pickle(path, obj):
  # The layout torch.save writes: <name>/data.pkl beside <name>/version.
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps(obj, protocol=2))
    z.writestr('archive/version', '3\n')
  return str(path)


@pytest.mark.parametrize('how', ['open', 'system'])
def test_code_in_a_checkpoint_never_runs(tmp_path, how):
  target = tmp_path / 'pwned'
  call = (builtins.open, (str(target), 'w')) if how == 'open' else (os.system, (f'touch {target}',))
  path = _zip_pickle(tmp_path / 'evil.pt', {'state_dict': {'conv1.weight': _Gadget(*call)}})
  refused = r'refused global ((io|builtins)\.open|(posix|os|nt)\.system)'
  with pytest.raises(CheckpointError, match=refused) as e:
    models.create('wrn28_10', **TINY).load(path)
  _one_line(e)
  assert not target.exists()
  # The payload is live: a plain unpickler does create the file.
  control = tmp_path / 'control'
  live = _zip_pickle(tmp_path / 'ctl.pt', _Gadget(builtins.open, (str(control), 'w')))
  with zipfile.ZipFile(live) as z:
    pickle.loads(z.read('archive/data.pkl')).close()
  assert control.exists()


@pytest.mark.parametrize('bad,match', [
    ('missing', r'missing block2\.layer\.0\.bn2\.running_var'),
    ('unexpected', r'unexpected block4\.layer\.0\.conv1\.weight'),
    ('shape', r'block3\.layer\.0\.convShortcut\.weight has shape \(64, 16, 1, 1\)'),
])
def test_state_dict_problems_are_one_named_error(tmp_path, bad, match):
  torch = torch_or_skip()
  state = _torch_wrn(torch, 10, 1).state_dict()
  if bad == 'missing':
    del state['block2.layer.0.bn2.running_var']
  elif bad == 'unexpected':
    state['block4.layer.0.conv1.weight'] = torch.zeros(3, 3)
  else:
    state['block3.layer.0.convShortcut.weight'] = torch.zeros(64, 16, 1, 1)
  torch.save(state, str(tmp_path / 'bad.pt'))
  with pytest.raises(CheckpointError, match=match) as e:
    models.create('wrn28_10', **TINY).load(str(tmp_path / 'bad.pt'))
  assert '(1 problem(s))' in _one_line(e)


def test_orbax_directory_round_trip(tmp_path):
  spec = models.create('wrn28_10', **TINY)
  variables = jax.tree_util.tree_map(lambda v: v + 0.25, spec.init(seed=3))
  loaded = spec.load(save_params(str(tmp_path / 'ckpt'), variables))
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(loaded)):
    assert _bits(a) == _bits(b)


# ----------------------------------------------------------------------- the model itself

def test_full_size_layout_is_robustbench_standard():
  spec = models.create('wrn28_10')
  shapes = jax.eval_shape(lambda: spec.init())
  leaves = jax.tree_util.tree_leaves_with_path(shapes)
  keys = {torch_key(path_str(p))[0]: s.shape for p, s in leaves}
  assert sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes['params'])) == 36_479_194
  assert len(keys) == 130  # the torch state dict less its 25 num_batches_tracked
  assert sorted(k for k in keys if 'convShortcut' in k) == [
      f'block{i}.layer.0.convShortcut.weight' for i in (1, 2, 3)]
  assert keys['block1.layer.0.convShortcut.weight'] == (1, 1, 16, 160)
  assert keys['block3.layer.3.conv2.weight'] == (3, 3, 640, 640)
  assert keys['fc.weight'] == (640, 10) and keys['bn1.running_mean'] == (640,)
  assert spec.module.bn_train_layers == ()
  assert spec.head_methods == ('last',) and spec.methods['block1'] == 'first_layer,block1'
  for method in spec.methods.values():  # every group is non-empty, every param grouped
    surgery.trainable_mask(shapes['params'], spec.groups, method)


@pytest.fixture(scope='module')
def tiny():
  spec = models.create('wrn28_10', **TINY)
  variables = spec.init()
  # Off the init values (0 and 1), so a statistic that moved and came back is caught;
  # a small mean keeps the ReLUs alive, so every tuned leaf gets a gradient.
  stats = jax.tree_util.tree_map(lambda s: s * 1.5 + 0.01, variables['batch_stats'])
  return spec, variables['params'], {'batch_stats': stats}


def _tx(spec, params, method):
  mask = surgery.trainable_mask(params, spec.groups, spec.methods[method])
  return surgery.surgical(surgery.base_optimizer('adam', 1e-2), mask), mask


def test_block1_tuning_leaves_frozen_leaves_and_statistics_bitwise(tiny):
  spec, params, model_state = tiny
  # A -0.0 among frozen weights: p + 0.0 would flip its sign bit.
  params = jax.tree_util.tree_map(np.array, params)
  params['block3']['layer0']['conv1']['kernel'][0, 0, 0, 0] = -0.0
  tx, mask = _tx(spec, params, 'block1')
  assert mask['conv1']['kernel'] and not mask['fc']['kernel']
  step = surgery.make_train_step(spec.module, tx)
  state = surgery.init_train_state(params, tx, model_state)
  for i in range(3):
    state, _ = step(state, *_batch(i))
  leaves = jax.tree_util.tree_leaves
  for (path, b), a, m in zip(jax.tree_util.tree_leaves_with_path(params), leaves(state.params),
                             leaves(mask)):
    assert (_bits(a) != _bits(b)) == bool(m), path_str(path)
  for a, b in zip(leaves(model_state), leaves(state.model_state)):
    assert _bits(a) == _bits(b)


def _step_flops(spec, params, model_state, method):
  tx, _ = _tx(spec, params, method)
  step = surgery.make_train_step(spec.module, tx)
  state = surgery.init_train_state(params, tx, model_state)
  cost = step.lower(state, *_batch()).compile().cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']


def test_tuning_the_head_skips_the_backward_pass(tiny):
  flops = {m: _step_flops(*tiny, m) for m in ('all', 'last')}
  print(f"step FLOPs: last {flops['last']:.3g}, all {flops['all']:.3g}")
  assert flops['last'] < 0.45 * flops['all']
