"""Data readers, one module per released layout (CIFAR-10 and CIFAR-10-C, ImageNet and
ImageNet-C, BREEDS, Waterbirds, CelebA, WILDS), the target tune/val/test splits,
random-access sources, and the grain streaming pipeline (`surgery.data.pipeline`).
`surgery.datasets` builds each dataset of the runner from them."""
from surgery.data.common import DataNotFoundError
from surgery.data.cifar10 import CLASSES, load_cifar10, locate_cifar10
from surgery.data.cifar10c import ShiftedTestSet, corrupted_test_set, load_release, load_tfds
from surgery.data.splits import TargetSplit, target_split
from surgery.data.sources import ArraySource, Subset, to_arrays

__all__ = ['ArraySource', 'Subset', 'to_arrays', 'CLASSES', 'DataNotFoundError', 'ShiftedTestSet', 'TargetSplit',
           'corrupted_test_set', 'load_cifar10', 'load_release', 'load_tfds',
           'locate_cifar10', 'target_split']
