"""MEMO test-time adaptation on CIFAR-10-C with freezing options (paper Section 2.2).

One row of results.csv per corruption x (mode/option): the accuracy of adapt-then-predict
over a stream of test images. Per-image correctness goes to streams/ for the plot of
online accuracy along the stream (paper Fig. 4, right).
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import surgery
from surgery.checkpoints import load_pretrained
from surgery.corruptions import CORRUPTIONS
from surgery.errors import SurgeryError
from surgery.memo import adapt
from surgery.models import ResNet26
from experiments import results as results_lib
from experiments import shifts as shifts_lib
from experiments.finetune import split_list


def stream_subset(labels, n, seed):
  """A class-balanced, seeded, shuffled subset of n indices (the order of the stream)."""
  classes = np.unique(labels)
  if n % len(classes) or n // len(classes) > min(np.sum(labels == c) for c in classes):
    raise SurgeryError(f'num_images must be a multiple of {len(classes)} and at most '
                       f'{len(labels)}, got {n}')
  rng = np.random.default_rng(seed)
  idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n // len(classes)]
                        for c in classes])
  return rng.permutation(idx)


def _mode_kwargs(config, mode):
  mc = config[mode]
  kwargs = {}
  if mc.optimizer:
    kwargs['optimizer'] = mc.optimizer
  if mc.learning_rate > 0:
    kwargs['learning_rate'] = mc.learning_rate
  if mc.weight_decay >= 0:
    kwargs['weight_decay'] = mc.weight_decay
  return kwargs


def train_and_evaluate(config, workdir):
  shifts = ['clean'] if config.corruptions == 'clean' else split_list(
      config.corruptions, 'corruption', CORRUPTIONS)
  if not 1 <= int(config.severity) <= 5:
    raise SurgeryError(f'severity must be 1 to 5, got {config.severity}')
  modes = split_list(config.modes, 'mode', adapt.MODES)
  options = split_list(config.options, 'option', tuple(adapt.OPTIONS))
  methods = (['no_adaptation'] if config.no_adaptation else []) + [
      f'{m}/{o}' for m in modes for o in options]

  os.makedirs(workdir, exist_ok=True)
  results_lib.atomic_write(os.path.join(workdir, 'config.json'), config.to_json(indent=2))
  table = results_lib.ResultsCsv(os.path.join(workdir, 'results.csv'))
  todo = [(s, m) for s in shifts for m in methods if not table.has(s, m, 0.0, config.seed)]
  print(f'{len(shifts) * len(methods)} runs planned, {len(todo)} to go; '
        f'{config.num_images} images per corruption, {config.num_copies} augmented copies, '
        f'{config.steps} step(s).', flush=True)

  model = ResNet26(depth=config.get('model_depth', 26))
  template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  if not config.init_checkpoint:
    raise SurgeryError('MEMO adapts a source model: set --config.init_checkpoint')
  params = load_pretrained(config.init_checkpoint, template)

  for shift in shifts:
    if not any(t[0] == shift for t in todo):
      continue
    images, labels = shifts_lib.target_data(config, shifts_lib.parse(shift))
    order = stream_subset(labels, config.num_images, config.seed)
    x, y = images[order], labels[order]
    for method in methods:
      if table.has(shift, method, 0.0, config.seed):
        continue
      start = time.time()
      if method == 'no_adaptation':
        predict = surgery.make_predict(model)
        logits = np.concatenate([np.asarray(predict(params, {}, x[i:i + config.eval_batch_size]))
                                 for i in range(0, len(x), config.eval_batch_size)])
        out = {'correct': logits.argmax(-1) == y, 'images_per_second': float('nan')}
      else:
        mode, option = method.split('/')
        print(f'{shift}: MEMO {mode} {option}', flush=True)
        out = adapt.adapt_stream(model, params, x, y, mode, option, steps=config.steps,
                                 num_copies=config.num_copies, seed=config.seed,
                                 **_mode_kwargs(config, mode))
      correct = np.asarray(out['correct'], bool)
      _save_stream(workdir, shift, method, correct)
      table.add(dict(shift=shift, method=method, lr=0.0, seed=config.seed, best_epoch=0,
                     val_acc='', test_acc=float(correct.mean()), n_test=len(correct),
                     seconds=round(time.time() - start, 1),
                     extra=f'{out["images_per_second"]:.3f} images/s'))
      print(f'{shift:16s} {method:24s} accuracy {correct.mean():.4f} '
            f'({out["images_per_second"]:.2f} images/s)', flush=True)
      write_outputs(workdir, table.rows, methods, shifts, config)
  print(write_outputs(workdir, table.rows, methods, shifts, config))
  return table.rows


def _save_stream(workdir, shift, method, correct):
  path = os.path.join(workdir, 'streams', f'{shift}_{method.replace("/", "_")}.json')
  results_lib.atomic_write(path, json.dumps([int(c) for c in correct]))


def _load_stream(workdir, shift, method):
  path = os.path.join(workdir, 'streams', f'{shift}_{method.replace("/", "_")}.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return np.asarray(json.load(f), float)


def write_outputs(workdir, rows, methods, shifts, config):
  shown = [m for m in methods if any(r['method'] == m for r in rows)]
  title = f'MEMO on CIFAR-10-C (severity {config.severity}), ResNet-26'
  settings = '; '.join(
      f'{mode}: ' + ', '.join(f'{k} {v:g}' if isinstance(v, float) else f'{k} {v}'
                              for k, v in {**adapt.DEFAULTS[mode], **_mode_kwargs(config, mode)}.items())
      for mode in adapt.MODES)
  text, _ = results_lib.markdown_summary(
      rows, shown, shifts, title, protocol='one MEMO setting per mode, no tuning.',
      show_lrs=False,
      notes=(f'{config.num_images} test images per corruption, adapted in one seeded, '
             f'class-balanced stream; {config.num_copies} augmented copies, {config.steps} '
             'step(s). Episodic resets to the source model after every image; online keeps '
             f'the updates. Optimizers: {settings}.\n\n' + _speed_markdown(rows, shown)))
  results_lib.atomic_write(os.path.join(workdir, 'summary.md'), text)
  plot_online_stream(workdir, shifts, [m for m in shown if m.startswith('online/')
                                       or m == 'no_adaptation'])
  return text


def _speed_markdown(rows, methods):
  """Adapted images per second per setting: median over corruptions of each run's rate
  (the runner's `extra` column; compilation excluded)."""
  lines = ['Adapted images per second (median over corruptions):', '']
  for m in methods:
    rates = [float(r['extra'].split()[0]) for r in rows
             if r['method'] == m and r.get('extra', '').endswith('images/s')]
    rates = [x for x in rates if not np.isnan(x)]
    if rates:
      lines.append(f'- {m}: {np.median(rates):.2f}')
  return '\n'.join(lines)


def plot_online_stream(workdir, shifts, methods):
  """Running accuracy along the test stream, averaged over corruptions (Fig. 4, right)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  curves = {}
  for m in methods:
    streams = [s for s in (_load_stream(workdir, sh, m) for sh in shifts) if s is not None]
    if streams:
      n = min(len(s) for s in streams)
      mean = np.mean([s[:n] for s in streams], axis=0)
      curves[m] = np.cumsum(mean) / np.arange(1, n + 1)
  if not curves:
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  for m, c in curves.items():
    style = dict(color='0.4', linestyle='--') if m == 'no_adaptation' else {}
    ax.plot(np.arange(1, len(c) + 1), 100 * c, label=m, **style)
  ax.set_xlabel('test images seen')
  ax.set_ylabel('online accuracy so far (%)')
  ax.set_title('MEMO online, averaged over corruptions')
  ax.legend(fontsize=8)
  fig.tight_layout()
  results_lib.atomic_write(os.path.join(workdir, 'online_accuracy.png'),
                           lambda f: fig.savefig(f, format='png', dpi=120), mode='wb')
  plt.close(fig)
