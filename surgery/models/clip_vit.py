"""CLIP's visual tower (OpenAI ViT-B/16 and ViT-L/14) with a new linear classifier,
in Flax Linen: the paper's model for Camelyon17, FMoW and the Table 7 ablation.

The layout is open_clip's `VisionTransformer`: a bias-free patch convolution `conv1`,
a `class_embedding` token, a learned `positional_embedding`, `ln_pre`, residual
attention blocks (`ln_1`, fused-QKV self-attention, `ln_2`, `mlp.c_fc` -> QuickGELU ->
`mlp.c_proj`), `ln_post` on the class token and the bias-free projection `proj`. A
new Dense `head` maps the projected features to `num_classes` logits (CLIP
checkpoints have no classifier). LayerNorms use eps 1e-5, as torch does.

Module names mirror the state-dict keys: `resblocks_3/attn/in_proj/kernel` is
`transformer.resblocks.3.attn.in_proj_weight`; `torch_key` is the whole mapping.

Inputs are float images in [0, 1], NHWC; the model normalises with CLIP's mean/std.

`dtype='bfloat16'` is mixed precision: the patch convolution, the Dense layers and the
residual stream compute in bfloat16, while parameters stay float32, LayerNorms reduce
and normalise in float32 (Flax's default; only their output is cast), the attention
softmax runs in float32, and ln_post, `proj` and the classifier compute in float32, so
the logits are float32.

Group maps
----------
`GROUPS` (spec.groups, the per-block sweep of Table 1 / Figure 2): `embedding` (conv1,
class and positional embeddings, ln_pre), `block1`..`blockN` (one per residual block,
N = 12 for B/16, 24 for L/14) and `head` (ln_post, proj and the classifier).

`extra_group_maps['table7']` is the coarser split of the paper's Table 7 ablation
(ViT-B/16 on Living-17). Appendix A.4 describes that model as "2 first layers
followed by 4 transformer blocks and 2 last layers". We read it literally, layer by
layer of the visual tower:
  first_layers  the 2 layers before the transformer: the patch embedding (conv1 with
                the class and positional embeddings) and ln_pre;
  middle1-4     the residual blocks cut into 4 contiguous, equal chunks (3 blocks each
                for B/16's 12, 6 each for L/14's 24);
  last_layers   the 2 layers after it: ln_post with proj, and the new classifier.
This reading names every parameter exactly once, with the paper's numbers. The
other arithmetic that sums to 12 (2 residual blocks + 4 pairs + 2 residual blocks)
would call residual blocks "layers" in one place and pairs of them "transformer
blocks" in the next, and would leave the embedding and the classifier unplaced, so
we did not take it. A model with fewer than 4 residual blocks (tests) gets one chunk
per block. (Section 2 says instead that ViT-B/16 "has 1 embedding layer, 11 attention
blocks and a linear classifier"; ViT-B/16 has 12 residual blocks, and `GROUPS` keeps
all 12. The chunks are named middle1-4 so they never mix with GROUPS' blockN.)
"""
import dataclasses
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from surgery.errors import CheckpointError, SurgeryError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VARIANTS = {
    'clip_vit_b16': dict(patch_size=16, width=768, layers=12, heads=12, embed_dim=512,
                         image_size=224),
    'clip_vit_l14': dict(patch_size=14, width=1024, layers=24, heads=16, embed_dim=768,
                         image_size=224),
}
NAMES = tuple(VARIANTS)  # the model names this module serves

TABLE7_MAP = 'table7'  # the key of the Table 7 group map in spec.extra_group_maps
_TABLE7_CHUNKS = 4

_EMBEDDING_RX = r'^(conv1|class_embedding|positional_embedding|ln_pre)(/|$)'
_HEAD_RX = r'^(ln_post|proj|head)(/|$)'


# ---------------------------------------------------------------------------- network

def _layer_norm(name: str, dtype: Any = jnp.float32) -> nn.LayerNorm:
  # `dtype` is the output's: with float32 parameters Flax computes the statistics and
  # the normalisation in float32 whatever the input's dtype.
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


def quick_gelu(x):
  """OpenAI CLIP's activation; its weights were trained with it, not exact GELU."""
  return x * jax.nn.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
  """torch's nn.MultiheadAttention on one sequence: fused q/k/v, then `out_proj`."""
  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, tokens, _ = x.shape
    head_dim = self.width // self.heads
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, name='in_proj')(x)
    q, k, v = (t.reshape(batch, tokens, self.heads, head_dim)
               for t in jnp.split(qkv, 3, axis=-1))
    # Scaling q before the product, as torch does, keeps the rounding comparable.
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * head_dim ** -0.5, k)
    # Softmax in float32: bfloat16's 8-bit mantissa would flatten close attention logits.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, tokens, self.width)
    return nn.Dense(self.width, dtype=self.dtype, name='out_proj')(out)


class MLP(nn.Module):
  width: int
  quick_gelu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(4 * self.width, dtype=self.dtype, name='c_fc')(x)
    x = quick_gelu(x) if self.quick_gelu else nn.gelu(x, approximate=False)
    return nn.Dense(self.width, dtype=self.dtype, name='c_proj')(x)


class ResidualAttentionBlock(nn.Module):
  width: int
  heads: int
  quick_gelu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    attn = SelfAttention(self.width, self.heads, self.dtype, name='attn')
    x = x + attn(_layer_norm('ln_1', self.dtype)(x))
    mlp = MLP(self.width, self.quick_gelu, self.dtype, name='mlp')
    return x + mlp(_layer_norm('ln_2', self.dtype)(x))


class CLIPViTClassifier(nn.Module):
  """CLIP's visual tower followed by a new linear classifier on its embedding."""
  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  layers: int = 12
  heads: int = 12
  embed_dim: int = 512
  num_classes: int = 1000
  quick_gelu: bool = True
  mean: Sequence[float] = CLIP_MEAN
  std: Sequence[float] = CLIP_STD
  # Compute dtype (bfloat16 for mixed precision on GPU/TPU); parameters and logits
  # stay float32.
  dtype: Any = jnp.float32
  # Group boundaries (see surgery.models: `cuts`): boundary k is the input of group k
  # (embedding, block1..block{layers}, head). The last block ends by taking the class
  # token, so the head's cached input is one token per image, not all 197.
  start: int = 0
  stop: Optional[int] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or batch statistics: train and eval are the same function

    def embed(x):
      x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
      return self._embed(x)

    def block(i):
      def run(x):
        x = ResidualAttentionBlock(self.width, self.heads, self.quick_gelu, self.dtype,
                                   name=f'resblocks_{i}')(x)
        return x[:, 0] if i == self.layers - 1 else x
      return run

    def head(x):
      # ln_post is per token, so applying it to the class token alone gives open_clip's
      # pooled output without normalising the other tokens. Its float32 output keeps
      # `proj` and the classifier (one token each, cheap) in float32.
      x = _layer_norm('ln_post')(x)
      scale = self.width ** -0.5
      proj = self.param('proj', nn.initializers.normal(scale), (self.width, self.embed_dim))
      return nn.Dense(self.num_classes, name='head')(x @ proj)

    layers = (embed,) + tuple(block(i) for i in range(self.layers)) + (head,)
    for k in range(self.start, len(layers) if self.stop is None else self.stop):
      x = layers[k](x)
    return x

  def _embed(self, x):
    grid = self.image_size // self.patch_size
    if x.shape[1:3] != (grid * self.patch_size,) * 2:
      raise SurgeryError(f'clip_vit expects {self.image_size}px images, got {x.shape[1:3]}')
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding='VALID', use_bias=False,
                dtype=self.dtype, name='conv1')(x)
    x = x.reshape(x.shape[0], grid * grid, self.width)  # row-major, as torch flattens
    scale = self.width ** -0.5
    cls = self.param('class_embedding', nn.initializers.normal(scale), (self.width,))
    pos = self.param('positional_embedding', nn.initializers.normal(scale),
                     (grid * grid + 1, self.width))
    cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width))
    x = jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)
    return _layer_norm('ln_pre', self.dtype)(x)


# ------------------------------------------------------------------------- group maps

def _block_rx(indices) -> str:
  return rf'^resblocks_({"|".join(str(i) for i in indices)})/'


def groups(layers: int) -> tuple:
  """Per-block group map: embedding, block1..block{layers}, head."""
  blocks = tuple((f'block{i + 1}', _block_rx([i])) for i in range(layers))
  return (('embedding', _EMBEDDING_RX),) + blocks + (('head', _HEAD_RX),)


def methods(layers: int) -> dict:
  """Paper-facing methods: all, the embedding, each residual block, the head."""
  names = ['embedding'] + [f'block{i + 1}' for i in range(layers)] + ['head']
  return {'all': 'all', **{n: n for n in names}}


def table7_map(layers: int) -> tuple:
  """(groups, {option: group spec}) of Table 7 (see the module docstring)."""
  chunks = [c for c in np.array_split(np.arange(layers), _TABLE7_CHUNKS) if c.size]
  blocks = tuple((f'middle{j + 1}', _block_rx(c.tolist())) for j, c in enumerate(chunks))
  table_groups = (('first_layers', _EMBEDDING_RX),) + blocks + (('last_layers', _HEAD_RX),)
  options = {'all': 'all', **{name: name for name, _ in table_groups}}
  return table_groups, options


# ------------------------------------------------------------------------------ create

def create(variant: str = 'clip_vit_b16', num_classes: int = 1000, new_head: bool = True,
           quick_gelu: bool = True, dtype: str = 'float32', **overrides) -> 'ModelSpec':
  """The model contract's spec (see surgery.models).

  Args:
    variant: a key of VARIANTS (the registered model name).
    num_classes: outputs of the new classifier `head`.
    new_head: `spec.load` keeps the fresh `head` when the checkpoint has none (every
      CLIP checkpoint); False requires the checkpoint to hold one.
    quick_gelu: OpenAI's QuickGELU (True, for OpenAI weights) or exact GELU (open_clip
      models trained without it).
    dtype: compute dtype, 'float32' or 'bfloat16' (mixed precision: float32
      parameters, LayerNorm statistics, attention softmax and logits).
    **overrides: image_size, patch_size, width, layers, heads, embed_dim (tests build
      a tiny tower; only the defaults read the released weights).
  """
  from surgery.models import ModelSpec, compute_dtype
  if variant not in VARIANTS:
    raise SurgeryError(f'unknown clip_vit variant {variant!r}; valid: {sorted(VARIANTS)}')
  unknown = sorted(set(overrides) - set(VARIANTS[variant]))
  if unknown:
    raise SurgeryError(f'{variant} has no option(s) {unknown}; valid: num_classes, new_head, '
                       f'quick_gelu, dtype, {", ".join(VARIANTS[variant])}')
  cfg = {k: int(v) for k, v in {**VARIANTS[variant], **overrides}.items()}
  _check(variant, cfg, num_classes)
  module = CLIPViTClassifier(num_classes=num_classes, quick_gelu=bool(quick_gelu),
                             dtype=compute_dtype(dtype), **cfg)
  spec = ModelSpec(
      name=variant, module=module, groups=groups(cfg['layers']),
      methods=methods(cfg['layers']), image_size=cfg['image_size'], num_classes=num_classes,
      load=None, head_methods=('head',), cuts=True,
      extra_group_maps={TABLE7_MAP: table7_map(cfg['layers'])},
      overrides=dict(cfg, num_classes=num_classes, new_head=bool(new_head),
                     quick_gelu=bool(quick_gelu), dtype=str(dtype)))
  return dataclasses.replace(spec, load=lambda path: load(path, spec))


def _check(variant: str, cfg: dict, num_classes: int) -> None:
  if min(cfg.values()) < 1 or num_classes < 2:
    raise SurgeryError(f'{variant}: sizes must be >= 1 and num_classes >= 2, got {cfg}, '
                       f'num_classes={num_classes}')
  if cfg['image_size'] % cfg['patch_size']:
    raise SurgeryError(f'{variant}: image_size {cfg["image_size"]} is not a multiple of '
                       f'patch_size {cfg["patch_size"]}')
  if cfg['width'] % cfg['heads']:
    raise SurgeryError(f'{variant}: width {cfg["width"]} is not divisible by heads '
                       f'{cfg["heads"]}')


# ------------------------------------------------------------------------- checkpoints

_LEAF_KEYS = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_WHOLE_CLIP_PREFIX = 'visual.'


def torch_key(path: str) -> tuple:
  """(state-dict key, layout kind for `torch_to_flax`) of a variables path such as
  'params/resblocks_0/attn/in_proj/kernel' or 'params/class_embedding'."""
  _, *modules, leaf = path.split('/')
  if not modules:  # bare parameters: stored as the model uses them
    return leaf, ''
  if modules[0].startswith('resblocks_'):
    modules = ['transformer', 'resblocks', modules[0][len('resblocks_'):]] + modules[1:]
  kind = ('conv' if modules == ['conv1'] else 'dense') if leaf == 'kernel' else ''
  if modules[-1] == 'in_proj':  # nn.MultiheadAttention keeps it as attn.in_proj_weight
    return '.'.join(modules[:-1]) + f'.in_proj_{_LEAF_KEYS[leaf]}', kind
  return '.'.join(modules + [_LEAF_KEYS[leaf]]), kind


def load(path: str, spec) -> dict:
  """Variables ({'params'}) from a CLIP state dict or one of this project's orbax
  directories.

  Files: a whole open_clip/OpenAI-layout CLIP state dict (keys 'visual.conv1.weight',
  ...; the text tower is ignored) or a visual-only one, as a zip pickle (.pth, .bin)
  or .safetensors. OpenAI's TorchScript .pt files are refused with the line that
  converts them. The classifier stays freshly initialised unless the file holds
  `head.weight` (one of ours).

  Raises:
    CheckpointError: unreadable or unsafe file, or one that does not fit the model
      (every missing or unexpected key and wrong shape is named; nothing loads).
  """
  from surgery.checkpoints import load_orbax_variables
  from surgery.checkpoints.state_dict import convert, read_state_dict
  if os.path.isdir(path):
    return load_orbax_variables(path, spec.init())
  state = _visual_only(read_state_dict(path), path)
  keep_fresh = spec.overrides['new_head'] and 'head.weight' not in state
  return convert(state, _template(spec), torch_key, source=path, model=_describe(spec),
                 new_head=_is_head if keep_fresh else None)


def _visual_only(state: dict, path: str) -> dict:
  # Filtering the dict read once, rather than reading the file again with
  # read_state_dict(prefix=...), halves the time and memory for a whole CLIP.
  if any(k.startswith(_WHOLE_CLIP_PREFIX) for k in state):
    state = {k[len(_WHOLE_CLIP_PREFIX):]: v for k, v in state.items()
             if k.startswith(_WHOLE_CLIP_PREFIX)}
  elif any(k.startswith('vision_model.') for k in state):
    raise CheckpointError(f'{path} is in Hugging Face transformers layout '
                          "('vision_model.*'); pass an open_clip or OpenAI CLIP state dict")
  return state


def _is_head(path: str) -> bool:
  return path.startswith('params/head/')


def _template(spec) -> dict:
  """Variables shaped like spec.init()'s: the fresh head real, the rest unwritten.

  Only the head's initial values can survive `convert`; building them alone lets XLA
  drop every other initialiser, which spares seconds of compiling random-number code
  (and, for ViT-L/14, a 1.2 GB tree that would be overwritten at once). Same seed and
  module path, so the head equals spec.init()'s.
  """
  key = jax.random.PRNGKey(0)
  dummy = jnp.zeros((1, spec.image_size, spec.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(spec.module.init, key, dummy)
  # np.empty reserves address space only; convert replaces these leaves or fails.
  template = jax.tree_util.tree_map(lambda s: np.empty(s.shape, s.dtype), dict(shapes))
  template['params'] = dict(template['params'])
  template['params']['head'] = jax.jit(
      lambda k: spec.module.init(k, dummy)['params']['head'])(key)
  return template


def _describe(spec) -> str:
  o = spec.overrides
  return (f'{spec.name} (image {o["image_size"]}, patch {o["patch_size"]}, width '
          f'{o["width"]}, {o["layers"]} layers, embed {o["embed_dim"]}, '
          f'{spec.num_classes} classes)')
