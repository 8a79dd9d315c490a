"""Target-distribution splits: a few labelled examples to tune on, a few to validate.

The paper fine-tunes on 1,000 labelled images of each shifted distribution and
evaluates on the rest; here every split is stratified by class and seeded:

    split = target_split(labels)                       # 100 tune, 10 val per class
    tune_x, tune_y = images[split.tune], labels[split.tune]
"""
from typing import NamedTuple, Optional

import numpy as np

from surgery.errors import SurgeryError


class TargetSplit(NamedTuple):
  """Sorted, disjoint index arrays that together cover every example."""
  tune: np.ndarray
  val: np.ndarray
  test: np.ndarray


def target_split(labels, tune_per_class: int = 100, val_per_class: int = 10, seed: int = 0,
                 num_classes: Optional[int] = None, *, keep_for_test: int = 0,
                 partial: bool = False) -> TargetSplit:
  """Split example indices into stratified tune / val sets and the remaining test set.

  `num_classes` defaults to the classes present in `labels`; naming it makes a class
  with no examples an error instead of silently skipped. `keep_for_test`: every class
  must also leave that many examples for the test. `partial`: a class with too few
  examples gives what it has, tune first, instead of an error (FMoW's regions lack some
  classes; a class with one image is tune only).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise SurgeryError(f'labels must be a 1-D integer array, got {labels.dtype} {labels.shape}')
  if tune_per_class < 0 or val_per_class < 0:
    raise SurgeryError(f'per-class sizes must be >= 0, got tune {tune_per_class}, '
                       f'val {val_per_class}')
  classes = np.unique(labels) if num_classes is None else np.arange(num_classes)
  counts = np.array([np.sum(labels == c) for c in classes])
  needed = tune_per_class + val_per_class
  if not partial and (len(classes) == 0 or counts.min() < needed + keep_for_test):
    smallest = classes[np.argmin(counts)] if len(classes) else None
    keep = f' and keep {keep_for_test} for the test' if keep_for_test else ''
    raise SurgeryError(f'cannot take {tune_per_class} tune + {val_per_class} val examples{keep} '
                       f'per class: class {smallest} has only '
                       f'{counts.min() if len(classes) else 0}')
  rng = np.random.default_rng(seed)
  tune, val, test = [], [], []
  for c in classes:
    members = rng.permutation(np.flatnonzero(labels == c))
    tune.append(members[:tune_per_class])
    val.append(members[tune_per_class:needed])
    test.append(members[needed:])
  return TargetSplit(*(np.sort(np.concatenate(part)) for part in (tune, val, test)))
