"""surgery/report (selection, ranks, results.csv, fingerprints) and Cross-Val
(surgery/methods/cross_val.py)."""
import csv
import hashlib
import io
import json
import os
import random

import pytest

from surgery.methods import cross_val
from surgery.report import fingerprint as fingerprint_lib, store, summary as summary_lib
from surgery.errors import SurgeryError

CANDIDATES = ('block1', 'block2', 'last')

# Three seeds of candidate runs on one shift. Per seed, the best val_acc is:
#   seed 0: block1 lr=0.001  (val .60) -> test .70
#   seed 1: block2 lr=0.0001 (val .70) -> test .75
#   seed 2: last   lr=0.001  (val .65) -> test .90
# Cross-Val = mean of .70, .75, .90 = 2.35 / 3 = 0.78333...; deviations -25/300,
# -10/300, 35/300 give a sample variance of (1950/90000) / 2 = 0.0108333..., so
# s.e. = sqrt(0.0108333... / 3) = 0.0600925...
THREE_SEEDS = """\
shift,method,lr,hparam,seed,best_epoch,val_acc,test_acc,n_tune,n_val,n_test,seconds,extra
snow,block1,0.001,,0,1,0.60,0.70,10,10,10,1.0,
snow,block1,0.0001,,0,1,0.50,0.65,10,10,10,1.0,
snow,block2,0.001,,0,1,0.55,0.66,10,10,10,1.0,
snow,block2,0.0001,,0,1,0.40,0.50,10,10,10,1.0,
snow,last,0.001,,0,1,0.30,0.40,10,10,10,1.0,
snow,block1,0.001,,1,1,0.50,0.60,10,10,10,1.0,
snow,block1,0.0001,,1,1,0.45,0.61,10,10,10,1.0,
snow,block2,0.001,,1,1,0.52,0.62,10,10,10,1.0,
snow,block2,0.0001,,1,1,0.70,0.75,10,10,10,1.0,
snow,last,0.001,,1,1,0.20,0.30,10,10,10,1.0,
snow,block1,0.001,,2,1,0.55,0.85,10,10,10,1.0,
snow,block1,0.0001,,2,1,0.40,0.50,10,10,10,1.0,
snow,block2,0.001,,2,1,0.45,0.55,10,10,10,1.0,
snow,block2,0.0001,,2,1,0.35,0.45,10,10,10,1.0,
snow,last,0.001,,2,1,0.65,0.90,10,10,10,1.0,
"""


def _rows(text):
  return list(csv.DictReader(io.StringIO(text)))


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)
  return str(path)


def test_cross_val_is_mean_and_se_over_all_seeds_of_per_seed_picks(tmp_path):
  table = store.ResultsCsv(_write(tmp_path / 'results.csv', THREE_SEEDS))
  rows = table.rows + cross_val.select(table.rows, CANDIDATES)
  summary, chosen = summary_lib.summarize(rows, ['cross_val'], ['snow'])
  mean, se = summary['cross_val']['snow']
  assert mean == pytest.approx(0.7833333333333333, rel=1e-12)
  assert se == pytest.approx(0.0600925212577332, rel=1e-9)
  assert [r[store.PICKED] for r in chosen[('snow', 'cross_val')]] == [
      'block1 lr=0.001', 'block2 lr=0.0001', 'last lr=0.001']
  text, _ = summary_lib.markdown_summary(rows, ['block1', 'cross_val'], ['snow'], 'T')
  assert '| cross_val | 78.3 ± 6.0 |' in text
  assert '- cross_val: snow: block1 lr=0.001 / block2 lr=0.0001 / last lr=0.001' in text
  assert 'over seeds 0, 1, 2;' in text
  one_seed = [r for r in rows if str(r['seed']) == '1']
  text, _ = summary_lib.markdown_summary(one_seed, ['block1'], ['snow'], 'T')
  assert 'Test accuracy (%), seed 1;' in text and 'standard error' not in text


def test_paired_differences_pair_each_seed_with_the_reference_picks(tmp_path):
  rows = store.ResultsCsv(_write(tmp_path / 'results.csv', THREE_SEEDS)).rows
  # Picks on mean val over seeds: block1 lr=0.001 (tests .70 .60 .85), block2 lr=0.001
  # (tests .66 .62 .55): differences .04, -.02, .30; deviations from their mean .10667
  # give s.e. sqrt((.0044444 + .0160444 + .0373778) / 2 / 3) = .0982061.
  _, chosen = summary_lib.summarize(rows, ['block1', 'block2'], ['snow'])
  mean, se, worst, n = summary_lib.paired_differences(chosen, ['block1', 'block2'], ['snow'],
                                                      reference='block2')['block1']
  assert (mean, worst, n) == (pytest.approx(0.32 / 3), pytest.approx(-0.02), 3)
  assert se == pytest.approx(0.0982061, rel=1e-5)
  # A seed the reference lacks is no pair: last has seeds 0 and 1 only here.
  partial = [r for r in rows if not (r['method'] == 'last' and r['seed'] == '2')]
  _, chosen = summary_lib.summarize(partial, ['block1', 'last'], ['snow'])
  diffs = summary_lib.paired_differences(chosen, ['block1', 'last'], ['snow'], 'last')
  assert diffs['block1'][0] == pytest.approx(0.30) and diffs['block1'][3] == 2
  as_all = [dict(r, method='all') if r['method'] == 'block2' else r for r in rows]
  text, _ = summary_lib.markdown_summary(as_all, ['all', 'block1'], ['snow'], 'T')
  assert '| block1 | +10.7 ± 9.8 | -2.0 | 3 |' in text
  one_pair = [r for r in as_all if r['seed'] == '0']
  assert 'Difference from' not in summary_lib.markdown_summary(
      one_pair, ['all', 'block1'], ['snow'], 'T')[0]


def test_cross_val_waits_for_every_planned_candidate(tmp_path):
  rows = store.ResultsCsv(_write(tmp_path / 'results.csv', THREE_SEEDS)).rows
  planned = [store.row_key(r) for r in rows]
  assert len(cross_val.select(rows, CANDIDATES, planned=planned)) == 3
  # Seed 1 still lacks its block2 lr=0.0001 run, the one Cross-Val would pick: seed 1
  # gets no pick rather than a pick among the others; seeds 0 and 2 are unchanged.
  partial = [r for r in rows if not (r['seed'] == '1' and r['method'] == 'block2'
                                     and r['lr'] == '0.0001')]
  picks = cross_val.select(partial, CANDIDATES, planned=planned)
  assert [(r['seed'], r[store.PICKED]) for r in picks] == [
      ('0', 'block1 lr=0.001'), ('2', 'last lr=0.001')]
  # A planned run of a method that is no candidate (e.g. `all`) does not hold it back.
  extra = planned + [store.run_key('snow', 'all', 1e-3, 1)]
  assert len(cross_val.select(rows, CANDIDATES, planned=extra)) == 3


# Ties on val_acc. seed 0: block1 and block2 (two lrs) tie at .5; seed 1: block2 with
# two hparams ties at .7 at one lr.
TIES = """\
shift,method,lr,hparam,seed,best_epoch,val_acc,test_acc,n_tune,n_val,n_test,seconds,extra
fog,block2,0.001,,0,1,0.5,0.62,10,10,10,1,
fog,block1,0.001,,0,1,0.5,0.61,10,10,10,1,
fog,block2,0.0001,,0,1,0.5,0.63,10,10,10,1,
fog,last,0.01,,0,1,0.4,0.64,10,10,10,1,
fog,block2,0.001,b,1,1,0.7,0.71,10,10,10,1,
fog,block2,0.001,a,1,1,0.7,0.72,10,10,10,1,
fog,block1,0.001,,1,1,0.6,0.73,10,10,10,1,
"""


def _picks(rows, candidates):
  return [(r['seed'], r[store.PICKED]) for r in cross_val.select(rows, candidates)]


def test_cross_val_ties_follow_candidate_order_then_lr_then_hparam_not_row_order():
  rows = _rows(TIES)
  want = [('0', 'block1 lr=0.001'), ('1', 'block2 lr=0.001 (a)')]
  want_swapped = [('0', 'block2 lr=0.0001'), ('1', 'block2 lr=0.001 (a)')]
  rng = random.Random(0)
  for _ in range(20):
    rng.shuffle(rows)
    assert _picks(rows, ('block1', 'block2', 'last')) == want
    assert _picks(rows, ('block2', 'block1', 'last')) == want_swapped


def test_select_lr_ties_go_to_smaller_lr_then_smaller_hparam_whatever_the_order():
  # 0.1 + 0.2 + 0.3 summed left to right is 0.6000000000000001, in reverse 0.6: the
  # means are equal and must tie, so the smaller lr wins.
  text = 'shift,method,lr,hparam,seed,val_acc,test_acc\n' + ''.join(
      f'fog,all,{lr},,{seed},{v},0.5\n'
      for lr, vals in (('0.01', (0.1, 0.2, 0.3)), ('0.001', (0.3, 0.2, 0.1)))
      for seed, v in enumerate(vals)) + ''.join(
      f'fog,l1_sp,0.001,{h},0,0.5,0.5\n' for h in ('lam=0.1', 'lam=0.01', 'lam=1'))
  rows = _rows(text)
  rng = random.Random(1)
  for _ in range(10):
    rng.shuffle(rows)
    chosen = summary_lib.select_lr(rows)
    assert {r['lr'] for r in chosen[('fog', 'all')]} == {'0.001'}
    assert [r['seed'] for r in chosen[('fog', 'all')]] == ['0', '1', '2']  # by seed
    assert [r['hparam'] for r in chosen[('fog', 'l1_sp')]] == ['lam=0.01']


def test_average_rank_is_fractional_on_exact_means():
  table = {
      'a': {'s1': (0.9, 0), 's2': (0.5, 0), 's3': (0.6000000000000001, 0), 's4': (0.9, 0)},
      'b': {'s1': (0.8, 0), 's2': (0.6, 0), 's3': (0.6, 0), 's4': (0.1, 0)},
      'c': {'s1': (0.8, 0), 's2': (0.7, 0), 's3': (0.5, 0), 's4': (0.2, 0)},
      'd': {'s1': (0.7, 0), 's2': (0.7, 0), 's3': (0.5, 0)},  # no s4: s4 not ranked
  }
  # s1: 1, 2.5, 2.5, 4; s2: 4, 3, 1.5, 1.5; s3 (a beats b by one ulp): 1, 2, 3.5, 3.5.
  want = {'a': 2.0, 'b': 2.5, 'c': 2.5, 'd': 3.0}
  shifts = ['s1', 's2', 's3', 's4']
  assert summary_lib.average_ranks(table, list('abcd'), shifts) == want
  assert summary_lib.average_ranks(table, list('dcba'), shifts) == want


WORST_GROUP = """\
shift,method,lr,hparam,seed,best_epoch,val_acc,test_acc,val_worst_group_acc,test_worst_group_acc
waterbirds,all,0.01,,0,1,0.9,0.85,0.3,0.25
waterbirds,all,0.001,,0,1,0.8,0.80,0.5,0.45
waterbirds,last,0.01,,0,1,0.85,0.84,0.6,0.55
"""


def test_selection_and_table_use_the_named_metric():
  rows = _rows(WORST_GROUP)
  table, _ = summary_lib.summarize(rows, ['all'], ['waterbirds'])
  assert table['all']['waterbirds'][0] == 0.85
  table, chosen = summary_lib.summarize(rows, ['all'], ['waterbirds'], metric='worst_group_acc')
  assert table['all']['waterbirds'][0] == 0.45 and chosen[('waterbirds', 'all')][0]['lr'] == '0.001'
  assert cross_val.select(rows, ['all', 'last'])[0][store.PICKED] == 'all lr=0.01'
  cv = cross_val.select(rows, ['all', 'last'], metric='worst_group_acc')
  assert cv[0][store.PICKED] == 'last lr=0.01'
  text, _ = summary_lib.markdown_summary(rows + cv, ['all', 'cross_val'], ['waterbirds'], 'T',
                                     metric='worst_group_acc')
  assert 'Test worst group acc (%)' in text and 'val_worst_group_acc' in text
  assert '| all | 45.0 |' in text and '| cross_val | 55.0 |' in text
  # The average accuracy of the same picks (all: lr 0.001; Cross-Val: last lr 0.01).
  text, _ = summary_lib.markdown_summary(rows + cv, ['all', 'cross_val'], ['waterbirds'], 'T',
                                     metric='worst_group_acc', also=('acc', 'worst_group_acc'))
  other = text.split('Test accuracy (%) of the same runs (selected on val_worst_group_acc)')[1]
  assert '| all | 80.0 |' in other and '| cross_val | 84.0 |' in other
  assert text.count('of the same runs') == 1


OLD_FILE = """\
shift,method,lr,hparam,seed,best_epoch,val_acc,test_acc,n_tune,n_val,n_test,seconds,extra
snow,all,0.001,,0,4,0.66,0.70,1000,100,8900,190.0,
"""


def test_results_csv_reads_old_files_and_grows_metric_columns_in_stable_order(tmp_path):
  path = _write(tmp_path / 'results.csv', OLD_FILE)
  table = store.ResultsCsv(path)
  assert table.rows[0]['fingerprint'] == '' and table.has('snow', 'all', 1e-3, 0)
  table.add(dict(shift='fog', method='all', lr=1e-3, seed=1, best_epoch=2, val_acc=0.5,
                 test_acc=0.6, test_worst_group_acc=0.25, val_worst_group_acc=0.3,
                 val_domain_acc=0.4, test_domain_acc=0.45, fingerprint='abc123', not_a_col=1))
  with open(path) as f:
    header = f.readline().strip().split(',')
  assert header == ['shift', 'method', 'lr', 'hparam', 'seed', 'best_epoch',
                    'val_acc', 'test_acc', 'val_domain_acc', 'test_domain_acc',
                    'val_worst_group_acc', 'test_worst_group_acc',
                    'n_tune', 'n_val', 'n_test', 'seconds', 'fingerprint', 'extra']
  again = store.ResultsCsv(path)
  assert again.rows[0]['val_worst_group_acc'] == '' and again.rows[0]['test_acc'] == '0.70'
  assert again.rows[1]['test_worst_group_acc'] == '0.25'
  assert again.rows == table.rows
  # A later row without the extra metrics keeps the header.
  again.add(dict(shift='fog', method='last', lr=1e-3, seed=1, val_acc=0.5, test_acc=0.6))
  with open(path) as f:
    assert f.readline().strip().split(',') == header


def test_add_many_writes_what_adding_one_by_one_writes(tmp_path):
  # A replaced run, a run given twice in the batch (the later wins) and a metric column
  # new to the file: one rewrite, the same file as an add per row.
  batch = [dict(shift='snow', method='block1', lr=0.001, seed=0, test_acc=0.9),
           dict(shift='fog', method='last', lr=0.01, seed=0, test_acc=0.1, test_wga=0.05),
           dict(shift='fog', method='last', lr=0.01, seed=0, test_acc=0.2, extra='again')]
  one = store.ResultsCsv(_write(tmp_path / 'one.csv', THREE_SEEDS))
  for row in batch:
    one.add(row)
  many = store.ResultsCsv(_write(tmp_path / 'many.csv', THREE_SEEDS))
  many.add_many(batch)
  assert open(many.path).read() == open(one.path).read()
  assert many.rows == one.rows and len(many.rows) == 16
  assert many.rows[-1]['test_acc'] == '0.2' and many.rows[-1]['extra'] == 'again'


def test_fingerprint_is_short_stable_and_order_free():
  fp = fingerprint_lib.fingerprint({'b': (1, 2), 'a': 1})
  assert fp == hashlib.sha256(b'{"a":1,"b":[1,2]}').hexdigest()[:12]
  assert fp == fingerprint_lib.fingerprint({'a': 1, 'b': [1, 2]})
  assert len(fp) == 12 and fp != fingerprint_lib.fingerprint({'a': 2, 'b': [1, 2]})


def test_diff_fields_names_changed_added_and_removed_fields():
  old = {'lr': 0.1, 'model': {'depth': 26, 'width': 1}, 'seed': 0, 'shifts': ('a', 'b')}
  new = {'lr': 0.1, 'model': {'depth': 50}, 'seed': 0, 'shifts': ['a', 'b'], 'extra': True}
  assert fingerprint_lib.diff_fields(old, new) == ['extra', 'model.depth', 'model.width']
  assert fingerprint_lib.diff_fields(old, old) == []


def test_fingerprints_of_a_file(tmp_path):
  path = str(tmp_path / 'results.csv')
  table = store.ResultsCsv(path)
  for seed, fp in enumerate(['abc', '', 'abc', 'def']):
    table.add(dict(shift='fog', method='all', lr=1e-3, seed=seed, val_acc=0.5, test_acc=0.5,
                   fingerprint=fp))
  assert store.ResultsCsv(path).fingerprints() == {'abc', 'def'}


@pytest.mark.parametrize('content, why', [
    ('method,lr,seed,val_acc,test_acc\nall,0.1,0,0.5,0.5\n', 'missing column(s) shift'),
    ('this is not\na results file\n', 'missing column(s) shift, method, lr, seed'),
    (b'\x89PNG\r\n\x1a\n\x00\xff\xfe', 'not UTF-8'),
    (OLD_FILE + 'snow,all,0.001,,1,4,0.66,0.70,1000,100,8900,190.0,,oops\n', 'line 3'),
    (OLD_FILE + 'snow,all,fast,,1,4,0.66,0.70,1000,100,8900,190.0,\n', "lr 'fast'"),
])
def test_malformed_results_csv_is_a_one_line_error_and_left_alone(tmp_path, content, why):
  path = tmp_path / 'results.csv'
  (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
  before = (path.read_bytes(), os.stat(path).st_mtime_ns)
  with pytest.raises(SurgeryError) as err:
    store.ResultsCsv(str(path))
  message = str(err.value)
  assert str(path) in message and why in message and '\n' not in message
  assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_append_jsonl_writes_one_parseable_line_per_call(tmp_path):
  path = str(tmp_path / 'sub' / 'metrics.jsonl')
  store.append_jsonl(path, {'run': 'a', 'val_acc': [0.5, 0.6]})
  store.append_jsonl(path, {'run': 'b', 'val_acc': [0.7]})
  with open(path) as f:
    lines = f.read().splitlines()
  assert [json.loads(line)['run'] for line in lines] == ['a', 'b']
  with open(path, 'a') as f:
    f.write('{"run": "torn')  # a crash mid-line must not swallow the next record
  store.append_jsonl(path, {'run': 'c'})
  with open(path) as f:
    assert json.loads(f.read().splitlines()[-1]) == {'run': 'c'}
