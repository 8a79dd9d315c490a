"""Evaluation metrics of the dataset contract, from predicted and true labels.

  acc               accuracy (every dataset)
  worst_group_acc   the lowest accuracy over the groups present (Waterbirds, CelebA)
  acc_<domain>      accuracy on one domain (WILDS hospitals, regions)
"""
from typing import Optional, Sequence

import numpy as np


def metric_names(has_groups: bool = False, domains: Sequence[str] = ()) -> tuple:
  return ('acc',) + (('worst_group_acc',) if has_groups else ()) + tuple(f'acc_{d}' for d in domains)


def compute_metrics(preds, labels, groups: Optional[np.ndarray] = None,
                    domains: Optional[np.ndarray] = None,
                    domain_names: Sequence[str] = ()) -> dict:
  preds, labels = np.asarray(preds), np.asarray(labels)
  hits = preds == labels
  out = {'acc': float(hits.sum()) / max(len(hits), 1)}
  if groups is not None:
    groups = np.asarray(groups)
    out['worst_group_acc'] = min(float(hits[groups == g].mean()) for g in np.unique(groups))
  if domains is not None:
    domains = np.asarray(domains)
    for i, name in enumerate(domain_names):
      sel = domains == i
      out[f'acc_{name}'] = float(hits[sel].mean()) if sel.any() else float('nan')
  return out
