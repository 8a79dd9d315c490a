"""Figures beyond the per-shift bars: data efficiency (paper Fig. 4, left) and the
Auto-RGN weights accumulated over training per tensor (Fig. 6), which
`surgery.methods.auto_rgn` reports."""
import math
import re
from collections import defaultdict

import numpy as np

from surgery.io import atomic_write


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path):
  atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120), mode='wb')
  _pyplot().close(fig)


def data_efficiency(table, methods, shifts, path):
  """Test accuracy against the number of target examples, averaged over the base shifts.
  Shift names look like 'gaussian_noise@250'. Returns {method: {n: mean accuracy}}."""
  curves = defaultdict(lambda: defaultdict(list))
  for m in methods:
    for s in shifts:
      base, _, n = s.partition('@')
      if n and s in table[m]:
        curves[m][int(n)].append(table[m][s][0])
  means = {m: {n: float(np.mean(v)) for n, v in sorted(c.items())} for m, c in curves.items()}
  if not means:
    return means
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for m, c in means.items():
    ax.plot(list(c), [100 * v for v in c.values()], marker='o', label=m)
  ax.set_xscale('log')
  ax.set_xlabel('labelled target examples')
  ax.set_ylabel('target test accuracy (%)')
  ax.set_title('Data efficiency (mean over shifts)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)
  return means


def data_efficiency_markdown(means):
  sizes = sorted({n for c in means.values() for n in c})
  lines = ['| method | ' + ' | '.join(str(n) for n in sizes) + ' |',
           '|---|' + '---|' * len(sizes)]
  for m, c in means.items():
    lines.append(f'| {m} | ' + ' | '.join(f'{100 * c[n]:.1f}' if n in c else '–' for n in sizes) + ' |')
  return '\n'.join(lines)


def rgn_group_means_markdown(panels, model_groups):
  """Mean accumulated weight per group (rows, in the model's network order) and panel
  (columns), over the tensors Auto-RGN weighted; the largest of each column in bold."""
  from surgery.groups import group_names
  seen = {g for _, _, gs, _ in panels for g in gs}
  order = group_names(model_groups)
  groups = [g for g in order if g in seen] + sorted(seen - set(order))
  columns = []  # per panel: {group: mean or None}, and the column's largest mean
  for _, _, gs, summed in panels:
    col = {}
    for g in groups:
      vals = [w for gi, w in zip(gs, summed) if gi == g and w > 0]
      col[g] = float(np.mean(vals)) if vals else None
    columns.append((col, max((x for x in col.values() if x is not None), default=None)))
  lines = ['| group | ' + ' | '.join(p[0] for p in panels) + ' |',
           '|---|' + '---|' * len(panels)]
  for g in groups:
    cells = ['–' if col[g] is None else (f'**{col[g]:.2f}**' if col[g] == top else f'{col[g]:.2f}')
             for col, top in columns]
    lines.append(f'| {g} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot_rgn_weights(panels, path, model_groups):
  """One panel per shift: accumulated weight per tensor in network order, coloured by
  group (paper Fig. 6). `panels` is [(title, tensors, groups, summed)]."""
  plt = _pyplot()
  cols = min(len(panels), 2)
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3 * rows), squeeze=False)
  palette = {}
  position = network_order(model_groups)
  for ax, (title, tensors, groups, summed) in zip(axes.flat, panels):
    order = sorted(range(len(tensors)), key=lambda i: position(tensors[i]))
    for g in dict.fromkeys(groups[i] for i in order):
      palette.setdefault(g, f'C{len(palette)}')
    ax.bar(range(len(order)), [summed[i] for i in order],
           color=[palette[groups[i]] for i in order])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('tensor (input -> output)')
    ax.set_ylabel('accumulated Auto-RGN weight')
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in palette.values()]
  fig.legend(handles, list(palette), loc='upper right', fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def network_order(groups):
  """Sort key for tensor paths: the model's group order (network order), then the
  path with numbers compared as numbers (block10 after block9)."""
  from surgery.groups import group_names
  names = group_names(groups)
  compiled = [(names.index(g), re.compile(rx)) for g, rx in groups]

  def key(path):
    group = next((i for i, rx in compiled if rx.search(path)), len(names))
    return (group, [(0, int(t), '') if t.isdigit() else (1, 0, t)
                    for t in re.split(r'(\d+)', path) if t])

  return key
