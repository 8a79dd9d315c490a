"""Benchmarks, each `python -m experiments.bench.<name>`; medians of alternating rounds in
one process, the last line printed a JSON object.

  step         (also `python -m experiments.bench`) step time per tuning option, JAX vs torch
  ops          ResNet-26's convolutions and GroupNorm op by op, JAX vs torch
  memo         MEMO adapted images per second per mode and freezing option
  sweep        FLOPs of a Cross-Val sweep against one `all` run (compiles, runs nothing)
  selection    wall time of the one-run selection methods (probe_commit) over one `all` run
  input        JPEG decode + crop images/s per core and through grain workers
  corruptions  CIFAR-10-C corruption generation, images/s

`torch_reference` holds the PyTorch twins the step benchmark and the parity tests use.
"""
