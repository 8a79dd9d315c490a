"""The fast GroupNorm computes Flax's GroupNorm: same parameters, outputs and gradients
within float32 noise, and ResNet-26's logits with the MEMO weights do not move."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from surgery import models
from surgery.models.group_norm import GroupNorm


@pytest.mark.parametrize('shape, groups', [((4, 8, 8, 16), 8), ((2, 5, 3, 12), 4), ((3, 7, 6), 2)])
def test_matches_flax_groupnorm_values_and_gradients(shape, groups):
  rng = np.random.RandomState(0)
  x = jnp.asarray(3.0 + 2.0 * rng.randn(*shape).astype(np.float32))  # a mean far from 0
  ours, flax_gn = GroupNorm(groups, 1e-5), nn.GroupNorm(num_groups=groups, epsilon=1e-5)
  variables = flax_gn.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(ours.init(jax.random.PRNGKey(0), x)) == \
      jax.tree_util.tree_structure(variables)
  variables = {'params': {'scale': jnp.asarray(rng.randn(shape[-1]), jnp.float32),
                          'bias': jnp.asarray(rng.randn(shape[-1]), jnp.float32)}}
  np.testing.assert_allclose(ours.apply(variables, x), flax_gn.apply(variables, x), atol=2e-5)
  r = jnp.asarray(rng.randn(*shape).astype(np.float32))

  def grads(module):
    return jax.grad(lambda v, x: jnp.vdot(module.apply(v, x), r), argnums=(0, 1))(variables, x)

  for a, b in zip(jax.tree_util.tree_leaves(grads(ours)), jax.tree_util.tree_leaves(grads(flax_gn))):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_resnet26_logits_do_not_move(memo_weights):
  spec = models.create('resnet26')
  variables = spec.load(memo_weights)
  images = np.random.RandomState(0).randint(0, 256, (8, 32, 32, 3)).astype(np.float32) / 255
  fast = spec.module.apply(variables, images)
  flax_model = spec.module.clone(group_norm=nn.GroupNorm)
  reference = flax_model.apply(variables, images)
  scale = float(jnp.max(jnp.abs(reference)))
  assert float(jnp.max(jnp.abs(fast - reference))) <= 1e-5 * scale
