"""Camelyon17-WILDS and FMoW-WILDS in their released folders, as encoded-image tables.

Root: `data_dir`, else `$SURGERY_DATA_DIR/wilds`, holding the folders WILDS' downloader
unpacks (or `data_dir` may be one of those folders itself):

    camelyon17_v1.0/metadata.csv     (unnamed index), patient, node, x_coord, y_coord,
                                     tumor, slide, center, split
    camelyon17_v1.0/patches/patient_{ppp}_node_{n}/patch_patient_{ppp}_node_{n}_x_{x}_y_{y}.png
    fmow_v1.1/rgb_metadata.csv       split, img_filename, img_path, ..., category, ...,
                                     country_code, cloud_cover, timestamp, lat, lon, ...
    fmow_v1.1/country_code_mapping.csv   name, alpha-2, alpha-3, ..., region, ...
    fmow_v1.1/images/rgb_img_{i}.png

Facts from p-lambda/wilds (wilds/datasets/camelyon17_dataset.py, fmow_dataset.py and
dataset_preprocessing/camelyon17/generate_final_metadata.py):

Camelyon17: 96x96 RGB patches; the label is `tumor` (1: tumour in the central 32x32).
`center` is the hospital, 0-4 (patients 0-19 are hospital 0, 20-39 hospital 1, ...).
The official split keeps the `split` column (0 train, 1 ID val) for hospitals 0, 3 and
4, and moves all of hospital 1 to the OOD val split and all of hospital 2 to the OOD
test split, whatever their `split` says. `patient` is a zero-padded string in the file
(WILDS reads it with dtype str); it is formatted %03d here either way.

FMoW: 62 categories in WILDS' order (`CATEGORIES`). `split` is the original fMoW
split: train / val / test / seq. WILDS' 'official' scheme is `time_after_2016`: OOD
test = split 'test' with timestamp >= 2016-01-01 UTC; OOD val = split 'val' with
2013-01-01 <= timestamp < 2016-01-01; train / ID val / ID test = split train / val /
test with timestamp < 2013-01-01. Every other row (e.g. a 'train' image from 2014, a
'val' image from 2017, every 'seq' image) is in no split. The image of data row i of
rgb_metadata.csv (0-based, 'seq' rows counted) is images/rgb_img_{i}.png: WILDS drops
the 'seq' rows and reads `rgb_img_{full_idxs[idx]}`. The region comes from the
country code through country_code_mapping.csv ('alpha-3' -> 'region'); a code the
mapping lacks is 'Other' (a blank region too, here). WILDS' worst-region accuracy
leaves 'Other' out.

Tables hold every row's file path, label and domain (Camelyon17: the hospital;
FMoW: the index in `REGIONS`). Reading the metadata looks for 500 evenly spaced files of
each split; any other listed file that is missing fails, in one line, when read.
"""
import datetime
import os
from typing import Sequence

import numpy as np

from surgery.data.common import DATA_DIR_ENV, DataNotFoundError
from surgery.data.image_table import ImageTable, csv_rows
from surgery.errors import SurgeryError

ROOT_FOLDER = 'wilds'  # under $SURGERY_DATA_DIR

CAMELYON17_FOLDER = 'camelyon17_v1.0'
CAMELYON17_COLUMNS = ('patient', 'node', 'x_coord', 'y_coord', 'tumor', 'center', 'split')
CAMELYON17_LAYOUT = (f'{CAMELYON17_FOLDER}/metadata.csv (columns patient, node, x_coord, '
                     'y_coord, tumor, slide, center, split) and patches/patient_<ppp>_node_<n>/'
                     'patch_patient_<ppp>_node_<n>_x_<x>_y_<y>.png, from WILDS\' '
                     'camelyon17 v1.0 bundle')
HOSPITALS = 5
OOD_VAL_HOSPITAL = 1
OOD_TEST_HOSPITAL = 2

FMOW_FOLDER = 'fmow_v1.1'
FMOW_COLUMNS = ('split', 'category', 'country_code', 'timestamp')
FMOW_LAYOUT = (f'{FMOW_FOLDER}/rgb_metadata.csv (columns split, img_filename, ..., category, '
               '..., country_code, timestamp, ...), country_code_mapping.csv (alpha-3, '
               'region) and images/rgb_img_<row>.png, from WILDS\' fmow v1.1 bundle')
CATEGORIES = (
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
    'space_facility', 'stadium', 'storage_tank', 'surface_mine', 'swimming_pool',
    'toll_booth', 'tower', 'tunnel_opening', 'waste_disposal', 'water_treatment_facility',
    'wind_farm', 'zoo')
# The five regions of country_code_mapping.csv, then WILDS' fallback. The order is ours
# (WILDS numbers regions by first appearance in the file); only names matter.
REGIONS = ('Asia', 'Europe', 'Africa', 'Americas', 'Oceania', 'Other')
OTHER = REGIONS.index('Other')
FMOW_SPLITS = ('train', 'id_val', 'id_test', 'ood_val', 'ood_test')
OOD_TEST_FROM = 2016  # time_after_2016: OOD test from this year on
OOD_VAL_FROM = OOD_TEST_FROM - 3  # "use 3 years of the training set as validation"
CHECKED_FILES = 500  # per split, when the metadata is read


# ----------------------------------------------------------------------------- finding

def wilds_root(data_dir=None):
  """`data_dir`, else $SURGERY_DATA_DIR/wilds, else None."""
  if data_dir:
    return data_dir
  env = os.environ.get(DATA_DIR_ENV)
  return os.path.join(env, ROOT_FOLDER) if env else None


def _locate(name: str, folder: str, marker: str, layout: str, data_dir=None) -> str:
  """The folder holding `marker`: <root>/<folder> or the root itself; else one line."""
  root = wilds_root(data_dir)
  if not root:
    raise DataNotFoundError(f'{name}: set $SURGERY_DATA_DIR or --config.data_dir (expected '
                            f'<dir>/{ROOT_FOLDER}/{layout})')
  for candidate in (os.path.join(root, folder), root):
    if os.path.isfile(os.path.join(candidate, marker)):
      return candidate
  raise DataNotFoundError(f'{name} not found in {root}: expected {root}/{layout}')


def locate_camelyon17(data_dir=None) -> str:
  return _locate('Camelyon17-WILDS', CAMELYON17_FOLDER, 'metadata.csv', CAMELYON17_LAYOUT,
                 data_dir)


def locate_fmow(data_dir=None) -> str:
  folder = _locate('FMoW-WILDS', FMOW_FOLDER, 'rgb_metadata.csv', FMOW_LAYOUT, data_dir)
  if not os.path.isfile(os.path.join(folder, 'country_code_mapping.csv')):
    raise DataNotFoundError(f'FMoW-WILDS: {folder}/country_code_mapping.csv not found '
                            f'(expected {FMOW_LAYOUT})')
  return folder


# ---------------------------------------------------------------------------- CSV values

def _int(value: str, column: str, path: str, line: int) -> int:
  try:
    return int(float(value))
  except ValueError:
    raise SurgeryError(f'{path}: line {line}: {column} {value!r} is not a number') from None


def _check_files(name: str, tables: dict, path: str) -> None:
  """A partial copy fails now, in one line: `CHECKED_FILES` evenly spaced rows of each
  split are looked at (every one of Camelyon17's 455,954 would take seconds per run)."""
  for table in tables.values():
    gone = table.missing_files(sample=CHECKED_FILES)
    if gone:
      raise DataNotFoundError(f'{name}: {gone[0]} is listed in {path} but missing')


# -------------------------------------------------------------------------- Camelyon17

def camelyon17_patch(patient, node, x, y) -> str:
  p, n = f'{int(patient):03d}', int(node)
  return f'patches/patient_{p}_node_{n}/patch_patient_{p}_node_{n}_x_{int(x)}_y_{int(y)}.png'


def read_camelyon17(data_dir=None) -> dict:
  """{'train' | 'id_val' | 'ood_val' | 'ood_test': ImageTable}, labels = tumor,
  domains = hospital. 'ood_val' is all of hospital 1, 'ood_test' all of hospital 2."""
  folder = locate_camelyon17(data_dir)
  path = os.path.join(folder, 'metadata.csv')
  paths, labels, centers, splits = [], [], [], []
  for line, (patient, node, x, y, tumor, center, split) in csv_rows(path, CAMELYON17_COLUMNS):
    try:
      paths.append(camelyon17_patch(patient, node, x, y))
    except ValueError:
      raise SurgeryError(f'{path}: line {line}: patient, node, x_coord and y_coord must be '
                         f'integers, got {patient!r}, {node!r}, {x!r}, {y!r}') from None
    labels.append(_int(tumor, 'tumor', path, line))
    centers.append(_int(center, 'center', path, line))
    splits.append(_int(split, 'split', path, line))
  labels, centers, splits = (np.array(v, np.int64) for v in (labels, centers, splits))
  for column, values, valid in (('tumor', labels, (0, 1)), ('split', splits, (0, 1)),
                                ('center', centers, range(HOSPITALS))):
    bad = values[~np.isin(values, list(valid))]
    if bad.size:
      raise SurgeryError(f'{path}: column {column} holds {bad[0]}, not one of '
                         f'{", ".join(map(str, valid))}')
  everything = ImageTable(folder, paths, labels, domains=centers)
  source = ~np.isin(centers, (OOD_VAL_HOSPITAL, OOD_TEST_HOSPITAL))
  tables = {'train': everything.subset(source & (splits == 0)),
            'id_val': everything.subset(source & (splits == 1)),
            'ood_val': everything.subset(centers == OOD_VAL_HOSPITAL),
            'ood_test': everything.subset(centers == OOD_TEST_HOSPITAL)}
  _check_files('Camelyon17-WILDS', tables, path)
  return tables


# -------------------------------------------------------------------------------- FMoW

def read_region_mapping(path: str) -> dict:
  """{alpha-3 code: region name} of country_code_mapping.csv; a region other than the
  five named ones (Antarctica's blank) reads as 'Other'."""
  mapping = {}
  for _, (code, region) in csv_rows(path, ('alpha-3', 'region')):
    mapping[code] = region if region in REGIONS[:OTHER] else 'Other'
  return mapping


def regions_of(country_codes: Sequence[str], mapping: dict) -> np.ndarray:
  """Indices in `REGIONS` of each code; codes the mapping lacks are 'Other', as WILDS'
  `countrycode_to_region.get(code, 'Other')`."""
  return np.array([REGIONS.index(mapping.get(c, 'Other')) for c in country_codes], np.int64)


_UTC = datetime.timezone.utc
_OOD_TEST_START = datetime.datetime(OOD_TEST_FROM, 1, 1, tzinfo=_UTC)
_OOD_VAL_START = datetime.datetime(OOD_VAL_FROM, 1, 1, tzinfo=_UTC)


def time_period(timestamp: str) -> int:
  """0 before 2013 (ID), 1 in 2013-2015 (OOD val years), 2 from 2016 (OOD test years),
  comparing in UTC as WILDS does; a timestamp without a zone is taken as UTC."""
  if timestamp.endswith('Z'):  # fMoW's form; fromisoformat reads 'Z' only from 3.11
    timestamp = timestamp[:-1] + '+00:00'
  t = datetime.datetime.fromisoformat(timestamp)
  if t.tzinfo is None:
    t = t.replace(tzinfo=_UTC)
  return 2 if t >= _OOD_TEST_START else 1 if t >= _OOD_VAL_START else 0


# (original split, time period) -> WILDS split under time_after_2016
_FMOW_SPLIT_OF = {('train', 0): 'train', ('val', 0): 'id_val', ('test', 0): 'id_test',
                  ('val', 1): 'ood_val', ('test', 2): 'ood_test'}
_ORIGINAL_SPLITS = ('train', 'val', 'test', 'seq')


def read_fmow(data_dir=None) -> dict:
  """{'train' | 'id_val' | 'id_test' | 'ood_val' | 'ood_test': ImageTable}, labels =
  category index in CATEGORIES, domains = region index in REGIONS."""
  folder = locate_fmow(data_dir)
  mapping = read_region_mapping(os.path.join(folder, 'country_code_mapping.csv'))
  path = os.path.join(folder, 'rgb_metadata.csv')
  category_index = {c: i for i, c in enumerate(CATEGORIES)}
  rows = {name: ([], [], []) for name in FMOW_SPLITS}  # paths, labels, regions
  for i, (line, (split, category, code, timestamp)) in enumerate(csv_rows(path, FMOW_COLUMNS)):
    if split not in _ORIGINAL_SPLITS:
      raise SurgeryError(f'{path}: line {line}: split {split!r} is not one of '
                         f'{", ".join(_ORIGINAL_SPLITS)}')
    if split == 'seq':  # sequestered: WILDS drops them (they keep their row number)
      continue
    try:
      period = time_period(timestamp)
    except ValueError:
      raise SurgeryError(f'{path}: line {line}: timestamp {timestamp!r} is not an ISO 8601 '
                         'time') from None
    name = _FMOW_SPLIT_OF.get((split, period))
    if name is None:
      continue
    if category not in category_index:
      raise SurgeryError(f'{path}: line {line}: category {category!r} is not one of the 62 '
                         'FMoW categories')
    paths, labels, regions = rows[name]
    paths.append(f'images/rgb_img_{i}.png')
    labels.append(category_index[category])
    regions.append(REGIONS.index(mapping.get(code, 'Other')))
  tables = {name: ImageTable(folder, p, np.array(y, np.int64), domains=np.array(r, np.int64))
            for name, (p, y, r) in rows.items()}
  _check_files('FMoW-WILDS', tables, path)
  return tables
