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
