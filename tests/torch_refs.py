"""Optional PyTorch references for converter tests: skip cleanly without the extras.

PyPI's torchvision wheel is built against the CUDA torch; beside the CPU torch these
machines use, its compiled ops do not load and `import torchvision` fails with
"operator torchvision::nms does not exist". Its pure-Python models only need the two op
schemas its meta registrations refer to, so they are declared before a second import
attempt. Where torchvision matches torch, the plain import succeeds and nothing is
declared.
"""
import importlib

import pytest

_SCHEMAS = ('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
            'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
_LIBRARY = []  # keeps the torch.library.Library alive


def torch_or_skip():
  return pytest.importorskip('torch')


def torchvision_or_skip():
  torch = torch_or_skip()
  try:
    return importlib.import_module('torchvision')
  except ImportError:
    pytest.skip('torchvision is not installed')
  except RuntimeError:  # the CUDA wheel beside a CPU torch
    if not _LIBRARY:
      lib = torch.library.Library('torchvision', 'DEF')
      for schema in _SCHEMAS:
        lib.define(schema)
      _LIBRARY.append(lib)
    import sys
    for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
      del sys.modules[name]
    return importlib.import_module('torchvision')


def open_clip_or_skip():
  torchvision_or_skip()  # open_clip imports torchvision
  return pytest.importorskip('open_clip')
