import jax
import pytest

from surgery import GroupSpecError, assign_groups, group_sizes, models, parse_spec, trainable_mask

SPEC = models.create('resnet26')
RESNET26_GROUPS = SPEC.groups

NAMES = ['first_layer', 'block1', 'block2', 'block3', 'last']


@pytest.fixture(scope='module')
def params():
  return SPEC.init()['params']


@pytest.mark.parametrize('spec,expected', [
    ('block2', ('block2',)),
    ('block1-3', ('block1', 'block2', 'block3')),
    ('first_layer-block1', ('first_layer', 'block1')),
    ('last,first_layer', ('first_layer', 'last')),
    ('block1+block3', ('block1', 'block3')),
    ('all', tuple(NAMES)),
])
def test_parse_spec(spec, expected):
  assert parse_spec(spec, NAMES) == expected


@pytest.mark.parametrize('spec', ['block4', 'block3-1', 'head', '', 'block1-9'])
def test_bad_spec_lists_valid_names(spec):
  with pytest.raises(GroupSpecError, match='first_layer'):
    parse_spec(spec, NAMES)


def test_resnet26_groups_cover_expected_modules(params):
  labels = assign_groups(params, RESNET26_GROUPS)
  assert labels['stem']['kernel'] == 'first_layer'
  assert labels['stage1']['block3']['conv2']['kernel'] == 'block1'
  assert labels['stage3']['block0']['norm1']['scale'] == 'block3'
  assert labels['final_norm']['scale'] == 'last' and labels['head']['bias'] == 'last'
  sizes = group_sizes(params, RESNET26_GROUPS)
  assert sizes == {'first_layer': 432, 'block1': 18688, 'block2': 69600,
                   'block3': 277440, 'last': 778}


def test_mask_selects_exactly_the_spec(params):
  mask = trainable_mask(params, RESNET26_GROUPS, 'first_layer,block1')
  labels = assign_groups(params, RESNET26_GROUPS)
  for m, g in zip(jax.tree_util.tree_leaves(mask), jax.tree_util.tree_leaves(labels)):
    assert m == (g in ('first_layer', 'block1'))


def test_uncovered_parameters_are_named(params):
  partial_map = [g for g in RESNET26_GROUPS if g[0] != 'last']
  with pytest.raises(GroupSpecError, match=r'2 parameter\(s\)|4 parameter\(s\)') as err:
    assign_groups(params, partial_map)
  assert 'head/kernel' in str(err.value)


def test_empty_group_is_an_error(params):
  patterns = list(RESNET26_GROUPS) + [('adapter', r'^adapter/')]
  with pytest.raises(GroupSpecError, match="'adapter'.*hold no parameters"):
    trainable_mask(params, patterns, 'adapter')


def test_resnet26_spec_names_its_groups_and_methods(params):
  assert SPEC.group_names() == NAMES
  assert SPEC.methods['block1'] == 'first_layer,block1'  # the paper's block1: stem + stage 1
  for method, group_spec in SPEC.methods.items():
    assert any(jax.tree_util.tree_leaves(trainable_mask(params, SPEC.groups, group_spec))), method
