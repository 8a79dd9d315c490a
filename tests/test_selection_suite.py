"""experiments/selection_suite.py: one command over the four families of shifts."""
import pytest

from experiments import selection_suite as suite
from experiments.plan import make_plan


def test_each_family_runs_the_new_methods_beside_what_they_are_compared_with(tmp_path):
  weights = tmp_path / 'w.pth'
  weights.write_bytes(b'')
  per_case = {}
  for family in suite.FAMILIES:
    config = suite.family_config(family, (0, 2), ('lp_ft',), str(weights))
    assert config.methods == suite.COMPARED + ('lp_ft',) and config.seeds == (0, 2)
    assert config.init_checkpoint == ('' if family == 'feature' else str(weights))
    plan = make_plan(config)
    cases = {(r.shift, r.seed) for r in plan.runs}
    assert {s for _, s in cases} == {0, 2}
    per_case[family] = len(plan.runs) / len(cases)
  # no_adaptation, lp_ft, `all` and auto_rgn at 3 lrs, Cross-Val's 5 options at 3 lrs:
  # the full grids, whatever lrs the family's committed baseline ran.
  assert per_case == dict.fromkeys(suite.FAMILIES, 23)


@pytest.mark.parametrize('args, words', [
    (['--families=input,colour'], "unknown family 'colour'"),
    (['--seeds=0,x'], "--seeds: '0,x' is not a comma-separated list"),
    (['--methods=lp_ft,nope'], "unknown method 'nope'"),
])
def test_user_errors_are_one_line_and_write_nothing(tmp_path, capsys, args, words):
  weights = tmp_path / 'w.pth'
  weights.write_bytes(b'')
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as e:
    suite.main([f'--out={out}', f'--init_checkpoint={weights}'] + args)
  err = capsys.readouterr().err
  assert e.value.code == 1 and words in err and len(err.strip().splitlines()) == 1
  assert not out.exists()


def test_report_only_summarises_the_finished_cases_and_runs_nothing(tmp_path, monkeypatch):
  from experiments import finetune, skeleton
  from surgery.report.store import ResultsCsv
  weights = tmp_path / 'w.pth'
  weights.write_bytes(b'')

  def no_training(*args, **kwargs):
    raise AssertionError('report_only trained')
  monkeypatch.setattr(finetune, 'source_variables', no_training)
  config = suite.family_config('output', (0, 1), ('lp_rgn',), str(weights))
  plan = make_plan(config)
  table = ResultsCsv(str(tmp_path / 'out' / 'output' / 'results.csv'))
  skeleton.save_config(str(tmp_path / 'out' / 'output'), config)
  for r in plan.runs:
    if r.seed == 1 and r.method == 'auto_rgn':
      continue  # seed 1 still running
    table.add(dict(shift=r.shift, method=r.method, lr=r.lr, hparam=r.hparam, seed=r.seed,
                   best_epoch=1, val_acc=0.5, test_acc=0.8 if r.method == 'lp_rgn' else 0.6,
                   n_tune=1, n_val=1, n_test=1, seconds=10, fingerprint=plan.fingerprint,
                   extra=''))
  suite.main([f'--out={tmp_path / "out"}', f'--init_checkpoint={weights}', '--families=output',
              '--seeds=0,1', '--methods=lp_rgn', '--report_only'])
  assert (tmp_path / 'out' / 'output' / 'summary.md').exists()
  text = (tmp_path / 'out' / 'summary.md').read_text()
  assert '## output: 1 (shift, seed) case(s)' in text and '| lp_rgn | 80.00 | +20.00 ±' in text
  assert 'Left out, their baseline runs not all made yet: label_flip seed 1.' in text
