"""Waterbirds and CelebA: output-level shifts with a spurious attribute (paper Section 2,
A.3, A.4).

Source: the released train split, where the label and the attribute are correlated
(Waterbirds: 95% of waterbirds on water; CelebA: blond mostly women). Target: "a
balanced subset with equal amounts of each of the four (label, spurious attribute)
groups" (A.3), drawn per seed:

  tune   `tune_per_group` images per group (100: the paper's 400 in all), drawn seeded
         from the released VAL split, because the train split is the source and its
         minority groups are too small anyway (Waterbirds train: 3,498 / 184 / 56 / 1,057
         per group; val: 467 / 466 / 133 / 133; CelebA val's smallest group, blond men,
         182)
  val    the rest of the released val split (picks the epoch, lr and Cross-Val)
  test   the released test split (Waterbirds 5,794; CelebA 19,962 images, streamed)

Each set is (images, labels, groups) with groups numbered as group_DRO does (2 * label +
attribute), so the metrics are accuracy, group-balanced accuracy (the accuracy on the
balanced target distribution: the paper's number, see the README) and worst-group
accuracy, and selection uses worst-group accuracy unless `select_metric` says otherwise.

Preprocessing follows group_DRO: Waterbirds resizes to 256x256 and cuts the centre
224; CelebA cuts the centre 178x178 and resizes to 224x224. Stage 1 may augment
(`source_stage.augment`) with group_DRO's RandomResizedCrop(224, scale (0.7, 1)) and
flip (ratio (3/4, 4/3) for Waterbirds, (1, 4/3) for CelebA).

The test split (CelebA's 19,962 images would be 3 GB decoded at 224 px) is evaluated
once per run, so it is a `LazyImages`, decoded a batch at a time. Val is evaluated after
every epoch, so it is held decoded (CelebA: 19,467 images, 2.9 GB), which costs less
than decoding it 50 times a run.

Config fields read: data_dir (else $SURGERY_DATA_DIR/waterbirds or /celeba),
source_layout (CelebA only: 'raw' files or 'tfds' array_record, see
surgery/data/celeba.py), tune_per_group, corruptions.
"""
import functools

import numpy as np

from surgery.data import celeba, target_split, waterbirds
from surgery.data.resize_crop import ResizeCrop
from surgery.data.sources import LazyImages
from surgery.data.transforms import TrainTransform
from surgery.datasets.common import split_names
from surgery.datasets.metrics import GROUP_METRICS
from surgery.errors import SurgeryError

# name -> (layouts, eval transform, train transform); the first layout is the default.
_KINDS = {
    'waterbirds': (('raw',), ResizeCrop(resize=(256, 256), crop=224),
                   TrainTransform(224, scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3))),
    'celeba': (celeba.LAYOUTS, ResizeCrop(crop=178, resize=(224, 224), crop_first=True),
               TrainTransform(224, scale=(0.7, 1.0), ratio=(1.0, 4 / 3))),
}


class SpuriousDataset:
  """The dataset contract (see surgery.datasets) for Waterbirds and CelebA."""
  num_classes = 2
  image_size = 224
  metrics = ('acc',) + GROUP_METRICS
  select_metric = 'worst_group_acc'
  domain_names = ()

  def __init__(self, name: str, config):
    self.name, self.config = name, config
    self.layouts, self.eval_transform, self.train_transform = _KINDS[name]
    self.data_dir = config.get('data_dir') or None
    self.tune_per_group = config.get('tune_per_group', 100)
    self.source_layout = config.get('source_layout', '') or self.layouts[0]
    if self.source_layout not in self.layouts:
      raise SurgeryError(f'source_layout for {name} must be {" or ".join(self.layouts)}, '
                         f'got {self.source_layout!r}')

  @functools.cached_property
  def splits(self) -> dict:
    if self.name == 'celeba':
      return celeba.read(self.data_dir, self.source_layout)
    return waterbirds.read(self.data_dir)

  def shift_names(self, groups=None) -> list:
    value = self.tune_per_group
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise SurgeryError(f'tune_per_group must be an integer >= 1, got {value!r}')
    names = split_names(self.config.get('corruptions', ())) or [self.name]
    if names != [self.name]:
      raise SurgeryError(f'corruptions: {self.name} has one target shift, {self.name!r}; '
                         f'got {", ".join(names)}')
    counts = np.bincount(self.splits['val'].groups, minlength=4)
    if counts.min() <= value:
      raise SurgeryError(f'{self.name}: the val split has {counts.min()} images in group '
                         f'{counts.argmin()}, not more than tune_per_group={value}')
    return names

  def source(self, split: str = 'train'):
    if split not in self.splits:
      raise SurgeryError(f'{self.name} has the splits {", ".join(self.splits)}, not {split!r}')
    return self.splits[split]

  def target_sets(self, shift: str, seed: int) -> tuple:
    """(tune, val, test), each (uint8 images, int32 labels, int32 groups)."""
    val = self.splits['val']
    draw = target_split(val.groups, self.tune_per_group, 0, seed, num_classes=4)
    out = []
    for idx in (draw.tune, draw.test):
      out.append((LazyImages(val, idx, self.eval_transform)[:], val.labels[idx].astype(np.int32),
                  val.groups[idx].astype(np.int32)))
    test = self.splits['test']
    out.append((LazyImages(test, None, self.eval_transform), test.labels.astype(np.int32),
                test.groups.astype(np.int32)))
    return tuple(out)

  def perturb(self, shift, params, groups):
    return params


NAMES = ('waterbirds', 'celeba')  # the dataset names this module serves


READS = ('data_dir', 'corruptions', 'tune_per_group', 'source_layout')  # the config fields it is given (surgery.datasets.create)


def create(config, name: str) -> SpuriousDataset:
  if name not in _KINDS:
    raise SurgeryError(f'unknown spurious-correlation dataset {name!r}')
  ds = SpuriousDataset(name, config)
  ds.splits  # missing data: one line, now  # pylint: disable=pointless-statement
  return ds
