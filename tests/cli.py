"""Running `python -m experiments.main` as a user would, for the tests of user errors."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_error_line(config_name, tmp_path, *flags, env=None):
  """Runs configs/<config_name>.py into tmp_path/work and checks the user-error contract:
  exit 1, exactly one line on stderr, no results.csv. Returns (that line, stdout)."""
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.main', f'--config=configs/{config_name}.py',
       f'--workdir={tmp_path / "work"}', *flags],
      cwd=REPO, env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})},
      capture_output=True, text=True, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'work' / 'results.csv')
  return lines[0], proc.stdout
