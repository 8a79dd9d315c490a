"""CIFAR-Flip: an output-level shift, labels y -> 9 - y (paper Fig. 2, Table 4).

    python -m experiments.main --config=configs/cifar_flip.py --workdir=workdir/cifar_flip

Expect `last` to be the best block to tune, well ahead of `block1`: results/cifar_flip/
has last 81.3%, all 55.8%, block1 21.1% (seed 0, lr 1e-3 / last {1e-1, 1e-2}). 1,000 tune
examples (100 per class) from the CIFAR-10 test set, 100 for validation, the rest to test.
"""
from configs import cifar10c


def get_config(arg=None):
  c = cifar10c.get_config()
  c.title = 'CIFAR-Flip (labels y -> 9 - y), ResNet-26'
  c.init_checkpoint = '../shared/weights/memo_resnet26_gn_cifar10.pth'
  c.corruptions = ('label_flip',)
  c.methods = ('no_adaptation', 'all', 'first_layer', 'block1', 'block2', 'block3', 'last',
               'auto_rgn', 'cross_val', 'gradual_unfreeze_first_last',
               'gradual_unfreeze_last_first', 'l1_sp', 'auto_snr')
  if arg:
    c.seeds = tuple(int(s) for s in arg.split(','))
  return c
