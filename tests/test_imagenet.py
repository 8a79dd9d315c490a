import io
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from surgery.data import imagenet, transforms
from surgery.data.common import DataNotFoundError
from surgery.data.imagenet import (ImageFolderSource, TfdsImagenetSource, imagenet_source,
                                   label_of_groups, locate_imagenet)
from surgery.data.transforms import EvalTransform, TrainTransform, eval_crop, train_crop
from surgery.errors import SurgeryError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real ILSVRC wnids with their ImageNet class indices (tench, goldfish, great white shark,
# hen, ostrich).
CLASS_INDEX = {'n01440764': 0, 'n01443537': 1, 'n01484850': 2, 'n01514859': 8,
               'n01518878': 9}
WNIDS = sorted(CLASS_INDEX)
IMAGES_PER_CLASS = {'train': 3, 'val': 2}


def photo(width, height, seed, mode='RGB'):
  """Smooth random content (upsampled noise), so JPEG behaves as on photographs."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), np.uint8)
  return Image.fromarray(small).resize((width, height), Image.BICUBIC).convert(mode)


def jpeg_bytes(image, quality=90):
  buffer = io.BytesIO()
  image.save(buffer, 'JPEG', quality=quality)
  return buffer.getvalue()


def one_line_error(fn, kind=SurgeryError):
  with pytest.raises(kind) as info:
    fn()
  assert '\n' not in str(info.value)
  return str(info.value)


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  """An ILSVRC-layout folder tree: train/<wnid>/<wnid>_<k>.JPEG, val/<wnid>/ILSVRC...JPEG.

  The first train image of the 2nd class is greyscale, of the 3rd CMYK; sizes vary.
  """
  root = tmp_path_factory.mktemp('data') / 'imagenet'
  for split, count in IMAGES_PER_CLASS.items():
    for c, wnid in enumerate(WNIDS):
      folder = root / split / wnid
      folder.mkdir(parents=True)
      for k in range(count):
        mode = {(1, 0): 'L', (2, 0): 'CMYK'}.get((c, k), 'RGB') if split == 'train' else 'RGB'
        name = f'{wnid}_{k}.JPEG' if split == 'train' else f'ILSVRC2012_val_{c * 10 + k:08d}.JPEG'
        photo(60 + 7 * k, 50 + 5 * c, seed=100 * c + k, mode=mode).save(folder / name,
                                                                        quality=90)
  (root / 'train' / WNIDS[0] / 'notes.txt').write_text('not an image')
  return root


# --------------------------------------------------------------------- locating

def test_locate_folder_and_env(tree, monkeypatch):
  assert locate_imagenet(tree) == imagenet.ImagenetLocation('folder', str(tree))
  monkeypatch.setenv('SURGERY_DATA_DIR', str(tree.parent))
  assert locate_imagenet() == imagenet.ImagenetLocation('folder', str(tree))


def test_missing_data_message_is_one_line_and_names_the_path(tmp_path, monkeypatch):
  message = one_line_error(lambda: locate_imagenet(tmp_path / 'nowhere'), DataNotFoundError)
  assert str(tmp_path / 'nowhere') in message
  assert 'train/<wnid>/*.JPEG' in message and 'array_record' in message
  monkeypatch.delenv('SURGERY_DATA_DIR', raising=False)
  assert 'SURGERY_DATA_DIR' in one_line_error(locate_imagenet, DataNotFoundError)
  # A TFDS copy in tfrecord format only: the message says how to convert it.
  version = tmp_path / 'tf' / 'imagenet2012' / '5.1.0'
  version.mkdir(parents=True)
  (version / 'dataset_info.json').write_text('{}')
  (version / 'imagenet2012-train.tfrecord-00000-of-00001').write_bytes(b'')
  assert 'convert_format' in one_line_error(lambda: locate_imagenet(tmp_path / 'tf'),
                                            DataNotFoundError)


# ------------------------------------------------------------------ folder source

def test_folder_listing_labels_and_class_indices(tree, tmp_path):
  source = ImageFolderSource(tree, 'train', cache=tmp_path)
  assert len(source) == 5 * 3 and source.wnids == WNIDS
  # Sorted by wnid, then file name; class index = sorted folder order by default.
  assert [os.path.basename(source.path(i)) for i in range(3)] == [
      f'{WNIDS[0]}_{k}.JPEG' for k in range(3)]
  assert source.class_indices.tolist() == np.repeat(np.arange(5), 3).tolist()
  example = source[4]
  assert set(example) == {'encoded', 'label', 'class_index'}
  assert example['encoded'][:2] == b'\xff\xd8' and example['label'] == example['class_index'] == 1
  assert source[-1]['class_index'] == 4
  with pytest.raises(IndexError):
    source[15]
  # The given ImageNet indices win over folder order.
  real = ImageFolderSource(tree, 'val', class_index=CLASS_INDEX, cache=False)
  assert sorted(set(real.class_indices.tolist())) == [0, 1, 2, 8, 9] and len(real) == 10
  # The listing is cached, and adding a file invalidates the cache.
  assert any(name.startswith('imagenet-files-') for name in os.listdir(tmp_path))
  extra = tree / 'train' / WNIDS[4] / f'{WNIDS[4]}_9.JPEG'
  photo(40, 40, 0).save(extra)
  try:
    assert len(ImageFolderSource(tree, 'train', cache=tmp_path)) == 16
  finally:
    extra.unlink()
  assert len(ImageFolderSource(tree, 'train', cache=tmp_path)) == 15


def test_subset_by_wnids_with_labels(tree):
  # Two superclasses in BREEDS style: class indices grouped, labelled by group.
  label_of = label_of_groups([[8, 9], [0]], CLASS_INDEX)
  assert label_of == {'n01514859': 0, 'n01518878': 0, 'n01440764': 1}
  source = imagenet_source('train', tree, label_of=label_of, class_index=CLASS_INDEX,
                           cache=False)
  assert source.wnids == ['n01440764', 'n01514859', 'n01518878'] and len(source) == 9
  assert source.labels.tolist() == [1] * 3 + [0] * 6
  assert source.class_indices.tolist() == [0] * 3 + [8] * 3 + [9] * 3
  only = ImageFolderSource(tree, 'val', wnids=['n01484850'], cache=False)
  assert len(only) == 2 and {only[i]['class_index'] for i in range(2)} == {2}
  assert 'n09999999' in one_line_error(
      lambda: ImageFolderSource(tree, 'val', wnids=['n09999999'], cache=False),
      DataNotFoundError)
  one_line_error(lambda: ImageFolderSource(tree, 'val', wnids=WNIDS[:2],
                                           label_of={WNIDS[0]: 0}, cache=False))
  one_line_error(lambda: ImageFolderSource(tree, 'test', cache=False))
  one_line_error(lambda: label_of_groups([[0], [0]], CLASS_INDEX))
  # Picklable (grain workers get a copy) and small.
  assert pickle.loads(pickle.dumps(source))[5]['encoded'] == source[5]['encoded']


# ------------------------------------------------------------------- transforms

def test_transform_outputs_for_rgb_grey_and_cmyk(tree):
  source = ImageFolderSource(tree, 'train', cache=False)
  modes = {Image.open(source.path(i)).mode for i in range(len(source))}
  assert modes == {'RGB', 'L', 'CMYK'}
  for i in range(len(source)):
    for out in (EvalTransform()(source[i]), TrainTransform()(source[i], i)):
      assert set(out) == {'image', 'label', 'class_index'}
      assert out['image'].shape == (224, 224, 3) and out['image'].dtype == np.uint8
  # Decoded uint8 images work too (e.g. a source that holds pixels).
  image = np.asarray(photo(90, 70, 1))
  assert EvalTransform()({'image': image, 'label': 0})['image'].shape == (224, 224, 3)
  assert TrainTransform()({'image': image, 'label': 0}, 0)['image'].shape == (224, 224, 3)
  one_line_error(lambda: TrainTransform()({'image': image}, None))
  one_line_error(lambda: EvalTransform()({'label': 0}))


def reference_eval(data, resize=256, crop=224):
  """torchvision's Resize(256) + CenterCrop(224) spelled out with plain PIL calls."""
  image = Image.open(io.BytesIO(data)).convert('RGB')
  w, h = image.size
  new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
  image = image.resize((new_w, new_h), Image.BILINEAR)
  top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
  return np.asarray(image.crop((left, top, left + crop, top + crop)))


@pytest.mark.parametrize('size', [(500, 375), (375, 500), (333, 301), (240, 900)])
def test_eval_crop_equals_resize_then_centre_crop(size):
  data = jpeg_bytes(photo(*size, seed=size[0]))
  assert transforms.draft_factor((0, 0) + size, transforms.resized_size(*size)) == 1
  np.testing.assert_array_equal(eval_crop(data), reference_eval(data))


def test_draft_decodes_smaller_but_keeps_the_picture():
  data = jpeg_bytes(photo(1600, 1200, seed=3))
  # 1600x1200 -> 341x256: decoded at 1/4 (400x300), not 1/8 (200x150 < 341x256).
  assert transforms.draft_factor((0, 0, 1600, 1200), transforms.resized_size(1600, 1200)) == 4
  drafted, full = eval_crop(data), eval_crop(data, draft=False)
  assert np.abs(drafted.astype(int) - full).mean() < 2.0
  np.testing.assert_array_equal(full, reference_eval(data))
  rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
  drafted = train_crop(data, rng_a, scale=(0.5, 1.0))
  full = train_crop(data, rng_b, draft=False, scale=(0.5, 1.0))
  assert np.abs(drafted.astype(int) - full).mean() < 2.0


def test_random_resized_crop_box_follows_torchvision():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, w, h = transforms.random_resized_crop_box(500, 375, rng)
    assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
    assert 0.08 * 0.9 <= w * h / (500 * 375) <= 1.0 + 1e-9
    assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
  # No try can fit a 1000x10 strip: the fallback is the centred crop of ratio 4/3.
  assert transforms.random_resized_crop_box(1000, 10, rng) == ((1000 - 13) // 2, 0, 13, 10)
  assert transforms.random_resized_crop_box(10, 1000, rng, scale=(2, 3)) == (0, 493, 10, 13)


def test_train_transform_is_deterministic_and_flips_by_seed():
  data = jpeg_bytes(photo(500, 375, seed=9))
  example = {'encoded': data, 'label': 3}
  same = [TrainTransform()(example, np.random.default_rng(7))['image'] for _ in range(2)]
  np.testing.assert_array_equal(*same)
  np.testing.assert_array_equal(same[0], TrainTransform()(example, 7)['image'])
  assert not np.array_equal(same[0], TrainTransform()(example, 8)['image'])
  flipped = set()
  for seed in range(12):
    plain = train_crop(data, seed, flip=False)
    maybe = train_crop(data, seed)
    assert np.array_equal(maybe, plain) or np.array_equal(maybe, plain[:, ::-1])
    flipped.add(np.array_equal(maybe, plain[:, ::-1]))
  assert flipped == {True, False}


def test_train_transform_in_a_grain_random_map(tree):
  import grain
  source = ImageFolderSource(tree, 'train', cache=False)
  def images(seed):
    dataset = grain.MapDataset.source(source).random_map(TrainTransform(), seed=seed)
    return np.stack([dataset[i]['image'] for i in range(4)])
  np.testing.assert_array_equal(images(1), images(1))
  assert not np.array_equal(images(1), images(2))


# ------------------------------------------------------------------------ TFDS

@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """TFDS imagenet2012-alike (image + label + file_name) prepared as array_record.

  Records hold JPEG bytes, which TFDS stores as they are; only encoding numpy arrays
  would need TensorFlow.
  """
  tfds = pytest.importorskip('tensorflow_datasets')
  data_dir = tmp_path_factory.mktemp('tfds')
  with tfds.core.registered.skip_registration():
    class Imagenet2012(tfds.core.GeneratorBasedBuilder):
      name = 'imagenet2012'
      VERSION = tfds.core.Version('5.1.0')

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=WNIDS),
            'file_name': tfds.features.Text()}))

      def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(3), 'validation': self._generate_examples(1)}

      def _generate_examples(self, per_class):
        for c, wnid in enumerate(WNIDS):
          for k in range(per_class):
            name = f'{wnid}_{k}.JPEG'
            yield name, {'image': jpeg_bytes(photo(70, 60, seed=10 * c + k)), 'label': c,
                         'file_name': name}

  Imagenet2012(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return data_dir


def test_tfds_array_record_source(tfds_dir, tmp_path):
  location = locate_imagenet(tfds_dir)
  assert location == imagenet.ImagenetLocation(
      'tfds', str(tfds_dir / 'imagenet2012' / '5.1.0'))
  full = imagenet_source('val', tfds_dir)
  assert isinstance(full, TfdsImagenetSource) and len(full) == 5
  assert sorted(full[i]['class_index'] for i in range(5)) == [0, 1, 2, 3, 4]
  label_of = {'n01514859': 1, 'n01440764': 0}
  source = imagenet_source('train', tfds_dir, label_of=label_of, class_index=CLASS_INDEX,
                           cache=tmp_path)
  assert len(source) == 6 and source.wnids == ['n01440764', 'n01514859']
  examples = [source[i] for i in range(6)]
  assert sorted((e['label'], e['class_index']) for e in examples) == [(0, 0)] * 3 + [(1, 8)] * 3
  assert source.labels.tolist() == [e['label'] for e in examples]  # what splits stratify on
  assert sorted(full.labels.tolist()) == sorted(full[i]['label'] for i in range(5))
  assert all(e['encoded'][:2] == b'\xff\xd8' for e in examples)
  assert any(name.startswith('imagenet-labels-') for name in os.listdir(tmp_path))
  out = EvalTransform()(examples[0])
  assert out['image'].shape == (224, 224, 3) and set(out) == {'image', 'label', 'class_index'}
  again = pickle.loads(pickle.dumps(source))
  assert again[2]['encoded'] == examples[2]['encoded']
  one_line_error(lambda: imagenet_source('train', tfds_dir, wnids=['n09999999']),
                 DataNotFoundError)


# ------------------------------------------------------------------ no TensorFlow

def test_reading_never_imports_tensorflow(tree, tfds_dir):
  # TensorFlow looks installed (find_spec succeeds) but importing it fails and is
  # recorded, so this means something whether or not TF is really installed.
  script = textwrap.dedent(f"""
      import importlib.abc, importlib.util, sys
      imports = []
      class PoisonedTensorflow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] == 'tensorflow':
            return importlib.util.spec_from_loader(name, self)
          return None
        def create_module(self, spec):
          imports.append(spec.name)
          raise ImportError('tensorflow is poisoned in this test')
        def exec_module(self, module):
          pass
      sys.meta_path.insert(0, PoisonedTensorflow())
      import numpy as np
      from surgery.data.imagenet import imagenet_source
      from surgery.data.transforms import EvalTransform, TrainTransform
      for data_dir in ({str(tree)!r}, {str(tfds_dir)!r}):
        source = imagenet_source('train', data_dir, wnids={WNIDS[:2]!r}, cache=False)
        assert EvalTransform()(source[0])['image'].shape == (224, 224, 3)
        assert TrainTransform()(source[1], 0)['image'].shape == (224, 224, 3)
      assert not imports and 'tensorflow' not in sys.modules, imports
  """)
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
