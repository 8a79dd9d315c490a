"""Supervised surgical fine-tuning sweeps: shifts x methods x lrs x seeds (paper Section 2.1).

Works for any registered model, dataset and method (`surgery.models`,
`surgery.datasets`, `surgery.methods.registry`); it names none of them.
"""
import os
import time

import jax
from tqdm import tqdm

import surgery
from surgery import distributed
from surgery.methods import registry
from surgery.report import figures, store, summary
from experiments import finetune, skeleton
from experiments.plan import dataset_name, make_plan


def train_and_evaluate(config, workdir):
  plan = make_plan(config)
  primary = distributed.is_primary()  # the one process that writes files
  table = skeleton.open_results(workdir)
  todo = [r for r in plan.runs if not table.has(r.shift, r.method, r.lr, r.seed, r.hparam)]
  if config.get('report_only'):
    print(f'report only: {len(plan.runs) - len(todo)} of {len(plan.runs)} planned runs in '
          'results.csv')
    skeleton.report(write_outputs, workdir, table.rows, plan)
    return table.rows
  skeleton.resume(workdir, table, plan, todo)
  layout = device_layout()
  print(f'{len(plan.runs)} runs planned ({len(plan.shifts)} shift(s) x methods x lrs x '
        f'{len(plan.seeds)} seed(s){_candidates_text(plan)}); {len(plan.runs) - len(todo)} '
        f'already in results.csv, {len(todo)} to go. Model {plan.model.name}, dataset '
        f'{dataset_name(config)}. Devices: {layout}.', flush=True)
  _warn_mixed_layouts(table, layout, bool(todo))
  if not todo:
    skeleton.report(write_outputs, workdir, table.rows, plan)
    return table.rows

  # Loaded (or trained) before config.json is written: a checkpoint that does not fit
  # the model is the user's error, and a user error leaves nothing behind.
  variables = finetune.source_variables(config, workdir, plan.model)
  skeleton.save_config(workdir, config)
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
  skeleton.report(write_outputs, workdir, table.rows, plan)
  return table.rows


def device_layout() -> str:
  """'<processes>x<local devices> <kind>': rows made on one layout are reproducible
  exactly; another layout sums gradients in another order and drifts (README)."""
  return (f'{jax.process_count()}x{jax.local_device_count()} '
          f'{jax.devices()[0].device_kind.replace(" ", "_")}')


def _warn_mixed_layouts(table, layout, adding):
  before = sorted({r['extra'].split('layout=', 1)[1].split(';')[0] for r in table.rows
                   if 'layout=' in (r.get('extra') or '')} - {layout})
  if before and adding:
    print(f'note: results.csv holds rows made on device layout {", ".join(before)}; this run '
          f'adds rows made on {layout}. Rows are reproducible only on one layout.', flush=True)


def _candidates(plan) -> list:
  """Methods that run only because a selection method picks among them (not requested)."""
  ran = {r.method for r in plan.runs}
  order = {m: i for i, m in enumerate(registry.names(plan.model))}
  return sorted(ran - set(plan.methods), key=lambda m: order.get(m, len(order)))


def _candidates_text(plan) -> str:
  extra = _candidates(plan)
  if not extra:
    return ''
  runs = sum(r.method in extra for r in plan.runs)
  return (f', including {runs} run(s) of {", ".join(extra)}, which {", ".join(_selectors(plan))} '
          'picks among but were not requested')


def _selectors(plan) -> list:
  """The requested methods that are a choice among other runs."""
  return [m for m in plan.methods if plan.method(m).select is not None]


def _one_run(runner, plan, params, model_state, run, data, workdir, primary=True):
  """One results.csv row: fine-tune (or just evaluate, for evaluate-only methods; or the
  method's own loop over runs, `Method.train`)."""
  start = time.time()
  tune, val, test = data
  method = plan.method(run.method)
  history = []
  if method.evaluate_only:
    fields = dict(best_epoch=0,
                  **{f'val_{k}': v for k, v in runner.metrics(params, model_state, val).items()},
                  **{f'test_{k}': v for k, v in runner.metrics(params, model_state, test).items()})
  elif method.train is not None:
    fields, history, records = method.train(
        train_context(runner, plan, method, params, model_state, run.seed, data))
  else:
    fields, history, records = runner.run(params, model_state, method, run.lr, run.seed, tune,
                                          val, test, desc=f'{run.method} lr={run.lr:g} {run.hparam}',
                                          hparam=run.hparam_value)
  if method.trains and records and method.save_records is not None and primary:
    method.save_records(workdir, run, records)
  row = dict(shift=run.shift, method=run.method, lr=run.lr, hparam=run.hparam, seed=run.seed,
             n_tune=len(tune[1]), n_val=len(val[1]), n_test=len(test[1]),
             seconds=round(time.time() - start, 1), fingerprint=plan.fingerprint,
             extra=f'layout={device_layout()}', **fields)
  if primary:
    store.append_jsonl(os.path.join(workdir, store.HISTORY), dict(
        shift=run.shift, method=run.method, lr=run.lr, hparam=run.hparam, seed=run.seed,
        fingerprint=plan.fingerprint, epochs=history))
  return row


def train_context(runner, plan, method, params, model_state, seed, data):
  """What a method with its own loop (`Method.train`) gets for one shift and seed: runs
  of any method started on `data` (tune, val, test) from `params`."""
  tune, val, test = data
  return registry.TrainContext(
      start=lambda name, lr, hparam=None, init=None: runner.start(
          *(init or (params, model_state)), plan.method(name), lr, seed, tune, val, test,
          hparam),
      settings=registry.settings(method, plan.config), epochs=int(plan.config.epochs),
      options=tuple(registry.surgical_options(plan.model)),
      head_options=tuple(plan.model.head_methods))


def _selection_metric_text(plan, row):
  m = plan.select_metric
  if m == 'acc' or f'val_{m}' not in row:
    return ''
  return f' val_{m}={row[f"val_{m}"]:.4f} test_{m}={row[f"test_{m}"]:.4f}'


def write_outputs(workdir, rows, plan):
  config, metric = plan.config, plan.select_metric
  methods, shifts = plan.methods, plan.shifts
  rows = list(rows)
  planned = [store.run_key(r.shift, r.method, r.lr, r.seed, r.hparam) for r in plan.runs]
  for name in _selectors(plan):
    method = plan.method(name)
    rows += method.select(rows, method.candidates(plan.model), name=name, metric=metric,
                          planned=planned)
  candidates = _candidates(plan)
  shown = [m for m in methods + candidates if any(r['method'] == m for r in rows)]
  title = config.get('title') or f'{plan.model.name} fine-tuning'
  have = {store.row_key(r) for r in rows}
  done = sum(store.run_key(r.shift, r.method, r.lr, r.seed, r.hparam) in have
             for r in plan.runs)
  if done < len(plan.runs):  # the title says so, and so does the figure's
    title += f' (partial: {done} of {len(plan.runs)} runs)'
  notes = []
  if candidates:
    notes.append(f'{", ".join(candidates)}: not requested; run and shown because '
                 f'{", ".join(_selectors(plan))} picks among them.')
  from experiments import source_stage  # lazily, as plan and finetune import it
  extra = source_stage.summary_lines(workdir)
  text, table = summary.markdown_summary(rows, shown, shifts, title, metric=metric,
                                         also=getattr(plan.dataset, 'metrics', ()),
                                         notes='\n\n'.join(notes))
  if shown:
    summary.plot_accuracy_by_method(table, shown, shifts,
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
    ctx = registry.ReportContext(workdir, rows, shifts, plan.model.groups, metric)
    for name in shown:  # each method's own section (Auto-RGN's Fig. 6)
      method = plan.method(name)
      if method.report is not None:
        extra += method.report(ctx)
  text += ('\n' + '\n'.join(extra) if extra else '') + (
      '\nWritten by `python -m experiments.main`; its settings are in config.json beside it.\n')
  store.atomic_write(os.path.join(workdir, 'summary.md'), text)
  return text
