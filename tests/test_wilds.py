"""Camelyon17 and FMoW in generated WILDS layouts: WILDS' splits, regions and labels,
the label-balanced target draws, the configs end to end with a tiny CLIP ViT, and the
one-line error without data."""
import csv
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import camelyon17 as camelyon17_config
from configs import fmow as fmow_config
from experiments import sweep
from surgery import datasets, models
from surgery.checkpoints import save_params
from surgery.data import wilds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=32, patch_size=8, width=32, layers=2, heads=4, embed_dim=16)


def _png(path, label, size, rng):
  path.parent.mkdir(parents=True, exist_ok=True)
  img = np.clip(rng.normal(60 + 20 * (label % 8), 25, (size, size, 3)), 0, 255)
  Image.fromarray(img.astype(np.uint8)).save(path)


def write_camelyon(root, per=4):
  """camelyon17_v1.0/metadata.csv + patches: `per` patches per (center, split, tumor)."""
  folder = root / 'camelyon17_v1.0'
  rng = np.random.RandomState(0)
  rows = []
  for center in range(5):
    for split in (0, 1):
      for tumor in (0, 1):
        for k in range(per):
          patient, node, x, y = 10 * center + tumor, split, 32 * k, 64 * center
          name = f'patient_{patient:03d}_node_{node}'
          _png(folder / 'patches' / name / f'patch_{name}_x_{x}_y_{y}.png', tumor, 96, rng)
          rows.append([len(rows), patient, node, x, y, tumor, center * 10 + node, center, split])
  with open(folder / 'metadata.csv', 'w', newline='') as f:
    csv.writer(f).writerows([['', 'patient', 'node', 'x_coord', 'y_coord', 'tumor', 'slide',
                              'center', 'split']] + rows)
  return rows


COUNTRIES = {'NGA': 'Africa', 'KEN': 'Africa', 'FRA': 'Europe', 'JPN': 'Asia', 'USA': 'Americas'}


def write_fmow(root):
  """fmow_v1.1/{rgb_metadata.csv, country_code_mapping.csv, images/rgb_img_<i>.png}."""
  folder = root / 'fmow_v1.1'
  rng = np.random.RandomState(1)
  rows = []
  # (split, year, country, category): OOD test in Africa with 3 categories x 3 images,
  # one category with a single image, plus train / val / seq rows and other regions.
  plan = ([('test', 2017, 'NGA', c) for c in ('airport', 'dam', 'zoo') for _ in range(3)]
          + [('test', 2016, 'KEN', 'barn')]
          + [('test', 2016, 'FRA', 'dam')] * 3 + [('test', 2017, 'XXX', 'zoo')]
          + [('train', 2010, c, 'airport') for c in ('NGA', 'USA')] * 3
          + [('train', 2011, 'JPN', 'zoo')] * 3
          + [('val', 2012, 'FRA', 'zoo'), ('val', 2014, 'FRA', 'dam'),
             ('test', 2012, 'JPN', 'dam'), ('seq', 2017, 'NGA', 'airport')])
  for split, year, country, category in plan:
    i = len(rows)
    _png(folder / 'images' / f'rgb_img_{i}.png', wilds.FMOW_CATEGORIES.index(category), 224, rng)
    rows.append([split, f'{category}_{i}.jpg', '', '', '', category, 'True', 224, 224, country,
                 0, f'{year}-03-0{1 + i % 9}T10:00:00Z', 0.0, 0.0])
  os.remove(folder / 'images' / f'rgb_img_{len(rows) - 1}.png')  # 'seq' images are not shipped
  with open(folder / 'rgb_metadata.csv', 'w', newline='') as f:
    csv.writer(f).writerows([['split', 'img_filename', 'img_path', 'spatial_reference', 'epsg',
                              'category', 'visible', 'img_width', 'img_height', 'country_code',
                              'cloud_cover', 'timestamp', 'lat', 'lon']] + rows)
  with open(folder / 'country_code_mapping.csv', 'w', newline='') as f:
    csv.writer(f).writerows([['name', 'alpha-2', 'alpha-3', 'region']]
                            + [[c, c[:2], c, r] for c, r in COUNTRIES.items()])
  return plan


def test_camelyon17_splits_follow_wilds(tmp_path):
  rows = write_camelyon(tmp_path)
  splits = wilds.camelyon17(str(tmp_path))
  for name, keep in (('train', lambda r: r[7] in (0, 3, 4) and r[8] == 0),
                     ('id_val', lambda r: r[7] in (0, 3, 4) and r[8] == 1),
                     ('hospital1', lambda r: r[7] == 1), ('hospital2', lambda r: r[7] == 2)):
    want = [r for r in rows if keep(r)]
    assert splits[name].labels.tolist() == [r[5] for r in want], name
    assert splits[name].domains.tolist() == [r[7] for r in want], name
  example = splits['hospital2'][0]
  assert example['encoded'][:4] == b'\x89PNG' and example['domain'] == 2
  assert splits['hospital2'].paths[0] == 'patches/patient_020_node_0/patch_patient_020_node_0_x_0_y_128.png'


def test_fmow_splits_regions_and_labels_follow_wilds(tmp_path):
  plan = write_fmow(tmp_path)
  splits = wilds.fmow(str(tmp_path))
  ood = splits['ood_test']
  assert len(ood) == 9 + 1 + 3 + 1  # from 2016 on, in the original test split
  assert [wilds.REGIONS[d] for d in ood.domains] == ['Africa'] * 10 + ['Europe'] * 3 + ['Other']
  assert ood.labels[:3].tolist() == [wilds.FMOW_CATEGORIES.index('airport')] * 3 == [0, 0, 0]
  assert wilds.FMOW_CATEGORIES.index('zoo') == 61 and len(wilds.FMOW_CATEGORIES) == 62
  assert len(splits['train']) == 9 and len(splits['id_val']) == 1  # 2012 val
  assert len(splits['ood_val']) == 1 and len(splits['id_test']) == 1  # 2014 val, 2012 test
  assert ood.paths[0] == 'images/rgb_img_0.png'
  assert sum(len(s) for s in splits.values()) == len(plan) - 1  # the 'seq' row is dropped


def _dataset(name, root, **fields):
  return datasets.create(name, ml_collections.ConfigDict(dict(data_dir=str(root), image_size=32,
                                                              **fields)))


def test_target_draws_are_label_balanced_disjoint_and_seeded(tmp_path):
  write_camelyon(tmp_path, per=5)
  ds = _dataset('camelyon17', tmp_path, tune_per_class=2, val_per_class=2)
  assert ds.shift_names() == ['hospital2']
  tune, val, test = ds.target_sets('hospital2', 0)
  assert np.bincount(tune[1]).tolist() == [2, 2] and np.bincount(val[1]).tolist() == [2, 2]
  assert len(test[1]) == 20 - 8 and test[0].shape == (12, 32, 32, 3)
  flat = lambda a: {x.tobytes() for x in np.asarray(a)}  # noqa: E731
  assert not flat(tune[0]) & flat(val[0]) and not flat(tune[0]) & flat(test[0])
  assert np.array_equal(ds.target_sets('hospital2', 0)[0][0], tune[0])
  assert not all(np.array_equal(ds.target_sets('hospital2', s)[0][0], tune[0]) for s in (1, 2, 3))

  write_fmow(tmp_path)
  ds = _dataset('fmow', tmp_path)
  assert ds.shift_names() == ['africa'] and ds.num_classes == 62
  tune, val, test = ds.target_sets('africa', 0)
  # One per class of the 4 Africa classes; barn's single image is tune only.
  assert sorted(tune[1].tolist()) == sorted(wilds.FMOW_CATEGORIES.index(c) for c in
                                            ('airport', 'barn', 'dam', 'zoo'))
  assert len(val[1]) == 3 and len(test[1]) == 3
  tune, val, test = ds.target_sets('ood', 0)
  assert len(test) == 4 and test[2] is None and set(test[3].tolist()) <= {2, 1, 5}


def test_ood_shift_reports_accuracy_per_region():
  from surgery.datasets import compute_metrics
  got = compute_metrics([0, 1, 1, 2], [0, 1, 0, 2], None, [2, 2, 1, 5],
                        tuple(r.lower() for r in wilds.REGIONS))
  assert got['acc_africa'] == 1.0 and got['acc_europe'] == 0.0 and got['acc_other'] == 1.0
  assert np.isnan(got['acc_asia'])


@pytest.mark.parametrize('name, config_module, writer, shift', [
    ('camelyon17', camelyon17_config, write_camelyon, 'hospital2'),
    ('fmow', fmow_config, write_fmow, 'africa')])
def test_config_runs_end_to_end(name, config_module, writer, shift, tmp_path, monkeypatch, capsys):
  writer(tmp_path / 'wilds')
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = config_module.get_config()
  config.data_dir = str(tmp_path / 'wilds')
  config.image_size = 32
  config.model.clip_vit_b16.update(TINY)
  spec = models.create('clip_vit_b16', num_classes=config.model.clip_vit_b16.num_classes, **TINY)
  config.init_checkpoint = save_params(str(tmp_path / 'clip'), spec.init(1))
  config.methods = ('no_adaptation', 'embedding', 'block2', 'head')
  config.seeds, config.lrs, config.last_lrs = (0,), (1e-3,), (1e-2,)
  config.epochs, config.batch_size, config.eval_batch_size = 2, 8, 16
  if name == 'camelyon17':
    config.tune_per_class, config.val_per_class = 1, 1
  config.source_stage.update(dict(epochs=1, batch_size=8, workers=0))
  workdir = tmp_path / 'work'
  sweep.train_and_evaluate(config, str(workdir))
  assert 'source stage (all) done' in capsys.readouterr().out
  with open(workdir / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert {(r['shift'], r['method']) for r in rows} == {
      (shift, m) for m in ('no_adaptation', 'embedding', 'block2', 'head')}
  assert (workdir / 'summary.md').exists() and (workdir / 'source_model').is_dir()


@pytest.mark.parametrize('config_name, words', [
    ('camelyon17', 'error: Camelyon17 not found in'), ('fmow', 'error: FMoW not found in')])
def test_missing_dataset_is_one_line(config_name, words, tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.main', f'--config=configs/{config_name}.py',
       f'--workdir={tmp_path / "work"}', f'--config.data_dir={tmp_path / "nothing"}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith(words) and str(tmp_path / 'nothing') in lines[0]
  assert {'camelyon17': 'camelyon17_v1.0/metadata.csv', 'fmow': 'fmow_v1.1/rgb_metadata.csv'}[
      config_name] in lines[0]
  assert not os.path.exists(tmp_path / 'work' / 'results.csv')
