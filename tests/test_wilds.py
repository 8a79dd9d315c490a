"""Camelyon17 and FMoW on generated trees in WILDS' released layouts: the readers follow
WILDS' split rules, regions come from country codes, the target draws are label-balanced,
disjoint and seeded, both configs run end to end with a tiny CLIP ViT and a tiny erm
source stage, and missing data is one line."""
import csv
import io
import os

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
from surgery.errors import SurgeryError
from tests.cli import one_error_line

TINY = dict(image_size=32, patch_size=8, width=32, layers=2, heads=4, embed_dim=16)
CAMELYON_HEADER = ['', 'patient', 'node', 'x_coord', 'y_coord', 'tumor', 'slide', 'center',
                   'split']
FMOW_HEADER = ['split', 'img_filename', 'img_path', 'spatial_reference', 'epsg', 'category',
               'visible', 'img_width', 'img_height', 'country_code', 'cloud_cover',
               'timestamp', 'lat', 'lon']


def _png(path, label, size, rng):
  path.parent.mkdir(parents=True, exist_ok=True)
  img = np.clip(rng.normal(40 + 3 * label, 25, (size, size, 3)), 0, 255)
  Image.fromarray(img.astype(np.uint8)).save(path)


def write_camelyon(root, per=3):
  """camelyon17_v1.0/{metadata.csv, patches/...}: `per` patches per (hospital, split
  column, tumor). Hospital k's patients are 20k.. as in WILDS; hospitals 1 and 2 carry
  split 0 and 1 rows too, which WILDS' official split overrides."""
  folder = root / 'camelyon17_v1.0'
  rng = np.random.RandomState(0)
  rows = []
  for center in range(5):
    for split in (0, 1):
      for tumor in (0, 1):
        for k in range(per):
          patient, node = 20 * center + 2 * split + tumor, center % 5
          x, y = 96 * k + 13, 96 * split + 7
          name = f'patient_{patient:03d}_node_{node}'
          _png(folder / 'patches' / name / f'patch_{name}_x_{x}_y_{y}.png', tumor, 96, rng)
          rows.append([len(rows), f'{patient:03d}', node, x, y, tumor, 10 * center + node,
                       center, split])
  with open(folder / 'metadata.csv', 'w', newline='') as f:
    csv.writer(f).writerows([CAMELYON_HEADER] + rows)
  return rows


MAPPING = [  # name, alpha-2, alpha-3, region (lukes/ISO-3166 columns, abridged)
    ('Nigeria', 'NG', 'NGA', 'Africa'), ('Kenya', 'KE', 'KEN', 'Africa'),
    ('France', 'FR', 'FRA', 'Europe'), ('Japan', 'JP', 'JPN', 'Asia'),
    ('United States of America', 'US', 'USA', 'Americas'), ('Australia', 'AU', 'AUS', 'Oceania'),
    ('Antarctica', 'AQ', 'ATA', '')]

# (original split, timestamp, country, category)
FMOW_PLAN = (
    [('test', f'2017-0{m}-01T10:00:00Z', 'NGA', c) for c in ('airport', 'dam', 'zoo')
     for m in (1, 2, 3)]                                   # Africa OOD test: 3 x 3
    + [('test', '2016-01-01T00:00:00Z', 'KEN', 'barn')]      # the first OOD test second
    + [('seq', '2017-05-05T10:00:00Z', 'NGA', 'airport')]    # dropped; still numbered
    + [('test', '2016-06-01T10:00:00.250Z', 'FRA', 'dam')] * 3
    + [('test', '2017-01-01T10:00:00Z', 'XXX', 'zoo')]       # unmapped code: 'Other'
    + [('test', '2016-01-01T00:30:00+01:00', 'NGA', 'dam')]  # 2015 in UTC: no split
    + [('train', f'2010-0{m}-01T10:00:00Z', c, 'airport') for c in ('NGA', 'USA')
       for m in (1, 2, 3, 4)]
    + [('train', '2012-12-31T23:59:59Z', 'JPN', 'zoo')] * 2
    + [('train', '2013-01-01T00:00:00Z', 'JPN', 'zoo')]      # OOD years: no split
    + [('val', '2012-07-01T10:00:00Z', 'FRA', 'zoo'),
       ('val', '2015-12-31T23:59:59Z', 'FRA', 'dam'),       # OOD val's last second
       ('val', '2016-02-01T10:00:00Z', 'FRA', 'dam'),       # OOD test years: no split
       ('test', '2012-01-01T10:00:00Z', 'JPN', 'dam'),
       ('test', '2014-01-01T10:00:00Z', 'AUS', 'barn')])     # OOD val years: no split
FMOW_SPLIT_OF_ROW = (['ood_test'] * 10 + [None] + ['ood_test'] * 4 + [None]
                     + ['train'] * 10 + [None] + ['id_val', 'ood_val', None, 'id_test', None])


def write_fmow(root, blank_line=False):
  """fmow_v1.1/{rgb_metadata.csv, country_code_mapping.csv, images/rgb_img_<i>.png}; the
  'seq' image is not written (WILDS never reads it)."""
  folder = root / 'fmow_v1.1'
  rng = np.random.RandomState(1)
  rows = []
  for i, (split, stamp, country, category) in enumerate(FMOW_PLAN):
    if split != 'seq':
      _png(folder / 'images' / f'rgb_img_{i}.png', wilds.CATEGORIES.index(category), 224, rng)
    rows.append([split, f'{category}_{i}_0_rgb.jpg', f'{split}/{category}/{category}_{i}/x.jpg',
                 'PROJCS["x"]', 32632, category, 'True', 500, 400, country, 0, stamp, 9.1, 7.4])
  with open(folder / 'rgb_metadata.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerows([FMOW_HEADER] + rows[:5])
    if blank_line:
      f.write('\n')
    writer.writerows(rows[5:])
  with open(folder / 'country_code_mapping.csv', 'w', newline='') as f:
    csv.writer(f).writerows(
        [['name', 'alpha-2', 'alpha-3', 'country-code', 'iso_3166-2', 'region', 'sub-region']]
        + [[n, a2, a3, 1, f'ISO 3166-2:{a2}', r, ''] for n, a2, a3, r in MAPPING])


# ------------------------------------------------------------------------------ readers

def test_camelyon17_reader_follows_wilds_official_split(tmp_path):
  rows = write_camelyon(tmp_path)
  splits = wilds.read_camelyon17(str(tmp_path))
  rules = {'train': lambda r: r[7] in (0, 3, 4) and r[8] == 0,
           'id_val': lambda r: r[7] in (0, 3, 4) and r[8] == 1,
           'ood_val': lambda r: r[7] == 1, 'ood_test': lambda r: r[7] == 2}
  for name, keep in rules.items():
    want = [r for r in rows if keep(r)]
    assert splits[name].labels.tolist() == [r[5] for r in want], name
    assert splits[name].domains.tolist() == [r[7] for r in want], name
  assert [len(splits[n]) for n in rules] == [18, 18, 12, 12]
  first = next(r for r in rows if r[7] == 2)
  assert splits['ood_test'].paths[0] == (
      f'patches/patient_040_node_2/patch_patient_040_node_2_x_{first[3]}_y_{first[4]}.png')
  example = splits['ood_test'][0]
  assert example['encoded'][:4] == b'\x89PNG' and example['domain'] == 2
  # The bundle folder itself works too; a listed patch that is gone is one line.
  assert len(wilds.read_camelyon17(str(tmp_path / 'camelyon17_v1.0'))['train']) == 18
  os.remove(splits['train'].path(0))
  with pytest.raises(SurgeryError, match=r'^Camelyon17-WILDS: .* is listed in .* but missing$'):
    wilds.read_camelyon17(str(tmp_path))


def test_camelyon17_patient_numbers_are_zero_padded_either_way():
  assert wilds.camelyon17_patch('4', '1', '3', '5') == wilds.camelyon17_patch('004', 1, 3, 5) == (
      'patches/patient_004_node_1/patch_patient_004_node_1_x_3_y_5.png')


def test_fmow_reader_follows_wilds_time_split(tmp_path):
  write_fmow(tmp_path, blank_line=True)  # pandas skips blank lines: numbering unchanged
  splits = wilds.read_fmow(str(tmp_path))
  for name in wilds.FMOW_SPLITS:
    want = [i for i, s in enumerate(FMOW_SPLIT_OF_ROW) if s == name]
    assert list(splits[name].paths) == [f'images/rgb_img_{i}.png' for i in want], name
    assert splits[name].labels.tolist() == [
        wilds.CATEGORIES.index(FMOW_PLAN[i][3]) for i in want], name
  ood = splits['ood_test']
  assert [wilds.REGIONS[d] for d in ood.domains] == ['Africa'] * 10 + ['Europe'] * 3 + ['Other']
  assert wilds.CATEGORIES.index('airport') == 0 and wilds.CATEGORIES.index('zoo') == 61
  assert len(wilds.CATEGORIES) == len(set(wilds.CATEGORIES)) == 62
  assert ood[0]['encoded'][:4] == b'\x89PNG' and ood[0]['label'] == 0 and ood[0]['domain'] == 2


def test_fmow_time_periods_are_cut_on_january_first_utc():
  period = wilds.time_period
  assert [period(t) for t in ('2012-12-31T23:59:59Z', '2013-01-01T00:00:00Z',
                              '2015-12-31T23:59:59.999Z', '2016-01-01T00:00:00Z')] == [0, 1, 1, 2]
  assert period('2016-01-01T00:30:00+01:00') == 1 and period('2016-01-01T00:00:00') == 2
  assert period('2003-05-06T07:08:09.123456Z') == 0


def test_fmow_regions_from_country_codes(tmp_path):
  write_fmow(tmp_path)
  mapping = wilds.read_region_mapping(str(tmp_path / 'fmow_v1.1' / 'country_code_mapping.csv'))
  codes = ['NGA', 'FRA', 'JPN', 'USA', 'AUS', 'ATA', 'XXX', '']
  names = [wilds.REGIONS[r] for r in wilds.regions_of(codes, mapping)]
  assert names == ['Africa', 'Europe', 'Asia', 'Americas', 'Oceania', 'Other', 'Other', 'Other']


def test_fmow_bad_rows_are_one_line(tmp_path):
  write_fmow(tmp_path)
  path = tmp_path / 'fmow_v1.1' / 'rgb_metadata.csv'
  text = path.read_text()
  path.write_text(text.replace(',airport,', ',airfield,', 1))
  with pytest.raises(SurgeryError, match=r"line 2: category 'airfield' is not one of the 62"):
    wilds.read_fmow(str(tmp_path))
  path.write_text(text.replace('2017-01-01T10:00:00Z', 'last tuesday', 1))
  with pytest.raises(SurgeryError, match="timestamp 'last tuesday' is not an ISO 8601"):
    wilds.read_fmow(str(tmp_path))


# ----------------------------------------------------------------------------- datasets

def _dataset(name, root, **fields):
  fields = {'data_dir': str(root), 'image_size': 32, **fields}
  return datasets.create(name, ml_collections.ConfigDict(fields))


def test_camelyon17_draw_is_label_balanced_disjoint_and_seeded(tmp_path):
  write_camelyon(tmp_path)
  ds = _dataset('camelyon17', tmp_path, tune_per_class=2, val_per_class=2)
  assert ds.shift_names() == ['hospital2'] and ds.metrics == ('acc',)
  assert ds.select_metric == 'acc' and ds.domain_names == ()
  pool = ds.target('hospital2')
  assert set(pool.domains.tolist()) == {2} and len(pool) == 12
  draw = ds.split('hospital2', pool.labels, 0)
  assert np.bincount(pool.labels[draw.tune]).tolist() == [2, 2]
  assert np.bincount(pool.labels[draw.val]).tolist() == [2, 2]
  everything = np.concatenate(draw)
  assert len(everything) == len(set(everything.tolist())) == len(pool)  # disjoint, covering
  tune, val, test = ds.target_sets('hospital2', 0)
  assert tune[0].shape == (4, 32, 32, 3) and tune[0].dtype == np.uint8
  assert test[0].shape == (4, 32, 32, 3) and len(test[1]) == 4
  assert np.array_equal(tune[0][1], ds.eval_transform(pool[draw.tune[1]])['image'])
  assert np.array_equal(np.asarray(test[0][:]), np.stack(
      [ds.eval_transform(pool[i])['image'] for i in draw.test]))
  assert tune[1].tolist() == pool.labels[draw.tune].tolist() and tune[1].dtype == np.int32
  again = ds.split('hospital2', pool.labels, 0)
  assert all(np.array_equal(a, b) for a, b in zip(draw, again))
  assert any(not np.array_equal(ds.split('hospital2', pool.labels, s).tune, draw.tune)
             for s in (1, 2, 3))
  # hospital1 is WILDS' OOD val; the source splits are train and id_val.
  assert set(ds.target('hospital1').domains.tolist()) == {1}
  assert len(ds.source('train')) == 18 and set(ds.source('val').domains.tolist()) == {0, 3, 4}
  with pytest.raises(SurgeryError, match='class 0 has 6 images, not more than tune_per_class'):
    _dataset('camelyon17', tmp_path, tune_per_class=3, val_per_class=3).shift_names()
  with pytest.raises(SurgeryError, match='has the shifts hospital2, hospital1'):
    _dataset('camelyon17', tmp_path, corruptions='hospital0').shift_names()


def test_camelyon17_eval_transform_is_clip_preprocessing(tmp_path):
  write_camelyon(tmp_path, per=1)
  ds = _dataset('camelyon17', tmp_path, image_size=224)
  example = ds.source('train')[0]
  with Image.open(io.BytesIO(example['encoded'])) as im:
    want = np.asarray(im.convert('RGB').resize((224, 224), Image.BICUBIC))
  got = ds.eval_transform(example)['image']
  assert got.shape == (224, 224, 3) and np.array_equal(got, want)


def test_fmow_africa_draw_is_one_per_present_class(tmp_path):
  write_fmow(tmp_path)
  ds = _dataset('fmow', tmp_path)
  assert ds.shift_names() == ['africa'] and ds.num_classes == 62 and ds.metrics == ('acc',)
  pool = ds.target('africa')
  assert len(pool) == 10 and set(pool.domains.tolist()) == {wilds.REGIONS.index('Africa')}
  tune, val, test = ds.target_sets('africa', 0)
  assert len(tune) == len(val) == len(test) == 2  # no regions without the 'ood' shift
  index = wilds.CATEGORIES.index
  # One per class present; barn's single image is tune only; the 58 absent are not drawn.
  assert sorted(tune[1].tolist()) == sorted(index(c) for c in ('airport', 'barn', 'dam', 'zoo'))
  assert sorted(val[1].tolist()) == sorted(index(c) for c in ('airport', 'dam', 'zoo'))
  assert sorted(test[1].tolist()) == sorted(index(c) for c in ('airport', 'dam', 'zoo'))
  draws = [ds.split('africa', pool.labels, s) for s in range(4)]
  assert all(not set(d.tune) & set(d.val) and not set(d.val) & set(d.test) for d in draws)
  assert np.array_equal(ds.split('africa', pool.labels, 0).tune, draws[0].tune)
  assert len({tuple(d.tune) for d in draws}) > 1
  with pytest.raises(SurgeryError, match='no class has more than tune_per_class'):
    _dataset('fmow', tmp_path, corruptions='europe', tune_per_class=2,
             val_per_class=1).shift_names()


def test_fmow_ood_shift_carries_regions(tmp_path):
  write_fmow(tmp_path)
  ds = _dataset('fmow', tmp_path, corruptions='africa,ood')
  assert ds.shift_names() == ['africa', 'ood']
  assert ds.domain_names == ('asia', 'europe', 'africa', 'americas', 'oceania')
  assert ds.metrics == ('acc', 'group_balanced_acc', 'worst_group_acc', 'acc_asia',
                        'acc_europe', 'acc_africa', 'acc_americas', 'acc_oceania')
  tune, val, test = ds.target_sets('ood', 0)
  pool = ds.target('ood')
  draw = ds.split('ood', pool.labels, 0)
  want = np.where(pool.domains == wilds.OTHER, -1, pool.domains)
  for part, idx in zip((tune, val, test), draw):
    assert len(part) == 4 and part[2].tolist() == part[3].tolist() == want[idx].tolist()
  assert -1 in test[3].tolist() + val[3].tolist() + tune[3].tolist()  # the XXX image
  # Every set of the run carries regions then, so every row has the same columns.
  assert len(ds.target_sets('africa', 0)[0]) == 4
  with pytest.raises(SurgeryError, match="a shift is named twice"):
    _dataset('fmow', tmp_path, corruptions='ood,ood').shift_names()


# ---------------------------------------------------------------------------- end to end

@pytest.mark.parametrize('name, config_module, writer, shifts', [
    ('camelyon17', camelyon17_config, write_camelyon, ('hospital2',)),
    ('fmow', fmow_config, write_fmow, ('africa', 'ood'))])
@pytest.mark.slow
def test_config_runs_end_to_end(name, config_module, writer, shifts, tmp_path, monkeypatch,
                                capsys):
  writer(tmp_path / 'wilds')
  monkeypatch.setenv('SURGERY_CACHE_DIR', str(tmp_path / 'cache'))
  config = config_module.get_config()
  config.data_dir = str(tmp_path / 'wilds')
  config.image_size = 32
  config.model.clip_vit_b16.update(TINY)
  spec = models.create('clip_vit_b16', num_classes=config.model.clip_vit_b16.num_classes, **TINY)
  config.init_checkpoint = save_params(str(tmp_path / 'clip'), spec.init(1))
  config.corruptions = shifts
  methods = ('no_adaptation', 'embedding', 'head')
  config.methods = methods
  config.seeds, config.lrs, config.last_lrs = (0,), (1e-3,), (1e-2,)
  config.epochs, config.batch_size, config.eval_batch_size = 2, 8, 16
  if name == 'camelyon17':
    config.tune_per_class, config.val_per_class = 2, 2
  config.source_stage.update(dict(epochs=1, batch_size=8, workers=0))
  workdir = tmp_path / 'work'
  sweep.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert 'source stage (all) done' in out
  with open(workdir / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert {(r['shift'], r['method']) for r in rows} == {(s, m) for s in shifts for m in methods}
  n = {'hospital2': ('4', '4', '4'), 'africa': ('4', '3', '3'), 'ood': ('4', '3', '7')}
  assert all((r['n_tune'], r['n_val'], r['n_test']) == n[r['shift']] for r in rows)
  for r in rows:
    assert 0 <= float(r['test_acc']) <= 1
  if name == 'fmow':
    ood = [r for r in rows if r['shift'] == 'ood']
    assert all(0 <= float(r['test_worst_group_acc']) <= float(r['test_group_balanced_acc']) <= 1
               for r in ood)
    assert all(r['test_acc_africa'] != '' for r in ood)
    assert 'Test worst group acc (%) of the same runs' in (workdir / 'summary.md').read_text()
  assert (workdir / 'summary.md').exists() and (workdir / 'source_model').is_dir()


@pytest.mark.parametrize('config_name, words, layout', [
    ('camelyon17', 'error: Camelyon17-WILDS not found in', 'camelyon17_v1.0/metadata.csv'),
    ('fmow', 'error: FMoW-WILDS not found in', 'fmow_v1.1/rgb_metadata.csv')])
def test_missing_dataset_is_one_line(config_name, words, layout, tmp_path):
  line, _ = one_error_line(config_name, tmp_path, f'--config.data_dir={tmp_path / "nothing"}')
  assert line.startswith(words) and f'{tmp_path / "nothing"}/{layout}' in line
