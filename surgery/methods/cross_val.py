"""Cross-Val (paper Section 4): the surgical option and lr that target validation picks.

It trains nothing of its own: per shift and seed it picks, among the runs of the model's
surgical options (each block, each lr of its grid: 15 runs for ResNet-26), the one with
the best validation metric, and reports that run's test metric. The planner adds the
candidate runs when cross_val is requested, and the summary says they were not.
"""
from surgery.methods.registry import Method, surgical_options
from surgery.report.store import DEFAULT_METRIC, PICKED, row_key
from surgery.report.summary import describe_run, seed_order, val_metric


def select(rows, candidates, name='cross_val', metric=DEFAULT_METRIC, planned=None):
  """The paper's Cross-Val, which needs no new runs: per shift and seed, the
  candidate run (method x lr x hparam) with the best `val_<metric>`, relabelled as
  `name` with hparam '' and a `PICKED` field naming the run.

  Ties go to the method earlier in `candidates`, then the smaller lr, then the
  smaller hparam string, whatever the order of `rows`. With `planned` (the run keys,
  `run_key(...)`, a sweep plans), a shift and seed gets a pick only once every planned
  candidate run of it is in `rows`: a pick among some of them is another method.
  """
  order = {m: i for i, m in enumerate(candidates)}
  if planned is not None:
    have = {row_key(r) for r in rows}
    missing = {(k[0], k[3]) for k in planned if k[1] in order and k not in have}
    rows = [r for r in rows if (str(r['shift']), int(r['seed'])) not in missing]

  def rank(r):
    return (-val_metric(r, metric), order[r['method']], float(r['lr']), r.get('hparam') or '')

  best = {}
  for r in rows:
    if r['method'] not in order:
      continue
    key = (r['shift'], str(r['seed']))
    if key not in best or rank(r) < rank(best[key]):
      best[key] = r
  return [{**r, 'method': name, 'hparam': '', PICKED: describe_run(r),
           'extra': f'picked {describe_run(r)}'}
          for _, r in sorted(best.items(), key=lambda kv: (kv[0][0], seed_order(kv[0][1])))]


METHOD = Method('cross_val', select=select, candidates=surgical_options, order=200)
