"""Unsupervised test-time adaptation with MEMO and parameter freezing (paper Section 2.2,
Tables 2 and 9).

    python -m experiments.main --config=configs/memo_cifar10c.py --workdir=workdir/memo \
        --config.init_checkpoint=../shared/weights/memo_resnet26_gn_cifar10.pth

Expect online adaptation of the first layers to beat online adaptation of `all`, whose
accuracy decays along the test stream (paper Fig. 4, right): results/memo/ has online
first_layer 53.3% against all 10.8% (average of 4 corruptions, 500 images each). On 2
CPU cores MEMO adapts 5 (`all`) to 12 (`last`) images/s; the grid took 70 minutes.
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.experiment = 'memo'
  c.dataset = 'cifar10'
  c.title = 'MEMO on CIFAR-10-C, ResNet-26'  # the summary adds the severity
  c.data_dir = ''
  c.init_checkpoint = '../shared/weights/memo_resnet26_gn_cifar10.pth'
  c.corruptions = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur')
  c.severity = 5
  c.corruption_seed = 0
  c.num_images = 500  # per corruption: a class-balanced, seeded subset of the test set
  c.modes = ('episodic', 'online')
  # The model's MEMO freezing options (surgery/models/resnet26.py, MEMO_OPTIONS).
  c.options = ('all', 'first_layer', 'first_2_layers', 'block1', 'last')
  c.no_adaptation = True
  c.seed = 0  # the stream's images and order, and the augmentations
  c.steps = 1
  c.num_copies = 32
  # '' / 0.0 / negative: the per-mode defaults of surgery.memo (episodic AdamW, online SGD).
  c.episodic = ml_collections.ConfigDict(dict(optimizer='', learning_rate=0.0, weight_decay=-1.0))
  c.online = ml_collections.ConfigDict(dict(optimizer='', learning_rate=0.0, weight_decay=-1.0))
  c.eval_batch_size = 500
  c.report_only = False  # rewrite summary.md and the plot from the workdir, run nothing
  c.model = ml_collections.ConfigDict(dict(name='resnet26', depth=26))  # smaller: tests only
  if arg:
    c.corruptions = tuple(arg.split(','))
  return c
