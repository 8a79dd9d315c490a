"""CIFAR-10-C surgical fine-tuning (paper Section 2, Table 1 / Figure 2).

    python -m experiments.main --config=configs/cifar10c.py --workdir=workdir/cifar10c \
        --config.init_checkpoint=../shared/weights/memo_resnet26_gn_cifar10.pth

Expect block1 (stem + first stage) to be the best block to tune, level with `all`:
results/cifar10c/full_seed0/ (14 corruptions at severity 5, 1,000 labelled target
images, seed 0) has block1 73.3%, all 73.0%, block2 71.0%, block3 69.2%, last 65.2%,
Cross-Val 73.4%, Auto-RGN 73.2%, no adaptation 56.9%; about 20 minutes per corruption
on 2 CPU cores. The paper's "block1 beats all" by "almost 3 %" is not reproduced from
this source (+0.3 ± 0.6 points). The corruptions are built from the JPEG copy of
CIFAR-10 in ../shared, on whose clean test set the source model, trained on the exact
pixels, alone scores 0.8207 (`--config.corruptions=clean --config.methods=no_adaptation`).
From a source trained on the same JPEG pixels (configs/scratch_source.py) the margin is
+1.7 ± 0.3 over 4 corruptions x 3 seeds (results/scratch_source/c10c; block1 best of
the six options in 11 of 12 cases): the sign reproduces once source and target share
their pixels, at about 60 % of the size.
"""
import ml_collections

PAPER_CORRUPTIONS = ('frost', 'gaussian_blur', 'gaussian_noise', 'glass_blur', 'impulse_noise',
                     'jpeg_compression', 'motion_blur', 'pixelate', 'saturate', 'shot_noise',
                     'snow', 'spatter', 'speckle_noise', 'zoom_blur')


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.experiment = 'finetune'
  c.dataset = 'cifar10'  # surgery.datasets; its module documents the fields it reads
  c.title = 'CIFAR-10-C (severity 5), ResNet-26'
  c.data_dir = ''  # else $SURGERY_DATA_DIR, else TFDS
  c.init_checkpoint = ''  # MEMO .pth or our orbax dir; empty: pre-train on CIFAR-10
  c.corruptions = PAPER_CORRUPTIONS  # target shifts; see surgery/datasets/cifar10.py
  c.tune_sizes = ()  # e.g. 100,250,500: every shift at each target size (Fig. 4)
  c.severity = 5
  c.methods = ('no_adaptation', 'all', 'first_layer', 'block1', 'block2', 'block3', 'last',
               'auto_rgn', 'cross_val')
  c.seeds = (0,)
  c.lrs = (1e-3, 1e-4, 1e-5)
  c.last_lrs = (1e-1, 1e-2, 1e-3)  # the paper's grid for the model's head methods
  c.select_metric = 'acc'  # validation metric that picks the epoch, lr and Cross-Val
  c.optimizer = 'adam'
  c.weight_decay = 1e-4
  c.epochs = 15
  c.batch_size = 64
  c.eval_batch_size = 512
  c.tune_per_class = 100
  c.val_per_class = 10
  c.corruption_seed = 0  # seed of the generated corruption (not of the splits)
  c.report_only = False  # rewrite summary.md and plots from results.csv, run nothing

  # noise_<group> shifts (Section 3.3): noise norm = scale x each tensor's norm;
  # group_scales ('block1=1.0,last=3') overrides the scale per noised group.
  c.param_noise = ml_collections.ConfigDict(dict(scale=0.5, group_scales='', seed=0))
  # bn_mode (BatchNorm models): 'eval' keeps every BN layer in eval mode while tuning,
  # as the authors do; 'train' puts the tuned ones in train mode. Frozen: always eval.
  # Each model's options sit in its own section; `--config.model.name=wrn28_10
  # --config.init_checkpoint=Standard.pt` starts from RobustBench's WideResNet-28-10.
  c.model = ml_collections.ConfigDict(dict(
      name='resnet26', bn_mode='eval',
      resnet26=dict(width=1, depth=26, norm='group'),
      wrn28_10=dict(depth=28, widen=10, new_head=False)))
  # The authors' Auto-RGN: refresh once per epoch from 5 batches, norm layers left out
  # (reset_inner=True also rebuilds Adam at every refresh, as their code does).
  c.auto_rgn = ml_collections.ConfigDict(dict(refresh='epoch', window=5, exclude_norm=True,
                                              reset_inner=False))
  # Table 4's single-run baselines (opt in through `methods`); their own settings are
  # swept beside the lr and chosen on validation like it.
  c.l1_sp = ml_collections.ConfigDict(dict(lambdas=(1e-5, 1e-4, 1e-3)))
  c.auto_snr = ml_collections.ConfigDict(dict(
      thresholds=(0.2, 0.5, 0.8), variant='paper', batch_size=64, chunk_size=16,
      exclude_norm=False))
  # Stage 1 when no init_checkpoint is given (TTT/MEMO recipe: SGD, 75 epochs).
  c.pretrain = ml_collections.ConfigDict(dict(
      epochs=75, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, seed=0))
  if arg:
    c.corruptions = tuple(arg.split(','))
  return c
