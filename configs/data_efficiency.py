"""Data efficiency on CIFAR-10-C (paper Fig. 4, left): accuracy against the number of
labelled target examples for block1, all and last.

    python -m experiments.main --config=configs/data_efficiency.py --workdir=workdir/data_eff

Expect block1 to match or beat all at every size, with the gap shrinking as n grows.
"""
from configs import cifar10c


def get_config(arg=None):
  c = cifar10c.get_config()
  c.title = 'CIFAR-10-C (severity 5): accuracy against target examples'
  c.init_checkpoint = '../shared/weights/memo_resnet26_gn_cifar10.pth'
  c.corruptions = tuple((arg or 'gaussian_noise,glass_blur,snow,jpeg_compression').split(','))
  c.tune_sizes = (100, 250, 500, 1000, 2000)
  c.methods = ('block1', 'all', 'last')
  return c
