"""RobustBench's WideResNet-28-10: torch equivalence, safe and strict loading, surgery.

The torch reference (`experiments.bench.torch_reference.TorchWideResNet`, also the
benchmark's twin) is written from the architecture's description, independently of
the Flax model and not imported from RobustBench, so a shared misreading would have
to be made twice.
"""
import builtins
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest

import surgery
from surgery import CheckpointError, SurgeryError, models
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
  """The WideResNet as torch modules with RobustBench's names (the benchmark's twin),
  random weights and randomised running statistics, in eval mode."""
  from experiments.bench.torch_reference import TorchWideResNet
  nn = torch.nn
  torch.manual_seed(0)
  net = TorchWideResNet(depth, widen, num_classes)
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


# Torch modules each method tunes, from RobustBench's layout (the Flax groups' meaning).
TORCH_MODULES = {'all': [''], 'first_layer': ['conv1.'], 'block1': ['conv1.', 'block1.'],
                 'block2': ['block2.'], 'block3': ['block3.'], 'last': ['bn1.', 'fc.']}


def test_benchmark_twin_tunes_what_the_flax_mask_tunes():
  torch_or_skip()
  from experiments.bench.torch_reference import TorchWideResNet, from_spec, tuned_parameters
  spec = models.create('wrn28_10', depth=10, widen=2, num_classes=7)
  net = from_spec(spec)
  assert isinstance(net, TorchWideResNet) and not net.training
  params = jax.eval_shape(spec.init)['params']
  assert sum(p.numel() for p in net.parameters()) == surgery.count_params(params)
  for method, group_spec in spec.methods.items():
    mask = surgery.trainable_mask(params, spec.groups, group_spec)
    got = {id(p) for p in tuned_parameters(net, mask, spec)}
    want = {id(p) for name, p in net.named_parameters()
            if name.startswith(tuple(TORCH_MODULES[method]))}
    assert got == want, method


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


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32_logits(tiny):
  spec, params, model_state = tiny
  mixed = models.create('wrn28_10', dtype='bfloat16', **TINY)
  assert mixed.overrides['dtype'] == 'bfloat16' and 'dtype' not in spec.overrides
  variables = {'params': params, **model_state}
  images = _batch(0)[0].astype(np.float32) / 255
  exact = np.asarray(spec.module.apply(variables, images))
  logits = mixed.module.apply(variables, images)
  assert logits.dtype == np.float32
  # bfloat16 keeps 8 bits of mantissa: agreement to a few percent of the logit scale,
  # far from float32's 1e-5 but far closer than an unrelated network.
  print(f'wrn bf16: max |dlogit| {np.abs(np.asarray(logits) - exact).max():.3g}, '
        f'max |logit| {np.abs(exact).max():.3g}')
  assert np.abs(np.asarray(logits) - exact).max() <= 0.05 * np.abs(exact).max()
  assert not np.array_equal(np.asarray(logits), exact), 'bfloat16 did not change the compute'
  state = jax.eval_shape(mixed.init)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(state))
  with pytest.raises(SurgeryError, match='model.dtype'):
    models.create('wrn28_10', dtype='float16')
