import os
import pickle
import zipfile

import jax
import numpy as np
import pytest

import surgery
from surgery import CheckpointError, models, trainable_mask
from surgery.checkpoints import load_memo_params, load_torch_zip, save_params, state_dict_to_params

SPEC = models.create('resnet26')
MODEL = SPEC.module


@pytest.fixture(scope='module')
def template():
  return SPEC.init()['params']


def test_memo_logits_match_pytorch(memo_weights, template):
  torch = pytest.importorskip('torch')
  from experiments.bench.torch_reference import TorchResNet26, load_state_dict_numpy
  net = load_state_dict_numpy(TorchResNet26(), load_torch_zip(memo_weights)['net']).eval()
  params = SPEC.load(memo_weights)['params']
  x = np.random.RandomState(0).rand(8, 32, 32, 3).astype(np.float32)
  ours = np.asarray(MODEL.apply({'params': params}, x))
  with torch.no_grad():
    ref = net(torch.from_numpy(np.ascontiguousarray(((x - 0.5) / 0.5).transpose(0, 3, 1, 2)))).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_memo_checkpoint_metadata_reads_without_torch(memo_weights):
  obj = load_torch_zip(memo_weights)
  assert set(obj) == {'net', 'optimizer', 'err_cls', 'err_ssh'}
  assert len(obj['net']) == 77 and float(obj['err_cls']) == pytest.approx(0.0917)


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


def _write_zip(path, payload):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', payload)
    z.writestr('archive/version', '3\n')


def test_refuses_code_execution(tmp_path):
  path = tmp_path / 'evil.pth'
  _write_zip(path, pickle.dumps({'net': _Evil()}, protocol=2))
  with pytest.raises(CheckpointError, match='refused global (posix|os|nt).system'):
    load_torch_zip(str(path))


@pytest.mark.parametrize('bad', ['missing', 'unexpected', 'shape'])
def test_state_dict_problems_are_named_and_nothing_loads(memo_weights, template, bad):
  sd = dict(load_torch_zip(memo_weights)['net'])
  if bad == 'missing':
    del sd['layer2.1.conv1.weight']
    match = 'missing layer2.1.conv1.weight'
  elif bad == 'unexpected':
    sd['layer4.0.conv1.weight'] = np.zeros((3, 3))
    match = 'unexpected layer4.0.conv1.weight'
  else:
    sd['fc.weight'] = np.zeros((100, 64), np.float32)
    match = r'fc.weight has shape \(100, 64\)'
  with pytest.raises(CheckpointError, match=match):
    state_dict_to_params(sd, template)


@pytest.mark.parametrize('content', [b'not a zip', None])
def test_unreadable_file(tmp_path, template, content):
  path = tmp_path / 'x.pth'
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(CheckpointError):
    SPEC.load(str(path))


def test_orbax_round_trip_and_mismatch(tmp_path, template):
  path = save_params(str(tmp_path / 'ckpt'), template)
  restored = SPEC.load(path)['params']
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(template)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(CheckpointError, match='wrong shape'):
    models.create('resnet26', width=2).load(path)


def test_memo_on_real_test_images_agrees_with_pytorch(memo_weights, template):
  torch = pytest.importorskip('torch')
  from conftest import data_dir
  if not data_dir():
    pytest.skip('SURGERY_DATA_DIR is not set')
  from experiments.bench.torch_reference import TorchResNet26, load_state_dict_numpy
  from surgery.data import load_cifar10
  images, labels = load_cifar10('test')
  images, labels = images[::20], labels[::20]  # 500 images, 50 per class
  params = SPEC.load(memo_weights)['params']
  ours = np.asarray(MODEL.apply({'params': params}, images.astype(np.float32) / 255)).argmax(-1)
  net = load_state_dict_numpy(TorchResNet26(), load_torch_zip(memo_weights)['net']).eval()
  x = np.ascontiguousarray(((images / 255.0 - 0.5) / 0.5).astype(np.float32).transpose(0, 3, 1, 2))
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy().argmax(-1)
  assert np.mean(ours == ref) >= 0.998
  # 0.8207 on all 10,000 images; a 500-image subset lands within a few points.
  assert 0.77 <= np.mean(ours == labels) <= 0.87


def test_spec_load_reads_the_memo_file_like_the_memo_reader(memo_weights, template):
  variables = SPEC.load(memo_weights)
  assert set(variables) == {'params'}
  for a, b in zip(jax.tree_util.tree_leaves(variables['params']),
                  jax.tree_util.tree_leaves(load_memo_params(memo_weights, template))):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# The torch modules each method tuned in experiments/bench/step.py before the map was
# derived from the checkpoint importer's names.
TORCH_MODULES = {'first_layer': ['conv1'], 'block1': ['conv1', 'layer1'], 'block2': ['layer2'],
                 'block3': ['layer3'], 'last': ['bn', 'fc']}


def test_torch_reference_tunes_the_same_parameters_as_the_flax_mask(template):
  pytest.importorskip('torch')
  from experiments.bench.torch_reference import from_spec, tuned_parameters
  net = from_spec(SPEC)
  assert from_spec(models.create('resnet26', norm='batch')) is None
  for method, group_spec in SPEC.methods.items():
    got = {id(p) for p in tuned_parameters(net, trainable_mask(template, SPEC.groups, group_spec))}
    modules = [net] if method == 'all' else [getattr(net, m) for m in TORCH_MODULES[method]]
    assert got == {id(p) for m in modules for p in m.parameters()}, method
  small_spec = models.create('resnet26', depth=8)
  small = from_spec(small_spec)
  assert sum(p.numel() for p in small.parameters()) == surgery.count_params(small_spec.init()['params'])
