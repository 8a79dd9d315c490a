"""Layer-wise learning-rate decay (LLRD; Howard & Ruder 2018's discriminative fine-tuning,
Clark et al. 2020): every group is tuned, the head at the full lr and each group below it
at `decay` times the lr of the group above, so group g's lr is lr * decay ** (depth of g
from the head) in the model's network order. It is the soft version of surgical
fine-tuning's choice of block: decay < 1 leans towards the last layers.

The decay is swept beside the lr over `llrd.decays` (default 0.3, 0.5, 0.7) and chosen on
validation like it. A config that sweeps other values declares the section:
`c.llrd = ml_collections.ConfigDict(dict(decays=(0.6, 0.8)))`.
"""
import optax

from surgery.groups import group_names
from surgery.methods.registry import Method


def depth_scales(groups, decay: float) -> dict:
  """{group: decay ** (its depth from the head)}: 1 for the last group in network order."""
  names = group_names(groups)
  return {g: float(decay) ** (len(names) - 1 - i) for i, g in enumerate(names)}


def _wrap(base, ctx):
  # After the base optimizer, so Adam's normalised step is scaled, not its gradient
  # (which Adam would divide out again).
  scales = depth_scales(ctx.groups, ctx.hparam)
  per_group = optax.multi_transform({g: optax.scale(s) for g, s in scales.items()},
                                    ctx.group_labels)
  return optax.chain(base, per_group)


METHOD = Method('llrd', wrap=_wrap, section='llrd', defaults=dict(decays=(0.3, 0.5, 0.7)),
                hparam='decay', grid_field='decays', order=125)
