"""Living-17 (BREEDS) surgical fine-tuning from an ImageNet ResNet-50 (paper Section 2, A.4).

    SURGERY_DATA_DIR=/data python -m experiments.main --config=configs/living17.py \
        --workdir=workdir/living17 --config.init_checkpoint=/weights/resnet50-0676ba61.pth

Expect a middle block (block2 or block3) to beat tuning `all`, as for the paper's
feature-level shifts. Needs ImageNet in $SURGERY_DATA_DIR/imagenet (or
`--config.data_dir`): the ILSVRC-2012 tree train/<wnid>/*.JPEG + val/<wnid>/*.JPEG, or
TFDS imagenet2012 as array_record; and the BREEDS hierarchy files in
$SURGERY_DATA_DIR/breeds. `init_checkpoint` is a torchvision ResNet-50 state dict (or a
RobustBench checkpoint); its 1000-way head is replaced by a new 17-way one.

Stage 1 (LP-FT, `source_stage`): 3 epochs on the head, then 2 on every layer, Adam, on
the ImageNet train images of the 34 source subclasses (random-resized crop and flip),
saved in WORKDIR/source_model and resumable mid-epoch. Stage 2: per method x lr x seed,
15 epochs of Adam without weight decay on 50 target images per superclass (850), the
epoch and lr picked on 10 more per superclass, tested on the ImageNet val images of the
34 target subclasses (1,700). Target images get the evaluation crop (resize 256, centre
crop 224), no augmentation: see surgery/datasets/subpop.py.
"""
import ml_collections

from configs import cifar10c


def get_config(arg=None):
  c = cifar10c.get_config()
  c.dataset = 'living17'
  c.title = 'Living-17 (BREEDS), ResNet-50'
  c.data_dir = ''  # ImageNet's root; else $SURGERY_DATA_DIR/imagenet
  c.breeds_info_dir = ''  # else $SURGERY_DATA_DIR/breeds
  c.breeds_split = 'rand'
  c.breeds_seed = 2  # the BREEDS reference's
  c.init_checkpoint = ''  # required: an ImageNet-pretrained ResNet-50
  c.corruptions = ()  # the shift is the dataset's target subclasses
  c.methods = ('no_adaptation', 'all', 'block1', 'block2', 'block3', 'block4', 'last',
               'auto_rgn', 'cross_val')
  c.seeds = (0, 1, 2)
  c.lrs = (5e-4, 1e-4, 1e-5)  # paper A.4, for every method
  c.last_lrs = (5e-4, 1e-4, 1e-5)
  c.weight_decay = 0.0
  c.epochs = 15
  c.batch_size = 64
  c.eval_batch_size = 256
  c.tune_per_class = 50
  c.val_per_class = 10
  c.model.name = 'resnet50'
  c.model.resnet50 = ml_collections.ConfigDict(dict(
      num_classes=17, new_head=True, width=64, stage_sizes=(3, 4, 6, 3), dtype='float32'))
  c.source_stage = ml_collections.ConfigDict(dict(
      kind='lp_ft', head_epochs=3, all_epochs=2, head_lr=1e-3, all_lr=1e-4, batch_size=128,
      workers=8, seed=0, checkpoint_every=500))
  if arg:
    c.seeds = tuple(int(s) for s in arg.split(','))
  return c
