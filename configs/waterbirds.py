"""Waterbirds surgical fine-tuning from an ImageNet ResNet-50 (paper Section 2, A.3, A.4).

    SURGERY_DATA_DIR=/data python -m experiments.main --config=configs/waterbirds.py \
        --workdir=workdir/waterbirds --config.init_checkpoint=/weights/resnet50-0676ba61.pth

Expect `last` to beat tuning `all` on the balanced target (an output-level shift), on
group-balanced and on worst-group accuracy. Needs Waterbirds in
$SURGERY_DATA_DIR/waterbirds (or `--config.data_dir`): group_DRO's
waterbird_complete95_forest2water2/ (metadata.csv + image folders), or WILDS'
waterbirds_v1.0/. `init_checkpoint` is a torchvision ResNet-50 state dict; its head is
replaced by a new 2-way one.

Stage 1 (`source_stage`, kind 'erm'): every layer on the released train split (4,795
images), Adam, 300 epochs as the paper, keeping the epoch with the best accuracy on the
released val split ("the best checkpoint based on early stopping"); lower
`--config.source_stage.epochs` for a quicker source model. The paper gives no lr: 1e-4
with weight decay 1e-4, batch 128, no augmentation (group_DRO's `--augment_data` is off
by default), as group_DRO's ERM baseline except the lr (SGD with momentum 0.9 at 1e-3
there; Adam's per-weight steps are larger, and 1e-4 is the usual Adam lr for fine-tuning
a ResNet-50, the one group_DRO itself uses for CelebA). Stage 2: per method x lr x seed,
100 epochs of Adam, weight decay 1e-4, lrs {5e-3, 1e-3, 5e-4} (paper A.4), batch 64 (the
paper gives none: 7 steps an epoch), on 100 images per (bird, background) group from
the released val split, the epoch and lr picked on the rest of it (799) by worst-group
accuracy (`--config.select_metric=group_balanced_acc` for the paper's balanced-accuracy
selection), tested on the released test split (5,794 images). See surgery/datasets/spurious.py.
"""
import ml_collections

from configs import cifar10c


def get_config(arg=None):
  c = cifar10c.get_config()
  c.dataset = 'waterbirds'
  c.title = 'Waterbirds, ResNet-50'
  c.data_dir = ''  # else $SURGERY_DATA_DIR/waterbirds
  c.init_checkpoint = ''  # required: an ImageNet-pretrained ResNet-50
  c.corruptions = ()  # one target shift: the balanced groups
  c.methods = ('no_adaptation', 'all', 'block1', 'block2', 'block3', 'block4', 'last',
               'auto_rgn', 'cross_val')
  c.seeds = (0, 1, 2)
  c.lrs = (5e-3, 1e-3, 5e-4)  # paper A.4, for every method
  c.last_lrs = (5e-3, 1e-3, 5e-4)
  c.weight_decay = 1e-4
  c.epochs = 100
  c.batch_size = 64
  c.eval_batch_size = 256
  c.tune_per_group = 100
  c.select_metric = ''  # '': the dataset's, worst-group accuracy
  c.model.name = 'resnet50'
  c.model.resnet50 = ml_collections.ConfigDict(dict(
      num_classes=2, new_head=True, width=64, stage_sizes=(3, 4, 6, 3), dtype='float32'))
  c.source_stage = ml_collections.ConfigDict(dict(
      kind='erm', epochs=300, lr=1e-4, optimizer='adam', weight_decay=1e-4,
      schedule='constant', batch_size=128, workers=8, seed=0, checkpoint_every=500,
      select='best', select_metric='acc', augment=False))
  if arg:
    c.seeds = tuple(int(s) for s in arg.split(','))
  return c
