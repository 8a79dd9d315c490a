"""Waterbirds and CelebA on generated trees in their released layouts: readers, the
group-balanced target draw, the configs end to end (erm source stage + sweep) with a
tiny ResNet-50, and the one-line error without data."""
import csv
import io
import os

import numpy as np
import pytest
from PIL import Image

from configs import celeba as celeba_config
from configs import waterbirds as waterbirds_config
from experiments import sweep
from surgery import datasets, models
from surgery.checkpoints import save_params
from surgery.data import celeba, waterbirds
from surgery.errors import SurgeryError
from tests.cli import one_error_line

TINY = dict(num_classes=2, new_head=True, width=2, stage_sizes=(1, 1, 1, 1), dtype='float32')
# Images per (split, group): the val split holds more than tune_per_group in every group.
COUNTS = {0: (6, 2, 2, 6), 1: (4, 4, 3, 3), 2: (3, 3, 3, 3)}


def _jpeg(path, label, group, size, rng):
  path.parent.mkdir(parents=True, exist_ok=True)
  img = np.clip(rng.normal(60 + 120 * label, 30, size + (3,)) + 10 * group, 0, 255)
  buf = io.BytesIO()
  Image.fromarray(img.astype(np.uint8)).save(buf, format='JPEG', quality=90)
  path.write_bytes(buf.getvalue())


def write_waterbirds(root):
  """waterbird_complete95_forest2water2/{metadata.csv, <species>/<file>.jpg}."""
  folder = root / 'waterbird_complete95_forest2water2'
  rng = np.random.RandomState(0)
  rows = []
  for split, counts in COUNTS.items():
    for group, n in enumerate(counts):
      y, place = group // 2, group % 2
      for _ in range(n):
        i = len(rows) + 1
        name = f'{"001.Black_footed_Albatross" if y else "100.Brown_Pelican"}/img_{i:04d}.jpg'
        _jpeg(folder / name, y, group, (40, 30), rng)
        rows.append((i, name, y, split, place))
  with open(folder / 'metadata.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['img_id', 'img_filename', 'y', 'split', 'place', 'place_filename'])
    w.writerows([r + (f'/o/ocean/{r[0]}.jpg',) for r in rows])
  return rows


ATTRS = ['5_o_Clock_Shadow', 'Arched_Eyebrows', 'Blond_Hair', 'Male', 'Young']


def write_celeba(root):
  """img_align_celeba/*.jpg, list_attr_celeba.csv (-1/1), list_eval_partition.csv."""
  rng = np.random.RandomState(1)
  attr_rows, part_rows = [], []
  for split, counts in COUNTS.items():
    for group, n in enumerate(counts):
      blond, male = group // 2, group % 2
      for _ in range(n):
        image_id = f'{len(attr_rows) + 1:06d}.jpg'
        _jpeg(root / 'img_align_celeba' / image_id, blond, group, (218, 178), rng)
        values = {a: int(rng.choice([-1, 1])) for a in ATTRS}
        values.update(Blond_Hair=1 if blond else -1, Male=1 if male else -1)
        attr_rows.append([image_id] + [values[a] for a in ATTRS])
        part_rows.append([image_id, split])
  with open(root / 'list_attr_celeba.csv', 'w', newline='') as f:
    csv.writer(f).writerows([['image_id'] + ATTRS] + attr_rows)
  with open(root / 'list_eval_partition.csv', 'w', newline='') as f:
    csv.writer(f).writerows([['image_id', 'partition']] + part_rows)


def test_waterbirds_reader_follows_the_metadata(tmp_path):
  rows = write_waterbirds(tmp_path)
  splits = waterbirds.read(str(tmp_path))
  for code, name in enumerate(('train', 'val', 'test')):
    mine = [r for r in rows if r[3] == code]
    table = splits[name]
    assert list(table.paths) == [r[1] for r in mine]
    assert table.labels.tolist() == [r[2] for r in mine]
    assert table.groups.tolist() == [2 * r[2] + r[4] for r in mine]
  example = splits['val'][0]
  assert example['encoded'][:2] == b'\xff\xd8' and example['group'] == 0
  # The folder itself works too, and a listed file that is gone is one line.
  assert len(waterbirds.read(str(tmp_path / 'waterbird_complete95_forest2water2'))['train']) == 16
  os.remove(tmp_path / 'waterbird_complete95_forest2water2' / rows[0][1])
  with pytest.raises(SurgeryError, match='is listed in .* but missing'):
    waterbirds.read(str(tmp_path))


def test_celeba_reader_labels_blond_and_groups_by_male(tmp_path):
  write_celeba(tmp_path)
  splits = celeba.read(str(tmp_path))
  with open(tmp_path / 'list_attr_celeba.csv') as f:
    attrs = list(csv.DictReader(f))
  val = [a for a, p in zip(attrs, range(len(attrs))) if 16 <= p < 30]  # the val rows
  assert splits['val'].labels.tolist() == [int(a['Blond_Hair'] == '1') for a in val]
  assert splits['val'].groups.tolist() == [2 * int(a['Blond_Hair'] == '1') + int(a['Male'] == '1')
                                           for a in val]
  assert [len(splits[s]) for s in ('train', 'val', 'test')] == [16, 14, 12]


def test_celeba_raw_in_group_dro_data_folder_and_kaggle_nested_images(tmp_path):
  # group_DRO reads <root_dir>/data/; the Kaggle zip nests img_align_celeba twice.
  write_celeba(tmp_path / 'data')
  images = tmp_path / 'data' / 'img_align_celeba'
  os.rename(images, tmp_path / 'nested')
  images.mkdir()
  os.rename(tmp_path / 'nested', images / 'img_align_celeba')
  splits = celeba.read(str(tmp_path))
  assert [len(splits[s]) for s in ('train', 'val', 'test')] == [16, 14, 12]
  assert splits['test'][0]['encoded'][:2] == b'\xff\xd8'
  assert splits['test'][0]['group'] == 0 and splits['test'][11]['group'] == 3
  with pytest.raises(SurgeryError, match='source_layout tfds.*celeb_a as array_record'):
    celeba.read(str(tmp_path), 'tfds')


@pytest.fixture(scope='module')
def celeba_tfds(tmp_path_factory):
  """TFDS celeb_a-alike (JPEG image + attributes as bools, its three splits) prepared as
  array_record, with {image bytes: (blond, group)} of what was written."""
  tfds = pytest.importorskip('tensorflow_datasets')
  data_dir = tmp_path_factory.mktemp('tfds')
  rng = np.random.RandomState(2)
  written = {}
  with tfds.core.registered.skip_registration():
    class CelebA(tfds.core.GeneratorBasedBuilder):
      name = 'celeb_a'
      VERSION = tfds.core.Version('2.1.0')

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(218, 178, 3), encoding_format='jpeg'),
            'attributes': {a: np.bool_ for a in ATTRS}}))

      def _split_generators(self, dl_manager):
        return {name: self._generate_examples(code)
                for code, name in enumerate(('train', 'validation', 'test'))}

      def _generate_examples(self, code):
        for group, n in enumerate(COUNTS[code]):
          for k in range(n):
            buf = io.BytesIO()
            image = np.clip(rng.normal(100, 40, (218, 178, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(buf, format='JPEG', quality=90)
            attributes = {a: bool(rng.randint(2)) for a in ATTRS}
            attributes.update(Blond_Hair=bool(group // 2), Male=bool(group % 2))
            written[buf.getvalue()] = (code, group // 2, group)
            yield f'{code}_{group}_{k}.jpg', {'image': buf.getvalue(), 'attributes': attributes}

  CelebA(data_dir=str(data_dir / 'celeba'), file_format='array_record').download_and_prepare()
  return data_dir / 'celeba', written


def test_celeba_tfds_array_record_reader(celeba_tfds, tmp_path):
  root, written = celeba_tfds
  splits = celeba.read(str(root), 'tfds', cache=tmp_path)
  for code, name in enumerate(('train', 'val', 'test')):
    source = splits[name]
    examples = [source[i] for i in range(len(source))]
    # Every record once, with the label and group its attributes say.
    assert sorted(e['encoded'] for e in examples) == sorted(
        b for b, w in written.items() if w[0] == code)
    assert all((code, e['label'], e['group']) == written[e['encoded']] for e in examples)
    assert source.labels.tolist() == [e['label'] for e in examples]
    assert source.groups.tolist() == [e['group'] for e in examples]
  assert any(f.startswith('celeba-groups-') for f in os.listdir(tmp_path))  # the scan, cached
  ds = _dataset('celeba', root, source_layout='tfds', tune_per_group=2)
  tune, val, test = ds.target_sets('celeba', 0)
  assert np.bincount(tune[2], minlength=4).tolist() == [2, 2, 2, 2]
  assert tune[0].shape == (8, 224, 224, 3) and len(val[1]) == 6 and test[0].shape[0] == 12
  # The same bytes through the raw reader's crop: CenterCrop(178) then Resize(224).
  example = splits['test'][0]
  with Image.open(io.BytesIO(example['encoded'])) as im:
    want = np.asarray(im.convert('RGB').crop((0, 20, 178, 198)).resize((224, 224), Image.BILINEAR))
  assert np.array_equal(ds.eval_transform(example)['image'], want)
  with pytest.raises(SurgeryError, match='source_layout for waterbirds must be raw'):
    _dataset('waterbirds', root, source_layout='tfds')


def _dataset(name, root, **fields):
  import ml_collections
  return datasets.create(name, ml_collections.ConfigDict(dict(data_dir=str(root), **fields)))


def test_target_draw_is_group_balanced_disjoint_and_seeded(tmp_path):
  write_waterbirds(tmp_path)
  ds = _dataset('waterbirds', tmp_path, tune_per_group=2)
  assert ds.shift_names() == ['waterbirds'] and ds.select_metric == 'worst_group_acc'
  tune, val, test = ds.target_sets('waterbirds', 0)
  assert np.bincount(tune[2], minlength=4).tolist() == [2, 2, 2, 2]
  assert np.bincount(val[2], minlength=4).tolist() == [2, 2, 1, 1]  # the rest of val
  assert len(test[1]) == 12 and test[0].shape == (12, 224, 224, 3)
  assert tune[0].shape == (8, 224, 224, 3) and tune[0].dtype == np.uint8
  # Disjoint, and the same draw for the same seed: compare the images themselves.
  flat = lambda a: {x.tobytes() for x in a}  # noqa: E731
  assert not flat(tune[0]) & flat(val[0])
  source = {name: [ds.eval_transform(t[i])['image'] for i in range(len(t))]
            for name, t in ((n, ds.source(n)) for n in ('val', 'test'))}
  assert flat(tune[0]) | flat(val[0]) == flat(source['val'])  # tune + val = the val split
  assert len(tune[0]) + len(val[0]) == len(source['val'])
  assert np.array_equal(test[0][:], np.stack(source['test']))  # test = the test split
  assert test[1].tolist() == ds.source('test').labels.tolist()
  assert test[2].tolist() == ds.source('test').groups.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
  again = ds.target_sets('waterbirds', 0)
  assert np.array_equal(again[0][0], tune[0]) and not all(
      np.array_equal(ds.target_sets('waterbirds', s)[0][0], tune[0]) for s in (1, 2, 3))
  with pytest.raises(SurgeryError, match='group 2, not more than tune_per_group=3'):
    _dataset('waterbirds', tmp_path, tune_per_group=3).shift_names()


def test_waterbirds_eval_crop_is_the_group_dro_recipe(tmp_path):
  write_waterbirds(tmp_path)
  ds = _dataset('waterbirds', tmp_path)
  example = ds.source('test')[0]
  with Image.open(io.BytesIO(example['encoded'])) as im:
    want = np.asarray(im.convert('RGB').resize((256, 256), Image.BILINEAR))[16:240, 16:240]
  assert np.array_equal(ds.eval_transform(example)['image'], want)


@pytest.mark.parametrize('name, config_module, writer', [
    ('waterbirds', waterbirds_config, write_waterbirds),
    ('celeba', celeba_config, write_celeba)])
@pytest.mark.slow
def test_config_runs_end_to_end(name, config_module, writer, tmp_path, monkeypatch, capsys):
  writer(tmp_path / name)
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = config_module.get_config()
  config.data_dir = str(tmp_path / name)
  config.model.resnet50.update(TINY)
  config.init_checkpoint = save_params(str(tmp_path / 'init'), models.create('resnet50', **TINY).init(1))
  config.methods = ('no_adaptation', 'all', 'last')
  config.seeds, config.lrs, config.last_lrs = (0,), (1e-3,), (1e-3,)
  config.epochs, config.batch_size, config.eval_batch_size = 2, 8, 16
  config.tune_per_group = 2
  config.source_stage.update(dict(epochs=2, batch_size=8, workers=0))
  workdir = tmp_path / 'work'
  sweep.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert 'source stage epoch 2: source val acc' in out and 'keeping epoch' in out
  with open(workdir / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert {r['method'] for r in rows} == {'no_adaptation', 'all', 'last'}
  assert all((r['n_tune'], r['n_val'], r['n_test']) == ('8', '6', '12') for r in rows)
  for r in rows:
    for split in ('val', 'test'):
      acc, balanced, worst = (float(r[f'{split}_{m}']) for m in
                              ('acc', 'group_balanced_acc', 'worst_group_acc'))
      assert 0 <= worst <= balanced <= 1 and 0 <= acc <= 1
  summary = (workdir / 'summary.md').read_text()
  assert 'Test worst group acc (%)' in summary
  assert 'Test group balanced acc (%) of the same runs' in summary
  assert 'Test accuracy (%) of the same runs' in summary
  assert (workdir / 'source_model').is_dir()


@pytest.mark.parametrize('config_name, words', [
    ('waterbirds', 'error: Waterbirds not found in'),
    ('celeba', 'error: CelebA not found in')])
def test_missing_dataset_is_one_line(config_name, words, tmp_path):
  line, _ = one_error_line(config_name, tmp_path, f'--config.data_dir={tmp_path / "nothing"}')
  assert line.startswith(words) and str(tmp_path / 'nothing') in line
