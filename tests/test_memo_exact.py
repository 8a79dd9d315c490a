"""Issue 28's exact-pixel MEMO setup: the JPEG twin of the exact CIFAR-10 images pairs
each image with its own JPEG copy, and unbalanced 217 + 800 streams cover the 1,017."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import memo_exact
from experiments import memo as runner
from experiments import memo_tuning
from experiments.tools.cifar10_jpeg_twin import write_twin
from surgery.data import load_cifar10
from surgery.errors import SurgeryError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')


def _trees(root, labels):
  """An exact tree (PNG by official index) and a JPEG copy numbered within each class."""
  rng = np.random.RandomState(0)
  # A colour and a gentle ramp per image: smooth enough that JPEG keeps it, and two
  # images differ by far more than an image and its copy.
  colours = rng.randint(30, 226, (len(labels), 1, 1, 3))
  ramp = np.linspace(-25, 25, 32)[None, :, None, None]
  images = np.clip(colours + ramp + np.zeros((1, 1, 32, 1)), 0, 255).astype(np.uint8)
  ranks = {}
  for i, (img, c) in enumerate(zip(images, labels)):
    for kind in ('exact', 'jpeg'):
      (root / kind / 'test' / f'class{c}').mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / 'exact' / 'test' / f'class{c}' / f'{i:05d}.png')
    r = ranks.setdefault(c, 0)
    Image.fromarray(img).save(root / 'jpeg' / 'test' / f'class{c}' / f'{r:04d}.jpg',
                              quality=90)
    ranks[c] = r + 1
  return images


def test_twin_pairs_each_image_with_its_own_jpeg_copy(tmp_path, monkeypatch):
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  labels = [2, 0, 1, 0, 2, 2, 1, 0, 1, 1]
  images = _trees(tmp_path, labels)
  n, mean, worst = write_twin(str(tmp_path / 'exact'), str(tmp_path / 'jpeg'),
                              str(tmp_path / 'twin'), max_mae=15)
  assert n == 10 and worst < 15
  assert sorted(os.listdir(tmp_path / 'twin' / 'test' / 'class1')) == [
      '00002.jpg', '00006.jpg', '00008.jpg', '00009.jpg']
  exact, y1 = load_cifar10('test', str(tmp_path / 'exact'))
  twin, y2 = load_cifar10('test', str(tmp_path / 'twin'))
  assert (y1 == y2).all() and np.abs(exact.astype(float) - twin).mean() == pytest.approx(mean, abs=0.01)


def test_twin_refuses_a_wrong_pairing_and_writes_nothing(tmp_path):
  _trees(tmp_path, [0, 0, 1, 1, 0])
  a, b = (tmp_path / 'jpeg' / 'test' / 'class0' / f'000{i}.jpg' for i in (0, 1))
  a.rename(tmp_path / 'x.jpg')
  b.rename(a)
  (tmp_path / 'x.jpg').rename(b)
  with pytest.raises(SurgeryError, match='not the same image'):
    write_twin(str(tmp_path / 'exact'), str(tmp_path / 'jpeg'), str(tmp_path / 'twin'), 15)
  assert not (tmp_path / 'twin').exists()
  os.remove(tmp_path / 'exact' / 'test' / 'class1' / '00002.png')  # no longer a prefix
  with pytest.raises(SurgeryError, match='not a prefix'):
    write_twin(str(tmp_path / 'exact'), str(tmp_path / 'jpeg'), str(tmp_path / 'twin'), 15)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, 'cifar10_exact')),
                    reason='needs ../shared/data/cifar10_exact and cifar10')
def test_the_shared_jpeg_copy_pairs_with_the_exact_images(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.tools.cifar10_jpeg_twin',
       f'--exact={SHARED_DATA}/cifar10_exact', f'--jpeg={SHARED_DATA}/cifar10',
       f'--out={tmp_path / "twin"}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  mean, worst = (float(v) for v in proc.stdout.split('difference from the exact images ')[1]
                 .replace('(largest ', '').split(')')[0].split())
  assert 1017 == sum(len(f) for _, _, f in os.walk(tmp_path / 'twin'))
  assert 4 < mean < 8 and worst < 15  # the README's ~6/255; a wrong pair is ~60


def test_unbalanced_tuning_and_held_out_streams_cover_the_1017_images():
  labels = np.repeat(np.arange(10), [105, 93, 100, 104, 92, 87, 114, 102, 110, 110])
  config = memo_exact.get_config('exact')
  subset = lambda *a: runner.stream_subset(*a, balanced=config.class_balanced)  # noqa: E731
  tune, stream = memo_tuning.split_tune_stream(labels, config.tune.images, config.num_images,
                                               0, 10, subset)
  assert (len(tune), len(stream)) == (217, 800)
  assert sorted(np.concatenate([tune, stream]).tolist()) == list(range(1017))
  again = memo_tuning.split_tune_stream(labels, 217, 800, 0, 10, subset)
  assert all((a == b).all() for a, b in zip((tune, stream), again))
  with pytest.raises(SurgeryError, match='there are 1017 here'):
    runner.stream_subset(labels, 1018, 0, 10, balanced=False)
  with pytest.raises(SurgeryError, match='class-balanced'):
    runner.stream_subset(labels, 880, 0, 10)  # 88 of the 87 dogs
  with pytest.raises(SurgeryError, match='exact or jpeg'):
    memo_exact.get_config('png')


def test_side_by_side_gain_has_the_paired_standard_error(tmp_path):
  import json
  from experiments.tools import memo_compare
  from surgery.report import store
  none = [1, 0, 0, 1, 0, 1, 0, 0]
  first = [1, 1, 0, 1, 1, 1, 0, 1]  # gains 3 images, loses none
  for name, mine in (('a', first), ('b', none)):
    w = tmp_path / name
    (w / 'streams').mkdir(parents=True)
    for method, correct in (('no_adaptation', none), ('online/first_layer', mine)):
      stem = f'gaussian_noise_{method}'.replace('/', '_')
      (w / 'streams' / f'{stem}.json').write_text(json.dumps(correct))
      (w / 'streams' / f'{stem}.predictions.json').write_text(json.dumps([6] * 6 + [1, 2]))
    table = store.ResultsCsv(str(w / 'results.csv'))
    table.add_many([dict(shift='gaussian_noise', method=m, lr=lr, hparam=h, seed=0,
                         val_acc='', test_acc=sum(c) / 8)
                    for m, lr, h, c in (('no_adaptation', 0, '', none),
                                        ('online/first_layer', 5e-3, 'steps=1 wd=0', mine))])
  acc, gain, se, top = memo_compare.gain(str(tmp_path / 'a'), 'gaussian_noise',
                                         'online/first_layer')
  d = np.array(first) - np.array(none)
  assert (acc, gain, top) == (75.0, 37.5, 75.0)
  assert se == pytest.approx(100 * d.std(ddof=1) / np.sqrt(8))
  text = memo_compare.report({'exact': str(tmp_path / 'a'), 'jpeg': str(tmp_path / 'b')})
  assert ('| online/first_layer | 75.0: +37.5 ± 18.3 (top 75; lr 0.005 steps=1 wd=0) | '
          '37.5: +0.0 ± 0.0 (top 75; lr 0.005 steps=1 wd=0) | +16.5 |') in text
