"""Stage 1: the source model, trained from an ImageNet- or CLIP-pretrained checkpoint on
the dataset's source split (paper A.4), in one of two kinds.

`lp_ft` (Living-17, Entity-30): LP-FT. A new head is trained with the body frozen
(`head_epochs`), then every layer (`all_epochs`), both with Adam, no weight decay,
random-resized crop and flip.

    source_stage = dict(kind='lp_ft', head_epochs=3, all_epochs=2, head_lr=1e-3,
                        all_lr=1e-4, batch_size=128, workers=8, seed=0,
                        checkpoint_every=500)

  Learning rates: the paper gives none. 1e-3 is Adam's default and trains a fresh linear
  head quickly; 1e-4 for the whole network is ten times lower so that two epochs adapt
  the ImageNet features to the source subpopulations without erasing them (LP-FT's
  point). BatchNorm statistics stay frozen while only the head trains, and are updated
  in the `all` phase, as a full fine-tune does.

`erm` (Waterbirds, CelebA, Camelyon17, FMoW): every layer from the start, as Sagawa et
al.'s and WILDS' ERM baselines train.

    source_stage = dict(kind='erm', epochs=300, lr=1e-3, optimizer='adam',  # or sgd, adamw
                        weight_decay=0.0, schedule='constant',  # or 'cosine' (to 0)
                        batch_size=128, workers=8, seed=0, checkpoint_every=500,
                        select='best', select_metric='acc', augment=False)

  `select='best'` evaluates the source split 'val' after every epoch and keeps the
  epoch with the best `select_metric` (the paper's "best checkpoint based on early
  stopping"; 'acc', as Sagawa et al.'s ERM selects on average validation accuracy);
  'last' keeps the last epoch. `augment` streams with the dataset's `train_transform`
  (random crops and flips), else with its deterministic `eval_transform`. SGD uses
  momentum 0.9; `adam` and `sgd` add weight decay to the gradient (L2), `adamw`
  decouples it (`surgery.base_optimizer`).

The source split streams through `surgery.data.pipeline.batches` (shuffled per epoch,
this host's shard, in `workers` processes). Training state, the best epoch's weights
and the iterator's position are saved with an orbax CheckpointManager in
WORKDIR/source_stage every `checkpoint_every` steps, at the end of each epoch that was
evaluated and at the end of each phase, so an interrupted run resumes mid-epoch where it
stopped; the result goes to WORKDIR/source_model, which later runs load. After each
phase the source split 'val' is evaluated; its accuracy is printed and kept in
WORKDIR/source_stage.json, which summary.md shows.
"""
import dataclasses
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

import surgery
from surgery import datasets, distributed
from surgery.checkpoints import save_params
from surgery.data.pipeline import batches
from surgery.data.shm import shared_memory_scope
from surgery.errors import SurgeryError
from surgery.io import atomic_write
from surgery.optim import BASE_OPTIMIZERS
from experiments.plan import dataset_name

COMMON = ('kind', 'batch_size', 'workers', 'seed', 'checkpoint_every')
FIELDS = {
    'lp_ft': COMMON + ('head_epochs', 'all_epochs', 'head_lr', 'all_lr'),
    'erm': COMMON + ('epochs', 'lr', 'optimizer', 'weight_decay', 'schedule', 'select',
                     'select_metric', 'augment'),
}
SCHEDULES = ('constant', 'cosine')
SELECT = ('best', 'last')
SELECT_METRICS = ('acc',)


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  group_spec: str  # what trains (`surgery.trainable_mask` syntax)
  epochs: int
  optimizer: Callable[[int], optax.GradientTransformation]  # total steps -> optimizer
  augment: bool  # stream with train_transform (else eval_transform)
  select_best: bool  # keep the epoch with the best source-val metric


def phases(config, spec) -> list:
  """The stage's phases in order; phases with no epochs are left out."""
  sc = config.source_stage
  if sc.kind == 'lp_ft':
    # The model's head methods' groups; without any, its last group in network order.
    head = ','.join(spec.methods[m] for m in spec.head_methods) or spec.group_names()[-1]
    out = [Phase('head', head, int(sc.head_epochs),
                 lambda steps, lr=float(sc.head_lr): optax.adam(lr), True, False),
           Phase('all', 'all', int(sc.all_epochs),
                 lambda steps, lr=float(sc.all_lr): optax.adam(lr), True, False)]
  else:
    def optimizer(steps, sc=sc):
      lr = (optax.cosine_decay_schedule(float(sc.lr), max(steps, 1))
            if sc.schedule == 'cosine' else float(sc.lr))
      return surgery.base_optimizer(sc.optimizer, lr, float(sc.weight_decay))
    out = [Phase('all', 'all', int(sc.epochs), optimizer, bool(sc.augment),
                 sc.select == 'best')]
  return [p for p in out if p.epochs > 0]


def _choice(sc, field, valid):
  if sc[field] not in valid:
    raise SurgeryError(f'source_stage.{field} must be one of {", ".join(valid)}, '
                       f'got {sc[field]!r}')


def check(config) -> None:
  """The stage's fields, checked with the rest of the plan."""
  sc = config.source_stage
  if sc.get('kind') not in FIELDS:
    raise SurgeryError(f'source_stage.kind must be one of {", ".join(FIELDS)}, '
                       f'got {sc.get("kind")!r}')
  missing = [f for f in FIELDS[sc.kind] if f not in sc]
  if missing:
    raise SurgeryError(f'source_stage ({sc.kind}) is missing {", ".join(missing)}')
  counts = ('head_epochs', 'all_epochs') if sc.kind == 'lp_ft' else ('epochs',)
  for f in counts + ('workers', 'seed'):
    if isinstance(sc[f], bool) or not isinstance(sc[f], int) or sc[f] < 0:
      raise SurgeryError(f'source_stage.{f} must be an integer >= 0, got {sc[f]!r}')
  for f in ('batch_size', 'checkpoint_every'):
    if isinstance(sc[f], bool) or not isinstance(sc[f], int) or sc[f] < 1:
      raise SurgeryError(f'source_stage.{f} must be an integer >= 1, got {sc[f]!r}')
  for f in (('head_lr', 'all_lr') if sc.kind == 'lp_ft' else ('lr',)):
    if not float(sc[f]) > 0:
      raise SurgeryError(f'source_stage.{f} must be > 0, got {sc[f]!r}')
  if sc.kind == 'erm':
    _choice(sc, 'optimizer', BASE_OPTIMIZERS)
    _choice(sc, 'schedule', SCHEDULES)
    _choice(sc, 'select', SELECT)
    _choice(sc, 'select_metric', SELECT_METRICS)
    if not float(sc.weight_decay) >= 0:
      raise SurgeryError(f'source_stage.weight_decay must be >= 0, got {sc.weight_decay!r}')
    if not isinstance(sc.augment, bool):
      raise SurgeryError(f'source_stage.augment must be true or false, got {sc.augment!r}')
  if not config.init_checkpoint:
    raise SurgeryError(f'init_checkpoint: source_stage {sc.kind} starts from a pre-trained '
                       'model; set --config.init_checkpoint (e.g. torchvision resnet50 .pth)')


def _module(spec, phase: Phase):
  if phase.group_spec == 'all' and hasattr(spec.module, 'bn_train_layers'):
    return spec.module.clone(bn_train_layers=None)  # every BatchNorm in train mode
  return spec.module


def _transforms(dataset, augment: bool) -> dict:
  """batches() keywords that stream with the training crops or the evaluation ones."""
  if augment:
    return {'random_transform': getattr(dataset, 'train_transform', None)}
  transform = getattr(dataset, 'eval_transform', None)
  if transform is None and not _holds_arrays(dataset.source('train')):
    raise SurgeryError('source_stage: this dataset has no eval_transform; set '
                       'source_stage.augment=True')
  return {'transform': transform}


def _holds_arrays(source) -> bool:
  return len(source) > 0 and 'image' in source[0]


def _per_host(batch_size: int) -> int:
  """`batch_size` is the global batch, split evenly over the processes, so the lr means
  the same whatever the number of hosts."""
  hosts = jax.process_count()
  if batch_size % hosts:
    raise SurgeryError(f'source_stage.batch_size {batch_size} does not split over '
                       f'{hosts} processes')
  return batch_size // hosts


def _iterator(source, dataset, sc, phase_index, phase):
  return batches(source, _per_host(sc.batch_size), seed=sc.seed * 100 + phase_index,
                 num_epochs=phase.epochs, worker_count=sc.workers, drop_remainder=True,
                 **_transforms(dataset, phase.augment))


def _make_counter(module, mesh):
  """Jitted (hits, count) of a weighted batch, the same number in every process."""

  def count(params, model_state, images, labels, weights):
    logits = surgery.train.forward(module, params, model_state,
                                   surgery.train.to_float_images(images), train=False)[0]
    hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * weights
    return jnp.sum(hits), jnp.sum(weights)

  if mesh is None:
    return jax.jit(count)
  rep, dat = surgery.train.replicated(mesh), surgery.train.batch_sharded(mesh)
  return jax.jit(count, in_shardings=(rep, rep, dat, dat, dat), out_shardings=(rep, rep))


def _val_accuracy(counter, state, dataset, sc, mesh) -> float:
  """Accuracy on the source split 'val' (evaluation crops), every host its shard."""
  it = batches(dataset.source('val'), _per_host(sc.batch_size), seed=0, shuffle=False,
               num_epochs=1, worker_count=sc.workers, **_transforms(dataset, False))
  hits = total = 0.0
  with it:
    for batch in it:
      x, y, w = surgery.train.host_local_batch(mesh, batch['image'], batch['label'],
                                               batch['weight'])
      h, n = counter(state.params, state.model_state, x, y, w)
      hits += float(surgery.train.to_host(h))
      total += float(surgery.train.to_host(n))
  return hits / max(total, 1.0)


def train_or_load(config, workdir, spec) -> dict:
  """The source model's variables: WORKDIR/source_model if there, else trained (resuming
  from WORKDIR/source_stage) and saved there."""
  final = os.path.join(workdir, 'source_model')
  if os.path.isdir(final):
    accs = ', '.join(f'{p["phase"]} {p["source_val_acc"]:.4f}' for p in read_report(workdir))
    print(f'source model: loading {final}' + (f' (source val acc after {accs})' if accs else ''),
          flush=True)
    return spec.load(final)
  sc = config.source_stage
  dataset = datasets.create(dataset_name(config), config)
  source = dataset.source('train')
  start = spec.load(config.init_checkpoint)
  params = start['params']
  model_state = {k: v for k, v in start.items() if k != 'params'}
  plan = phases(config, spec)
  mesh = surgery.data_mesh() if jax.device_count() > 1 else None

  # Worker processes hand batches over in shared memory: named after this workdir, so a
  # killed run's leftovers are removed by the next one (surgery.data.shm).
  with shared_memory_scope(workdir):
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    with ocp.CheckpointManager(os.path.join(workdir, 'source_stage'), options=options) as manager:
      latest = manager.latest_step()
      done = {'phase': 0, 'step': 0, 'iterator': None, 'best': None}
      weights_abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                                {'params': params, 'model_state': model_state})
      if latest is not None:
        done = {'best': None, **manager.restore(latest, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))['meta']}
        if done['step'] == 0:  # saved at the end of a phase: its weights, no optimizer
          weights = manager.restore(latest, args=ocp.args.Composite(
              weights=ocp.args.StandardRestore(weights_abstract)))['weights']
          params, model_state = weights['params'], weights['model_state']
      for index, phase in enumerate(plan):
        if index < done['phase']:
          continue
        it = _iterator(source, dataset, sc, index, phase)
        tx = surgery.surgical(phase.optimizer(len(it)),
                              surgery.trainable_mask(params, spec.groups, phase.group_spec))
        state = surgery.init_train_state(params, tx, model_state)
        best, best_weights = None, None  # {'metric', 'epoch'}, their weights
        if index == done['phase'] and done['step'] > 0:  # mid-phase: state and position
          abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
          items = {'state': ocp.args.StandardRestore(abstract)}
          if done['best']:
            items['best_weights'] = ocp.args.StandardRestore(weights_abstract)
          got = manager.restore(latest, args=ocp.args.Composite(**items))
          state, best, best_weights = got['state'], done['best'], got.get('best_weights')
          it.set_state(done['iterator'])
          print(f'source stage: resuming phase {phase.name} at step {int(state.step)} of '
                f'{len(it)}', flush=True)
        state = surgery.replicate(mesh, state)
        step = surgery.make_train_step(_module(spec, phase), tx, mesh=mesh)
        counter = _make_counter(spec.module, mesh) if phase.select_best else None
        print(f'source stage ({phase.name}): {phase.epochs} epoch(s) of {it.steps_per_epoch} '
              f'steps over {len(source)} source images, {_describe(sc, phase)}', flush=True)
        loss = None
        with it, tqdm(total=len(it), initial=int(surgery.train.to_host(state.step)),
                      desc=f'source {phase.name}', unit='step', leave=False) as bar:
          for batch in it:
            x, y, w = surgery.train.host_local_batch(mesh, batch['image'], batch['label'],
                                                     batch['weight'])
            state, metrics = step(state, x, y, w)
            bar.update()
            n = int(surgery.train.to_host(state.step))
            if n % 20 == 0 or n == len(it):
              loss = float(surgery.train.to_host(metrics['loss']))
              bar.set_postfix(loss=f'{loss:.3f}')
            epoch_end = n % it.steps_per_epoch == 0
            if counter is not None and epoch_end:
              epoch = n // it.steps_per_epoch
              acc = _val_accuracy(counter, state, dataset, sc, mesh)
              bar.write(f'source stage epoch {epoch}: source val acc {acc:.4f}')
              if best is None or acc > best['metric']:
                best = {'metric': acc, 'epoch': epoch}
                best_weights = surgery.train.to_host(
                    {'params': state.params, 'model_state': state.model_state})
            if n < len(it) and (n % sc.checkpoint_every == 0
                                    or (counter is not None and epoch_end)):
              items = {'state': state}
              if best_weights is not None:
                items['best_weights'] = best_weights
              _save(manager, items, index, n, it, best)
        if best_weights is not None:
          params, model_state = best_weights['params'], best_weights['model_state']
          acc = best['metric']
          print(f'source stage ({phase.name}): keeping epoch {best["epoch"]} of {phase.epochs} '
                f'(source val acc {best["metric"]:.4f})', flush=True)
        else:
          acc = _val_accuracy(counter or _make_counter(spec.module, mesh), state, dataset, sc,
                              mesh)
          state = surgery.train.to_host(state)
          params, model_state = state.params, state.model_state
        _save(manager, {'weights': {'params': params, 'model_state': model_state}}, index + 1, 0)
        record_phase(workdir, phase, acc, len(dataset.source('val')))
        print(f'source stage ({phase.name}) done: source val acc {acc:.4f}'
              + (f', last batch loss {loss:.3f}' if loss else ''), flush=True)
  variables = {'params': params, **model_state}
  save_params(final, variables)
  return variables


REPORT = 'source_stage.json'  # in the workdir: each phase's source val accuracy


def record_phase(workdir, phase: Phase, acc: float, n_val: int) -> None:
  """Adds (or replaces) a finished phase's source val accuracy in WORKDIR/REPORT, which
  summary.md shows: a source model that did not learn is seen before the sweep's rows."""
  if not distributed.is_primary():
    return
  path = os.path.join(workdir, REPORT)
  phases_done = [p for p in read_report(workdir) if p['phase'] != phase.name]
  phases_done.append({'phase': phase.name, 'trains': phase.group_spec, 'epochs': phase.epochs,
                      'source_val_acc': round(float(acc), 6), 'source_val_images': n_val})
  atomic_write(path, json.dumps({'phases': phases_done}, indent=2) + '\n')


def read_report(workdir) -> list:
  path = os.path.join(workdir, REPORT)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f).get('phases', [])


def summary_lines(workdir) -> list:
  """summary.md's "Source stage" section, if the workdir ran one."""
  phases_done = read_report(workdir)
  if not phases_done:
    return []
  lines = ['## Source stage', '', '| phase | trains | epochs | source val accuracy (%) |',
           '|---|---|---|---|']
  lines += [f'| {p["phase"]} | {p["trains"]} | {p["epochs"]} | {100 * p["source_val_acc"]:.1f} '
            f'({p["source_val_images"]} images) |' for p in phases_done]
  return lines + ['']


def _describe(sc, phase: Phase) -> str:
  if sc.kind == 'lp_ft':
    return f'Adam lr {float(sc[phase.name + "_lr"]):g}'
  return (f'{sc.optimizer} lr {float(sc.lr):g} ({sc.schedule}), weight decay '
          f'{float(sc.weight_decay):g}, {"augmented" if phase.augment else "no augmentation"}, '
          f'keeping the {sc.select} epoch')


def _save(manager, items, phase, step_in_phase, it=None, best=None):
  """One checkpoint: `items` (pytrees) and where training stands. The manager's step
  numbers count saves, so phases need no shared step counter."""
  number = (manager.latest_step() or 0) + 1
  args = {k: ocp.args.StandardSave(surgery.train.to_host(v)) for k, v in items.items()}
  args['meta'] = ocp.args.JsonSave({'phase': phase, 'step': step_in_phase,
                                    'iterator': it.get_state() if it is not None else None,
                                    'best': best})
  manager.save(number, args=ocp.args.Composite(**args))
  manager.wait_until_finished()
