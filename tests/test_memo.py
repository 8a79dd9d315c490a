"""MEMO augmentations, marginal entropy and episodic/online surgical adaptation."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surgery import models
from surgery.errors import SurgeryError
from surgery.groups import path_str
from surgery.memo import augment as A
from surgery.memo.adapt import (adapt_stream, image_keys, make_adapt_predict, marginal_entropy,
                                memo_group_map, memo_mask, memo_optimizer, run_stream)

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
# Narrow ranges so autocontrast/equalize do something (a full-range image is a no-op).
NARROW = np.stack([RNG.integers(0, 26, (32, 32)), RNG.integers(40, 90, (32, 32)),
                   RNG.integers(3, 4, (32, 32))], -1).astype(np.uint8)


def _bits(tree):
  return [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(tree)]


def _changed(a, b):
  return sorted(path_str(p) for (p, x), y in zip(jax.tree_util.tree_leaves_with_path(a),
                                                 jax.tree_util.tree_leaves(b))
                if np.asarray(x).tobytes() != np.asarray(y).tobytes())


# ----------------------------------------------------------------------------- entropy

def test_marginal_entropy_matches_hand_computation():
  logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], np.float32)
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  mean = p.mean(0)
  ent, avg = marginal_entropy(jnp.asarray(logits))
  np.testing.assert_allclose(float(ent), -(mean * np.log(mean)).sum(), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(avg), np.log(mean), rtol=1e-6)


def test_marginal_entropy_is_finite_for_saturated_logits():
  ent, _ = marginal_entropy(jnp.array([[1e4, -1e4], [1e4, -1e4]]))
  assert np.isfinite(float(ent)) and abs(float(ent)) < 1e-6


# ----------------------------------------------------------------------------- ops

def test_posterize_and_solarize_match_numpy():
  np.testing.assert_array_equal(np.asarray(A.posterize(IMAGE, 3)), IMAGE & 0b11100000)
  ref = np.where(IMAGE < 200, IMAGE, 255 - IMAGE)
  np.testing.assert_array_equal(np.asarray(A.solarize(IMAGE, 200)), ref)


def test_ops_match_pillow():
  Image = pytest.importorskip('PIL.Image')
  ImageOps = pytest.importorskip('PIL.ImageOps')
  pil = Image.fromarray(NARROW)

  def warp(m):
    return pil.transform((32, 32), Image.AFFINE, m, resample=Image.BILINEAR, fillcolor=128)

  exact = {
      'autocontrast': (A.autocontrast(NARROW), ImageOps.autocontrast(pil)),
      'equalize': (A.equalize(NARROW), ImageOps.equalize(pil)),
      'translate_x': (A.translate_x(NARROW, -1.0), warp((1, 0, -1, 0, 1, 0))),
      'translate_y': (A.translate_y(NARROW, 1.0), warp((1, 0, 0, 0, 1, 1))),
  }
  for name, (ours, ref) in exact.items():
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref), err_msg=name)
  # float32 coordinates against Pillow's doubles: a rare off-by-one after truncation.
  near = {
      'rotate': (A.rotate(NARROW, 2.0), pil.rotate(2, resample=Image.BILINEAR, fillcolor=128)),
      'shear_x': (A.shear_x(NARROW, 0.025), warp((1, 0.025, 0, 0, 1, 0))),
      'shear_y': (A.shear_y(NARROW, -0.02), warp((1, 0, 0, -0.02, 1, 0))),
  }
  for name, (ours, ref) in near.items():
    diff = np.abs(np.asarray(ours, np.int32) - np.asarray(ref, np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, name


def test_autocontrast_reproduces_pillow_rounding():
  # Pillow's doubles map the maximum 25 of a [0, 25] channel to 254, not 255.
  img = np.repeat(np.arange(26, dtype=np.uint8)[:, None, None], 3, -1)
  assert np.asarray(A.autocontrast(img))[-1, 0, 0] == 254


def test_random_ops_keep_shape_dtype_and_range():
  ops = A._random_ops(A.MEMO_SEVERITY, 32)
  assert len(ops) == len(A.OPS) + 1
  for i, op in enumerate(ops):
    out = np.asarray(op(jax.random.PRNGKey(i), jnp.asarray(NARROW)))
    assert out.shape == NARROW.shape and out.dtype == np.uint8, A.OPS[i] if i < 9 else i


# ----------------------------------------------------------------------------- augmix

def test_augment_batch_deterministic_per_key():
  a = A.augment_batch(jax.random.PRNGKey(0), IMAGE, num_copies=4)
  b = A.augment_batch(jax.random.PRNGKey(0), IMAGE, num_copies=4)
  c = A.augment_batch(jax.random.PRNGKey(1), IMAGE, num_copies=4)
  assert a.shape == (4, 32, 32, 3) and a.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))  # copies differ


# ----------------------------------------------------------------------------- adaptation

@pytest.fixture(scope='module')
def setup():
  spec = models.create('resnet26', depth=8)
  group_map = memo_group_map(spec)
  params = jax.jit(spec.init)()['params']
  mask = memo_mask(params, 'first_layer', group_map)
  tx = memo_optimizer('online', mask, learning_rate=0.5)  # large: every step shows
  fn = make_adapt_predict(spec.module, tx, num_copies=4)
  images = RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  return dict(params=params, opt_state=tx.init(params), fn=fn, images=images,
              labels=np.array([0, 1, 2]), group_map=group_map)


def test_masks_select_the_paper_layers(setup):
  def tuned(option):
    m = memo_mask(setup['params'], option, setup['group_map'])
    return sorted(path_str(p) for p, v in jax.tree_util.tree_leaves_with_path(m) if v)

  assert tuned('first_layer') == ['stem/kernel']
  assert tuned('first_2_layers') == ['stage1/block0/conv1/kernel', 'stem/kernel']
  assert all(p.startswith(('stem/', 'stage1/')) for p in tuned('block1'))
  assert 'stage1/block0/norm1/scale' in tuned('block1')
  assert all(p.startswith(('final_norm/', 'head/')) for p in tuned('last'))


def test_episodic_resets_to_pretrained_weights(setup):
  params, fn = setup['params'], setup['fn']
  before = _bits(params)
  keys = image_keys(0, 3)
  adapted, _, _ = fn(params, setup['opt_state'], setup['images'][0], keys[0])
  assert _changed(params, adapted) == ['stem/kernel']
  out = run_stream(fn, params, setup['opt_state'], setup['images'], setup['labels'],
                   'episodic', seed=0, progress=False)
  assert _bits(out['params']) == before and _bits(params) == before
  # Image 2 of the stream saw exactly the pre-trained weights.
  _, _, fresh = fn(params, setup['opt_state'], setup['images'][2], keys[2])
  np.testing.assert_array_equal(out['logits'][2], np.asarray(fresh))
  assert len(out['correct']) == 3 and 0.0 <= out['accuracy'] <= 1.0


def test_online_first_layer_changes_only_the_stem(setup):
  out = run_stream(setup['fn'], setup['params'], setup['opt_state'], setup['images'],
                   setup['labels'], 'online', seed=0, progress=False)
  assert _changed(setup['params'], out['params']) == ['stem/kernel']
  assert out['images_per_second'] > 0


def test_frozen_leaves_stay_bitwise_through_the_adapt_step(setup):
  # A -0.0 in a frozen leaf: an update of +0.0 (or a masked add) would flip its sign bit.
  params = jax.tree_util.tree_map(lambda p: p, setup['params'])
  params['head']['bias'] = params['head']['bias'].at[0].set(-0.0)
  adapted, _, _ = setup['fn'](params, setup['opt_state'], setup['images'][0], image_keys(0, 1)[0])
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(adapted), jax.tree_util.tree_leaves(params)):
    if path_str(path) != 'stem/kernel':
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path_str(path)


def test_group_map_comes_from_the_model_spec():
  spec = models.create('resnet26', depth=8)
  groups, options = memo_group_map(spec)
  assert (groups, options) == (tuple(spec.extra_group_maps['memo'][0]),
                               dict(spec.extra_group_maps['memo'][1]))
  bare = dataclasses.replace(spec, extra_group_maps={})
  with pytest.raises(SurgeryError) as err:
    memo_group_map(bare)
  assert 'resnet26 declares no MEMO freezing options' in str(err.value)
  assert '\n' not in str(err.value)
  with pytest.raises(SurgeryError, match="unknown MEMO option 'stem_only'; valid: all, first_layer"):
    memo_mask(spec.init()['params'], 'stem_only', (groups, options))


@pytest.mark.slow
def test_batchnorm_model_adapts_in_eval_mode():
  # MEMO calls net.eval(): one test image must be normalised with the running
  # statistics, which never move (in train mode a batch of one would normalise by its
  # own statistics, and Flax would need them mutable).
  spec = models.create('resnet26', depth=8, norm='batch')
  variables = spec.init()
  params = variables['params']
  stats = jax.tree_util.tree_map(lambda s: s + 0.25, variables['batch_stats'])  # not the identity
  model_state = {'batch_stats': stats}
  before = [np.asarray(s).tobytes() for s in jax.tree_util.tree_leaves(stats)]
  group_map = memo_group_map(spec)
  tx = memo_optimizer('episodic', memo_mask(params, 'last', group_map))
  fn = make_adapt_predict(spec.module, tx, num_copies=4, model_state=model_state)
  image = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  adapted, _, logits = fn(params, tx.init(params), image, image_keys(0, 1)[0])
  expected = spec.module.apply({'params': adapted, **model_state},
                               image[None].astype(np.float32) / 255, train=False)[0]
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), rtol=1e-5, atol=1e-5)
  assert [np.asarray(s).tobytes() for s in jax.tree_util.tree_leaves(stats)] == before
  out = adapt_stream(spec.module, params, image[None], np.array([3]), 'online', 'last',
                     group_map=group_map, num_copies=2, model_state=model_state, progress=False)
  assert len(out['correct']) == 1


class _NoTrainFlag(nn.Module):
  """A Linen model whose __call__ takes no `train` argument."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), name='conv')(x)
    return nn.Dense(10, name='head')(jnp.mean(x, axis=(1, 2)))


def test_any_linen_model_with_a_memo_group_map():
  model = _NoTrainFlag()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  group_map = ((('conv', r'^conv/'), ('head', r'^head/')), {'everything': 'all', 'top': 'head'})
  out = adapt_stream(model, params, RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
                     np.array([0, 1]), 'online', 'top', group_map=group_map, num_copies=2,
                     progress=False)
  changed = {path_str(p) for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(out['params']),
                                              jax.tree_util.tree_leaves(params))
             if np.asarray(a).tobytes() != np.asarray(b).tobytes()}
  assert changed and all(p.startswith('head/') for p in changed)
