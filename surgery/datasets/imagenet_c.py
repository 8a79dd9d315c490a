"""ImageNet-C, the paper's ImageNet input-level shift (Section 2, A.4; Table 6's mCE).

Each shift is one corruption at `severity` (5: the paper's "most severe level"); the
source model is ImageNet-trained (RobustBench `Standard_R50`, given as `init_checkpoint`),
so there is no source stage and the 1000-way head is kept. Per corruption the images
(ImageNet-C has 50 per class, 50,000 in all) are split, stratified by class and seeded:

  tune   `tune_per_class` per class (5: the paper's "5000 images ... 5 corrupted images
         per class")
  val    `val_per_class` per class (5: 5,000), which picks the epoch, lr and Cross-Val
  test   `test_per_class` per class of the rest, 0 = all of the rest (40 per class:
         40,000), so that every image is used exactly once per seed

The paper names no validation set for ImageNet-C; 5 per class matches its tune size and
leaves 40 per class for the test, which keeps the test's standard error near 0.25
points. Classes are those the copy holds (all 1000 for a real copy).

Images are evaluated as Hendrycks & Dietterich's own test.py does (CenterCrop(224) of
the 224x224 images: nothing changes); `eval_resize=256` gives RobustBench's older
'Res256Crop224' (resize the short side to 256 first) instead. No augmentation.

Which copy (`source_layout`): 'release' (Hendrycks & Dietterich's tarballs, what the
paper used) or 'tfds' (TFDS imagenet2012_corrupted, which regenerates the corruptions and
so differs pixel by pixel); see surgery/data/imagenet_c.py. It is a config field, so it
is in config.json, in the run fingerprint (one workdir never mixes the two) and, through
configs/imagenet_c.py, in the report's title; the dataset also exposes it as
`ds.source_layout`.

Config fields read: data_dir (else $SURGERY_DATA_DIR/imagenet-c), source_layout,
corruptions, severity, tune_per_class, val_per_class, test_per_class, eval_resize, and
for a copy with fewer than the 1000 wnids (tests) class_index_file, a [[index, wnid,
name], ...] json, else $SURGERY_DATA_DIR/breeds/dataset_class_info.json if it is there.

mCE (paper Table 6): `mce` below.
"""
import functools
import os
from typing import Mapping, Sequence, Union

import numpy as np

from surgery.data import target_split
from surgery.data.common import DATA_DIR_ENV
from surgery.data.imagenet_c import (CORRUPTIONS, LAYOUTS, NUM_CLASSES, check_corruption,
                                     imagenet_c_root, imagenet_c_source, locate_imagenet_c,
                                     read_class_index)
from surgery.data.sources import LazyImages
from surgery.data.splits import TargetSplit
from surgery.data.transforms import EvalTransform
from surgery.datasets.common import split_names
from surgery.datasets.imagenet_images import Decoded
from surgery.errors import SurgeryError

# AlexNet's top-1 error on each corruption, averaged over severities 1-5: the CE
# normaliser of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
# Corruptions and Perturbations" (ICLR 2019), Section 3: CE_c = sum_s E_{s,c} / sum_s
# E^AlexNet_{s,c}. Values from google-research/augmix, imagenet.py, ALEXNET_ERR ("Raw
# AlexNet errors taken from https://github.com/hendrycks/robustness"), in its CORRUPTIONS
# order, which is this one. (hendrycks/robustness's ImageNet-C/test.py holds no such
# constants: it prints the mCE "unnormalized by AlexNet errors".)
ALEXNET_ERRORS = {
    'gaussian_noise': 0.886428, 'shot_noise': 0.894468, 'impulse_noise': 0.922640,
    'defocus_blur': 0.819880, 'glass_blur': 0.826268, 'motion_blur': 0.785948,
    'zoom_blur': 0.798360, 'snow': 0.866816, 'frost': 0.826572, 'fog': 0.819324,
    'brightness': 0.564592, 'contrast': 0.853204, 'elastic_transform': 0.646056,
    'pixelate': 0.717840, 'jpeg_compression': 0.606500,
}

Errors = Union[float, Sequence[float]]


def corruption_error(errors: Errors, corruption: str,
                     alexnet_errors: Mapping[str, float] = ALEXNET_ERRORS) -> float:
  """CE in percent: 100 x (mean of the model's errors over the severities given) /
  (AlexNet's error on `corruption` averaged over severities 1-5).

  With all five severities this is Hendrycks & Dietterich's CE (sum over severities /
  AlexNet's sum over severities: the 5s cancel). With severity 5 alone, as here and in
  the paper's Table 6, it is the severity-5 error over AlexNet's 1-5 average (what
  AugMix's `compute_mce` gives for severity-5 accuracies): NOT the benchmark's CE and
  larger than it, since severity 5 is the hardest.
  """
  if corruption not in alexnet_errors:
    raise SurgeryError(f'no AlexNet error for {corruption!r} (mCE covers '
                       f'{", ".join(alexnet_errors)})')
  values = np.atleast_1d(np.asarray(errors, np.float64))
  if values.size == 0 or values.ndim != 1 or not np.all((values >= 0) & (values <= 1)):
    raise SurgeryError(f'{corruption}: errors must be fractions in [0, 1], got {errors!r}')
  return 100.0 * float(values.mean()) / alexnet_errors[corruption]


def mce(errors_by_corruption: Mapping[str, Errors],
        alexnet_errors: Mapping[str, float] = ALEXNET_ERRORS, complete: bool = True) -> float:
  """Mean corruption error in percent: the mean of `corruption_error` over corruptions.

  `errors_by_corruption` maps a corruption to the model's top-1 error (a fraction), or
  to its errors at several severities (averaged). `complete` (default) requires all 15
  benchmark corruptions, as the benchmark's mCE does; complete=False averages over the
  corruptions given. Example: error 0.9 on gaussian_noise only, complete=False:
  100 * 0.9 / 0.886428 = 101.53.

  No relative mCE here: it needs the model's and AlexNet's clean ImageNet errors, and
  these runs measure no clean error.
  """
  if not errors_by_corruption:
    raise SurgeryError('mce needs at least one corruption')
  if complete:
    missing = [c for c in alexnet_errors if c not in errors_by_corruption]
    if missing:
      raise SurgeryError(f'mCE needs all {len(alexnet_errors)} corruptions; missing '
                         f'{", ".join(missing)} (complete=False averages over those given)')
  ces = [corruption_error(e, c, alexnet_errors) for c, e in errors_by_corruption.items()]
  return float(np.mean(ces))


class ImageNetC:
  """The dataset contract (see surgery.datasets) for ImageNet-C corruptions."""
  num_classes = NUM_CLASSES
  image_size = 224
  metrics = ('acc',)

  def __init__(self, config):
    self.config = config
    self.data_dir = config.get('data_dir') or None
    self.source_layout = config.get('source_layout', 'release')
    self.severity = config.get('severity', 5)
    self.tune_per_class = config.get('tune_per_class', 5)
    self.val_per_class = config.get('val_per_class', 5)
    self.test_per_class = config.get('test_per_class', 0)
    self.eval_resize = config.get('eval_resize', 224)
    self._class_index = None

  def shift_names(self, groups=None) -> list:
    """The validated corruptions `config.corruptions` names; the first one's data must
    be there (one line naming the path and both layouts if not)."""
    if self.source_layout not in LAYOUTS:
      raise SurgeryError(f'source_layout must be one of {", ".join(LAYOUTS)}, '
                         f'got {self.source_layout!r}')
    for field in ('tune_per_class', 'val_per_class', 'test_per_class'):
      value = getattr(self, field)
      low = 0 if field == 'test_per_class' else 1
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SurgeryError(f'{field} must be an integer >= {low}, got {value!r}')
    if self.eval_resize not in (224, 256):
      raise SurgeryError(f'eval_resize must be 224 (centre crop only) or 256, '
                         f'got {self.eval_resize!r}')
    names = split_names(self.config.get('corruptions', ())) or list(CORRUPTIONS)
    for name in names:
      check_corruption(name, self.severity)
    if len(set(names)) != len(names):
      raise SurgeryError(f'corruptions: a corruption is named twice in {", ".join(names)}')
    for name in names:  # missing data fails here, before any model is loaded
      locate_imagenet_c(name, self.severity, self.source_layout, self.data_dir)
    if not self.config.get('init_checkpoint'):
      raise SurgeryError('imagenet_c needs init_checkpoint: an ImageNet-trained model (e.g. '
                         'RobustBench Standard_R50.pt); there is no source stage')
    return names

  def source(self, split: str = 'train'):
    raise SurgeryError('imagenet_c has no source split: the source model is ImageNet-trained '
                       '(set init_checkpoint, e.g. RobustBench Standard_R50)')

  # -- the target pool ------------------------------------------------------------
  def _class_index_or_none(self):
    """wnid -> index for partial copies: `class_index_file`, else BREEDS' file under
    $SURGERY_DATA_DIR; None when neither is there (a full copy needs none)."""
    if self._class_index is None:
      path = self.config.get('class_index_file') or ''
      if not path and os.environ.get(DATA_DIR_ENV):
        path = os.path.join(os.environ[DATA_DIR_ENV], 'breeds', 'dataset_class_info.json')
      if path and (self.config.get('class_index_file') or os.path.isfile(path)):
        self._class_index = read_class_index(path)
      else:
        self._class_index = False
    return self._class_index or None

  @functools.lru_cache(maxsize=2)
  def pool(self, shift: str):
    """The encoded images of `shift` (labels = ImageNet class indices)."""
    return imagenet_c_source(shift, self.severity, self.data_dir, layout=self.source_layout,
                             class_index=self._class_index_or_none())

  def target(self, shift: str) -> Decoded:
    """Every image of `shift`, decoded on access (a random-access source)."""
    return Decoded(self.pool(shift), EvalTransform(resize=self.eval_resize))

  def split(self, shift: str, labels, seed: int) -> TargetSplit:
    """Tune / val per class, then `test_per_class` per class of the rest (0: all)."""
    split = target_split(labels, self.tune_per_class, self.val_per_class, seed)
    if not self.test_per_class:
      return split
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 1])  # apart from the tune/val draw
    test = []
    for c in np.unique(labels[split.test]):
      members = split.test[labels[split.test] == c]
      if len(members) < self.test_per_class:
        raise SurgeryError(f'{shift}: class {c} has {len(members)} images left for the '
                           f'test, fewer than test_per_class={self.test_per_class}')
      test.append(rng.choice(members, self.test_per_class, replace=False))
    return split._replace(test=np.sort(np.concatenate(test)))

  def target_sets(self, shift: str, seed: int) -> tuple:
    """(tune, val, test), each (uint8 [n, 224, 224, 3], int32 labels), for one seed."""
    target = self.target(shift)
    split = self.split(shift, target.labels, seed)
    # Decoded on threads into one array (Pillow decodes outside the GIL): the 50,000
    # JPEGs of a corruption take about a minute on one core.
    return tuple((LazyImages(target.pool, idx, target.transform)[:],
                  np.asarray(target.labels)[idx].astype(np.int32))
                 for idx in (split.tune, split.val, split.test))

  def perturb(self, shift, params, groups):
    return params

  def report(self, table, methods, shifts) -> list:
    """summary.md lines: each method's mCE (paper Table 6) from its mean test accuracy
    per corruption; over the corruptions present when not all 15 are."""
    return mce_markdown(table, methods, shifts, self.severity)


def mce_markdown(table, methods, shifts, severity: int = 5) -> list:
  """Lines of an mCE table; `table` is {method: {corruption: (mean acc, se)}}."""
  known = [s for s in shifts if s in ALEXNET_ERRORS]
  complete = set(ALEXNET_ERRORS) <= set(known)
  lines = []
  for m in methods:
    accs = {s: table[m][s][0] for s in known if s in table.get(m, {})}
    if accs and len(accs) == len(known):
      value = mce({s: 1.0 - a for s, a in accs.items()}, complete=complete)
      lines.append(f'| {m} | {value:.1f} |')
  if not lines:
    return []
  scope = ('all 15 corruptions' if complete else
           f'{len(known)} of the 15 corruptions only ({", ".join(known)}): not comparable '
           'to a full mCE')
  return ['## mCE (%, lower is better; paper Table 6)', '',
          f'Severity-{severity} top-1 error over AlexNet\'s error averaged over severities '
          f'1-5, per corruption, averaged over {scope}; from the mean test accuracy above.', '',
          '| method | mCE |', '|---|---|'] + lines + ['']


# init_checkpoint: whether the model starts from a checkpoint, which sets the class
# order the model expects (see `shift_names`).
READS = ('data_dir', 'corruptions', 'source_layout', 'severity', 'tune_per_class',
         'val_per_class', 'test_per_class', 'eval_resize', 'init_checkpoint', 'class_index_file')  # the config fields it is given (surgery.datasets.create)


def create(config, name: str = 'imagenet_c') -> ImageNetC:
  if name != 'imagenet_c':
    raise SurgeryError(f'unknown ImageNet-C dataset {name!r}')
  imagenet_c_root(config.get('data_dir') or None)  # no $SURGERY_DATA_DIR: one line, now
  return ImageNetC(config)
