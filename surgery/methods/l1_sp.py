"""L1-SP (paper Section 4.1, "Regularize"; Xuhong et al., 2018): an L1 penalty on the
distance to the pre-trained weights, lam * sum_i |theta_i - theta0_i| over all
tensors. The paper reports the L1 form beating L2, so only L1 is offered.

Pass the result as `make_train_step(..., extra_loss=l1_sp_penalty(params0, lam))`.
`params0` is closed over, so under `jax.jit` it is a constant of the compiled step.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp

from surgery.methods.registry import Method


def l1_sp_penalty(params0: Any, lam: float) -> Callable[[Any], jax.Array]:
  """`penalty(params) = lam * ||params - params0||_1`; its gradient is
  lam * sign(theta - theta0) (0 where theta == theta0)."""
  # A private copy: a caller donating or mutating its params must not move the anchor.
  params0 = jax.tree_util.tree_map(jnp.array, params0)

  def penalty(params):
    dist = jax.tree_util.tree_map(
        lambda p, p0: jnp.sum(jnp.abs(p.astype(jnp.float32) - p0.astype(jnp.float32))),
        params, params0)
    return lam * sum(jax.tree_util.tree_leaves(dist))

  return penalty


# Its strength `lam` is swept beside the lr over `l1_sp.lambdas` and chosen on validation.
METHOD = Method('l1_sp', extra_loss=l1_sp_penalty, section='l1_sp',
                defaults=dict(lambdas=(1e-5, 1e-4, 1e-3)), hparam='lam', grid_field='lambdas',
                order=120)
