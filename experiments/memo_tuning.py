"""The paper's MEMO protocol (App. A.6): tune on 1,000 corrupted test images, report the
held-out rest.

Per corruption, the test set splits into a class-balanced tuning set and a disjoint,
class-balanced held-out stream (`split_tune_stream`). Per (mode, option), a staged search
(`search_stages`) picks learning rate, steps and weight decay by the accuracy of one
MEMO stream over the tuning set (episodic or online as the mode says); every tuning
stream is a row of tuning.csv, so a search resumes stream by stream. The held-out stream
then runs once with the chosen setting, saving its predictions (and, online, its
weights) every few hundred images so that a 9,000-image stream resumes where it stopped.
"""
import os
from typing import Callable, NamedTuple

import jax
import numpy as np

from surgery.errors import SurgeryError
from surgery.io import atomic_write

SEARCHES = ('coordinate', 'grid')


class Setting(NamedTuple):
  lr: float
  steps: int
  weight_decay: float

  @property
  def hparam(self) -> str:
    """The results.csv `hparam` cell (the lr has its own column)."""
    return f'steps={self.steps} wd={self.weight_decay:g}'


def split_tune_stream(labels, n_tune: int, n_stream: int, seed: int, num_classes: int,
                      subset: Callable):
  """(tune, stream): disjoint index arrays, each class-balanced and in a seeded order.

  `subset(labels, n, seed, num_classes)` draws one (the runner's `stream_subset`); the
  stream is drawn from what the tuning set left, under a seed of its own.
  """
  labels = np.asarray(labels)
  tune = subset(labels, n_tune, seed, num_classes)
  rest = np.setdiff1d(np.arange(len(labels)), tune)
  stream = rest[subset(labels[rest], n_stream, [seed, 1], num_classes)]
  return tune, stream


def _round(lr):
  return float(f'{lr:.6g}')  # as results.csv keys it: 3 x 1e-4 is the 3e-4 of a rerun


def search_stages(coarse_lrs, lr_multipliers, steps, weight_decays, search='coordinate'):
  """The search as stages: functions from the best setting so far to the candidates
  to score next.

  coordinate (default, what 2 CPU cores afford): the coarse lrs at the first steps and
  weight decay values, then the best lr times each multiplier, then each steps value,
  then each weight decay, each stage around the best so far. grid: every coarse lr x
  steps x weight decay, then every multiplied lr x steps x weight decay.
  """
  if search not in SEARCHES:
    raise SurgeryError(f'tune.search must be one of {", ".join(SEARCHES)}, got {search!r}')
  s0, w0 = steps[0], weight_decays[0]
  if search == 'coordinate':
    return [
        lambda best: [Setting(_round(lr), s0, w0) for lr in coarse_lrs],
        lambda best: [best._replace(lr=_round(best.lr * m)) for m in lr_multipliers],
        lambda best: [best._replace(steps=s) for s in steps],
        lambda best: [best._replace(weight_decay=w) for w in weight_decays],
    ]
  return [
      lambda best: [Setting(_round(lr), s, w) for lr in coarse_lrs for s in steps
                    for w in weight_decays],
      lambda best: [Setting(_round(best.lr * m), s, w) for m in lr_multipliers for s in steps
                    for w in weight_decays],
  ]


def run_search(stages, score: Callable[[list], list]):
  """(best setting, its score, {setting: score}). `score(candidates)` scores a stage's
  new candidates together (so that candidates able to share work can), in order; a
  candidate scored before is not run again; ties keep the earlier candidate, so the
  result is deterministic."""
  scores = {}
  best, best_score = None, -np.inf
  for stage in stages:
    cands = stage(best)
    new = [c for c in dict.fromkeys(cands) if c not in scores]
    if new:
      scores.update(zip(new, score(new)))
    for cand in cands:
      if scores[cand] > best_score:
        best, best_score = cand, scores[cand]
  return best, best_score, scores


class StreamCheckpoint:
  """A held-out stream's progress in one .npz (no pickle): the predictions so far and,
  online, the weights and optimizer state reached. `key` names the run it belongs to
  (shift, setting, fingerprint); a file with another key is ignored, with a message.
  With `write=False` (every process but the first of a multi-process run) it only reads:
  the streams are deterministic, so whichever saved state a process resumes from, it
  computes the same predictions."""

  def __init__(self, path: str, key: str, keep_state: bool, write: bool = True):
    self.path, self.key, self.keep_state, self.write = path, key, keep_state, write

  def save(self, done, params, opt_state, predictions):
    if not self.write:
      return
    arrays = {'key': np.asarray(self.key), 'done': np.asarray(done),
              'predictions': np.asarray(predictions, np.int32)}
    if self.keep_state:
      for i, leaf in enumerate(jax.tree_util.tree_leaves((params, opt_state))):
        arrays[f'leaf_{i}'] = np.asarray(leaf)
    atomic_write(self.path, lambda f: np.savez(f, **arrays), mode='wb')

  def restore(self, params, opt_state):
    """(start, params, opt_state, predictions) saved for this run, or None."""
    if not os.path.exists(self.path):
      return None
    with np.load(self.path, allow_pickle=False) as z:
      data = {k: z[k] for k in z.files}
    if str(data.get('key')) != self.key:
      print(f'{self.path}: saved for another run ({data.get("key")}); starting afresh',
            flush=True)
      return None
    done, predictions = int(data['done']), data['predictions'].tolist()
    if not self.keep_state:
      return done, params, opt_state, predictions
    leaves, treedef = jax.tree_util.tree_flatten((params, opt_state))
    saved = [data.get(f'leaf_{i}') for i in range(len(leaves))]
    if any(s is None or s.shape != np.shape(l) or s.dtype != np.asarray(l).dtype
           for s, l in zip(saved, leaves)) or f'leaf_{len(leaves)}' in data:
      print(f'{self.path}: saved weights do not fit this model; starting afresh', flush=True)
      return None
    p, s = jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(a) for a in saved])
    return done, p, s, predictions

  def remove(self):
    if self.write and os.path.exists(self.path):
      os.remove(self.path)
