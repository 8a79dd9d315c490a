"""experiments.tools.probe_replay: probe_commit's decisions from a sweep's curves."""
import csv
import os
import shutil
import subprocess
import sys

import pytest

from experiments.tools import probe_replay
from surgery.errors import SurgeryError
from surgery.report.store import PICKED, row_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLIP = os.path.join(REPO, 'results', 'selection', 'output')  # committed: 3 seeds, curves kept
ARMS = [('block1', 1e-3), ('block3', 1e-3), ('last', 1e-2)]


def _case(seed, curves, seconds=(40.0, 20.0, 4.0), tests=(0.70, 0.60, 0.50)):
  rows = [{'shift': 'snow', 'method': m, 'lr': str(lr), 'hparam': '', 'seed': str(seed),
           'test_acc': str(t), 'seconds': str(s)}
          for (m, lr), t, s in zip(ARMS, tests, seconds)]
  histories = {row_key(r): {'epochs': [{'val_acc': v} for v in c]}
               for r, c in zip(rows, curves)}
  return rows, histories


def test_a_later_rung_commits_to_the_late_arm_and_cost_counts_each_arms_epochs():
  # block1 learns late; block3 leads after one epoch, then falls back.
  rows, histories = _case(0, [[0.5, 0.6, 0.8, 0.8], [0.7, 0.7, 0.6, 0.6], [0.4, 0.4, 0.4, 0.4]])
  early = probe_replay.replay(rows, histories, ARMS, ((1, 2), (2, 1)), epochs=4)
  late = probe_replay.replay(rows, histories, ARMS, ((3,), (1,)), epochs=4)
  assert [r[PICKED] for r in early + late] == ['block3 lr=0.001', 'block1 lr=0.001']
  assert [r['test_acc'] for r in early + late] == ['0.6', '0.7']  # the committed arm's row
  assert early[0]['method'] == 'probe 1,2/2,1'
  # early: last cut at epoch 1, block1 at 2, block3 to the end; late: both cut at 3.
  assert early[0]['seconds'] == pytest.approx(4 / 4 + 40 * 2 / 4 + 20)
  assert late[0]['seconds'] == pytest.approx(40 + 20 * 3 / 4 + 4 * 3 / 4)


def test_a_case_missing_a_curve_is_left_out_and_bad_schedules_are_errors():
  rows, histories = _case(0, [[0.5, 0.6], [0.7, 0.7], [0.4, 0.4]])
  more, more_hist = _case(1, [[0.5, 0.6], [0.7, 0.7], [0.4, 0.4]])
  del more_hist[row_key(more[2])]
  out = probe_replay.replay(rows + more, {**histories, **more_hist}, ARMS, ((1,), (1,)), 2)
  assert [r['seed'] for r in out] == ['0']
  with pytest.raises(SurgeryError, match='past the 2 epochs'):
    probe_replay.replay(rows, histories, ARMS, ((3,), (1,)), epochs=2)
  for text in ('1,2/3', '1,x/3,1', '2,1/3,1'):
    with pytest.raises(SurgeryError):
      probe_replay.parse_schedule(text)


def _tool(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.tools.probe_replay', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def _table_row(text, method):
  return next(line for line in text.splitlines() if line.startswith(f'| {method} |'))


def test_the_replay_of_the_committed_settings_gives_the_committed_rows(tmp_path):
  out = tmp_path / 'replay.md'
  ok = _tool('--schedule=15/1', f'--markdown={out}', f'output={FLIP}')
  assert ok.returncode == 0, ok.stderr[-2000:]
  text = out.read_text()
  assert "gives its row in all 3 cases" in text
  # Same accuracy and differences: the replayed rows are probe_commit's own.
  committed, replayed = _table_row(text, 'probe_commit'), _table_row(text, 'probe 1,2/3,1')
  assert committed.split('|')[2:7] == replayed.split('|')[2:7]
  assert '| probe 15/1 |' in text

  # A committed row that the replay does not reproduce stops the tool: one line, no file.
  bad = tmp_path / 'bad'
  shutil.copytree(FLIP, bad)
  with open(bad / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    if r['method'] == 'probe_commit' and r['seed'] == '1':
      r['test_acc'] = '0.5'
  with open(bad / 'results.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  out2 = tmp_path / 'not_written.md'
  proc = _tool(f'--markdown={out2}', f'output={bad}')
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1 and 'label_flip seed 1' in lines[0], lines
  assert not out2.exists()
