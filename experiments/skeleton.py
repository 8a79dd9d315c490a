"""The skeleton both runners (the sweep and MEMO) share over one workdir: plan ->
resume -> run -> report.

    table = skeleton.open_results(workdir)      # results.csv; process 0 alone writes it
    skeleton.resume(workdir, table, plan, todo)  # stops on rows of other settings; every
                                                 # process goes on with the same runs
    skeleton.save_config(workdir, config)        # config.json, after the model loaded
    skeleton.report(write_outputs, workdir, table.rows, plan)   # summary.md, plots

Every step that writes does so in process 0 only, so a multi-process run writes each
file once.
"""
import os

from surgery import distributed
from surgery.errors import SurgeryError
from surgery.report import store
from experiments.plan import check_resume, config_record, read_result_fields


def open_results(workdir: str) -> store.ResultsCsv:
  """The workdir's results.csv (read by every process, written by process 0)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise SurgeryError(f'--workdir {workdir} exists and is not a directory')
  return store.ResultsCsv(os.path.join(workdir, 'results.csv'), write=distributed.is_primary())


def resume(workdir: str, table, plan, todo, read_old_fields=read_result_fields) -> None:
  """Stops before any run if `table` holds rows made under other result fields; then
  checks that every process computed the same runs to do, read results.csv before any
  writes it, and waits for all."""
  check_resume(workdir, table, plan.fingerprint, plan.result_fields, read_old_fields)
  distributed.agree('the runs to do', repr(todo))
  distributed.barrier('read results.csv')


def save_config(workdir: str, config, run_axes=()) -> None:
  """config.json; list fields named in `run_axes` (the runner's own) recorded as items."""
  if distributed.is_primary():
    store.atomic_write(os.path.join(workdir, 'config.json'), config_record(config, run_axes))


def report(write_outputs, workdir: str, rows, plan, show: bool = True) -> None:
  """Process 0 rewrites summary.md and the plots, and prints the summary if `show`."""
  if distributed.is_primary():
    text = write_outputs(workdir, rows, plan)
    if show:
      print(text)
