"""Where ResNet-26's step time goes: its convolutions and GroupNorm, JAX against torch.

    python -m experiments.bench.ops [--batch 64] [--rounds 15]

Every distinct 3x3 convolution of ResNet-26 (input size, channels in -> out, stride) is
timed forward, as the input gradient and as the filter gradient, and GroupNorm (8
groups) forward and forward + backward, in JAX (XLA on this machine's default device)
and in torch (oneDNN on a CPU) with the same threads. Each op alternates between the
two frameworks round by round; the table gives medians in ms and the JAX / torch ratio,
and "x in step" is how many times the op occurs in one training step. The last line
printed is one JSON object with every figure.
"""
import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from surgery.models.group_norm import GroupNorm

# (size, in, out, stride, times per step) for ResNet-26 at width 1.
CONVS = ((32, 3, 16, 1, 1), (32, 16, 16, 1, 8), (32, 16, 32, 2, 1), (16, 32, 32, 1, 7),
         (16, 32, 64, 2, 1), (8, 64, 64, 1, 7))
NORMS = ((32, 16, 9), (16, 32, 8), (8, 64, 8))  # (size, channels, times per step)
_DN = ('NHWC', 'HWIO', 'NHWC')


def _time(fn, rounds):
  fn()
  out = []
  for _ in range(rounds):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def _jax_conv_ops(batch, size, cin, cout, stride):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(batch, size, size, cin).astype(np.float32))
  w = jnp.asarray(rng.randn(3, 3, cin, cout).astype(np.float32))

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=_DN)

  dy = jnp.ones_like(conv(x, w))
  fwd = jax.jit(conv)
  gin = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  gw = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  return {'forward': lambda: fwd(x, w).block_until_ready(),
          'input grad': lambda: gin(x, w, dy).block_until_ready(),
          'filter grad': lambda: gw(x, w, dy).block_until_ready()}


def _torch_conv_ops(torch, batch, size, cin, cout, stride):
  x = torch.randn(batch, cin, size, size)
  w = torch.randn(cout, cin, 3, 3)
  dy = torch.ones_like(torch.nn.functional.conv2d(x, w, stride=stride, padding=1))
  grad = torch.nn.grad
  return {'forward': lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=1),
          'input grad': lambda: grad.conv2d_input(x.shape, w, dy, stride=stride, padding=1),
          'filter grad': lambda: grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=1)}


def _jax_norm_ops(batch, size, channels):
  x = jnp.asarray(np.random.RandomState(0).randn(batch, size, size, channels).astype(np.float32))
  module = GroupNorm(8, 1e-5)
  variables = module.init(jax.random.PRNGKey(0), x)
  fwd = jax.jit(module.apply)
  both = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) * x), argnums=(0, 1)))
  return {'GroupNorm forward': lambda: fwd(variables, x).block_until_ready(),
          'GroupNorm fwd+bwd': lambda: jax.block_until_ready(both(variables, x))}


def _torch_norm_ops(torch, batch, size, channels):
  x = torch.randn(batch, channels, size, size, requires_grad=True)
  norm = torch.nn.GroupNorm(8, channels, eps=1e-5)

  def both():
    (norm(x) * x).sum().backward()

  def forward():
    with torch.no_grad():
      norm(x)

  return {'GroupNorm forward': forward, 'GroupNorm fwd+bwd': both}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--rounds', type=int, default=15)
  args = parser.parse_args(argv)
  import torch
  threads = torch.get_num_threads()
  rows = []
  cases = ([(f'conv {s}x{s}x{i}->{o} s{st}', n, _jax_conv_ops(args.batch, s, i, o, st),
             _torch_conv_ops(torch, args.batch, s, i, o, st)) for s, i, o, st, n in CONVS]
           + [(f'{s}x{s}x{c}', n, _jax_norm_ops(args.batch, s, c),
               _torch_norm_ops(torch, args.batch, s, c)) for s, c, n in NORMS])
  print(f'{"op":28s} {"kind":18s} {"jax ms":>8s} {"torch ms":>9s} {"ratio":>6s} {"x in step":>9s}')
  for name, count, jax_ops, torch_ops in cases:
    for kind in jax_ops:
      times = {'jax': [], 'torch': []}
      for _ in range(args.rounds):  # alternate, so noise hits both alike
        times['jax'] += _time(jax_ops[kind], 1)
        times['torch'] += _time(torch_ops[kind], 1)
      j, t = (1e3 * statistics.median(times[k]) for k in ('jax', 'torch'))
      rows.append({'op': name, 'kind': kind, 'jax_ms': j, 'torch_ms': t, 'ratio': j / t,
                   'per_step': count})
      print(f'{name:28s} {kind:18s} {j:8.2f} {t:9.2f} {j / t:6.2f} {count:9d}', flush=True)
  print(json.dumps({'benchmark': 'resnet26_ops', 'batch': args.batch, 'rounds': args.rounds,
                    'device': jax.devices()[0].platform, 'machine': platform.machine(),
                    'jax': jax.__version__, 'torch': torch.__version__,
                    'torch_threads': threads, 'rows': rows}))


if __name__ == '__main__':
  main()
