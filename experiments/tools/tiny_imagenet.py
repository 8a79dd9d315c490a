"""A tiny ILSVRC-2012 tree for a BREEDS dataset and a shrunk ResNet-50 to start from: the
CPU trial of configs/living17.py and configs/entity30.py (README, "Try it on a CPU
first").

    python -m experiments.tools.tiny_imagenet --dataset=living17 --tree=/tmp/tiny/imagenet \\
        --model_out=/tmp/tiny/resnet50_w8 [--imagenet=/data/imagenet]

`--tree` gets train/<wnid>/*.JPEG and val/<wnid>/*.JPEG for every class the dataset uses
(Living-17: 68), `--train_per_class` and `--val_per_class` images each. With
`--imagenet` (an ILSVRC-2012 tree in the same layout) they are symbolic links to the
first images of each class there; without it they are generated, each superclass in its
own colour, so that a few steps learn something. `--model_out` gets a randomly
initialised ResNet-50 of `--width` and `--stage_sizes` with a `--dataset`-sized head,
saved with orbax, for `--config.init_checkpoint`. The BREEDS hierarchy files come from
`--breeds_info_dir`, else $SURGERY_DATA_DIR/breeds.
"""
import io
import os
import sys

import numpy as np
from absl import app, flags, logging
from PIL import Image

from surgery.data import breeds
from surgery.errors import SurgeryError

_DATASET = flags.DEFINE_enum('dataset', 'living17', ['living17', 'entity30'], 'BREEDS dataset.')
_OUT = flags.DEFINE_string('tree', None, 'Folder for the tree (must not exist).')
_IMAGENET = flags.DEFINE_string('imagenet', '', 'An ILSVRC-2012 tree to link images from.')
_TRAIN = flags.DEFINE_integer('train_per_class', 40, 'Train images per class.')
_VAL = flags.DEFINE_integer('val_per_class', 10, 'Val images per class.')
_INFO = flags.DEFINE_string('breeds_info_dir', '', 'BREEDS hierarchy files.')
_MODEL_OUT = flags.DEFINE_string('model_out', '', 'Folder for a random-init ResNet-50.')
_WIDTH = flags.DEFINE_integer('width', 8, "The model's base width (ImageNet's: 64).")
_STAGES = flags.DEFINE_list('stage_sizes', ['1', '1', '1', '1'], 'Blocks per stage.')
flags.mark_flag_as_required('tree')


def classes(dataset: str, info_dir: str) -> list:
  """[(wnid, superclass index)] of every class `dataset` uses, source and target."""
  info = info_dir or breeds.default_info_dir()
  ds = breeds.make(dataset, info)
  wnid_of = {i: w for w, i in breeds.Hierarchy(info).class_index.items()}
  return [(wnid_of[c], label) for label in range(len(ds.superclasses))
          for c in sorted(ds.source[label] + ds.target[label])]


def _generated(label: int, index: int, rng) -> bytes:
  hue = np.array([(37 * label) % 256, (91 * label) % 256, (151 * label) % 256], np.float32)
  img = np.clip(rng.normal(hue, 35, (72, 96, 3)), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def write_tree(out: str, wnids: list, per_split: dict, imagenet: str = '') -> int:
  """The tree; returns the number of images. Nothing is written if `out` exists or a
  class of `imagenet` has too few images."""
  if os.path.exists(out):
    raise SurgeryError(f'--tree {out} exists; give a new folder')
  picks = {}
  for split, n in per_split.items():
    for wnid, _ in wnids:
      if imagenet:
        folder = os.path.join(imagenet, split, wnid)
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        if len(names) < n:
          raise SurgeryError(f'{folder} holds {len(names)} images, fewer than {n}')
        picks[split, wnid] = [os.path.join(folder, f) for f in names[:n]]
  rng = np.random.RandomState(0)
  count = 0
  for split, n in per_split.items():
    for wnid, label in wnids:
      folder = os.path.join(out, split, wnid)
      os.makedirs(folder)
      for i in range(n):
        target = os.path.join(folder, f'{wnid}_{i}.JPEG')
        if imagenet:
          os.symlink(os.path.abspath(picks[split, wnid][i]), target)
        else:
          with open(target, 'wb') as f:
            f.write(_generated(label, i, rng))
        count += 1
  return count


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax narrates every save at INFO
  try:
    wnids = classes(_DATASET.value, _INFO.value)
    stages = tuple(int(s) for s in _STAGES.value)
    n = write_tree(_OUT.value, wnids, {'train': _TRAIN.value, 'val': _VAL.value},
                   _IMAGENET.value)
    print(f'{_OUT.value}: {len(wnids)} classes, {n} images '
          f'({"linked from " + _IMAGENET.value if _IMAGENET.value else "generated"})')
    if _MODEL_OUT.value:
      from surgery import models
      from surgery.checkpoints import save_params
      num_classes = len({label for _, label in wnids})
      spec = models.create('resnet50', num_classes=num_classes, new_head=True,
                           width=_WIDTH.value, stage_sizes=stages)
      save_params(_MODEL_OUT.value, spec.init(0))
      print(f'{_MODEL_OUT.value}: a random ResNet-50, width {_WIDTH.value}, stage sizes '
            f'{",".join(map(str, stages))}, {num_classes} classes')
  except ValueError as e:  # SurgeryError, or a bad --stage_sizes
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
