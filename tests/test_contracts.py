"""The model, dataset and method contracts: registries, specs and their errors."""
import jax
import numpy as np
import pytest

import surgery
from surgery import datasets, models
from surgery.checkpoints import save_params
from surgery.datasets import compute_metrics
from surgery.errors import SurgeryError
from surgery.methods import registry


def test_model_registry_lists_and_rejects():
  assert 'resnet26' in models.names()
  with pytest.raises(SurgeryError, match="unknown model 'vit_huge'; valid: .*resnet26"):
    models.create('vit_huge')
  with pytest.raises(SurgeryError, match='no option'):
    models.create('resnet26', dropout=0.1)


def test_resnet26_spec_applies_to_float_images_and_loads_its_own_checkpoints(tmp_path):
  spec = models.create('resnet26', depth=8, num_classes=7)
  variables = spec.init()
  assert spec.num_classes == 7 and spec.image_size == 32
  images = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
  logits = spec.module.apply(variables, images, train=False)
  assert logits.shape == (2, 7)
  # Every method's group spec selects existing groups of the model.
  for method, group_spec in spec.methods.items():
    mask = surgery.trainable_mask(variables['params'], spec.groups, group_spec)
    assert any(jax.tree_util.tree_leaves(mask)), method
  # Bare params and the pre-training layout both load, bitwise.
  bare = save_params(str(tmp_path / 'bare'), variables['params'])
  loaded = spec.load(bare)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  with pytest.raises(SurgeryError, match='checkpoint not found'):
    spec.load(str(tmp_path / 'nothing'))


def test_batchnorm_resnet26_loads_running_statistics(tmp_path):
  spec = models.create('resnet26', depth=8, norm='batch')
  variables = spec.init()
  stats = jax.tree_util.tree_map(lambda x: x + 1.5, variables['batch_stats'])
  path = save_params(str(tmp_path / 'bn'), {'params': variables['params'],
                                            'model_state': {'batch_stats': stats}})
  loaded = spec.load(path)
  for a, b in zip(jax.tree_util.tree_leaves(loaded['batch_stats']), jax.tree_util.tree_leaves(stats)):
    np.testing.assert_array_equal(a, b)


def test_method_registry_resolves_model_methods_and_lists_valid_names():
  spec = models.create('resnet26', depth=8)
  names = registry.names(spec)
  assert names[:2] == ['no_adaptation', 'all'] and names[-1] == 'cross_val'
  assert all(m in names for m in spec.methods)
  surgical = registry.resolve(next(iter(m for m in spec.methods if m != 'all')), spec)
  assert surgical.trains and surgical.wrap is None
  assert registry.resolve('cross_val', spec).select is not None and not registry.resolve('cross_val', spec).trains
  assert registry.resolve('no_adaptation', spec).evaluate_only
  # Cross-Val chooses among the surgical options only, never `all`.
  assert 'all' not in registry.surgical_options(spec)
  assert set(registry.surgical_options(spec)) == {m for m, g in spec.methods.items() if g != 'all'}
  with pytest.raises(SurgeryError, match="unknown method 'block9' .*valid: no_adaptation, all"):
    registry.resolve('block9', spec)


def test_dataset_registry_and_metrics():
  with pytest.raises(SurgeryError, match="unknown dataset 'imagenet9'; valid: .*cifar10"):
    datasets.create('imagenet9', {})
  preds = np.array([0, 1, 1, 0, 2, 2])
  labels = np.array([0, 1, 0, 0, 2, 1])
  groups = np.array([0, 0, 1, 1, 2, 2])  # group accuracies 1, 0.5, 0.5
  domains = np.array([0, 0, 0, 1, 1, 1])  # domain accuracies 2/3, 2/3
  got = compute_metrics(preds, labels, groups, domains, ('a', 'b'))
  assert got == pytest.approx({'acc': 4 / 6, 'group_balanced_acc': 2 / 3, 'worst_group_acc': 0.5,
                               'acc_a': 2 / 3, 'acc_b': 2 / 3})
  # Unequal groups: balanced accuracy weighs each group once, plain accuracy each image.
  got = compute_metrics([0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1])
  assert got == pytest.approx({'acc': 0.5, 'group_balanced_acc': 1 / 3, 'worst_group_acc': 0.0})
  # A negative group (FMoW's 'Other' region) counts in acc only.
  got = compute_metrics([0, 0, 1, 0], [0, 0, 0, 1], [0, 0, -1, -1])
  assert got == pytest.approx({'acc': 0.5, 'group_balanced_acc': 1.0, 'worst_group_acc': 1.0})


def test_a_dataset_sees_only_the_config_fields_it_declares():
  import importlib

  import ml_collections
  config = ml_collections.ConfigDict(dict(severity=3, lrs=(1e-3,)))
  view = datasets.ConfigView(config, ('severity', 'corruptions'), 'mine')
  assert view.severity == 3 and view['severity'] == 3
  assert view.get('corruptions', 'absent') == 'absent' and 'corruptions' not in view
  with pytest.raises(SurgeryError, match="mine reads config field 'lrs'"):
    view.get('lrs')  # in the config, but not the dataset's: an error, not a default
  with pytest.raises(SurgeryError, match="reads config field 'epochs'"):
    view.epochs  # noqa: B018
  # Every dataset module of the package declares what it reads (a user's own, added with
  # `register`, may not: it then sees the whole config).
  from surgery import discovery
  for name, path in discovery.creators('surgery.datasets').items():
    assert isinstance(getattr(importlib.import_module(path), 'READS', None), tuple), name
