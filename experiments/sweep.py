"""Supervised surgical fine-tuning sweeps: shifts x methods x lrs x seeds (paper Section 2.1).

Works for any registered model, dataset and method (`surgery.models`,
`surgery.datasets`, `surgery.methods.registry`); it names none of them.
"""
import json
import os
import re
import time

import jax
from tqdm import tqdm

import surgery
from surgery import distributed
from surgery.errors import SurgeryError
from surgery.groups import path_str
from surgery.methods import registry
from experiments import figures
from experiments import finetune
from experiments import results as results_lib
from experiments.plan import check_resume, make_plan


def train_and_evaluate(config, workdir):
  plan = make_plan(config)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise SurgeryError(f'--workdir {workdir} exists and is not a directory')
  os.makedirs(workdir, exist_ok=True)
  primary = distributed.is_primary()  # the one process that writes files
  table = results_lib.ResultsCsv(os.path.join(workdir, 'results.csv'), write=primary)
  if config.get('report_only'):
    todo = [r for r in plan.runs if not table.has(r.shift, r.method, r.lr, r.seed, r.hparam)]
    print(f'report only: {len(plan.runs) - len(todo)} of {len(plan.runs)} planned runs in results.csv')
    summary = write_outputs(workdir, table.rows, plan)
    print(summary)
    return table.rows
  check_resume(workdir, table, plan.fingerprint, plan.result_fields)
  todo = [r for r in plan.runs if not table.has(r.shift, r.method, r.lr, r.seed, r.hparam)]
  # Every process read results.csv before any writes it, and all go on with one list.
  distributed.agree('the runs to do', repr(todo))
  distributed.barrier('read results.csv')
  if primary:
    results_lib.atomic_write(os.path.join(workdir, 'config.json'), config.to_json(indent=2))
  print(f'{len(plan.runs)} runs planned ({len(plan.shifts)} shift(s) x methods x lrs x '
        f'{len(plan.seeds)} seed(s)); {len(plan.runs) - len(todo)} already in results.csv, '
        f'{len(todo)} to go. Model {plan.model.name}, dataset {config.get("dataset", "cifar10")}. '
        f'Devices: {jax.device_count()} x {jax.devices()[0].device_kind}.', flush=True)
  if not todo:
    if primary:
      print(write_outputs(workdir, table.rows, plan))
    return table.rows

  variables = finetune.source_variables(config, workdir, plan.model)
  params = variables['params']
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  mesh = surgery.data_mesh() if jax.device_count() > 1 else None
  runner = finetune.Finetuner(plan.model, config, mesh, plan.select_metric,
                              getattr(plan.dataset, 'domain_names', ()))

  with tqdm(total=len(plan.runs), initial=len(plan.runs) - len(todo), unit='run', desc='sweep') as bar:
    for shift in plan.shifts:
      shift_runs = [r for r in todo if r.shift == shift]
      if not shift_runs:
        continue
      start_params = plan.dataset.perturb(shift, params, plan.model.groups)
      for seed in plan.seeds:
        data = plan.dataset.target_sets(shift, seed)
        for run in [r for r in shift_runs if r.seed == seed]:
          bar.set_description(f'{shift} {run.method} lr={run.lr:g} {run.hparam} seed={seed}')
          row = _one_run(runner, plan, start_params, model_state, run, data, workdir, primary)
          table.add(row)
          bar.write(f'{shift:18s} {run.method:13s} lr={run.lr:<7g}{run.hparam:>16s} seed={seed} '
                    f'epoch={row["best_epoch"]:2d} val={row["val_acc"]:.4f} '
                    f'test={row["test_acc"]:.4f}' + _selection_metric_text(plan, row)
                    + f' ({row["seconds"]:.0f}s)')
          bar.update()
          if primary:
            write_outputs(workdir, table.rows, plan)
  if primary:
    print(write_outputs(workdir, table.rows, plan))
  return table.rows


def _one_run(runner, plan, params, model_state, run, data, workdir, primary=True):
  """One results.csv row: fine-tune (or just evaluate, for evaluate-only methods)."""
  start = time.time()
  tune, val, test = data
  method = plan.method(run.method)
  history = []
  if method.evaluate_only:
    fields = dict(best_epoch=0,
                  **{f'val_{k}': v for k, v in runner.metrics(params, model_state, val).items()},
                  **{f'test_{k}': v for k, v in runner.metrics(params, model_state, test).items()})
  else:
    fields, history, rgn = runner.run(params, model_state, method, run.lr, run.seed, tune, val,
                                      test, desc=f'{run.method} lr={run.lr:g} {run.hparam}',
                                      hparam=run.hparam_value)
    if rgn is not None and primary:
      _save_rgn_weights(workdir, run.shift, run.lr, run.seed, rgn)
  row = dict(shift=run.shift, method=run.method, lr=run.lr, hparam=run.hparam, seed=run.seed,
             n_tune=len(tune[1]), n_val=len(val[1]), n_test=len(test[1]),
             seconds=round(time.time() - start, 1), fingerprint=plan.fingerprint, **fields)
  if primary:
    results_lib.append_jsonl(os.path.join(workdir, 'metrics.jsonl'), dict(
        shift=run.shift, method=run.method, lr=run.lr, hparam=run.hparam, seed=run.seed,
        fingerprint=plan.fingerprint, epochs=history))
  return row


def _selection_metric_text(plan, row):
  m = plan.select_metric
  if m == 'acc' or f'val_{m}' not in row:
    return ''
  return f' val_{m}={row[f"val_{m}"]:.4f} test_{m}={row[f"test_{m}"]:.4f}'


def _save_rgn_weights(workdir, shift, lr, seed, per_epoch):
  """Auto-RGN weights per tensor per epoch, for the paper's Figure 6."""
  names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(per_epoch[0])]
  data = {'tensors': names,
          'weights': [[float(w) for w in jax.tree_util.tree_leaves(e)] for e in per_epoch]}
  path = os.path.join(workdir, 'auto_rgn', f'{shift}_lr{lr:g}_seed{seed}.json')
  results_lib.atomic_write(path, json.dumps(data))


def write_outputs(workdir, rows, plan):
  config, metric = plan.config, plan.select_metric
  methods, shifts = plan.methods, plan.shifts
  rows = list(rows)
  if 'cross_val' in methods:
    rows += results_lib.cross_val_rows(
        rows, registry.selection_candidates(plan.model), metric=metric,
        planned=[results_lib.run_key(r.shift, r.method, r.lr, r.seed, r.hparam)
                 for r in plan.runs])
  shown = [m for m in methods if any(r['method'] == m for r in rows)]
  title = config.get('title') or f'{plan.model.name} fine-tuning'
  extra = []
  text, table = results_lib.markdown_summary(rows, shown, shifts, title, metric=metric,
                                             also=getattr(plan.dataset, 'metrics', ()))
  if shown:
    results_lib.plot_accuracy_by_method(table, shown, shifts,
                                        os.path.join(workdir, 'accuracy_by_method.png'), title)
    means = figures.data_efficiency(table, shown, shifts,
                                    os.path.join(workdir, 'data_efficiency.png'))
    if means:
      extra += ['## Accuracy (%) against the number of labelled target examples', '',
                'Mean over the base shifts; see data_efficiency.png.', '',
                figures.data_efficiency_markdown(means), '']
    report = getattr(plan.dataset, 'report', None)  # a dataset's own figures (mCE)
    if report is not None and metric == 'acc':
      extra += report(table, shown, shifts)
    panels = _plot_rgn(workdir, rows, shifts, plan.model.groups, metric)
    if panels:
      extra += ['## Auto-RGN weights accumulated over training (Fig. 6)', '',
                'Per tensor in auto_rgn_weights.png; here the mean over each group\'s tensors '
                '(norm tensors, which Auto-RGN leaves out, not counted), for the run '
                'validation picked.', '', figures.rgn_group_means_markdown(panels, plan.model.groups), '']
  text += ('\n' + '\n'.join(extra) if extra else '') + (
      f'\nWritten by `python -m experiments.main` into {workdir}; see config.json.\n')
  results_lib.atomic_write(os.path.join(workdir, 'summary.md'), text)
  return text


def _plot_rgn(workdir, rows, shifts, groups, metric):
  """Fig. 6 for the Auto-RGN run that validation picked on each shift (first seed)."""
  chosen = results_lib.select_lr([r for r in rows if r['method'] == 'auto_rgn'], metric=metric)

  def group_of(path):
    return next((g for g, rx in groups if re.search(rx, path)), '?')

  panels = []
  for shift in shifts:
    runs = chosen.get((shift, 'auto_rgn'))
    if runs:
      got = figures.rgn_weights(workdir, shift, runs[0]['lr'], runs[0]['seed'], group_of)
      if got:
        panels.append((f'{shift} (lr {runs[0]["lr"]})',) + got)
  if panels:
    figures.plot_rgn_weights(panels, os.path.join(workdir, 'auto_rgn_weights.png'), groups)
  return panels
