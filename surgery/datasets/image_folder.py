"""Your own data: a source and its target shifts as image-folder trees.

    <root>/source/<class>/<image>     the source distribution (stage 1; optional)
    <root>/<shift>/<class>/<image>    one folder per target shift

Class folders, in sorted order, give the label indices; every folder must hold the same
class names. Images are decoded as RGB and resized to `image_size` x `image_size`
(bilinear; square images keep their aspect). Each shift's images are one pool, split
per class into `tune_per_class` tune and `val_per_class` validation images, seeded like
CIFAR-10-C's; the rest is its test set.

It reads only its own config section, `image_folder`:

    c.dataset = 'image_folder'
    c.image_folder = ml_collections.ConfigDict(dict(
        root='data/my_shift', shifts=('blurred', 'night'), image_size=32,
        tune_per_class=100, val_per_class=10))

`shifts` empty: every folder under root except `source`. `root` says where the images
are, not what they are, so it stays out of the run fingerprint (`WHERE_FROM`).
"""
import functools
import os

import numpy as np
from PIL import Image

from surgery.data import target_split
from surgery.data.sources import ArraySource
from surgery.datasets.common import split_names
from surgery.errors import SurgeryError

SECTION = 'image_folder'
WHERE_FROM = ('root',)  # fields of the section that locate data, outside the fingerprint
SOURCE = 'source'
_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


def read_tree(folder: str, image_size: int) -> tuple:
  """(class names, uint8 images [N, S, S, 3], int32 labels) of `folder/<class>/<image>`."""
  if not os.path.isdir(folder):
    raise SurgeryError(f'image_folder: {folder} does not exist; put <class>/<image> '
                       'folders there')
  classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
  paths, labels = [], []
  for label, name in enumerate(classes):
    files = sorted(e.path for e in os.scandir(os.path.join(folder, name))
                   if e.name.lower().endswith(_SUFFIXES))
    paths += files
    labels += [label] * len(files)
  if not paths:
    raise SurgeryError(f'image_folder: no images under {folder}/<class>/')
  images = np.empty((len(paths), image_size, image_size, 3), np.uint8)
  for i, path in enumerate(paths):
    with Image.open(path) as image:
      image = image.convert('RGB')
      if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
      images[i] = np.asarray(image)
  return classes, images, np.asarray(labels, np.int32)


class ImageFolder:
  """The dataset contract (see surgery.datasets) over image-folder trees."""
  metrics = ('acc',)
  eval_transform = train_transform = None  # the images are arrays already

  def __init__(self, section):
    section = dict(section or {})
    self.root = section.get('root') or ''
    if not self.root or not os.path.isdir(self.root):
      raise SurgeryError(f'{SECTION}.root: {self.root or "(empty)"} is not a folder; set '
                         f'--config.{SECTION}.root to a folder of <shift>/<class>/<image> trees')
    self.image_size = int(section.get('image_size', 32))
    self.tune_per_class = int(section.get('tune_per_class', 100))
    self.val_per_class = int(section.get('val_per_class', 10))
    self.shifts = split_names(section.get('shifts', ())) or sorted(
        e.name for e in os.scandir(self.root) if e.is_dir() and e.name != SOURCE)
    if not self.shifts:
      raise SurgeryError(f'{SECTION}: no shift folder under {self.root}')
    self.classes = sorted(e.name for e in os.scandir(os.path.join(self.root, self.shifts[0]))
                          if e.is_dir()) if os.path.isdir(
                              os.path.join(self.root, self.shifts[0])) else []
    self.num_classes = len(self.classes)

  def shift_names(self, groups=None) -> list:
    for shift in self.shifts:
      if not os.path.isdir(os.path.join(self.root, shift)):
        raise SurgeryError(f'{SECTION}.shifts: no folder {shift} under {self.root}')
    return list(self.shifts)

  @functools.lru_cache(maxsize=4)
  def _arrays(self, folder: str) -> tuple:
    classes, images, labels = read_tree(os.path.join(self.root, folder), self.image_size)
    if classes != self.classes:
      raise SurgeryError(f'{SECTION}: {folder} has classes {classes}, {self.shifts[0]} has '
                         f'{self.classes}; every folder needs the same class folders')
    return images, labels

  def source(self, split: str = 'train') -> ArraySource:
    """The source images (`root/source`); stage 1 trains on them (any split name)."""
    return ArraySource(*self._arrays(SOURCE))

  def target(self, shift: str) -> ArraySource:
    return ArraySource(*self._arrays(shift))

  def split(self, shift: str, labels, seed: int):
    return target_split(labels, self.tune_per_class, self.val_per_class, seed,
                        num_classes=self.num_classes)

  def target_sets(self, shift: str, seed: int) -> tuple:
    images, labels = self._arrays(shift)
    return tuple((images[idx], labels[idx]) for idx in self.split(shift, labels, seed))

  def perturb(self, shift: str, params, groups):
    return params


READS = (SECTION,)  # the config fields it is given (surgery.datasets.create)


def create(config, name: str = SECTION) -> ImageFolder:
  return ImageFolder(config.get(SECTION))
