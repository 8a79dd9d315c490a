"""Stage 1 from an ImageNet-pretrained model, following LP-FT (paper A.4): a new head is
trained on the source split with the body frozen (`head_epochs`), then every layer
(`all_epochs`), both with Adam and no weight decay.

    source_stage = dict(kind='lp_ft', head_epochs=3, all_epochs=2, head_lr=1e-3,
                        all_lr=1e-4, batch_size=128, workers=8, seed=0,
                        checkpoint_every=500)

Learning rates: the paper gives none for this stage. 1e-3 is Adam's default and trains
a fresh linear head quickly; 1e-4 for the whole network is ten times lower so that two
epochs adapt the ImageNet features to the source subpopulations without erasing them
(LP-FT's point). BatchNorm statistics stay frozen while only the head trains, and are
updated in the `all` phase, as a full fine-tune does.

The source split streams through `surgery.data.pipeline.batches` (shuffled per epoch,
this host's shard, random-resized crop and flip in `workers` processes). Training state
and the iterator's position are saved with an orbax CheckpointManager in
WORKDIR/source_stage every `checkpoint_every` steps and at the end of each phase, so an
interrupted run resumes mid-epoch where it stopped; the result goes to
WORKDIR/source_model, which later runs load.
"""
import os

import jax
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

import surgery
from surgery import datasets
from surgery.checkpoints import save_params
from surgery.data.pipeline import batches
from surgery.errors import SurgeryError

FIELDS = ('kind', 'head_epochs', 'all_epochs', 'head_lr', 'all_lr', 'batch_size', 'workers', 'seed',
          'checkpoint_every')


def phases(config, spec) -> list:
  """(name, group spec, epochs, lr) per phase; phases with no epochs are left out."""
  sc = config.source_stage
  head = ','.join(spec.methods[m] for m in spec.head_methods) or 'last'
  out = [('head', head, int(sc.head_epochs), float(sc.head_lr)),
         ('all', 'all', int(sc.all_epochs), float(sc.all_lr))]
  return [p for p in out if p[2] > 0]


def check(config) -> None:
  """The stage's fields, checked with the rest of the plan."""
  sc = config.source_stage
  missing = [f for f in FIELDS if f not in sc]
  if missing:
    raise SurgeryError(f'source_stage is missing {", ".join(missing)}')
  if sc.kind != 'lp_ft':
    raise SurgeryError(f"source_stage.kind must be lp_ft, got {sc.kind!r}")
  for f in ('head_epochs', 'all_epochs', 'workers', 'seed'):
    if not isinstance(sc[f], int) or sc[f] < 0:
      raise SurgeryError(f'source_stage.{f} must be an integer >= 0, got {sc[f]!r}')
  for f in ('batch_size', 'checkpoint_every'):
    if not isinstance(sc[f], int) or sc[f] < 1:
      raise SurgeryError(f'source_stage.{f} must be an integer >= 1, got {sc[f]!r}')
  for f in ('head_lr', 'all_lr'):
    if not float(sc[f]) > 0:
      raise SurgeryError(f'source_stage.{f} must be > 0, got {sc[f]!r}')
  if not config.init_checkpoint:
    raise SurgeryError('init_checkpoint: source_stage lp_ft starts from a pre-trained model; '
                       'set --config.init_checkpoint (e.g. torchvision resnet50 .pth)')


def _module(spec, phase: str):
  if phase == 'all' and hasattr(spec.module, 'bn_train_layers'):
    return spec.module.clone(bn_train_layers=None)  # every BatchNorm in train mode
  return spec.module


def _optimizer(spec, params, group_spec, lr):
  mask = surgery.trainable_mask(params, spec.groups, group_spec)
  return surgery.surgical(optax.adam(lr), mask)


def _iterator(source, transform, sc, phase_index, epochs):
  """This process's shard of every epoch: `batch_size` is the global batch, split evenly
  over the processes, so the lr means the same whatever the number of hosts."""
  hosts = jax.process_count()
  if sc.batch_size % hosts:
    raise SurgeryError(f'source_stage.batch_size {sc.batch_size} does not split over '
                       f'{hosts} processes')
  return batches(source, sc.batch_size // hosts, seed=sc.seed * 100 + phase_index,
                 num_epochs=epochs, random_transform=transform, worker_count=sc.workers,
                 drop_remainder=True)


def lp_ft_or_load(config, workdir, spec) -> dict:
  """The source model's variables: WORKDIR/source_model if there, else trained (resuming
  from WORKDIR/source_stage) and saved there."""
  final = os.path.join(workdir, 'source_model')
  if os.path.isdir(final):
    print(f'source model: loading {final}', flush=True)
    return spec.load(final)
  sc = config.source_stage
  dataset = datasets.create(config.get('dataset'), config)
  source = dataset.source('train')
  start = spec.load(config.init_checkpoint)
  params = start['params']
  model_state = {k: v for k, v in start.items() if k != 'params'}
  plan = phases(config, spec)
  mesh = surgery.data_mesh() if jax.device_count() > 1 else None

  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  with ocp.CheckpointManager(os.path.join(workdir, 'source_stage'), options=options) as manager:
    latest = manager.latest_step()
    done = {'phase': 0, 'step': 0, 'iterator': None}
    if latest is not None:
      done = manager.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      if done['step'] == 0:  # saved at the end of a phase: its weights, no optimizer
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                          {'params': params, 'model_state': model_state})
        weights = manager.restore(latest, args=ocp.args.Composite(
            weights=ocp.args.StandardRestore(abstract)))['weights']
        params, model_state = weights['params'], weights['model_state']
    for index, (name, group_spec, epochs, lr) in enumerate(plan):
      if index < done['phase']:
        continue
      tx = _optimizer(spec, params, group_spec, lr)
      state = surgery.init_train_state(params, tx, model_state)
      it = _iterator(source, dataset.train_transform, sc, index, epochs)
      if index == done['phase'] and done['step'] > 0:  # mid-phase: state and position
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        state = manager.restore(latest, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))['state']
        it.set_state(done['iterator'])
        print(f'source stage: resuming phase {name} at step {int(state.step)} of {len(it)}',
              flush=True)
      state = surgery.replicate(mesh, state)
      step = surgery.make_train_step(_module(spec, name), tx, mesh=mesh)
      print(f'source stage ({name}): {epochs} epoch(s) of {it.steps_per_epoch} steps over '
            f'{len(source)} source images, Adam lr {lr:g}', flush=True)
      loss = None
      with it, tqdm(total=len(it), initial=int(surgery.train.to_host(state.step)), desc=f'source {name}',
                    unit='step', leave=False) as bar:
        for batch in it:
          x, y, w = surgery.train.host_local_batch(mesh, batch['image'], batch['label'],
                                                   batch['weight'])
          state, metrics = step(state, x, y, w)
          bar.update()
          n = int(surgery.train.to_host(state.step))
          if n % 20 == 0 or n == len(it):
            loss = float(surgery.train.to_host(metrics['loss']))
            bar.set_postfix(loss=f'{loss:.3f}')
          if n % sc.checkpoint_every == 0 and n < len(it):
            _save(manager, {'state': state}, index, n, it)
      state = surgery.train.to_host(state)
      params, model_state = state.params, state.model_state
      _save(manager, {'weights': {'params': params, 'model_state': model_state}}, index + 1, 0)
      print(f'source stage ({name}) done' + (f': last batch loss {loss:.3f}' if loss else ''),
            flush=True)
  variables = {'params': params, **model_state}
  save_params(final, variables)
  return variables


def _save(manager, items, phase, step_in_phase, it=None):
  """One checkpoint: `items` (pytrees) and where training stands. The manager's step
  numbers count saves, so phases need no shared step counter."""
  number = (manager.latest_step() or 0) + 1
  args = {k: ocp.args.StandardSave(surgery.train.to_host(v)) for k, v in items.items()}
  args['meta'] = ocp.args.JsonSave({'phase': phase, 'step': step_in_phase,
                                    'iterator': it.get_state() if it is not None else None})
  manager.save(number, args=ocp.args.Composite(**args))
  manager.wait_until_finished()
