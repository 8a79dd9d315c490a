"""Optional PyTorch references for converter tests: skip cleanly without the extras.

PyPI's torchvision wheel is built against the CUDA torch; beside the CPU torch these
machines use, its compiled ops do not load and `import torchvision` fails with
"operator torchvision::nms does not exist". Its pure-Python models only need the two op
schemas its meta registrations refer to, so `experiments.bench.torch_reference.
import_torchvision` declares them before a second import attempt. Where torchvision
matches torch, the plain import succeeds and nothing is declared.
"""
import pytest


def torch_or_skip():
  return pytest.importorskip('torch')


def torchvision_or_skip():
  torch_or_skip()
  from experiments.bench.torch_reference import import_torchvision
  try:
    return import_torchvision()
  except ImportError:
    pytest.skip('torchvision is not installed')


def open_clip_or_skip():
  torchvision_or_skip()  # open_clip imports torchvision
  return pytest.importorskip('open_clip')
