"""Camelyon17 and FMoW (WILDS): natural shifts, tuned from CLIP ViT-B/16 (paper Section
2, A.3, A.4).

Source: WILDS' train split (stage 1 evaluates its in-distribution val split). Targets,
drawn per seed, stratified by label:

  camelyon17  shift 'hospital2' (the OOD test hospital, the paper's target; 'hospital1',
              the OOD val hospital, also works): tune `tune_per_class` (50) and val
              `val_per_class` (50) images per class, "100 label-balanced images ... for
              fine-tuning" and "another 100 ... for tuning hyper-parameters"; test: the
              rest of that hospital's images (about 85,000, decoded a batch at a time).
  fmow        shift 'africa' (the OOD test images from Africa, the paper's target; any
              other region name, or 'ood' for the whole OOD test, also works): tune
              `tune_per_class` (1) per class, "62 label-balanced images"; the paper names
              no validation set, so val takes `val_per_class` (1) more per class where a
              class has them; test: the rest. Classes a region lacks are not drawn, and a
              class with a single image is only tuned on, so tune may hold fewer than 62.
              The 'ood' shift carries the region of every image as its domain and adds
              acc_<region> to the metrics (WILDS reports the worst region).

Images get CLIP's preprocessing: the short side resized to `image_size` (224) with a
bicubic filter, then the centre square (Camelyon17's 96 px patches are upsampled;
FMoW's 224 px images pass unchanged). The model normalises inside.

Config fields read: data_dir (else $SURGERY_DATA_DIR/wilds), corruptions (the shifts),
tune_per_class, val_per_class, image_size.
"""
import functools

import numpy as np

from surgery.data import wilds
from surgery.data.resize_crop import ResizeCrop
from surgery.data.sources import LazyImages, Transformed
from surgery.datasets.cifar10 import split_names
from surgery.datasets.imagenet_c import _decode
from surgery.errors import SurgeryError

REGION_SHIFTS = tuple(r.lower() for r in wilds.REGIONS[:5])


class WildsDataset:
  """The dataset contract (see surgery.datasets) for Camelyon17 and FMoW."""
  select_metric = 'acc'

  def __init__(self, name: str, config):
    self.name, self.config = name, config
    self.data_dir = config.get('data_dir') or None
    fmow = name == 'fmow'
    self.num_classes = len(wilds.FMOW_CATEGORIES) if fmow else 2
    self.image_size = config.get('image_size', 224)
    self.tune_per_class = config.get('tune_per_class', 1 if fmow else 50)
    self.val_per_class = config.get('val_per_class', 1 if fmow else 50)
    self.shifts = ('africa',) + tuple(r for r in REGION_SHIFTS if r != 'africa') + ('ood',) \
        if fmow else ('hospital2', 'hospital1')
    self.domain_names = tuple(r.lower() for r in wilds.REGIONS) if fmow else ()
    self.metrics = ('acc',) + tuple(f'acc_{d}' for d in self.domain_names)
    self.eval_transform = ResizeCrop(resize=self.image_size, crop=self.image_size,
                                     filter='bicubic')
    self.train_transform = None  # the paper names no augmentation

  @functools.cached_property
  def splits(self) -> dict:
    return (wilds.fmow if self.name == 'fmow' else wilds.camelyon17)(self.data_dir)

  def shift_names(self, groups=None) -> list:
    for field in ('tune_per_class', 'val_per_class', 'image_size'):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SurgeryError(f'{field} must be an integer >= 1, got {value!r}')
    names = split_names(self.config.get('corruptions', ())) or [self.shifts[0]]
    for n in names:
      if n not in self.shifts:
        raise SurgeryError(f'corruptions: {self.name} has the shifts {", ".join(self.shifts)}; '
                           f'got {n!r}')
    self.splits  # missing data: one line, now  # pylint: disable=pointless-statement
    return names

  def source(self, split: str = 'train'):
    key = {'train': 'train', 'val': 'id_val'}.get(split)
    if key is None:
      raise SurgeryError(f'{self.name} has the source splits train and val, not {split!r}')
    return self.splits[key]

  def _pool(self, shift: str):
    if self.name == 'camelyon17':
      return self.splits[shift]
    test = self.splits['ood_test']
    if shift == 'ood':
      return test
    return test.subset(test.domains == wilds.REGIONS.index(shift.capitalize()))

  def split(self, labels, seed: int):
    """(tune, val, test) indices: up to tune_per_class, then val_per_class, per class."""
    rng = np.random.default_rng(seed)
    tune, val, test = [], [], []
    for c in np.unique(labels):
      members = rng.permutation(np.flatnonzero(labels == c))
      a, b = self.tune_per_class, self.tune_per_class + self.val_per_class
      tune.append(members[:a])
      val.append(members[a:b])
      test.append(members[b:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in (tune, val, test))

  def target_sets(self, shift: str, seed: int) -> tuple:
    """(tune, val, test); FMoW's 'ood' shift adds (groups=None, domains=region)."""
    pool = self._pool(shift)
    if self.name == 'camelyon17':
      counts = np.bincount(pool.labels, minlength=2)
      if counts.min() <= self.tune_per_class + self.val_per_class:
        raise SurgeryError(f'{shift}: class {counts.argmin()} has {counts.min()} images, not '
                           'more than tune_per_class + val_per_class')
    tune, val, test = self.split(pool.labels, seed)
    if not len(val) or not len(test):
      raise SurgeryError(f'{shift}: too few images for tune_per_class={self.tune_per_class} '
                         f'and val_per_class={self.val_per_class}')
    out = []
    for idx in (tune, val, test):
      images = (LazyImages(pool, idx, self.eval_transform) if idx is test
                else _decode(Transformed(pool, self.eval_transform), idx)[0])
      entry = (images, pool.labels[idx].astype(np.int32))
      if shift == 'ood':
        entry += (None, pool.domains[idx].astype(np.int32))
      out.append(entry)
    return tuple(out)

  def perturb(self, shift, params, groups):
    return params



def create(config, name: str) -> WildsDataset:
  if name not in ('camelyon17', 'fmow'):
    raise SurgeryError(f'unknown WILDS dataset {name!r}')
  ds = WildsDataset(name, config)
  ds.splits  # missing data: one line, now  # pylint: disable=pointless-statement
  return ds
