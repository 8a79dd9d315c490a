"""The CPU-trial tree: every class Living-17 uses, generated or linked from an ImageNet
tree, in the ILSVRC layout the ImageNet reader takes."""
import os

import pytest

from experiments.tools import tiny_imagenet
from surgery.errors import SurgeryError

SHARED_BREEDS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'data', 'breeds')


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_BREEDS, 'dataset_class_info.json')),
                    reason='needs ../shared/data/breeds')
def test_living17_classes_are_its_68_subclasses_in_17_superclasses():
  wnids = tiny_imagenet.classes('living17', SHARED_BREEDS)
  assert len(wnids) == 68 and len({w for w, _ in wnids}) == 68
  assert sorted({label for _, label in wnids}) == list(range(17))
  assert all(w.startswith('n') and len(w) == 9 for w, _ in wnids)


def test_tree_is_generated_or_linked_and_never_half_written(tmp_path):
  wnids = [('n01440764', 0), ('n01443537', 0), ('n01484850', 1)]
  n = tiny_imagenet.write_tree(str(tmp_path / 'gen'), wnids, {'train': 3, 'val': 1})
  assert n == 12
  assert sorted(os.listdir(tmp_path / 'gen' / 'val' / 'n01484850')) == ['n01484850_0.JPEG']
  with open(tmp_path / 'gen' / 'train' / 'n01440764' / 'n01440764_2.JPEG', 'rb') as f:
    assert f.read(2) == b'\xff\xd8'  # a JPEG
  # Linked from an ImageNet tree: the first images of each class, by name.
  n = tiny_imagenet.write_tree(str(tmp_path / 'linked'), wnids, {'train': 2, 'val': 1},
                               imagenet=str(tmp_path / 'gen'))
  link = tmp_path / 'linked' / 'train' / 'n01443537' / 'n01443537_1.JPEG'
  assert n == 9 and os.path.islink(link)
  assert os.readlink(link) == str(tmp_path / 'gen' / 'train' / 'n01443537' / 'n01443537_1.JPEG')
  with pytest.raises(SurgeryError, match='fewer than 5'):
    tiny_imagenet.write_tree(str(tmp_path / 'short'), wnids, {'train': 5},
                             imagenet=str(tmp_path / 'gen'))
  assert not (tmp_path / 'short').exists()
  with pytest.raises(SurgeryError, match='exists'):
    tiny_imagenet.write_tree(str(tmp_path / 'gen'), wnids, {'train': 1})
