"""Camelyon17 and FMoW (WILDS): natural shifts, tuned from CLIP ViT-B/16 (paper Section
2, Table 1, A.3, A.4).

Source (stage 1): WILDS' train split; `source('val')` is WILDS' in-distribution val
split (Camelyon17 id_val: hospitals 0, 3, 4; FMoW id_val: before 2013). See
surgery/data/wilds.py for the layouts and WILDS' split rules.

Targets, drawn per seed and stratified by label (`surgery.data.target_split`):

  camelyon17  'hospital2' (default): all of hospital 2, WILDS' OOD test and the paper's
              target ("84,000 images in the target distribution (OOD test)");
              'hospital1': all of hospital 1, WILDS' OOD val.
              tune  `tune_per_class` (50) per class: "100 label-balanced images (50 per
                    class) ... for fine-tuning"
              val   `val_per_class` (50) more per class: "another 100 label-balanced
                    target distribution images for tuning hyper-parameters"
              test  the rest of that hospital (about 85,000 for hospital 2), decoded a
                    batch at a time (LazyImages)
              Each class must have more than tune + val images.
  fmow        'africa' (default): WILDS' OOD test (2016 on) in Africa, the paper's "Africa
              test ... roughly 2,500 images"; 'asia', 'europe', 'americas', 'oceania' the
              same for another region; 'ood': the whole OOD test.
              tune  `tune_per_class` (1) per class: "62 label-balanced images"
              val   the paper names none; ours: `val_per_class` (1) more per class, from
                    the classes that still have an image
              test  the rest
              A class the region lacks is not drawn, and a class with a single image is
              only tuned on, so tune may hold fewer than 62 images and val fewer than
              tune (Africa's OOD test lacks some of the 62 categories).

FMoW's 'ood' shift carries each image's region: with it among the shifts, every FMoW
target set is (images, labels, groups, domains) with groups = domains = the region's
index in REGIONS, and the metrics add `acc_<region>` for the five regions and
`group_balanced_acc` / `worst_group_acc` over regions (worst_group_acc is WILDS'
headline worst-region accuracy). Images of WILDS' 'Other' region (country codes the
mapping lacks) count in `acc` but carry group and domain -1, as WILDS leaves 'Other'
out of the worst region. Without 'ood', the metric is accuracy alone.

Images get CLIP's preprocessing: the short side resized to `image_size` (224) with a
bicubic filter, then the centre square (open_clip's Resize + CenterCrop; Camelyon17's
96 px patches are upsampled, FMoW's 224 px images pass unchanged); uint8, since the
model normalises inside. `image_size` must equal the model's. No augmentation: WILDS'
ERM baselines train both datasets with 'image_base' (resize only) and the paper names
none; `train_transform` (random-resized crop + flip) serves `source_stage.augment=True`.
Selection: accuracy (`select_metric` 'acc').

Config fields read: data_dir (else $SURGERY_DATA_DIR/wilds), corruptions (the shifts),
tune_per_class, val_per_class, image_size.
"""
import functools

import numpy as np

from surgery.data import target_split, wilds
from surgery.data.resize_crop import ResizeCrop
from surgery.data.sources import LazyImages
from surgery.data.splits import TargetSplit
from surgery.data.transforms import TrainTransform
from surgery.datasets.common import split_names
from surgery.datasets.metrics import metric_names
from surgery.errors import SurgeryError

CAMELYON17_SHIFTS = {'hospital2': 'ood_test', 'hospital1': 'ood_val'}  # shift -> split
REGION_NAMES = tuple(r.lower() for r in wilds.REGIONS[:wilds.OTHER])
FMOW_OOD = 'ood'
FMOW_SHIFTS = ('africa',) + tuple(r for r in REGION_NAMES if r != 'africa') + (FMOW_OOD,)

# name -> (classes, shifts (the first is the default), reader, tune and val per class,
# whether every class must fill tune + val and keep one for the test)
_KINDS = {
    'camelyon17': (2, tuple(CAMELYON17_SHIFTS), wilds.read_camelyon17, 50, 50, True),
    'fmow': (len(wilds.CATEGORIES), FMOW_SHIFTS, wilds.read_fmow, 1, 1, False),
}


class WildsDataset:
  """The dataset contract (see surgery.datasets) for Camelyon17 and FMoW."""
  select_metric = 'acc'

  def __init__(self, name: str, config):
    if name not in _KINDS:
      raise SurgeryError(f'unknown WILDS dataset {name!r}; valid: {", ".join(_KINDS)}')
    self.name, self.config = name, config
    (self.num_classes, self.shifts, self._read, tune, val, self.strict) = _KINDS[name]
    self.data_dir = config.get('data_dir') or None
    self.tune_per_class = config.get('tune_per_class', tune)
    self.val_per_class = config.get('val_per_class', val)
    self.image_size = config.get('image_size', 224)
    size = self.image_size if isinstance(self.image_size, int) else 224  # checked later
    self.eval_transform = ResizeCrop(resize=size, crop=size, filter='bicubic')
    self.train_transform = TrainTransform(size)
    self.with_regions = FMOW_OOD in self._names()
    self.domain_names = REGION_NAMES if self.with_regions else ()
    self.metrics = metric_names(self.with_regions, self.domain_names)

  def _names(self) -> list:
    return split_names(self.config.get('corruptions', ())) or [self.shifts[0]]

  @functools.cached_property
  def splits(self) -> dict:
    return self._read(self.data_dir)

  def shift_names(self, groups=None) -> list:
    """The validated shifts; reads the metadata (missing data: one line) and checks
    that each shift's images fill the draw."""
    for field in ('tune_per_class', 'val_per_class', 'image_size'):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SurgeryError(f'{field} must be an integer >= 1, got {value!r}')
    names = self._names()
    for n in names:
      if n not in self.shifts:
        raise SurgeryError(f'corruptions: {self.name} has the shifts {", ".join(self.shifts)}; '
                           f'got {n!r}')
    if len(set(names)) != len(names):
      raise SurgeryError(f'corruptions: a shift is named twice in {", ".join(names)}')
    for n in names:
      self._check_pool(n)
    return names

  def _check_pool(self, shift: str) -> None:
    counts = np.bincount(self.target(shift).labels, minlength=self.num_classes)
    if self.strict:
      need = self.tune_per_class + self.val_per_class
      if counts.min() <= need:
        raise SurgeryError(f'{self.name} {shift}: class {counts.argmin()} has {counts.min()} '
                           f'images, not more than tune_per_class + val_per_class = {need}')
    elif not (counts > self.tune_per_class + self.val_per_class).any():
      raise SurgeryError(f'{self.name} {shift}: no class has more than tune_per_class + '
                         f'val_per_class = {self.tune_per_class + self.val_per_class} images '
                         f'({counts.sum()} images): nothing would be left to test on')

  def source(self, split: str = 'train'):
    key = {'train': 'train', 'val': 'id_val'}.get(split)
    if key is None:
      raise SurgeryError(f'{self.name} has the source splits train and val, not {split!r}')
    return self.splits[key]

  def target(self, shift: str):
    """Every image of `shift` (an ImageTable of encoded images, domain = region or
    hospital)."""
    if self.name == 'camelyon17':
      return self.splits[CAMELYON17_SHIFTS[shift]]
    test = self.splits['ood_test']
    if shift == FMOW_OOD:
      return test
    return test.subset(test.domains == REGION_NAMES.index(shift))

  def split(self, shift: str, labels, seed: int) -> TargetSplit:
    # strict (Camelyon17): every class fills tune + val and keeps one for the test;
    # else (FMoW) a class gives what it has.
    return target_split(labels, self.tune_per_class, self.val_per_class, seed,
                        self.num_classes, keep_for_test=int(self.strict),
                        partial=not self.strict)

  def target_sets(self, shift: str, seed: int) -> tuple:
    """(tune, val, test): (uint8 images, int32 labels) each, plus (groups, domains) =
    regions where 'ood' is among the shifts. Tune and val decoded, test lazily."""
    pool = self.target(shift)
    draw = self.split(shift, pool.labels, seed)
    if not len(draw.val) or not len(draw.test):
      raise SurgeryError(f'{self.name} {shift}: too few images for tune_per_class='
                         f'{self.tune_per_class} and val_per_class={self.val_per_class}')
    out = []
    for idx in draw:
      images = LazyImages(pool, idx, self.eval_transform)
      entry = (images if idx is draw.test else images[:], pool.labels[idx].astype(np.int32))
      if self.with_regions:
        regions = pool.domains[idx].astype(np.int32)
        regions[regions == wilds.OTHER] = -1  # left out of the per-region metrics
        entry += (regions, regions.copy())
      out.append(entry)
    return tuple(out)

  def perturb(self, shift, params, groups):
    return params


NAMES = ('camelyon17', 'fmow')  # the dataset names this module serves


READS = ('data_dir', 'corruptions', 'tune_per_class', 'val_per_class', 'image_size')  # the config fields it is given (surgery.datasets.create)


def create(config, name: str) -> WildsDataset:
  ds = WildsDataset(name, config)
  # A missing root or metadata file: one line now; the tables are read by shift_names.
  (wilds.locate_fmow if name == 'fmow' else wilds.locate_camelyon17)(ds.data_dir)
  return ds
