"""Camelyon17 and FMoW in the WILDS on-disk layouts (Koh et al., ICML 2021), as
encoded-image sources with WILDS' own split definitions.

Root: `data_dir`, else `$SURGERY_DATA_DIR/wilds`, holding the unpacked bundles:

    camelyon17_v1.0/metadata.csv      (index), patient, node, x_coord, y_coord, tumor,
                                      slide, center, split
    camelyon17_v1.0/patches/patient_{patient:03}_node_{node}/
        patch_patient_{patient:03}_node_{node}_x_{x}_y_{y}.png      (96x96)
    fmow_v1.1/rgb_metadata.csv        split, img_filename, img_path, spatial_reference,
                                      epsg, category, visible, img_width, img_height,
                                      country_code, cloud_cover, timestamp, lat, lon
    fmow_v1.1/country_code_mapping.csv   alpha-3 -> region (among other columns)
    fmow_v1.1/images/rgb_img_{i}.png  (224x224; i = the row of rgb_metadata.csv)

Camelyon17 ('official' split): hospitals (`center`) 0, 3 and 4 are the source: their
`split` 0 rows are train, 1 rows the in-distribution val; hospital 1 is the OOD val,
hospital 2 the OOD test. The label is `tumor`.

FMoW ('official' = 'time_after_2016'): rows with `split` 'seq' are dropped; images from
2016 on are the OOD test (if in the original 'test' split), 2013-2015 the OOD val (if in
'val'); earlier 'train' / 'val' / 'test' rows are train / id_val / id_test. The region is
the country code's region in country_code_mapping.csv, 'Other' when absent. The label is
the category's position in WILDS' list of 62.
"""
import datetime
import os

import numpy as np

from surgery.data.cifar10 import DATA_DIR_ENV, DataNotFoundError
from surgery.data.image_table import ImageTable, int_column, read_csv
from surgery.errors import SurgeryError

CAMELYON = 'camelyon17_v1.0'
FMOW = 'fmow_v1.1'
FMOW_CATEGORIES = (
    'airport', 'airport_hangar', 'airport_terminal', 'amusement_park', 'aquaculture',
    'archaeological_site', 'barn', 'border_checkpoint', 'burial_site', 'car_dealership',
    'construction_site', 'crop_field', 'dam', 'debris_or_rubble', 'educational_institution',
    'electric_substation', 'factory_or_powerplant', 'fire_station', 'flooded_road', 'fountain',
    'gas_station', 'golf_course', 'ground_transportation_station', 'helipad', 'hospital',
    'impoverished_settlement', 'interchange', 'lake_or_pond', 'lighthouse', 'military_facility',
    'multi-unit_residential', 'nuclear_powerplant', 'office_building', 'oil_or_gas_facility',
    'park', 'parking_lot_or_garage', 'place_of_worship', 'police_station', 'port', 'prison',
    'race_track', 'railway_bridge', 'recreational_facility', 'road_bridge', 'runway',
    'shipyard', 'shopping_mall', 'single-unit_residential', 'smokestack', 'solar_farm',
    'space_facility', 'stadium', 'storage_tank', 'surface_mine', 'swimming_pool', 'toll_booth',
    'tower', 'tunnel_opening', 'waste_disposal', 'water_treatment_facility', 'wind_farm', 'zoo')
REGIONS = ('Asia', 'Europe', 'Africa', 'Americas', 'Oceania', 'Other')
CAMELYON_SOURCE_CENTERS = (0, 3, 4)
FMOW_TEST_YEAR = 2016  # 'time_after_2016'; the OOD val is the 3 years before


def wilds_root(data_dir=None) -> str:
  if data_dir:
    return data_dir
  if os.environ.get(DATA_DIR_ENV):
    return os.path.join(os.environ[DATA_DIR_ENV], 'wilds')
  raise DataNotFoundError('WILDS: set $SURGERY_DATA_DIR or --config.data_dir (the folder '
                          f'holding {CAMELYON}/ and {FMOW}/)')


def _bundle(data_dir, name: str, files, layout: str) -> str:
  root = wilds_root(data_dir)
  for folder in (os.path.join(root, name), root):
    if all(os.path.isfile(os.path.join(folder, f)) for f in files):
      return folder
  title = {CAMELYON: 'Camelyon17', FMOW: 'FMoW'}[name]
  raise DataNotFoundError(f'{title} not found in {root}: expected '
                          f'{os.path.join(root, name)}/{layout} (the WILDS {name} bundle)')


def camelyon17(data_dir=None) -> dict:
  """{'train', 'id_val', 'hospital1', 'hospital2'}: ImageTables labelled by `tumor`,
  domain = hospital."""
  folder = _bundle(data_dir, CAMELYON, ('metadata.csv',),
                   'metadata.csv + patches/patient_<ppp>_node_<n>/patch_*.png')
  path = os.path.join(folder, 'metadata.csv')
  table = read_csv(path, ('patient', 'node', 'x_coord', 'y_coord', 'tumor', 'center', 'split'))
  cols = {c: int_column(table, c, path) for c in
          ('patient', 'node', 'x_coord', 'y_coord', 'tumor', 'center', 'split')}
  paths = [f'patches/patient_{p:03d}_node_{n}/patch_patient_{p:03d}_node_{n}_x_{x}_y_{y}.png'
           for p, n, x, y in zip(cols['patient'], cols['node'], cols['x_coord'], cols['y_coord'])]
  everything = ImageTable(folder, paths, cols['tumor'], domains=cols['center'])
  source = np.isin(cols['center'], CAMELYON_SOURCE_CENTERS)
  out = {'train': everything.subset(source & (cols['split'] == 0)),
         'id_val': everything.subset(source & (cols['split'] == 1)),
         'hospital1': everything.subset(cols['center'] == 1),
         'hospital2': everything.subset(cols['center'] == 2)}
  _check_files(everything, path)
  return out


def _year_start(timestamp: str, path: str) -> int:
  try:
    when = datetime.datetime.fromisoformat(timestamp.replace('Z', '+00:00'))
  except ValueError:
    raise SurgeryError(f'{path}: timestamp {timestamp!r} is not an ISO date') from None
  if when.tzinfo is not None:  # WILDS compares in UTC
    when = when.astimezone(datetime.timezone.utc)
  return when.year


def fmow_regions(folder: str, codes) -> np.ndarray:
  """Region index (REGIONS) of each alpha-3 country code; 'Other' if unmapped."""
  path = os.path.join(folder, 'country_code_mapping.csv')
  table = read_csv(path, ('alpha-3', 'region'))
  region_of = dict(zip(table['alpha-3'], table['region']))
  names = [region_of.get(c, 'Other') or 'Other' for c in codes]
  unknown = sorted(set(names) - set(REGIONS))
  if unknown:
    raise SurgeryError(f'{path}: unknown region(s) {", ".join(unknown)}')
  return np.array([REGIONS.index(n) for n in names], np.int64)


def fmow(data_dir=None) -> dict:
  """{'train', 'id_val', 'id_test', 'ood_val', 'ood_test'}: ImageTables labelled by
  category, domain = region."""
  folder = _bundle(data_dir, FMOW, ('rgb_metadata.csv', 'country_code_mapping.csv'),
                   'rgb_metadata.csv + country_code_mapping.csv + images/rgb_img_<i>.png')
  path = os.path.join(folder, 'rgb_metadata.csv')
  table = read_csv(path, ('split', 'category', 'country_code', 'timestamp'))
  unknown = sorted(set(table['category']) - set(FMOW_CATEGORIES))
  if unknown:
    raise SurgeryError(f'{path}: unknown category {unknown[0]!r}')
  rows = np.arange(len(table['split']))
  original = np.array(table['split'])
  years = np.array([_year_start(t, path) for t in table['timestamp']])
  labels = np.array([FMOW_CATEGORIES.index(c) for c in table['category']], np.int64)
  everything = ImageTable(folder, [f'images/rgb_img_{i}.png' for i in rows], labels,
                          domains=fmow_regions(folder, table['country_code']))
  test_ood = years >= FMOW_TEST_YEAR
  val_ood = (years >= FMOW_TEST_YEAR - 3) & ~test_ood
  ood = test_ood | val_ood
  masks = {'train': ~ood & (original == 'train'), 'id_val': ~ood & (original == 'val'),
           'id_test': ~ood & (original == 'test'), 'ood_val': val_ood & (original == 'val'),
           'ood_test': test_ood & (original == 'test')}
  out = {name: everything.subset(mask & (original != 'seq')) for name, mask in masks.items()}
  _check_files(everything.subset(original != 'seq'), path)
  return out


def _check_files(table: ImageTable, listed_in: str) -> None:
  gone = table.missing_files(sample=2000)  # 455k stats would take seconds per run
  if gone:
    raise DataNotFoundError(f'{gone[0]} is listed in {listed_in} but missing')
