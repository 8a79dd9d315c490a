"""experiments.bench.sweep's FLOP accounting on a depth-8 ResNet-26."""
import pytest

from experiments.bench import sweep as bench_sweep
from surgery import models


@pytest.fixture(scope='module')
def tiny():
  spec = models.create('resnet26', depth=8)
  return spec, spec.init()


def test_a_cut_run_counts_the_prefix_once_not_per_step(tiny):
  spec, variables = tiny
  kw = dict(batch=8, n_tune=16, n_val=0, n_test=0)
  one, _, _ = bench_sweep.run_flops(spec, variables, 'block3', epochs=1, **kw)
  two, prefix, cut = bench_sweep.run_flops(spec, variables, 'block3', epochs=2, **kw)
  assert cut == 3 and two == pytest.approx(2 * one)  # training steps only
  full_one, _, _ = bench_sweep.run_flops(spec, variables, 'all', epochs=1, **kw)
  # Training from block-3 activations does less than training everything, and less than
  # training everything minus the prefix's forward work (no backward through it either).
  assert one < full_one - prefix / 2


def test_evaluation_splits_into_prefix_and_suffix(tiny):
  spec, variables = tiny
  kw = dict(batch=8, n_tune=8, n_val=0, epochs=1)
  base, _, _ = bench_sweep.run_flops(spec, variables, 'block2', n_test=0, **kw)
  with_test, prefix, _ = bench_sweep.run_flops(spec, variables, 'block2', n_test=100, **kw)
  full_base, _, _ = bench_sweep.run_flops(spec, variables, 'all', n_test=0, **kw)
  full_test, _, _ = bench_sweep.run_flops(spec, variables, 'all', n_test=100, **kw)
  suffix_eval, full_eval = with_test - base, full_test - full_base
  prefix_eval = prefix * 100 / (8 + 100)  # prefix activations of the 100 test images
  assert suffix_eval + prefix_eval == pytest.approx(full_eval, rel=0.02)
