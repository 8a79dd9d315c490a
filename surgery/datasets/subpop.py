"""Subpopulation shifts (paper Section 2, feature level): BREEDS Living-17 and Entity-30,
and the same construction over CIFAR-10.

Source and target hold the same superclasses made of different subclasses
(`surgery.data.breeds` builds which, exactly as the BREEDS reference does). Labels are
superclass positions in the BREEDS order. The protocol (paper A.4):

  source      train images of the source subclasses (what stage 1 trains on)
  tune, val   `tune_per_class` and `val_per_class` images per superclass, drawn seeded
              and stratified from the train images of the target subclasses
  test        the held-out split's images of the target subclasses (ImageNet val,
              CIFAR-10 test)

The target fine-tune sees the evaluation preprocessing (ImageNet: resize 256, centre
crop 224), no augmentation: the paper names none for the target stage, and tuning on
fixed images keeps a run a function of its seed alone, as in the CIFAR runs. Stage 1
(the source split, thousands of images per superclass) trains with the random-resized
crop and flip (`train_transform`).

Config fields read: data_dir (ImageNet's root, or CIFAR-10's), breeds_info_dir (else
$SURGERY_DATA_DIR/breeds), breeds_split ('rand' or 'good'), breeds_seed,
tune_per_class, val_per_class.
"""
import functools
from typing import Optional

import numpy as np

from surgery.data import breeds, load_cifar10, target_split
from surgery.data.sources import ArraySource, to_arrays
from surgery.datasets.common import split_names
from surgery.errors import SurgeryError

BREEDS_NAMES = tuple(breeds.DATASETS)


class Subpopulation:
  """The dataset contract (see surgery.datasets) for one BREEDS-style shift."""
  metrics = ('acc',)

  def __init__(self, name: str, hierarchy: breeds.Breeds, images, config):
    self.name = name
    self.hierarchy = hierarchy
    self.images = images  # a reader: see _CifarImages and _ImageNetImages
    self.num_classes = len(hierarchy.superclasses)
    self.image_size = images.image_size
    self.tune_per_class = config.get('tune_per_class', 50)
    self.val_per_class = config.get('val_per_class', 10)
    self.train_transform = getattr(images, 'train_transform', None)
    self.eval_transform = getattr(images, 'eval_transform', None)
    self.config = config

  def shift_names(self, groups=None) -> list:
    """[name] (the target subclasses), or what `config.corruptions` names: the name
    and/or 'source' (the source subclasses' held-out images, in-distribution)."""
    for field in ('tune_per_class', 'val_per_class'):
      value = getattr(self, field)
      if not isinstance(value, int) or value < 1:
        raise SurgeryError(f'{field} must be an integer >= 1, got {value!r}')
    names = split_names(self.config.get('corruptions', ())) or [self.name]
    for n in names:
      if n not in (self.name, 'source'):
        raise SurgeryError(f'corruptions: {self.name} has the shifts {self.name!r} (target '
                           f"subclasses) and 'source'; got {n!r}")
    return names

  def _side(self, shift: str) -> dict:
    """Class index -> superclass label for the subclasses of `shift`."""
    side = self.hierarchy.source if shift == 'source' else self.hierarchy.target
    return {c: label for label, classes in enumerate(side) for c in classes}

  def source(self, split: str = 'train'):
    """The source subclasses' `split` images, labelled by superclass (stage 1)."""
    return self.images.pool(split, self._side('source'))

  def target(self, shift: str):
    """The test images of `shift`'s subclasses, decoded (a random-access source)."""
    return self.images.decoded(self.images.pool(self.images.test_split, self._side(shift)))

  @functools.lru_cache(maxsize=2)
  def _test(self, shift: str):
    return to_arrays(self.target(shift))

  def target_sets(self, shift: str, seed: int) -> tuple:
    """(tune, val, test), each (uint8 images, int labels), for one seed."""
    pool = self.images.pool('train', self._side(shift))
    split = target_split(pool.labels, self.tune_per_class, self.val_per_class, seed,
                         num_classes=self.num_classes)
    tune, val = (to_arrays(self.images.decoded(pool), idx) for idx in (split.tune, split.val))
    test = self._test(shift)
    return tuple((d['image'], d['label']) for d in (tune, val, test))

  def perturb(self, shift, params, groups):
    return params


# --------------------------------------------------------------------------- readers

class _CifarImages:
  """CIFAR-10 (an image-folder tree, the python batches or TFDS) in memory."""
  image_size = 32
  test_split = 'test'

  def __init__(self, data_dir: Optional[str]):
    self.data_dir = data_dir

  @functools.lru_cache(maxsize=None)
  def _split(self, split):
    return load_cifar10(split, self.data_dir)

  def pool(self, split: str, label_of: dict) -> ArraySource:
    images, classes = self._split(split)
    keep = np.flatnonzero(np.isin(classes, list(label_of)))
    labels = np.array([label_of[int(c)] for c in classes[keep]], np.int32)
    return ArraySource(images[keep], labels)

  def decoded(self, pool):
    return pool


def _breeds_info_dir(config) -> str:
  """`config.breeds_info_dir`, else $SURGERY_DATA_DIR/breeds (`data_dir` is ImageNet's)."""
  return config.get('breeds_info_dir') or breeds.default_info_dir()


NAMES = ('cifar10_subpop', 'living17', 'entity30', 'entity13', 'nonliving26')  # the dataset names this module serves


READS = ('data_dir', 'corruptions', 'breeds_info_dir', 'breeds_split', 'breeds_seed',
         'tune_per_class', 'val_per_class')  # the config fields it is given (surgery.datasets.create)


def create(config, name: str) -> Subpopulation:
  split = config.get('breeds_split', 'rand')
  if split not in ('rand', 'good'):
    raise SurgeryError(f'breeds_split must be one of rand, good, got {split!r}')
  seed = config.get('breeds_seed', breeds.DEFAULT_SEED)
  if name == 'cifar10_subpop':
    return Subpopulation(name, breeds.cifar10_subpop(split, seed),
                         _CifarImages(config.get('data_dir') or None), config)
  if name in BREEDS_NAMES:
    from surgery.datasets.imagenet_images import ImageNetImages
    info_dir = _breeds_info_dir(config)
    hierarchy = breeds.make(name, info_dir, split, seed)
    return Subpopulation(name, hierarchy, ImageNetImages(config, info_dir), config)
  raise SurgeryError(f'unknown subpopulation dataset {name!r}')
