"""ImageNet-C: both readers (the released folders, TFDS imagenet2012_corrupted as
array_record), the tune/val/test protocol, mCE, the one-line missing-data error, and
configs/imagenet_c.py end to end with a tiny ResNet-50, all on generated data."""
import csv
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from configs import imagenet_c as imagenet_c_config
from surgery import datasets
from surgery.data import imagenet_c
from surgery.data.common import DataNotFoundError
from surgery.data.transforms import EvalTransform
from surgery.datasets.imagenet_c import ALEXNET_ERRORS, corruption_error, mce
from surgery.errors import SurgeryError
from tests.cli import one_error_line
from tests.test_imagenet import jpeg_bytes, one_line_error
from tests.test_imagenet import photo as square_photo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real ILSVRC wnids and their ImageNet class indices (tench, goldfish, hen, ostrich).
CLASS_INDEX = {'n01440764': 0, 'n01443537': 1, 'n01514859': 8, 'n01518878': 9}
WNIDS = sorted(CLASS_INDEX)
CORRUPTIONS = ('gaussian_noise', 'fog')
PER_CLASS = 6  # at severity 5; severity 3 holds 2 per class, to prove the selection
TINY = dict(num_classes=1000, new_head=False, width=2, stage_sizes=(1, 1, 1, 1),
            dtype='float32')


def photo(seed, size=224):
  """Smooth random content at ImageNet-C's 224x224, JPEG-encoded."""
  return jpeg_bytes(square_photo(size, size, seed), quality=85)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """The released layout: <root>/<corruption>/<severity>/<wnid>/<ILSVRC val name>.JPEG."""
  root = tmp_path_factory.mktemp('data') / 'imagenet-c'
  for c, corruption in enumerate(CORRUPTIONS):
    for severity, count in ((5, PER_CLASS), (3, 2)):
      for k, wnid in enumerate(WNIDS):
        folder = root / corruption / str(severity) / wnid
        folder.mkdir(parents=True)
        for i in range(count):
          name = f'ILSVRC2012_val_{1000 * k + i + 1:08d}.JPEG'
          (folder / name).write_bytes(photo(10000 * c + 1000 * severity + 100 * k + i))
  (root / 'README.txt').write_text('not a corruption')
  return root


@pytest.fixture(scope='module')
def class_index_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('info') / 'dataset_class_info.json'
  path.write_text(json.dumps([[i, w, w] for w, i in CLASS_INDEX.items()]))
  return str(path)


@pytest.fixture(scope='module')
def tfds_root(tmp_path_factory):
  """TFDS imagenet2012_corrupted-alike, config gaussian_noise_5, as array_record: the
  real builder's features (image 224x224x3 JPEG, label over wnids, file_name) and its one
  split, 'validation'. JPEG bytes are stored as they are, so no TensorFlow is needed."""
  tfds = pytest.importorskip('tensorflow_datasets')
  root = tmp_path_factory.mktemp('tfds')
  with tfds.core.registered.skip_registration():
    class Imagenet2012Corrupted(tfds.core.GeneratorBasedBuilder):
      name = 'imagenet2012_corrupted'
      VERSION = tfds.core.Version('3.1.0')
      BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='gaussian_noise_5')]

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(224, 224, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=WNIDS),
            'file_name': tfds.features.Text()}))

      def _split_generators(self, dl_manager):
        return {'validation': self._generate_examples()}

      def _generate_examples(self):
        for c, wnid in enumerate(WNIDS):
          for i in range(3):
            name = f'{wnid}_{i}.JPEG'
            yield name, {'image': photo(50 * c + i), 'label': c, 'file_name': name}

    Imagenet2012Corrupted(data_dir=str(root), config='gaussian_noise_5',
                          file_format='array_record').download_and_prepare()
  return root


def dataset(root, class_index_file, **fields):
  config = imagenet_c_config.get_config()
  config.data_dir = str(root)
  config.init_checkpoint = 'unused-here'
  config.class_index_file = class_index_file
  config.corruptions = CORRUPTIONS
  config.tune_per_class, config.val_per_class = 2, 1
  config.update(fields)
  return datasets.create('imagenet_c', config)


# ------------------------------------------------------------------------- readers

def test_release_folder_reader_selects_corruption_and_severity(root):
  source = imagenet_c.imagenet_c_source('gaussian_noise', 5, root, class_index=CLASS_INDEX,
                                        cache=False)
  assert isinstance(source, imagenet_c.ReleaseFolderSource)
  assert len(source) == PER_CLASS * len(WNIDS) and source.wnids == WNIDS
  assert sorted(set(source.labels.tolist())) == [0, 1, 8, 9]
  assert np.bincount(source.labels, minlength=10)[[0, 1, 8, 9]].tolist() == [PER_CLASS] * 4
  example = source[PER_CLASS]  # the first image of the second wnid
  assert example['label'] == example['class_index'] == 1
  assert example['encoded'][:2] == b'\xff\xd8'
  assert source.path(0) == str(root / 'gaussian_noise' / '5' / WNIDS[0] /
                               'ILSVRC2012_val_00000001.JPEG')
  severity3 = imagenet_c.imagenet_c_source('gaussian_noise', 3, root, class_index=CLASS_INDEX,
                                           cache=False)
  assert len(severity3) == 2 * len(WNIDS)
  fog = imagenet_c.imagenet_c_source('fog', 5, root, class_index=CLASS_INDEX, cache=False)
  assert fog[0]['encoded'] != source[0]['encoded']
  # The 224x224 images pass the default evaluation (centre crop 224) unchanged.
  image = EvalTransform(resize=224)(source[0])['image']
  assert np.array_equal(image, np.asarray(Image.open(io.BytesIO(source[0]['encoded']))))


def test_partial_copy_without_class_index_is_one_line(root):
  message = one_line_error(lambda: imagenet_c.imagenet_c_source('fog', 5, root, cache=False),
                           DataNotFoundError)
  assert 'holds 4 wnids, not 1000' in message and 'dataset_class_info.json' in message


def test_tfds_reader(tfds_root, tmp_path):
  source = imagenet_c.imagenet_c_source('gaussian_noise', 5, tfds_root, layout='tfds',
                                        class_index=CLASS_INDEX, cache=tmp_path)
  assert source.version_dir == str(tfds_root / 'imagenet2012_corrupted' / 'gaussian_noise_5'
                                   / '3.1.0')
  assert len(source) == 12
  assert sorted(source.labels.tolist()) == [0] * 3 + [1] * 3 + [8] * 3 + [9] * 3
  examples = [source[i] for i in range(len(source))]
  assert [e['label'] for e in examples] == source.labels.tolist()
  assert all(e['class_index'] == e['label'] and e['encoded'][:2] == b'\xff\xd8'
             for e in examples)
  # The release is not there: the error says TFDS is, and how to pick it.
  message = one_line_error(lambda: imagenet_c.locate_imagenet_c('gaussian_noise', 5,
                                                                'release', tfds_root),
                           DataNotFoundError)
  assert 'set source_layout=tfds' in message
  one_line_error(lambda: imagenet_c.locate_imagenet_c('gaussian_noise', 4, 'tfds', tfds_root),
                 DataNotFoundError)


def test_tfds_layout_through_the_dataset(tfds_root, class_index_file):
  ds = dataset(tfds_root, class_index_file, source_layout='tfds', corruptions=('gaussian_noise',),
               tune_per_class=1, val_per_class=1)
  assert ds.shift_names() == ['gaussian_noise'] and ds.source_layout == 'tfds'
  sets = ds.target_sets('gaussian_noise', seed=0)
  assert [len(labels) for _, labels in sets] == [4, 4, 4]
  assert all(sorted(labels.tolist()) == [0, 1, 8, 9] for _, labels in sets)
  assert sets[2][0].shape == (4, 224, 224, 3)


def test_tfds_reading_never_imports_tensorflow(tfds_root):
  script = textwrap.dedent(f"""
      import importlib.abc, importlib.util, sys
      class PoisonedTensorflow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] == 'tensorflow':
            return importlib.util.spec_from_loader(name, self)
          return None
        def create_module(self, spec):
          raise ImportError('tensorflow is poisoned in this test')
        def exec_module(self, module):
          pass
      sys.meta_path.insert(0, PoisonedTensorflow())
      from surgery.data.imagenet_c import imagenet_c_source
      source = imagenet_c_source('gaussian_noise', 5, {str(tfds_root)!r}, layout='tfds',
                                 class_index={CLASS_INDEX!r}, cache=False)
      assert len(source.labels) == 12 and source[0]['encoded'][:2] == b'\\xff\\xd8'
      assert 'tensorflow' not in sys.modules
  """)
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def test_locating_errors_are_one_line(root, tmp_path, monkeypatch):
  message = one_line_error(lambda: imagenet_c.locate_imagenet_c('snow', 5, 'release',
                                                                tmp_path / 'none'),
                           DataNotFoundError)
  assert str(tmp_path / 'none' / 'snow' / '5') + '/<wnid>/*.JPEG' in message
  assert 'imagenet2012_corrupted/snow_5/<version>' in message
  message = one_line_error(lambda: imagenet_c.locate_imagenet_c('fog', 5, 'tfds', root),
                           DataNotFoundError)
  assert 'set source_layout=release' in message
  message = one_line_error(lambda: imagenet_c.locate_imagenet_c('fogg', 5, 'release', root))
  assert 'valid: gaussian_noise, shot_noise' in message
  one_line_error(lambda: imagenet_c.locate_imagenet_c('fog', 6, 'release', root))
  one_line_error(lambda: imagenet_c.locate_imagenet_c('fog', 5, 'folder', root))
  monkeypatch.delenv('SURGERY_DATA_DIR', raising=False)
  assert 'SURGERY_DATA_DIR is unset' in one_line_error(imagenet_c.imagenet_c_root,
                                                       DataNotFoundError)
  monkeypatch.setenv('SURGERY_DATA_DIR', str(root.parent))
  assert imagenet_c.imagenet_c_root() == (str(root), '$SURGERY_DATA_DIR')


# ------------------------------------------------------------------------ protocol

def test_tune_val_test_sizes_and_class_balance(root, class_index_file):
  ds = dataset(root, class_index_file)
  assert ds.shift_names() == list(CORRUPTIONS) and ds.num_classes == 1000
  assert ds.source_layout == 'release'
  (x_tune, y_tune), (x_val, y_val), (x_test, y_test) = ds.target_sets('fog', seed=0)
  assert x_tune.shape == (8, 224, 224, 3) and x_tune.dtype == np.uint8
  for labels, per_class in ((y_tune, 2), (y_val, 1), (y_test, PER_CLASS - 3)):
    assert np.bincount(labels, minlength=10)[[0, 1, 8, 9]].tolist() == [per_class] * 4
  split = ds.split('fog', ds.target('fog').labels, 0)
  parts = [set(split.tune.tolist()), set(split.val.tolist()), set(split.test.tolist())]
  assert set.union(*parts) == set(range(PER_CLASS * 4)) and sum(map(len, parts)) == 24
  assert not np.array_equal(ds.split('fog', ds.target('fog').labels, 1).tune, split.tune)
  again = dataset(root, class_index_file).target_sets('fog', seed=0)
  assert np.array_equal(again[0][0], x_tune) and np.array_equal(again[2][1], y_test)

  smaller = dataset(root, class_index_file, test_per_class=2).target_sets('fog', seed=0)[2]
  assert np.bincount(smaller[1], minlength=10)[[0, 1, 8, 9]].tolist() == [2] * 4


def test_config_fields_are_checked(root, class_index_file):
  for fields, words in (({'corruptions': ('fog', 'smoke')}, 'valid: gaussian_noise'),
                        ({'severity': 0}, 'severity'),
                        ({'source_layout': 'folder'}, 'source_layout'),
                        ({'test_per_class': -1}, 'test_per_class'),
                        ({'eval_resize': 300}, 'eval_resize'),
                        ({'init_checkpoint': ''}, 'init_checkpoint'),
                        ({'corruptions': ('snow',)}, 'snow severity 5 not found')):
    assert words in one_line_error(lambda: dataset(root, class_index_file, **fields).shift_names())
  with pytest.raises(SurgeryError, match='no source split'):
    dataset(root, class_index_file).source('train')


def test_config_title_follows_the_layout_and_paper_settings():
  config = imagenet_c_config.get_config()
  assert config.title == 'ImageNet-C (severity 5, images: release), ResNet-50 Standard_R50'
  config.source_layout = 'tfds'
  assert 'images: tfds' in config.title
  assert len(config.corruptions) == 15 and set(config.corruptions) == set(ALEXNET_ERRORS)
  assert (config.epochs, config.weight_decay, tuple(config.lrs)) == (10, 1e-4, (1e-3, 1e-4, 1e-5))
  assert config.tune_per_class * 1000 == 5000 and config.model.resnet50.new_head is False


# ------------------------------------------------------------------------------ mCE

def test_mce_matches_a_hand_computation():
  # AlexNet itself scores 100 on every corruption, so 100 overall.
  assert mce(dict(ALEXNET_ERRORS)) == pytest.approx(100.0)
  # By hand: gaussian_noise 0.443214 / 0.886428 = 0.5 -> CE 50; brightness, errors at
  # three severities, mean 0.4: 0.4 / 0.564592 = 0.7084762 -> CE 70.84762;
  # mean (50 + 70.84762) / 2 = 60.42381.
  errors = {'gaussian_noise': 0.443214, 'brightness': [0.2, 0.4, 0.6]}
  assert corruption_error(0.443214, 'gaussian_noise') == pytest.approx(50.0)
  assert mce(errors, complete=False) == pytest.approx(60.42381, abs=1e-5)
  assert 'missing shot_noise' in one_line_error(lambda: mce(errors))
  assert 'no AlexNet error' in one_line_error(lambda: mce({'saturate': 0.5}, complete=False))
  assert 'fractions' in one_line_error(lambda: mce({'fog': 45.0}, complete=False))


# ---------------------------------------------------------------------- command line

def test_missing_dataset_is_one_line_from_the_command_line(tmp_path):
  line, stdout = one_error_line('imagenet_c', tmp_path, env={'SURGERY_DATA_DIR': str(tmp_path)})
  assert stdout.startswith('process 0 of 1: ')
  expected = tmp_path / 'imagenet-c' / 'gaussian_noise' / '5'
  assert line.startswith('error: ImageNet-C gaussian_noise severity 5 not found in')
  assert f'{expected}/<wnid>/*.JPEG' in line and 'imagenet2012_corrupted/' in line


@pytest.mark.slow
def test_config_runs_end_to_end_on_the_released_layout(root, tmp_path, monkeypatch):
  """Labels are real ImageNet class indices through BREEDS' dataset_class_info.json."""
  from experiments import sweep
  from surgery import models
  from surgery.checkpoints import save_params
  data = os.environ.get('SURGERY_DATA_DIR')
  if not data or not os.path.isfile(os.path.join(data, 'breeds', 'dataset_class_info.json')):
    pytest.skip('needs $SURGERY_DATA_DIR/breeds/dataset_class_info.json (ImageNet indices)')
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = imagenet_c_config.get_config()
  config.data_dir = str(root)
  config.model.resnet50.update(TINY)
  config.init_checkpoint = save_params(str(tmp_path / 'standard_r50'),
                                       models.create('resnet50', **TINY).init(0))
  config.corruptions = CORRUPTIONS
  config.methods = ('no_adaptation', 'first_layer', 'all')
  config.seeds, config.lrs = (0,), (1e-3,)
  config.epochs, config.batch_size, config.eval_batch_size = 1, 8, 32
  config.tune_per_class, config.val_per_class = 2, 1
  workdir = str(tmp_path / 'work')
  sweep.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'results.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert {(r['shift'], r['method']) for r in rows} == {
      (c, m) for c in CORRUPTIONS for m in ('no_adaptation', 'first_layer', 'all')}
  assert all((r['n_tune'], r['n_val'], r['n_test']) == ('8', '4', '12') for r in rows)
  with open(os.path.join(workdir, 'summary.md')) as f:
    summary = f.read()
  assert 'ImageNet-C (severity 5, images: release)' in summary
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['source_layout'] == 'release'
  # summary.md's mCE of `all` is the mCE of its test errors (one seed: the rows').
  errors = {r['shift']: 1 - float(r['test_acc']) for r in rows if r['method'] == 'all'}
  assert f'| all | {mce(errors, complete=False):.1f} |' in summary.split('## mCE')[1]
  assert 'not comparable to a full mCE' in summary


def test_mce_table_over_all_fifteen_corruptions():
  from surgery.datasets.imagenet_c import mce_markdown
  alexnet = {c: (1 - e, float('nan')) for c, e in ALEXNET_ERRORS.items()}
  half = {c: (1 - e / 2, float('nan')) for c, e in ALEXNET_ERRORS.items()}
  lines = mce_markdown({'a': alexnet, 'b': half, 'c': {}}, ['a', 'b', 'c'],
                       list(ALEXNET_ERRORS))
  assert '| a | 100.0 |' in lines and '| b | 50.0 |' in lines
  assert not any(line.startswith('| c |') for line in lines)
  assert any('all 15 corruptions' in line for line in lines)
