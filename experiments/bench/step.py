"""Step-time benchmark: surgical fine-tuning of a model (default ResNet-26-GN), batch 64, Adam.

    python -m experiments.bench [--model resnet26] [--steps 20] [--rounds 5] [--no_torch]
    python -m experiments.bench --model resnet50 --batch 256 --dtype bfloat16   # on a GPU

For each method (the model's surgical methods, then every registered method that tunes
the whole model through an optimizer wrapper alone, with its default settings) it
reports the median step time of the runner's own optimizer (`finetune.make_optimizer`),
the optimizer-state bytes and, when torch is installed and the model has a torch twin
(`experiments.bench.torch_reference.from_spec`), the same step in PyTorch (freezing by
requires_grad=False; a wrapper method only where it has a torch twin,
`torch_reference.METHOD_TWINS`), measured in alternating rounds in this one process so
machine noise hits both alike. An epoch is the paper's 1,000 tuning images, for methods
that act per epoch. The last line printed is one JSON object with every
figure.

With `--dtype bfloat16` both run mixed precision: the Flax model computes in bfloat16
with float32 parameters and statistics (`model.dtype`), torch under
`torch.autocast(dtype=torch.bfloat16)` with channels-last tensors on a GPU. Torch runs
on the GPU whenever JAX does and torch sees one.
"""
import argparse
import json
import math
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import ml_collections

import surgery
from experiments import finetune
from surgery import models
from surgery.errors import SurgeryError
from surgery.groups import assign_groups
from surgery.methods import registry
from surgery.methods.registry import Context

TUNE_IMAGES = 1000  # the paper's target tune set: an epoch, for methods acting per epoch


def method_names(spec) -> list:
  """The model's own methods, then each registered method that tunes the whole model
  through an optimizer wrapper alone (no epoch hook, no extra loss)."""
  wrapped = [n for n, m in registry.all_methods().items()
             if m.trains and m.wrap and m.groups == 'all' and not m.before_epoch
             and not m.extra_loss]
  return list(spec.methods) + [n for n in wrapped if n not in spec.methods]


def _method(spec, name):
  """(method, its settings at their defaults, its hparam: the first value of its grid)."""
  method = registry.resolve(name, spec)
  settings = registry.settings(method, {}) if method.section else None
  hparam = float(settings[method.grid_field][0]) if method.hparam else None
  return method, settings, hparam


def _mask(spec, method, params):
  return surgery.trainable_mask(params, spec.groups, registry.resolve(method, spec).groups)


def _steps_per_epoch(batch):
  return math.ceil(TUNE_IMAGES / batch)


def _optimizer(spec, name, params, mask, batch, lr, wd):
  method, settings, hparam = _method(spec, name)
  ctx = Context(_steps_per_epoch(batch), assign_groups(params, spec.groups), spec.groups,
                settings, hparam)
  config = ml_collections.ConfigDict(dict(optimizer='adam', weight_decay=wd, epochs=1))
  return finetune.make_optimizer(config, method, lr, mask, ctx)


def _jax_runner(spec, method, variables, images, labels, lr=1e-4, wd=1e-4):
  params = variables['params']
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  mask = _mask(spec, method, params)
  tx = _optimizer(spec, method, params, mask, len(images), lr, wd)
  mesh = surgery.data_mesh() if jax.device_count() > 1 else None
  step = surgery.make_train_step(spec.module, tx, mesh=mesh, donate=True)
  # Copies: the donated step deletes the state's buffers, and `variables` is shared.
  state = surgery.replicate(mesh, surgery.init_train_state(
      jax.tree_util.tree_map(jnp.array, params), tx, jax.tree_util.tree_map(jnp.array, model_state)))
  x, y = surgery.shard_batch(mesh, images, labels)
  box = {'state': state}
  memory = step.lower(state, x, y).compile().memory_analysis()
  peak = None
  if memory is not None:  # arguments + outputs + temporaries, less what is aliased
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            + memory.temp_size_in_bytes - memory.alias_size_in_bytes)

  def run(n):
    s = box['state']
    for _ in range(n):
      s, metrics = step(s, x, y)
    jax.block_until_ready(metrics['loss'])
    box['state'] = s

  return run, surgery.state_bytes(state.opt_state), peak


def _torch_device():
  import torch
  return 'cuda' if jax.default_backend() == 'gpu' and torch.cuda.is_available() else 'cpu'


def _torch_runner(spec, method, params, images, labels, lr=1e-4, wd=1e-4):
  import contextlib

  import torch
  from experiments.bench.torch_reference import (METHOD_TWINS, from_spec, to_input,
                                                 tuned_named_parameters)
  torch.manual_seed(0)
  device = _torch_device()
  bf16 = spec.overrides.get('dtype') == 'bfloat16'
  # Channels-last only on the GPU: torch's CPU GroupNorm backward segfaults on it.
  layout = torch.channels_last if device == 'cuda' else torch.contiguous_format
  net = from_spec(spec).to(device, memory_format=layout)
  torch.backends.cudnn.benchmark = True  # lets cuDNN pick its fastest kernels, as trainers do
  autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else (
      contextlib.nullcontext)
  names, tuned = zip(*tuned_named_parameters(net, _mask(spec, method, params), spec))
  ids = {id(p) for p in tuned}
  for p in net.parameters():
    p.requires_grad_(id(p) in ids)
  groups = [{'params': [p], 'lr': lr} for p in tuned]
  opt = torch.optim.Adam(groups, lr=lr, weight_decay=wd)
  twin = None
  if method not in spec.methods:  # a wrapper method: its torch twin sets per-tensor lrs
    _, settings, _ = _method(spec, method)
    twin = METHOD_TWINS[method](groups, names, lr, _steps_per_epoch(len(images)), settings)
  x = to_input(images, spec).to(device, memory_format=layout)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)

  def run(n):
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      with autocast():
        logits = net(x)
      loss = torch.nn.functional.cross_entropy(logits.float(), y)
      loss.backward()
      if twin is not None:
        twin()
      opt.step()
    if device == 'cuda':
      torch.cuda.synchronize()

  state = sum(2 * p.numel() * 4 for p in tuned)  # exp_avg + exp_avg_sq, float32
  return run, state


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--model', default='resnet26', help=f'one of: {", ".join(models.names())}')
  ap.add_argument('--steps', type=int, default=10, help='steps per timed round')
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--batch', type=int, default=0, help='default: 64 at 32x32, 32 above')
  ap.add_argument('--methods', default='', help="comma-separated; default: the model's "
                  'methods and the whole-model optimizer-wrapper methods')
  ap.add_argument('--num_classes', type=int, default=0,
                  help="the head's classes (default: the model's own, e.g. 1000 for resnet50)")
  ap.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                  help='compute dtype (mixed precision for bfloat16)')
  ap.add_argument('--no_torch', action='store_true')
  args = ap.parse_args(argv)
  overrides = {'num_classes': args.num_classes} if args.num_classes else {}
  if args.dtype != 'float32':
    overrides['dtype'] = args.dtype
  try:
    spec = models.create(args.model, **overrides)
  except SurgeryError as e:
    raise SystemExit(f'error: {e}') from None
  valid = method_names(spec)
  methods = [m for m in args.methods.split(',') if m] or valid
  unknown = [m for m in methods if m not in valid]
  if unknown:
    raise SystemExit(f'unknown method(s) {unknown}; valid: {valid}')

  torch_version, twins = None, ()
  if not args.no_torch:
    try:
      import torch
      from experiments.bench import torch_reference
      torch_version = torch.__version__ if torch_reference.from_spec(spec) is not None else None
      twins = tuple(spec.methods) + tuple(torch_reference.METHOD_TWINS)
    except ImportError:
      pass

  rng = np.random.RandomState(0)
  size = spec.image_size
  args.batch = args.batch or (64 if size <= 32 else 32)
  images = rng.randint(0, 256, (args.batch, size, size, 3)).astype(np.uint8)
  labels = rng.randint(0, spec.num_classes, args.batch)
  variables = spec.init()

  rows = {}
  for method in methods:
    runners = {'jax': _jax_runner(spec, method, variables, images, labels)}
    if torch_version and method in twins:
      runners['torch'] = _torch_runner(spec, method, variables['params'], images, labels)
    times = {k: [] for k in runners}
    for run, *_ in runners.values():
      run(2)  # compile / warm up
    for _ in range(args.rounds):
      for k, (run, *_) in runners.items():
        t = time.perf_counter()
        run(args.steps)
        times[k].append((time.perf_counter() - t) / args.steps)
    row = {'jax_ms': 1e3 * statistics.median(times['jax']),
           'jax_images_per_s': args.batch / statistics.median(times['jax']),
           'jax_opt_state_bytes': runners['jax'][1], 'jax_peak_bytes': runners['jax'][2]}
    if 'torch' in runners:
      row['torch_ms'] = 1e3 * statistics.median(times['torch'])
      row['torch_images_per_s'] = args.batch / statistics.median(times['torch'])
      row['torch_opt_state_bytes'] = runners['torch'][1]
      row['jax_over_torch'] = row['jax_ms'] / row['torch_ms']
    rows[method] = row
    peak = row['jax_peak_bytes']
    print(f'{method:12s} jax {row["jax_ms"]:8.1f} ms {row["jax_images_per_s"]:7.0f} img/s'
          f'  state {row["jax_opt_state_bytes"]:>9d} B'
          + (f'  peak {peak / 2**20:7.1f} MiB' if peak is not None else '')
          + (f'  | torch {row["torch_ms"]:8.1f} ms {row["torch_images_per_s"]:7.0f} img/s'
             f'  jax/torch {row["jax_over_torch"]:.2f}' if 'torch' in runners else ''),
          flush=True)

  if 'all' in rows:
    for m, row in rows.items():
      row['jax_step_over_all'] = row['jax_ms'] / rows['all']['jax_ms']
    print('step(method)/step(all), jax: ' +
          ', '.join(f'{m} {r["jax_step_over_all"]:.2f}' for m, r in rows.items()))
  print(json.dumps({
      'benchmark': 'surgical_step', 'model': spec.name, 'model_overrides': dict(spec.overrides),
      'batch': args.batch, 'dtype': args.dtype, 'optimizer': 'adam',
      'device': jax.devices()[0].device_kind, 'num_devices': jax.device_count(),
      'machine': platform.machine(), 'jax': jax.__version__, 'torch': torch_version,
      'torch_device': _torch_device() if torch_version else None,
      'steps_per_round': args.steps, 'rounds': args.rounds, 'methods': rows}))


if __name__ == '__main__':
  main()
