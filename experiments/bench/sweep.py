"""What a Cross-Val sweep must compute, in XLA's FLOP count, against one `all` run.

    python -m experiments.bench.sweep [--model resnet26] [--epochs 15] [--lrs 3]

Counts, from the compiled programs (`cost_analysis()`), the work one fine-tuning run of
each surgical option does as `experiments.finetune` runs it: `epochs` x steps per epoch
of the training step (from the frozen prefix's activations where the option allows
it, so the prefix is not counted per step), a validation pass per epoch, one test pass,
and, once per option, the prefix activations of every image. The sweep is every option
except `all` at `lrs` learning rates; the ratio is its FLOPs over one `all` run's. A
wall-time ratio near it means the per-FLOP speed of the options is alike, and no
implementation that does the same arithmetic can go far below it. Compiles only; runs
nothing.
"""
import argparse
import json
import math

import jax
import jax.numpy as jnp

import surgery
from surgery import models
from experiments.finetune import first_tuned_group


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def run_flops(spec, variables, method, batch, n_tune, n_val, n_test, epochs):
  """(FLOPs of one run of `method`, FLOPs of its prefix activations, the cut)."""
  params = variables['params']
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  mask = surgery.trainable_mask(params, spec.groups, spec.methods[method])
  cut = first_tuned_group(mask, spec.groups) if spec.cuts else 0
  size = spec.image_size
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  prefix_per_image = 0.0
  if cut:
    head = spec.module.clone(stop=cut)
    fwd = jax.jit(lambda p, s, x: surgery.train.forward(head, p, s, x, train=False)[0])
    prefix_per_image = _flops(fwd.lower(params, model_state, image).compile())
    act = jax.eval_shape(fwd, params, model_state, image)
    x = jax.ShapeDtypeStruct((batch,) + act.shape[1:], act.dtype)
  else:
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  module = spec.module.clone(start=cut) if cut else spec.module
  tx = surgery.surgical(surgery.base_optimizer('adam', 1e-4, 0.0), mask)
  state = surgery.init_train_state(params, tx, model_state)
  step = surgery.make_train_step(module, tx)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  step_flops = _flops(step.lower(state, x, y).compile())
  predict = surgery.make_predict(module)
  one = jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype)
  eval_per_image = _flops(predict.lower(params, model_state, one).compile())
  steps = epochs * math.ceil(n_tune / batch)
  run = steps * step_flops + (epochs * n_val + n_test) * eval_per_image
  return run, prefix_per_image * (n_tune + n_val + n_test), cut


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--model', default='resnet26', help=f'one of: {", ".join(models.names())}')
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--epochs', type=int, default=15)
  ap.add_argument('--lrs', type=int, default=3, help='learning rates per option')
  ap.add_argument('--n_tune', type=int, default=1000)
  ap.add_argument('--n_val', type=int, default=100)
  ap.add_argument('--n_test', type=int, default=8900)
  args = ap.parse_args(argv)
  spec = models.create(args.model)
  variables = spec.init()
  per = {m: run_flops(spec, variables, m, args.batch, args.n_tune, args.n_val, args.n_test,
                      args.epochs) for m in spec.methods}
  all_run = per['all'][0]
  print(f'{spec.name}: GFLOPs per run ({args.epochs} epochs, batch {args.batch}, '
        f'{args.n_tune}/{args.n_val}/{args.n_test} tune/val/test)')
  print('| option | cut | run | runs / one `all` run | prefix once |')
  print('|---|---:|---:|---:|---:|')
  sweep = 0.0
  for m, (run, prefix, cut) in per.items():
    print(f'| {m} | {cut} | {run / 1e9:.0f} | {run / all_run:.2f} | {prefix / 1e9:.0f} |')
    if m != 'all':
      sweep += args.lrs * run + prefix
  print(f'sweep ({len(per) - 1} options x {args.lrs} lrs) / one `all` run: '
        f'{sweep / all_run:.2f} in FLOPs')
  print(json.dumps({'model': spec.name, 'sweep_over_all': sweep / all_run,
                    'runs': {m: v[0] for m, v in per.items()},
                    'prefix': {m: v[1] for m, v in per.items()}}))


if __name__ == '__main__':
  main()
