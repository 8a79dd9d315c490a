"""experiments/tools/selection_summary.py on hand-made rows: Cross-Val's pick, the paired
difference and its standard error, the worst case and the oracle."""
import json
import math

import pytest

from experiments.tools import selection_summary as S
from surgery.errors import SurgeryError
from surgery.report.store import ResultsCsv

OPTIONS = ['first_layer', 'block1', 'block2', 'block3', 'last']


def _write(path, rows):
  path.mkdir()
  (path / 'config.json').write_text(json.dumps({'model': {'name': 'resnet26'}}))
  table = ResultsCsv(str(path / 'results.csv'))
  for r in rows:
    table.add(dict(dict(hparam='', best_epoch=1, n_tune=1, n_val=1, n_test=1, seconds=10,
                        fingerprint='f', extra=''), **r))


def _base(shift, seed, val, test):
  """Runs of every option at lr 1e-3 (val, test given for block2, the rest low), all at
  two lrs and auto_rgn."""
  rows = [dict(shift=shift, seed=seed, method=m, lr=1e-3, val_acc=0.1, test_acc=0.1)
          for m in OPTIONS if m != 'block2']
  rows += [dict(shift=shift, seed=seed, method='block2', lr=1e-3, val_acc=val, test_acc=test),
           dict(shift=shift, seed=seed, method='all', lr=1e-3, val_acc=0.5, test_acc=0.6),
           dict(shift=shift, seed=seed, method='all', lr=1e-4, val_acc=0.4, test_acc=0.9),
           dict(shift=shift, seed=seed, method='auto_rgn', lr=1e-3, val_acc=0.3, test_acc=0.3)]
  return rows


def test_paired_difference_worst_case_and_oracle(tmp_path):
  base = _base('snow', 0, 0.8, 0.70) + _base('fog', 0, 0.8, 0.50)
  _write(tmp_path / 'base', base)
  _write(tmp_path / 'new', [
      dict(shift='snow', seed=0, method='probe_commit', lr=0, val_acc=0.8, test_acc=0.72,
           seconds=15),
      dict(shift='fog', seed=0, method='probe_commit', lr=0, val_acc=0.8, test_acc=0.46,
           seconds=15)])
  new, cases, acc, cost, pending = S.compare(S.read_rows(str(tmp_path / 'new')),
                                             S.read_rows(str(tmp_path / 'base')), OPTIONS)
  assert new == ['probe_commit'] and cases == [('fog', '0'), ('snow', '0')] and not pending
  assert acc['cross_val'] == {('fog', '0'): 0.5, ('snow', '0'): 0.7}  # block2, best on val
  assert acc['all'] == {('fog', '0'): 0.6, ('snow', '0'): 0.6}  # lr 1e-3: best on val
  assert acc['oracle'] == {('fog', '0'): 0.9, ('snow', '0'): 0.9}  # all at 1e-4, by test
  assert cost['cross_val'][('fog', '0')] == 50  # five candidate runs of 10 s
  lines, points = S.family_lines('input', new, cases, acc, cost)
  row = next(l for l in lines if l.startswith('| probe_commit'))
  # Differences +2 and -4 points: mean -1, s.e. 3, lower bound -1 - 1.28 * 3.
  assert '| -1.00 ± 3.00 | -4.84 | -4.0 (fog, seed 0) | 31.00 | 1.50 |' in row
  assert points['probe_commit'] == (1.5, pytest.approx(59.0))
  assert math.isclose(points['cross_val'][0], 5.0)
  # `all` and auto_rgn with the lr picked on validation cost their whole grid.
  assert points['all'][0] == 2.0 and points['auto_rgn'][0] == 1.0


def test_cost_is_the_median_of_ratios_within_each_case(tmp_path):
  # fog's runs were made on a machine twice as loaded, and ice's lp_rgn run while its
  # process was paused: neither moves the cost.
  slow = [dict(r, seconds=20) for r in _base('fog', 0, 0.8, 0.5)]
  _write(tmp_path / 'base', _base('snow', 0, 0.8, 0.7) + slow + _base('ice', 0, 0.8, 0.6))
  _write(tmp_path / 'new', [
      dict(shift=shift, seed=0, method='lp_rgn', lr=0, val_acc=0.8, test_acc=0.7,
           seconds=seconds) for shift, seconds in (('snow', 5), ('fog', 30), ('ice', 100))])
  new, cases, acc, cost, _ = S.compare(S.read_rows(str(tmp_path / 'new')),
                                       S.read_rows(str(tmp_path / 'base')), OPTIONS)
  _, points = S.family_lines('input', new, cases, acc, cost)
  # Ratios 0.5, 1.5 and 10: the median, where pooled seconds would give 45 / 13.3.
  assert points['lp_rgn'][0] == pytest.approx(1.5)


def test_rows_of_other_configurations_are_refused(tmp_path):
  _write(tmp_path / 'base', _base('snow', 0, 0.8, 0.7))
  _write(tmp_path / 'new', [dict(shift='snow', seed=0, method='probe_commit', lr=0,
                                 val_acc=0.8, test_acc=0.7, fingerprint='other')])
  with pytest.raises(SurgeryError, match='different fingerprints'):
    S.compare(S.read_rows(str(tmp_path / 'new')), S.read_rows(str(tmp_path / 'base')), OPTIONS)


def test_one_folder_holding_both_compares_only_the_own_loop_methods(tmp_path, capsys):
  _write(tmp_path / 'both', _base('snow', 0, 0.8, 0.7) + [
      dict(shift='snow', seed=0, method='lp_ft', lr=0, val_acc=0.8, test_acc=0.75)])
  both = str(tmp_path / 'both')
  S.main([f'--markdown={tmp_path / "out" / "summary.md"}', f'input={both}:{both}'])
  text = (tmp_path / 'out' / 'summary.md').read_text()
  assert '| lp_ft | 75.00 | +5.00 ± nan |' in text
  # A method that has not run every case says on how many its row stands.
  lines, _ = S.family_lines('input', ['lp_ft'], [('snow', '0'), ('fog', '0')],
                            {'lp_ft': {('snow', '0'): 0.75}, 'cross_val': {}, 'all': {},
                             'auto_rgn': {}, 'oracle': {}},
                            {'lp_ft': {('snow', '0'): 1.0}, 'all': {}, 'cross_val': {},
                             'auto_rgn': {}, S.ONE_ALL: {('snow', '0'): 2.0}})
  assert any(l.startswith('| lp_ft (1 of 2 cases) | 75.00 |') for l in lines)
  # The baselines are compared with, not compared: one row each, under the new method.
  assert [l.split('|')[1].strip() for l in text.splitlines() if l.startswith('| ')][1:] == [
      'lp_ft', 'cross_val', 'all', 'auto_rgn']
  _write(tmp_path / 'none', _base('snow', 0, 0.8, 0.7))
  with pytest.raises(SystemExit):
    S.main([f'--markdown={tmp_path / "x.md"}', f'input={tmp_path / "none"}:{both}'])
  assert 'no rows of a method with its own loop' in capsys.readouterr().err
  assert not (tmp_path / 'x.md').exists()


def test_a_case_whose_baseline_grid_is_half_run_is_left_out_and_named(tmp_path):
  # A sweep still running: fog has `all` at one of its two lrs and no auto_rgn yet.
  fog = [r for r in _base('fog', 1, 0.8, 0.5) if r['method'] != 'auto_rgn'
         and not (r['method'] == 'all' and r['lr'] == 1e-4)]
  _write(tmp_path / 'base', _base('snow', 0, 0.8, 0.7) + fog)
  _write(tmp_path / 'new', [
      dict(shift=s, seed=seed, method='lp_rgn', lr=0, val_acc=0.8, test_acc=0.75)
      for s, seed in (('snow', 0), ('fog', 1))])
  new, cases, acc, cost, pending = S.compare(S.read_rows(str(tmp_path / 'new')),
                                             S.read_rows(str(tmp_path / 'base')), OPTIONS)
  assert cases == [('snow', '0')] and pending == [('fog', '1')]
  assert set(acc['all']) == set(acc['cross_val']) == {('snow', '0')}
  lines, _ = S.family_lines('input', new, cases, acc, cost, pending)
  assert 'Left out, their baseline runs not all made yet: fog seed 1.' in lines
