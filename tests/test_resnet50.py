"""ResNet-50: logits against torchvision, checkpoint import (torchvision, RobustBench,
orbax, hostile files), and surgical fine-tuning on a tiny model of the same shape."""
import collections
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import surgery
from surgery import CheckpointError, SurgeryError, models
from surgery.checkpoints import save_params
from surgery.groups import path_str
from surgery.models import resnet50
from surgery.models.batchnorm import tuned_norm_layers
from tests.torch_refs import torch_or_skip, torchvision_or_skip

TINY = dict(width=8, stage_sizes=(1, 1, 1, 1))
MEAN = np.asarray(resnet50.IMAGENET_MEAN, np.float32)
STD = np.asarray(resnet50.IMAGENET_STD, np.float32)


def _images(seed, n, size):
  return np.random.RandomState(seed).rand(n, size, size, 3).astype(np.float32)


def _random_variables(spec, seed=0):
  """Random variables shaped like `spec`'s, without compiling an init: He-scaled
  kernels, and BatchNorm affine terms and statistics away from their init values
  (0, 1), so a statistic read into the wrong slot, or moved and put back, would show."""
  rng = np.random.RandomState(seed)
  shapes = jax.eval_shape(spec.module.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))

  def draw(path, s):
    leaf = path_str(path).rsplit('/', 1)[1]
    if leaf == 'kernel':
      return rng.randn(*s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))
    low, high = (0.5, 1.5) if leaf in ('scale', 'var') else (-0.2, 0.2)
    return rng.uniform(low, high, s.shape)

  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32),
                                jax.tree_util.tree_map_with_path(draw, dict(shapes)))


def _leaves(variables):
  return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(variables)}


# ------------------------------------------------------------------ torchvision reference

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """torchvision's resnet50 with random weights and BatchNorm statistics, saved as a
  plain state dict, and the Flax model's jitted forward."""
  torch = torch_or_skip()
  tv = torchvision_or_skip()
  torch.manual_seed(0)
  net = tv.models.resnet50(weights=None).eval()
  with torch.no_grad():
    # Away from init (0, 1), so a statistic read into the wrong slot would show.
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.3, 0.3)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.3, 0.3)
  path = tmp_path_factory.mktemp('r50') / 'r50.pth'
  torch.save(net.state_dict(), path)
  spec = models.create('resnet50')
  return torch, net, str(path), spec, jax.jit(spec.module.apply)


def _torch_logits(torch, net, images, normalise=True):
  x = (images - MEAN) / STD if normalise else images
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def _assert_close(got, want, label):
  err, scale = float(np.max(np.abs(got - want))), float(np.max(np.abs(want)))
  print(f'\n{label}: max |dlogit| = {err:.3g}, max |logit| = {scale:.3g}, '
        f'ratio = {err / scale:.3g}')
  assert err <= 1e-5 * scale


def test_torchvision_state_dict_logits_match(reference):
  torch, net, path, spec, apply = reference
  variables = spec.load(path)
  images = _images(0, 2, 64)
  _assert_close(np.asarray(apply(variables, images)), _torch_logits(torch, net, images),
                'torchvision resnet50')


def _image_normalizer(torch, mean, std):
  """RobustBench's ImageNormalizer: buffers `mean` and `std` shaped 1x3x1x1."""

  class ImageNormalizer(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.register_buffer('mean', torch.tensor(mean).view(1, 3, 1, 1))
      self.register_buffer('std', torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
      return (x - self.mean) / self.std

  return ImageNormalizer()


def _robustbench_model(torch, net, mean=tuple(MEAN), std=tuple(STD)):
  # RobustBench's normalize_model: Sequential(normalize=..., model=net).
  return torch.nn.Sequential(collections.OrderedDict(
      normalize=_image_normalizer(torch, mean, std), model=net)).eval()


@pytest.mark.parametrize('layout', ['nested_dataparallel', 'flat'])
def test_robustbench_checkpoint_logits_match(reference, tmp_path, layout):
  # RobustBench's load_model takes checkpoint['state_dict'] if present, strips
  # 'module.' and 'model.', and loads into the normalize_model wrapper.
  torch, net, _, spec, apply = reference
  wrapped = _robustbench_model(torch, net)
  state = wrapped.state_dict()
  if layout == 'nested_dataparallel':
    state = {'state_dict': {'module.' + k: v for k, v in state.items()}, 'epoch': 90}
  path = tmp_path / 'rb.pt'
  torch.save(state, path)
  images = _images(1, 2, 64)
  # The wrapper normalises, so torch gets the raw [0, 1] images, as Flax does.
  _assert_close(np.asarray(apply(spec.load(str(path)), images)),
                _torch_logits(torch, wrapped, images, normalise=False), f'RobustBench {layout}')


def test_robustbench_normaliser_with_other_statistics_is_refused(tmp_path):
  torch = torch_or_skip()
  spec = models.create('resnet50', **TINY)
  state = {'model.' + k: v for k, v in _torch_state(torch, _random_variables(spec)).items()}
  state['normalize.mean'] = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
  state['normalize.std'] = torch.tensor(STD).view(1, 3, 1, 1)
  torch.save({'state_dict': state}, tmp_path / 'rb.pt')
  with pytest.raises(CheckpointError, match='normalize.mean is'):
    spec.load(str(tmp_path / 'rb.pt'))


# ------------------------------------------------------------------------ hostile files

class _RunsCommand:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f'touch {self.target}',))


class _OpensFile:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (open, (self.target, 'w'))


@pytest.mark.parametrize('payload', [_RunsCommand, _OpensFile])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, payload):
  target = tmp_path / 'pwned'
  evil = {'state_dict': collections.OrderedDict(
      [('conv1.weight', np.zeros(3, np.float32)), ('bn1.weight', payload(str(target)))])}
  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps(evil, protocol=2))
    z.writestr('archive/version', '3\n')
  with pytest.raises(CheckpointError, match='refused global') as info:
    models.create('resnet50', **TINY).load(str(path))
  assert '\n' not in str(info.value)
  assert not target.exists()


# --------------------------------------------------------------- state-dict mismatches

def _torch_state(torch, variables):
  """A torchvision-style state dict of `variables` (the inverse of the import)."""
  state = {}
  for path, value in _leaves(variables).items():
    key, kind = resnet50.torch_key(path)
    if kind == 'conv':
      value = value.transpose(3, 2, 0, 1)
    elif kind == 'dense':
      value = value.T
    state[key] = torch.from_numpy(np.array(value))  # a writable copy
    if key.endswith('running_var'):  # torch's BatchNorm2d buffer, not a Flax variable
      state[key.replace('running_var', 'num_batches_tracked')] = torch.tensor(100)
  return state


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  """A tiny 1000-class model's random variables and their torch state dict file."""
  torch = torch_or_skip()
  variables = _random_variables(models.create('resnet50', **TINY), seed=3)
  path = tmp_path_factory.mktemp('tiny') / 'tiny.pth'
  torch.save(_torch_state(torch, variables), path)
  return torch, variables, str(path)


def test_tiny_round_trip_is_exact(tiny_checkpoint):
  _, variables, path = tiny_checkpoint
  loaded = models.create('resnet50', **TINY).load(path)
  want = _leaves(variables)
  got = _leaves(loaded)
  assert set(got) == set(want)
  for k in want:
    assert got[k].tobytes() == want[k].tobytes(), k


@pytest.mark.parametrize('bad', ['missing', 'unexpected', 'shape'])
def test_state_dict_problems_are_named_in_one_line(tiny_checkpoint, tmp_path, bad):
  torch, variables, _ = tiny_checkpoint
  state = _torch_state(torch, variables)
  if bad == 'missing':
    del state['layer2.0.conv1.weight']
    match = 'missing layer2.0.conv1.weight'
  elif bad == 'unexpected':
    state['layer5.0.conv1.weight'] = torch.zeros(3, 3)
    match = 'unexpected layer5.0.conv1.weight'
  else:
    state['layer3.0.bn2.running_var'] = torch.ones(7)
    match = r'layer3.0.bn2.running_var has shape \(7,\)'
  torch.save(state, tmp_path / 'bad.pth')
  with pytest.raises(CheckpointError, match=match) as info:
    models.create('resnet50', **TINY).load(str(tmp_path / 'bad.pth'))
  assert '\n' not in str(info.value) and '1 problem(s)' in str(info.value)


def test_other_head_size_needs_new_head(tiny_checkpoint):
  _, _, path = tiny_checkpoint
  with pytest.raises(CheckpointError, match=r'fc.weight has shape \(1000, 256\)'):
    models.create('resnet50', num_classes=10, **TINY).load(path)


def test_new_head_keeps_a_fresh_classifier(tiny_checkpoint):
  _, variables, path = tiny_checkpoint
  spec = models.create('resnet50', num_classes=10, new_head=True, **TINY)
  got = _leaves(spec.load(path))
  want = _leaves(variables)
  for k in want:
    if not k.startswith('params/fc/'):
      assert got[k].tobytes() == want[k].tobytes(), k
  # The head spec.init() (seed 0) gives; parameters do not depend on the image
  # size, so a jitted init on small images stands in for it.
  fresh = jax.jit(spec.module.init)(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
  assert got['params/fc/kernel'].shape == (256, 10)
  for k, v in _leaves(fresh['params']['fc']).items():
    assert got[f'params/fc/{k}'].tobytes() == v.tobytes(), k


def test_orbax_directory_round_trip(tiny_checkpoint, tmp_path):
  _, variables, _ = tiny_checkpoint
  path = save_params(str(tmp_path / 'ckpt'), variables)
  got = _leaves(models.create('resnet50', **TINY).load(path))
  want = _leaves(variables)
  assert all(got[k].tobytes() == want[k].tobytes() for k in want) and set(got) == set(want)


# --------------------------------------------------------------------- surgical tuning

def test_default_layout_has_torchvision_parameter_count():
  spec = models.create('resnet50')
  shapes = jax.eval_shape(spec.module.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  assert sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes['params'])) == 25557032
  # Every method resolves and every parameter falls in a group.
  for method in spec.methods.values():
    surgery.trainable_mask(shapes['params'], spec.groups, method)


@pytest.fixture(scope='module')
def tiny():
  spec = models.create('resnet50', num_classes=10, **TINY)
  variables = _random_variables(spec)
  return spec, variables['params'], {'batch_stats': variables['batch_stats']}


def _batch(seed, n=8):
  rng = np.random.RandomState(seed)
  return rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.randint(0, 10, n)


def _compiled_step(tiny, method):
  spec, params, model_state = tiny
  mask = surgery.trainable_mask(params, spec.groups, spec.methods[method])
  tx = surgery.surgical(surgery.base_optimizer('adam', 1e-2), mask)
  state = surgery.init_train_state(params, tx, model_state)
  compiled = surgery.make_train_step(spec.module, tx).lower(state, *_batch(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, state, mask, cost['flops']


@pytest.fixture(scope='module')
def steps(tiny):
  return {m: _compiled_step(tiny, m) for m in ('last', 'all')}


def test_frozen_leaves_bitwise_unchanged_after_3_adam_steps(tiny, steps):
  _, params, _ = tiny
  step, state, mask, _ = steps['last']
  before = jax.tree_util.tree_map(np.array, params)
  for i in range(3):
    state, metrics = step(state, *_batch(i), None)
    assert np.isfinite(float(metrics['loss']))
  for b, a, m in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params),
                     jax.tree_util.tree_leaves(mask)):
    if m:
      assert not np.array_equal(b, np.asarray(a)), 'a tuned leaf did not move'
    else:
      assert b.tobytes() == np.asarray(a).tobytes()


def test_default_module_keeps_every_batchnorm_statistic(tiny, steps):
  spec, _, model_state = tiny
  assert spec.module.bn_train_layers == ()
  step, state, _, _ = steps['all']  # train=True, every parameter tuned
  state, _ = step(state, *_batch(5), None)
  after = jax.tree_util.tree_leaves(state.model_state)
  for a, b in zip(jax.tree_util.tree_leaves(model_state), after, strict=True):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_train_mode_moves_only_the_tuned_layers_statistics(tiny):
  spec, params, model_state = tiny
  mask = surgery.trainable_mask(params, spec.groups, spec.methods['block2'])
  layers = tuned_norm_layers(mask, model_state['batch_stats'])
  assert layers and all(layer.startswith('layer2/') for layer in layers)
  assert 'layer2/0/downsample/1' in layers
  images = _batch(6)[0].astype(np.float32) / 255
  apply = jax.jit(spec.module.clone(bn_train_layers=layers).apply,
                  static_argnames=('train', 'mutable'))
  _, new = apply({'params': params, **model_state}, images, train=True, mutable=('batch_stats',))
  moved = {k.rsplit('/', 1)[0] for k, v in _leaves(new).items()
           if v.tobytes() != _leaves(model_state)[k].tobytes()}
  assert moved == {'batch_stats/' + layer for layer in layers}


def test_tuning_the_head_costs_under_half_of_tuning_everything(steps):
  flops_last, flops_all = steps['last'][3], steps['all'][3]
  print(f'\nstep FLOPs: last {flops_last:.3g}, all {flops_all:.3g}, '
        f'ratio {flops_last / flops_all:.3f}')
  assert flops_last < 0.45 * flops_all


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_state_and_tracks_float32_logits(tiny):
  spec, params, model_state = tiny
  mixed = models.create('resnet50', num_classes=10, dtype='bfloat16', **TINY)
  variables = {'params': params, **model_state}
  images = _batch(0)[0].astype(np.float32) / 255
  exact = np.asarray(spec.module.apply(variables, images))
  logits = mixed.module.apply(variables, images)
  assert logits.dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa: agreement to a few percent of the logit scale,
  # far from float32's 1e-5 but far closer than an unrelated network.
  assert np.abs(np.asarray(logits) - exact).max() <= 0.05 * np.abs(exact).max()
  assert not np.array_equal(np.asarray(logits), exact), 'bfloat16 did not change the compute'
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(mixed.init(0)))
  with pytest.raises(SurgeryError, match='model.dtype'):
    models.create('resnet50', dtype='float8')
