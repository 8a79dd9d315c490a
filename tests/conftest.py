import os
import sys
import tempfile

# Eight host CPU devices so data-parallel steps can be tested on a laptop; must be set
# before jax is first imported. Most of the suite's time is XLA compiling many small
# programs once each, so the tests trade run time for compile time: LLVM's optimisation
# level 0 (the same XLA programs, less optimised machine code: test_memo_tuning.py took
# 129 s instead of 204 s; float results may move in the last bits), and one compilation cache
# for the session that the subprocesses the tests start share too. Both reach the
# subprocesses through the environment.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0').strip()
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _COMPILE_CACHE = tempfile.TemporaryDirectory(prefix='surgery-tests-xla-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _COMPILE_CACHE.name
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED = os.path.join(os.path.dirname(REPO), 'shared')
MEMO_WEIGHTS = os.path.join(SHARED, 'weights', 'memo_resnet26_gn_cifar10.pth')


def data_dir():
  d = os.environ.get('SURGERY_DATA_DIR')
  return os.path.abspath(d) if d else None


@pytest.fixture
def memo_weights():
  if not os.path.isfile(MEMO_WEIGHTS):
    pytest.skip('MEMO weights not found beside the checkout (../shared/weights)')
  return MEMO_WEIGHTS
