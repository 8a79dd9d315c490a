"""probe_commit replayed on a finished sweep's validation curves, under other schedules.

    python -m experiments.tools.probe_replay --schedule=2,4/3,1 --schedule=15/1 \\
        --markdown=results/selection/probe_replay.md \\
        input=results/selection/input output=results/selection/output ...

Why no training is needed: each probe_commit arm is one run of the sweep's grid (an
option at an lr), and an arm probed for k epochs is that run's first k epochs (the same
start, seed and batches). So where a workdir holds every arm's run with its per-epoch
validation metric (metrics.jsonl), the arm probe_commit commits to under rungs R and
keep K is `probe_commit.schedule` over those curves, and its row is that arm's row.
Each schedule becomes a method `probe R/K` beside the committed rows of `probe_commit`
and the other methods with their own loop (lp_rgn, ...), compared with Cross-Val as
`selection_summary` does, over the cases where every arm has its curve (rows made
before curves were kept are left out, and counted). Per family, a check line says how
many committed probe_commit rows the replay of the committed settings reproduces; a
miss means the premise no longer holds, and the command stops.

Here, unlike in the method, the last rung may equal the config's epochs: every arm then
trains to the end and validation picks among them, the best any schedule over these arms
can choose. Cost is estimated, from above: each arm's row seconds prorated by the epochs
it trains, though a row's seconds include its own test pass and frozen-prefix pass,
which the method shares or skips. The committed settings are replayed too, so their
estimate stands beside the committed rows' measured cost.

A schedule chosen by this table's test accuracies is chosen on test: read it as a
diagnosis, and try what it suggests on shifts it has not seen.
"""
import argparse
import json
import math
import os
import sys

from experiments.tools import selection_summary as summary
from surgery.errors import SurgeryError
from surgery.io import atomic_write
from surgery.methods import probe_commit, registry
from surgery.report.store import PICKED, read_histories, row_key, run_key

COMMITTED = (tuple(probe_commit.DEFAULTS['rungs']), tuple(probe_commit.DEFAULTS['keep']))


def parse_schedule(text: str):
  """'1,2/3,1' -> ((1, 2), (3, 1)): the rungs, then how many arms survive each."""
  rungs, _, keep = text.partition('/')
  try:
    rungs, keep = tuple(map(int, rungs.split(','))), tuple(map(int, keep.split(',')))
  except ValueError:
    raise SurgeryError(f'--schedule: {text!r} is not RUNGS/KEEP, e.g. 1,2/3,1') from None
  probe_commit.METHOD.check({'rungs': rungs, 'keep': keep})
  return rungs, keep


def label(schedule) -> str:
  return 'probe ' + '/'.join(','.join(map(str, part)) for part in schedule)


def epochs_trained(n_arms, kept, committed, rungs, epochs) -> list:
  """Per arm, the epochs it trains: to the rung that cuts it; the committed one to the end."""
  trained, alive = [0] * n_arms, range(n_arms)
  for rung, survivors in zip(rungs, kept):
    for i in alive:
      trained[i] = rung
    alive = survivors
  trained[committed] = epochs
  return trained


def replay(rows, histories, arms, schedule, epochs, metric='acc'):
  """One row per (shift, seed) whose every arm has a row and a curve: the row of the
  arm the schedule commits to, as method `label(schedule)`, its seconds the estimated
  cost of the probe."""
  rungs, keep = schedule
  if rungs[-1] > epochs:
    raise SurgeryError(f'--schedule {label(schedule)}: rungs go past the {epochs} epochs '
                       'of the runs')
  by_key = {row_key(r): r for r in rows}
  out = []
  for shift, seed in sorted({(r['shift'], str(r['seed'])) for r in rows}):
    keys = [run_key(shift, name, lr, seed) for name, lr in arms]
    if not all(k in by_key and k in histories for k in keys):
      continue
    curves = [[e[f'val_{metric}'] for e in histories[k]['epochs']] for k in keys]
    kept, committed = probe_commit.schedule(curves, rungs, keep)
    trained = epochs_trained(len(arms), kept, committed, rungs, epochs)
    seconds = math.fsum(float(by_key[k]['seconds']) * n / epochs
                        for k, n in zip(keys, trained))
    name, lr = arms[committed]
    out.append({**by_key[keys[committed]], 'method': label(schedule),
                'seconds': seconds, PICKED: f'{name} lr={lr:g}'})
  return out


def _case(row):
  return row['shift'], str(row['seed'])


def family(name, workdir, schedules):
  """The markdown lines of one family: `selection_summary`'s table, with the check line."""
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  epochs, metric = int(config['epochs']), config.get('select_metric') or 'acc'
  spec = summary.model_of(workdir)
  options = registry.surgical_options(spec)
  arms = probe_commit.arms(probe_commit.DEFAULTS, options, spec.head_methods)
  rows, histories = summary.read_rows(workdir), read_histories(workdir)
  committed = {_case(r): r for r in rows if r['method'] == probe_commit.METHOD.name}
  own = [r for r in replay(rows, histories, arms, COMMITTED, epochs, metric)
         if _case(r) in committed]
  if not own:
    raise SurgeryError(f"{workdir}: no case with a probe_commit row and every arm's curve")
  for r in own:
    row = committed[_case(r)]
    if (r[PICKED], float(r['test_acc'])) != (row[PICKED], float(row['test_acc'])):
      raise SurgeryError(
          f'{workdir}: {r["shift"]} seed {r["seed"]}: replaying probe_commit\'s own settings '
          f'commits to {r[PICKED]}, its row to {row[PICKED]}; replays '
          'of other schedules would not be what it does')
  cases = {_case(r) for r in own}
  # Beside them, every method with its own loop (lp_rgn, ...) on the same cases.
  own_loop = summary.own_loop_methods()
  new = [r for r in rows if r['method'] in own_loop and _case(r) in cases]
  # The committed settings replayed too (`own`): the same rows, with the estimated cost
  # beside the measured one.
  new += own
  for schedule in [s for s in schedules if s != COMMITTED]:
    new += [r for r in replay(rows, histories, arms, schedule, epochs, metric)
            if _case(r) in cases]
  methods, cases, acc, cost, pending = summary.compare(new, rows, options)
  lines, _ = summary.family_lines(name, methods, cases, acc, cost, pending)
  left = len(committed) - len(own)
  check = (f"Replaying probe_commit's own settings ({label(COMMITTED)}) gives its row in "
           f"all {len(own)} cases where every arm has its curve"
           + (f'; {left} case(s) without them are left out.' if left else '.'))
  return [lines[0], '', check] + lines[1:]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--schedule', action='append', default=[], metavar='RUNGS/KEEP',
                  help='e.g. 2,4/3,1; repeat for more')
  ap.add_argument('--markdown', default='', help='also write the tables to this file')
  ap.add_argument('families', nargs='+', metavar='FAMILY=WORKDIR')
  args = ap.parse_args(argv)
  try:
    schedules = [parse_schedule(s) for s in args.schedule]
    lines = ['# probe_commit replayed under other schedules', '',
             'Written by `python -m experiments.tools.probe_replay '
             + ' '.join(f'--schedule={s}' for s in args.schedule)
             + (f' --markdown={args.markdown}' if args.markdown else '') + ' '
             + ' '.join(args.families) + '`. `probe R/K`: rungs R, K arms kept at each; a '
             'rung at the last epoch trains every arm to the end. Its cost is an upper '
             'estimate (row seconds, test and prefix passes included, prorated by epochs); '
             'the other methods are the committed rows, with their measured cost.', '']
    for arg in args.families:
      name, _, workdir = arg.partition('=')
      if not (name and workdir):
        raise SurgeryError(f'{arg!r} is not FAMILY=WORKDIR')
      lines += family(name, workdir, schedules)
  except (SurgeryError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  text = '\n'.join(lines)
  if args.markdown:
    atomic_write(args.markdown, text)
  print(text)


if __name__ == '__main__':
  main()
