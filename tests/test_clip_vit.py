"""CLIP ViT: open_clip parity, safe loading, group maps, and surgical steps.

A tiny tower (32px images, 8px patches, width 64, 2 blocks) keeps every test fast;
full-size layouts are checked on shapes only (jax.eval_shape, torch's meta device).
"""
import pickle
import zipfile

import jax
import numpy as np
import pytest

import surgery
from surgery import CheckpointError, SurgeryError, models
from surgery.models import clip_vit
from tests.torch_refs import open_clip_or_skip, torch_or_skip

TINY = dict(image_size=32, patch_size=8, width=64, layers=2, heads=4, embed_dim=32)
CLASSES = 5


def _tiny_spec(**extra):
  return models.create('clip_vit_b16', **{**TINY, 'num_classes': CLASSES, **extra})


def _params_shapes(spec):
  dummy = jax.ShapeDtypeStruct((1, spec.image_size, spec.image_size, 3), np.float32)
  return jax.eval_shape(spec.module.init, jax.random.PRNGKey(0), dummy)['params']


def _random_params(spec, seed=0):
  # Compiling spec.init()'s random-number code costs seconds on two cores; optimizer
  # tests only need some finite weights of the right shapes.
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (float(path[-1].key == 'scale') + 0.05 * rng.randn(*s.shape)).astype(s.dtype),
      _params_shapes(spec))


# ---------------------------------------------------------------- open_clip reference

def _torch_tower(cfg, device=None):
  """open_clip's VisionTransformer with QuickGELU, as OpenAI's weights need."""
  torch = torch_or_skip()
  open_clip_or_skip()
  from open_clip.transformer import QuickGELU, VisionTransformer
  with torch.device(device or 'cpu'):
    return VisionTransformer(
        image_size=cfg['image_size'], patch_size=cfg['patch_size'], width=cfg['width'],
        layers=cfg['layers'], heads=cfg['heads'], mlp_ratio=4.0,
        output_dim=cfg['embed_dim'], act_layer=QuickGELU)


@pytest.fixture(scope='module')
def tiny_checkpoints(tmp_path_factory):
  """The tiny tower in eval mode and its whole-CLIP state dict as .pth and .safetensors."""
  torch = torch_or_skip()
  torch.manual_seed(0)  # open_clip's own initialisation draws from the global generator
  tower = _torch_tower(TINY).eval()
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():  # LayerNorm ones and zero biases would hide mapping mistakes
    for p in tower.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))
  state = {f'visual.{k}': v.contiguous() for k, v in tower.state_dict().items()}
  # Text-tower keys of a whole CLIP, to be ignored.
  state['token_embedding.weight'] = torch.randn(10, 32, generator=gen)
  state['logit_scale'] = torch.tensor(4.6)
  root = tmp_path_factory.mktemp('clip')
  pth, st = str(root / 'clip.pth'), str(root / 'clip.safetensors')
  torch.save(state, pth)
  safetensors_torch = pytest.importorskip('safetensors.torch')
  safetensors_torch.save_file(state, st)
  return tower, pth, st


def test_logits_match_open_clip(tiny_checkpoints):
  torch = torch_or_skip()
  tower, pth, st = tiny_checkpoints
  spec = _tiny_spec()
  variables = spec.load(pth)
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(spec.load(st))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  head = variables['params']['head']
  linear = torch.nn.Linear(TINY['embed_dim'], CLASSES)
  with torch.no_grad():
    linear.weight.copy_(torch.from_numpy(np.asarray(head['kernel']).T.copy()))
    linear.bias.copy_(torch.from_numpy(np.array(head['bias'])))
  x = np.random.RandomState(0).rand(4, 32, 32, 3).astype(np.float32)
  ours = np.asarray(jax.jit(spec.module.apply)(variables, x))
  normalised = (x - np.float32(clip_vit.CLIP_MEAN)) / np.float32(clip_vit.CLIP_STD)
  with torch.no_grad():
    ref = linear(tower(torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))))
  delta, scale = np.abs(ours - ref.numpy()).max(), np.abs(ref.numpy()).max()
  print(f'clip_vit tiny: max |dlogit| = {delta:.3e}, max |logit| = {scale:.3e}')
  assert delta <= 1e-5 * scale


def test_fresh_head_unless_the_checkpoint_holds_one(tiny_checkpoints, tmp_path):
  torch = torch_or_skip()
  _, pth, _ = tiny_checkpoints
  with pytest.raises(CheckpointError, match='missing head.weight'):
    _tiny_spec(new_head=False).load(pth)
  # Visual-only layout (as ours are), from our own file written above.
  state = {k[len('visual.'):]: v for k, v in torch.load(pth, weights_only=True).items()
           if k.startswith('visual.')}
  state['head.weight'] = torch.full((CLASSES, TINY['embed_dim']), 0.25)
  state['head.bias'] = torch.arange(CLASSES, dtype=torch.float32)
  ours = str(tmp_path / 'with_head.pth')
  torch.save(state, ours)
  head = _tiny_spec().load(ours)['params']['head']
  np.testing.assert_array_equal(head['kernel'], 0.25)
  np.testing.assert_array_equal(head['bias'], np.arange(CLASSES))


def test_benchmark_twin_matches_the_flax_model_and_tunes_its_mask(tmp_path):
  """experiments.bench.torch_reference's CLIP twin: the tower above plus `head`, named so
  the Flax paths map onto it (a checkpoint of it loads whole, head included)."""
  torch = torch_or_skip()
  open_clip_or_skip()
  from experiments.bench.torch_reference import from_spec, to_input, tuned_parameters
  spec = _tiny_spec()
  torch.manual_seed(0)
  net = from_spec(spec)
  assert net is not None and not net.training
  with torch.no_grad():  # off LayerNorm's ones and the zero biases, as above
    for p in net.parameters():
      p.add_(0.05 * torch.randn(p.shape))
  path = str(tmp_path / 'twin.pth')
  torch.save(net.state_dict(), path)
  variables = spec.load(path)
  images = _batch(1)[0]
  ours = np.asarray(jax.jit(spec.module.apply)(variables, images.astype(np.float32) / 255))
  with torch.no_grad():
    ref = net(to_input(images, spec)).numpy()
  assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()

  params = variables['params']
  named = dict(net.named_parameters())
  prefixes = {'all': ('',), 'embedding': ('conv1.', 'class_embedding', 'positional_embedding',
                                          'ln_pre.'),
              'block2': ('transformer.resblocks.1.',),
              'head': ('ln_post.', 'proj', 'head.')}
  for method, prefix in prefixes.items():
    mask = surgery.trainable_mask(params, spec.groups, spec.methods[method])
    got = {id(p) for p in tuned_parameters(net, mask, spec)}
    assert got == {id(p) for k, p in named.items() if k.startswith(prefix)}, method


def test_full_size_layouts_match_open_clip():
  torch_or_skip()
  for name, cfg in clip_vit.VARIANTS.items():
    spec = models.create(name)
    tower = _torch_tower(cfg, device='meta')  # shapes only, no memory
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    ours = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path({'params': _params_shapes(spec)})[0]:
      key, kind = clip_vit.torch_key(surgery.groups.path_str(path))
      if key.startswith('head.'):
        continue
      ours[key] = {'conv': lambda s: (s[3], s[2], s[0], s[1]),
                   'dense': lambda s: s[::-1]}.get(kind, lambda s: s)(tuple(leaf.shape))
    assert ours == expected, name


# ------------------------------------------------------------------------ safe loading

@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # torch.jit: OpenAI's format
def test_torchscript_is_refused_in_one_line(tmp_path):
  torch = torch_or_skip()
  path = str(tmp_path / 'ViT-B-16.pt')
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
  with pytest.raises(CheckpointError) as e:
    _tiny_spec().load(path)
  message = str(e.value)
  assert 'TorchScript' in message and 'torch.jit.load' in message and '\n' not in message


class _CreatesFile:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (open, (self.target, 'w'))


def _zip_pickle(path, obj):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps(obj, protocol=2))
    z.writestr('archive/version', '3\n')


def test_pickle_that_creates_a_file_is_refused(tmp_path):
  # The payload is real: plain pickle creates its file.
  proof = tmp_path / 'proof'
  pickle.loads(pickle.dumps(_CreatesFile(str(proof)), protocol=2)).close()
  assert proof.exists()
  target = tmp_path / 'pwned'
  path = str(tmp_path / 'evil.pth')
  _zip_pickle(path, {'visual.conv1.weight': _CreatesFile(str(target))})
  with pytest.raises(CheckpointError, match='refused global'):
    _tiny_spec().load(path)
  assert not target.exists()


def test_misfit_checkpoint_names_the_problem(tiny_checkpoints):
  _, _, st = tiny_checkpoints
  with pytest.raises(CheckpointError, match='positional_embedding has shape'):
    _tiny_spec(image_size=48).load(st)


def test_unknown_option_is_a_user_error():
  with pytest.raises(SurgeryError, match='depth'):
    models.create('clip_vit_l14', depth=3)


# -------------------------------------------------------------------------- group maps

def test_groups_cover_every_parameter_once():
  spec = models.create('clip_vit_b16')
  params = _params_shapes(spec)
  sizes = surgery.group_sizes(params, spec.groups)
  assert list(sizes) == ['embedding'] + [f'block{i}' for i in range(1, 13)] + ['head']
  assert all(sizes.values())
  assert sizes['head'] == 2 * 768 + 768 * 512 + 512 * 1000 + 1000
  assert set(spec.methods) >= {'all', 'embedding', 'block1', 'block6', 'block12', 'head'}
  assert spec.head_methods == ('head',)


def test_table7_map():
  spec = models.create('clip_vit_b16')
  table_groups, options = spec.extra_group_maps['table7']
  params = _params_shapes(spec)
  labels = surgery.assign_groups(params, table_groups)
  assert list(options) == ['all', 'first_layers', 'middle1', 'middle2', 'middle3', 'middle4',
                           'last_layers']
  blocks = {f'resblocks_{i}': labels[f'resblocks_{i}']['ln_1']['scale'] for i in range(12)}
  assert [blocks[f'resblocks_{i}'] for i in range(12)] == [
      f'middle{j}' for j in (1, 2, 3, 4) for _ in range(3)]
  assert labels['conv1']['kernel'] == labels['ln_pre']['scale'] == 'first_layers'
  assert labels['proj'] == labels['head']['kernel'] == 'last_layers'
  l14 = models.create('clip_vit_l14').extra_group_maps['table7'][0]
  assert [rx.count('|') + 1 for name, rx in l14 if name.startswith('middle')] == [6] * 4


# ------------------------------------------------------------------- surgical training

def _batch(seed):
  rng = np.random.RandomState(seed)
  return rng.randint(0, 256, (4, 32, 32, 3)).astype(np.uint8), rng.randint(0, CLASSES, 4)


def _tx(params, spec, method):
  mask = surgery.trainable_mask(params, spec.groups, spec.methods[method])
  return surgery.surgical(surgery.base_optimizer('adam', 1e-2), mask), mask


def test_frozen_leaves_bitwise_unchanged_tuning_a_middle_block():
  spec = _tiny_spec(layers=3)
  params = _random_params(spec)
  # A -0.0 among frozen weights: p + 0.0 would flip its sign bit.
  params['resblocks_0']['mlp']['c_fc']['kernel'][0, 0] = -0.0
  tx, mask = _tx(params, spec, 'block2')
  before = jax.tree_util.tree_map(np.array, params)
  step = surgery.make_train_step(spec.module, tx)
  state = surgery.init_train_state(params, tx)
  for i in range(3):
    state, _ = step(state, *_batch(i))
  tuned = 0
  for b, a, m in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params),
                     jax.tree_util.tree_leaves(mask)):
    if m:
      tuned += 1
      assert not np.array_equal(b, np.asarray(a)), 'a tuned leaf did not move'
    else:
      assert b.tobytes() == np.asarray(a).tobytes()
  assert tuned == 12  # ln_1, in_proj, out_proj, ln_2, c_fc, c_proj: kernel/scale + bias


def _step_flops(spec, params, method):
  tx, _ = _tx(params, spec, method)
  step = surgery.make_train_step(spec.module, tx)
  cost = step.lower(surgery.init_train_state(params, tx), *_batch(0)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost['flops']


def test_frozen_gradients_are_not_computed():
  spec = _tiny_spec()
  params = _random_params(spec)
  flops_all, flops_head = _step_flops(spec, params, 'all'), _step_flops(spec, params, 'head')
  print(f'clip_vit tiny step FLOPs: all {flops_all:.3e}, head {flops_head:.3e}')
  assert flops_head < 0.45 * flops_all


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32_logits():
  spec = _tiny_spec()
  mixed = _tiny_spec(dtype='bfloat16')
  params = _random_params(spec)
  # A head of weight one gives logits of order one, so the relative check has teeth.
  params['head']['kernel'] = np.random.RandomState(1).randn(
      *params['head']['kernel'].shape).astype(np.float32)
  images = _batch(0)[0].astype(np.float32) / 255
  exact = np.asarray(jax.jit(spec.module.apply)({'params': params}, images))
  logits = jax.jit(mixed.module.apply)({'params': params}, images)
  assert logits.dtype == np.float32 and mixed.overrides['dtype'] == 'bfloat16'
  delta, scale = np.abs(np.asarray(logits) - exact).max(), np.abs(exact).max()
  print(f'clip_vit tiny bf16: max |dlogit| = {delta:.3e}, max |logit| = {scale:.3e}')
  # bfloat16 keeps 8 bits of mantissa: a few percent of the logit scale, not 1e-5.
  assert scale > 0.1 and delta <= 0.05 * scale
  assert not np.array_equal(np.asarray(logits), exact), 'bfloat16 did not change the compute'
  assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(_params_shapes(mixed)))
  # Matmuls in bfloat16; LayerNorm statistics and the softmax in float32.
  ops = _primitive_dtypes(jax.make_jaxpr(mixed.module.apply)({'params': params}, images).jaxpr)
  assert ops['conv_general_dilated'] == {'bfloat16'} and 'bfloat16' in ops['dot_general']
  assert ops['reduce_sum'] == ops['reduce_max'] == ops['exp'] == ops['rsqrt'] == {'float32'}
  with pytest.raises(SurgeryError, match='model.dtype'):
    models.create('clip_vit_l14', dtype='float16')


def _primitive_dtypes(jaxpr, found=None):
  """{primitive name: dtypes of its first operand} over a jaxpr and its sub-jaxprs."""
  found = {} if found is None else found
  for eqn in jaxpr.eqns:
    for value in eqn.params.values():
      inner = getattr(value, 'jaxpr', value)
      if hasattr(inner, 'eqns'):
        _primitive_dtypes(inner, found)
    if eqn.invars and hasattr(eqn.invars[0], 'aval'):
      found.setdefault(eqn.primitive.name, set()).add(str(eqn.invars[0].aval.dtype))
  return found
