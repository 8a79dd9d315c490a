"""The JPEG copy of the exact CIFAR-10 test images we have: the same images, the same
order, JPEG pixels (issue 28: MEMO on exact pixels against the JPEG copy, side by side).

    python -m experiments.tools.cifar10_jpeg_twin --exact=../shared/data/cifar10_exact \\
        --jpeg=../shared/data/cifar10 --out=workdir/cifar10_jpeg_twin

`--exact` holds `test/<class>/<index>.png`, `<index>` being the image's position in the
official test batch; `--jpeg` holds the JPEG image-folder copy `test/<class>/NNNN.jpg`,
numbered within each class in the official order. So the JPEG twin of official image i,
of class c, is the file numbered by how many class-c images come before i. `--out` gets
`test/<class>/<index>.jpg`, symbolic links to those files: as an image-folder tree it
lists the same images in the same order as `--exact`, so a seeded stream over either
draws the same images. The pairing is checked: every pair must differ by less than
`--max_mae` (mean absolute pixel difference, 0-255; the JPEG copy is about 6 from the
originals, a wrong pairing about 60); nothing is written otherwise.
"""
import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image

from surgery.errors import SurgeryError

_EXACT = flags.DEFINE_string('exact', None, 'Tree of exact PNGs named by official index.')
_JPEG = flags.DEFINE_string('jpeg', None, 'The JPEG image-folder copy of CIFAR-10.')
_OUT = flags.DEFINE_string('out', None, 'Folder for the twin tree (must not exist).')
_MAX_MAE = flags.DEFINE_float('max_mae', 15.0, 'Largest mean absolute difference of a pair.')
flags.mark_flags_as_required(['exact', 'jpeg', 'out'])


def pairs(exact: str, jpeg: str) -> list:
  """[(class, index, exact file, jpeg file)] in the exact tree's order."""
  out = []
  test = os.path.join(exact, 'test')
  if not os.path.isdir(test):
    raise SurgeryError(f'{test} is not a folder; --exact holds test/<class>/<index>.png')
  for c in sorted(os.listdir(test)):
    names = sorted(os.listdir(os.path.join(test, c)))
    indices = [int(os.path.splitext(n)[0]) for n in names]
    if indices != sorted(indices) or any(not n.split('.')[0].isdigit() for n in names):
      raise SurgeryError(f'{os.path.join(test, c)}: names must be official indices')
    # Everything before the first exact index of the batch is exact too (the exact set
    # is a prefix of the official batch), so an image's rank among them is its rank in
    # the class: the JPEG copy's file number.
    for rank, (name, index) in enumerate(zip(names, indices)):
      twin = os.path.join(jpeg, 'test', c, f'{rank:04d}.jpg')
      if not os.path.isfile(twin):
        raise SurgeryError(f'{twin} not found; --jpeg holds test/<class>/NNNN.jpg')
      out.append((c, index, os.path.join(test, c, name), twin))
  every = sorted(index for _, index, _, _ in out)
  if every != list(range(len(every))):
    raise SurgeryError(f'{test} is not a prefix of the official batch (indices 0 to '
                       f'{len(every) - 1}): ranks within a class would not be the copy\'s')
  return out


def mean_abs_difference(a: str, b: str) -> float:
  x = np.asarray(Image.open(a).convert('RGB'), np.float32)
  y = np.asarray(Image.open(b).convert('RGB'), np.float32)
  if x.shape != y.shape:
    return float('inf')
  return float(np.abs(x - y).mean())


def write_twin(exact: str, jpeg: str, out: str, max_mae: float) -> tuple:
  """Checks every pair, then writes the links; (pairs, mean and largest difference)."""
  if os.path.exists(out):
    raise SurgeryError(f'--out {out} exists; give a new folder')
  found = pairs(exact, jpeg)
  maes = [mean_abs_difference(e, j) for _, _, e, j in found]
  worst = int(np.argmax(maes))
  if maes[worst] > max_mae:
    c, index, e, j = found[worst]
    raise SurgeryError(f'{e} and {j} differ by {maes[worst]:.1f} on average (> {max_mae}): '
                       'not the same image; is --jpeg the copy of the same release?')
  for c, index, _, twin in found:
    folder = os.path.join(out, 'test', c)
    os.makedirs(folder, exist_ok=True)
    os.symlink(os.path.abspath(twin), os.path.join(folder, f'{index:05d}.jpg'))
  return len(found), float(np.mean(maes)), maes[worst]


def main(argv):
  del argv
  try:
    n, mean, worst = write_twin(_EXACT.value, _JPEG.value, _OUT.value, _MAX_MAE.value)
  except SurgeryError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(f'{_OUT.value}: {n} JPEG twins; mean absolute difference from the exact images '
        f'{mean:.2f} (largest {worst:.2f}) on 0-255')


if __name__ == '__main__':
  app.run(main)
