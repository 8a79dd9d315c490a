"""Evaluation metrics of the dataset contract, from predicted and true labels.

  acc                  accuracy (every dataset)
  group_balanced_acc   the mean over the groups present of each group's accuracy: the
                       accuracy on a test set with equal numbers per group, which is
                       what Waterbirds' and CelebA's balanced target distribution means
  worst_group_acc      the lowest accuracy over the groups present (Sagawa et al.'s metric);
                       examples of a negative group count in `acc` only
  acc_<domain>         accuracy on one domain (a WILDS region or hospital)

Example: labels [0, 0, 0, 1], predictions [0, 0, 1, 0], groups [0, 0, 0, 1]: group 0
has 2 of 3 right, group 1 has 0 of 1, so acc 0.5, group_balanced_acc (2/3 + 0) / 2 =
1/3, worst_group_acc 0.
"""
from typing import Optional, Sequence

import numpy as np

from surgery.errors import SurgeryError

GROUP_METRICS = ('group_balanced_acc', 'worst_group_acc')


def metric_names(has_groups: bool = False, domains: Sequence[str] = ()) -> tuple:
  return (('acc',) + (GROUP_METRICS if has_groups else ())
          + tuple(f'acc_{d}' for d in domains))


def compute_metrics(preds, labels, groups: Optional[np.ndarray] = None,
                    domains: Optional[np.ndarray] = None,
                    domain_names: Sequence[str] = ()) -> dict:
  preds, labels = np.asarray(preds), np.asarray(labels)
  if preds.shape != labels.shape:
    raise SurgeryError(f'{preds.shape} predictions for {labels.shape} labels')
  hits = preds == labels
  out = {'acc': float(hits.sum()) / max(len(hits), 1)}
  if groups is not None:
    groups = np.asarray(groups)
    # A negative group counts in `acc` only (FMoW's 'Other' region, which WILDS leaves
    # out of the worst region).
    per_group = [float(hits[groups == g].mean()) for g in np.unique(groups[groups >= 0])]
    out['group_balanced_acc'] = float(np.mean(per_group)) if per_group else float('nan')
    out['worst_group_acc'] = min(per_group) if per_group else float('nan')
  if domains is not None:
    domains = np.asarray(domains)
    for i, name in enumerate(domain_names):
      sel = domains == i
      out[f'acc_{name}'] = float(hits[sel].mean()) if sel.any() else float('nan')
  return out
