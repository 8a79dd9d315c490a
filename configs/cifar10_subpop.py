"""A subpopulation (feature-level) shift on real CIFAR-10 images, built like Living-17.

    SURGERY_DATA_DIR=../shared/data python -m experiments.main \
        --config=configs/cifar10_subpop.py --workdir=workdir/cifar10_subpop

Five superclasses of two CIFAR-10 classes each ({airplane, ship}, {automobile, truck},
{cat, dog}, {deer, horse}, {bird, frog}), written as a BREEDS hierarchy
(`surgery/data/cifar10_hierarchy/`) and split by the same code as Living-17
(`surgery.data.breeds`, split 'rand', seed 2): the source holds ship, automobile, cat,
horse and frog, the target the other five. Stage 1 trains ResNet-26 from scratch on the
25,000 source train images (saved with orbax in the workdir, resumable); the sweep
tunes on 50 target train images per superclass, picks the epoch and lr on 10 more per
superclass, and tests on the 5,000 target test images. The paper finds a middle block
best for feature-level shifts; results/cifar10_subpop/ has what this config measured.
"""
from configs import cifar10c


def get_config(arg=None):
  c = cifar10c.get_config()
  c.dataset = 'cifar10_subpop'
  c.title = 'CIFAR-10 subpopulation shift (5 superclasses), ResNet-26'
  c.breeds_split = 'rand'
  c.breeds_seed = 2
  c.init_checkpoint = ''  # stage 1 trains the source model from scratch
  c.corruptions = ()  # unused: the shift is the dataset's target subpopulations
  c.methods = ('no_adaptation', 'all', 'first_layer', 'block1', 'block2', 'block3', 'last',
               'auto_rgn', 'cross_val')
  c.seeds = (0, 1)
  c.tune_per_class = 50  # per superclass, as for Living-17 (paper A.4)
  c.val_per_class = 10
  c.model.resnet26.num_classes = 5
  # The CIFAR recipe (SGD, cosine), 30 epochs: 5-way source accuracy levels off well
  # before the 75 that the 10-way CIFAR-10 model gets.
  c.pretrain.epochs = 30
  if arg:
    c.seeds = tuple(int(s) for s in arg.split(','))
  return c
