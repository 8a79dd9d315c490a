"""experiments.bench.selection end to end on the tiny runner: its JSON line, and `--out`."""
import json
import os
import subprocess
import sys

import pytest

from tests.test_main import REPO, TINY, _cli_flags, tiny  # noqa: F401 (fixture)


def _bench(tmp, fields, *flags):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.bench.selection', '--config=configs/cifar10c.py',
       *_cli_flags(fields), *flags], cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'SURGERY_CACHE_DIR': str(tmp / 'cache')})


@pytest.mark.slow
def test_out_holds_the_printed_json_and_a_user_error_writes_nothing(tiny):
  config, tmp = tiny
  fields = {**TINY, 'epochs': 3, 'init_checkpoint': config.init_checkpoint,
            'data_dir': config.data_dir}
  bad = _bench(tmp, fields, '--rounds=1', f'--out={tmp / "data"}')
  lines = bad.stderr.strip().splitlines()
  assert bad.returncode == 1 and len(lines) == 1 and 'is a directory' in lines[0], lines

  out = tmp / 'bench' / 'selection.json'
  ok = _bench(tmp, fields, '--rounds=1', f'--out={out}')
  assert ok.returncode == 0, ok.stderr[-3000:]
  record = json.loads(out.read_text())
  assert record == json.loads(ok.stdout.strip().splitlines()[-1])
  assert record['shift'] == 'gaussian_noise' and record['rounds'] == 1
  methods = record['methods']
  assert methods['all']['over_all'] == 1.0
  # Every method with its own loop is timed, and says what it committed to.
  assert {'probe_commit', 'lp_ft', 'lp_rgn'} <= set(methods)
  assert all(m['seconds'] > 0 for m in methods.values())
  assert methods['probe_commit']['picked'] and methods['lp_ft']['picked']
  assert sorted(os.listdir(out.parent)) == ['selection.json']  # no temp file left
