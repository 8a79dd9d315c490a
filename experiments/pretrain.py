"""Stage 1: pre-train the source model on the dataset's source (train) split when no
checkpoint is given. SGD with momentum, a cosine or step learning rate (`lr_schedule`),
random crop + flip.

Any model (`surgery.models`) and dataset (`surgery.datasets`) contract: the model comes
as a spec, the data from `dataset.source('train')`. The finished variables dict is
saved with orbax in WORKDIR/source_model (what `spec.load` reads); after every epoch the model and optimizer state go to
WORKDIR/source_model_partial so an interrupted run resumes from its last finished epoch.
"""
import json
import os

import jax
import numpy as np
import optax
from tqdm import tqdm

import surgery
from surgery import datasets, distributed
from surgery.checkpoints import load_orbax_params, save_params
from surgery.data.sources import to_arrays
from surgery.io import atomic_write
from experiments.plan import dataset_name


def augment(images, rng):
  """Random crop of the 4-pixel zero-padded image (back to its size), and a
  horizontal flip."""
  n, h, w = images.shape[:3]
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  dy, dx = rng.randint(0, 9, n), rng.randint(0, 9, n)
  rows = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  flip = rng.rand(n) < 0.5
  out[flip] = out[flip, :, ::-1]
  return out


def lr_schedule(pc, steps_per_epoch: int):
  """Cosine from `pc.lr` to 0 over the run; or, with `pc.milestones` (epochs), TTT's and
  MEMO's step schedule: `pc.lr`, times `pc.gamma` (0.1) at each milestone (their
  ResNet-26 recipe: lr 0.1, milestones 50 and 65 of 75 epochs)."""
  milestones = pc.get('milestones') or ()
  if not milestones:
    return optax.cosine_decay_schedule(pc.lr, pc.epochs * steps_per_epoch)
  return optax.piecewise_constant_schedule(
      pc.lr, {int(m) * steps_per_epoch: float(pc.get('gamma', 0.1)) for m in milestones})


def _train_module(spec, model_state):
  """Pre-training trains every layer, so BatchNorm layers run in train mode (the
  spec's module keeps them in eval mode, as fine-tuning wants)."""
  if 'batch_stats' in model_state and hasattr(spec.module, 'bn_train_layers'):
    return spec.module.clone(bn_train_layers=None)
  return spec.module


def pretrain_or_load(config, workdir, spec) -> dict:
  """The source model's variables ({'params': ...} plus e.g. 'batch_stats'): loaded
  from WORKDIR/source_model, else pre-trained (resuming a partial run) and saved."""
  final = os.path.join(workdir, 'source_model')
  if os.path.isdir(final):
    print(f'source model: loading {final}', flush=True)
    return _load_final(final, spec)

  pc = config.pretrain
  variables = spec.init(pc.get('seed', 0))
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  train = to_arrays(datasets.create(dataset_name(config), config).source('train'))
  images, labels = train['image'], train['label']
  steps_per_epoch = len(images) // pc.batch_size
  schedule = lr_schedule(pc, steps_per_epoch)
  tx = optax.chain(optax.add_decayed_weights(pc.weight_decay),
                   optax.sgd(schedule, momentum=pc.momentum))
  mesh = surgery.data_mesh() if jax.device_count() > 1 else None
  step = surgery.make_train_step(_train_module(spec, model_state), tx, mesh=mesh)
  state = surgery.init_train_state(variables['params'], tx, model_state)

  partial = os.path.join(workdir, 'source_model_partial')
  meta_path = os.path.join(workdir, 'source_model_partial.json')
  start = 0
  if os.path.isdir(partial) and os.path.exists(meta_path):
    with open(meta_path) as f:
      start = json.load(f)['epochs_done']
    restored = load_orbax_params(partial, {'state': state})
    state = restored['state']
    print(f'source model: resuming pre-training after epoch {start}', flush=True)
  state = surgery.replicate(mesh, state)

  print(f'source model: pre-training {spec.name} on {len(images)} {dataset_name(config)} images for '
        f'{pc.epochs} epochs, SGD lr {pc.lr:g} '
        + (f'x {pc.get("gamma", 0.1):g} at epochs {",".join(map(str, pc.milestones))}'
           if pc.get('milestones') else '(cosine)')
        + ' (no init_checkpoint given)', flush=True)
  for epoch in range(start, pc.epochs):
    rng = np.random.RandomState(pc.seed * 1000 + epoch)
    order = rng.permutation(len(images))
    bar = tqdm(range(steps_per_epoch), desc=f'pretrain epoch {epoch + 1}/{pc.epochs}', leave=False)
    for b in bar:
      idx = order[b * pc.batch_size:(b + 1) * pc.batch_size]
      x, y = surgery.shard_batch(mesh, augment(images[idx], rng), labels[idx].astype(np.int32))
      state, metrics = step(state, x, y)
      if b % 50 == 0:
        bar.set_postfix(loss=f'{float(metrics["loss"]):.3f}')
    save_params(partial, {'state': surgery.train.to_host(state)})  # every process takes part
    if distributed.is_primary():
      atomic_write(meta_path, json.dumps({'epochs_done': epoch + 1}))
    print(f'pretrain epoch {epoch + 1}: last batch loss {float(metrics["loss"]):.3f}', flush=True)
  state = surgery.train.to_host(state)
  variables = {'params': state.params, **state.model_state}
  save_params(final, variables)
  return variables


def _load_final(path, spec) -> dict:
  try:
    return spec.load(path)
  except ValueError as e:  # SurgeryError, or orbax's own on a structure mismatch
    # Saved before the model contract as {'params', 'model_state'}: with an empty
    # model_state (GroupNorm) orbax refuses to restore it as bare variables.
    template = spec.init()
    model_state = {k: v for k, v in template.items() if k != 'params'}
    try:
      old = load_orbax_params(path, {'params': template['params'], 'model_state': model_state})
    except ValueError:
      raise e from None
    return {'params': old['params'], **old['model_state']}
