"""CIFAR-10-C: surgical fine-tuning from a CIFAR-10 source model (paper Table 1/Fig. 2)."""
import json
import os
import re
import time

import jax
from tqdm import tqdm

import surgery
from surgery.data import target_split
from surgery.groups import path_str
from surgery.models import RESNET26_GROUPS
from experiments import figures
from experiments import finetune
from experiments import results as results_lib
from experiments import shifts as shifts_lib


def methods_to_run(methods):
  """Trained methods a request needs; cross_val needs every surgical option."""
  need = set(methods)
  if 'cross_val' in need:
    need |= set(finetune.SURGICAL)
  return [m for m in finetune.METHODS if m in need and m != 'cross_val']


def train_and_evaluate(config, workdir):
  shift_specs = shifts_lib.shifts_of(config)
  shifts = [s.name for s in shift_specs]
  methods = finetune.split_list(config.methods, 'method', finetune.METHODS)
  seeds = [int(s) for s in finetune.split_list(config.seeds, 'seed')]
  run_methods = methods_to_run(methods)
  plan = [(shift, m, lr, seed, hp) for shift in shifts for seed in seeds for m in run_methods
          for lr in finetune.lr_grid(config, m) for hp in finetune.hparam_grid(config, m)]

  os.makedirs(workdir, exist_ok=True)
  results_lib.atomic_write(os.path.join(workdir, 'config.json'), config.to_json(indent=2))
  table = results_lib.ResultsCsv(os.path.join(workdir, 'results.csv'))
  todo = [p for p in plan if not table.has(*p)]
  if config.get('report_only'):
    print(f'report only: {len(plan) - len(todo)} of {len(plan)} planned runs in results.csv')
    summary = write_outputs(workdir, table.rows, methods, shifts, config)
    print(summary)
    return table.rows
  print(f'{len(plan)} runs planned ({len(shifts)} shift(s) x methods x lrs x {len(seeds)} seed(s)); '
        f'{len(plan) - len(todo)} already in results.csv, {len(todo)} to go. '
        f'Devices: {jax.device_count()} x {jax.devices()[0].device_kind}.', flush=True)

  model, variables = finetune.build_model(config)
  params, model_state = finetune.source_params(config, workdir, model, variables)
  mesh = surgery.data_mesh() if jax.device_count() > 1 else None
  runner = finetune.Finetuner(model, config, mesh)

  with tqdm(total=len(plan), initial=len(plan) - len(todo), unit='run', desc='sweep') as bar:
    for spec in shift_specs:
      shift = spec.name
      if not any(p[0] == shift for p in todo):
        continue
      images, labels = shifts_lib.target_data(config, spec)
      start_params = shifts_lib.source_params(config, spec, params)
      for seed in seeds:
        split = target_split(labels, shifts_lib.tune_per_class(config, spec),
                             config.val_per_class, seed)
        data = [(images[i], labels[i]) for i in split]
        for _, m, lr, _, hp in [p for p in todo if p[0] == shift and p[3] == seed]:
          bar.set_description(f'{shift} {m} lr={lr:g} {hp} seed={seed}')
          row = _one_run(runner, start_params, model_state, shift, m, lr, seed, data, workdir, hp)
          table.add(row)
          bar.write(f'{shift:18s} {m:13s} lr={lr:<7g}{hp:>16s} seed={seed} '
                    f'epoch={row["best_epoch"]:2d} val={row["val_acc"]:.4f} '
                    f'test={row["test_acc"]:.4f} ({row["seconds"]:.0f}s)')
          bar.update()
          write_outputs(workdir, table.rows, methods, shifts, config)
  summary = write_outputs(workdir, table.rows, methods, shifts, config)
  print(summary)
  return table.rows


def _one_run(runner, params, model_state, shift, method, lr, seed, data, workdir, hparam=''):
  """One results.csv row: fine-tune (or just evaluate, for no_adaptation)."""
  start = time.time()
  tune, val, test = data
  if method == 'no_adaptation':
    fields = dict(best_epoch=0, val_acc=runner.evaluate(params, model_state, *val),
                  test_acc=runner.evaluate(params, model_state, *test))
  else:
    fields, _, rgn = runner.run(params, model_state, method, lr, seed, tune, val, test,
                                desc=f'{method} lr={lr:g} {hparam}', hparam=hparam)
    if rgn is not None:
      _save_rgn_weights(workdir, shift, lr, seed, rgn)
  return dict(shift=shift, method=method, lr=lr, hparam=hparam, seed=seed, n_tune=len(tune[1]),
              n_val=len(val[1]), n_test=len(test[1]), seconds=round(time.time() - start, 1),
              **fields)


def _save_rgn_weights(workdir, shift, lr, seed, per_epoch):
  """Auto-RGN weights per tensor per epoch, for the paper's Figure 6."""
  names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(per_epoch[0])]
  data = {'tensors': names,
          'weights': [[float(w) for w in jax.tree_util.tree_leaves(e)] for e in per_epoch]}
  path = os.path.join(workdir, 'auto_rgn', f'{shift}_lr{lr:g}_seed{seed}.json')
  results_lib.atomic_write(path, json.dumps(data))


def write_outputs(workdir, rows, methods, shifts, config):
  rows = list(rows)
  if 'cross_val' in methods:
    rows += results_lib.cross_val_rows(rows, finetune.SURGICAL)
  shown = [m for m in methods if any(r['method'] == m for r in rows)]
  title = config.get('title') or f'CIFAR-10 shifts (corruption severity {config.severity}), ResNet-26'
  extra = []
  text, table = results_lib.markdown_summary(rows, shown, shifts, title)
  if shown:
    results_lib.plot_accuracy_by_method(table, shown, shifts,
                                        os.path.join(workdir, 'accuracy_by_method.png'), title)
    means = figures.data_efficiency(table, shown, shifts,
                                    os.path.join(workdir, 'data_efficiency.png'))
    if means:
      extra += ['## Accuracy (%) against the number of labelled target examples', '',
                'Mean over the base shifts; see data_efficiency.png.', '',
                figures.data_efficiency_markdown(means), '']
    panels = _plot_rgn(workdir, rows, shifts)
    if panels:
      extra += ['## Auto-RGN weights accumulated over training (Fig. 6)', '',
                'Per tensor in auto_rgn_weights.png; here the mean over each group\'s tensors '
                '(norm tensors, which Auto-RGN leaves out, not counted), for the run '
                'validation picked.', '', figures.rgn_group_means_markdown(panels), '']
  text += ('\n' + '\n'.join(extra) if extra else '') + (
      f'\nWritten by `python -m experiments.main` into {workdir}; see config.json.\n')
  results_lib.atomic_write(os.path.join(workdir, 'summary.md'), text)
  return text


def _plot_rgn(workdir, rows, shifts):
  """Fig. 6 for the Auto-RGN run that validation picked on each shift (first seed)."""
  chosen = results_lib.select_lr([r for r in rows if r['method'] == 'auto_rgn'])
  def group_of(path):
    return next((g for g, rx in RESNET26_GROUPS if re.search(rx, path)), '?')
  panels = []
  for shift in shifts:
    runs = chosen.get((shift, 'auto_rgn'))
    if runs:
      got = figures.rgn_weights(workdir, shift, runs[0]['lr'], runs[0]['seed'], group_of)
      if got:
        panels.append((f'{shift} (lr {runs[0]["lr"]})',) + got)
  if panels:
    figures.plot_rgn_weights(panels, os.path.join(workdir, 'auto_rgn_weights.png'))
  return panels
