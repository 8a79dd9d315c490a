"""MEMO with freezing as the paper ran it (App. A.6, Table 9): per corruption, learning
rate, steps and weight decay tuned on 1,000 test images, then one stream over the
9,000 held out.

    python -m experiments.main --config=configs/memo_paper.py --workdir=workdir/memo_paper \
        --config.init_checkpoint=../shared/weights/memo_resnet26_gn_cifar10.pth

Measured (results/memo_paper/, every issue-16 setting on gaussian_noise, shot_noise,
impulse_noise and defocus_blur): 5 of the 12 Table 9 cells we have are within 3 points:
episodic all on all four (+3.9, +4.8, +6.3, -0.0 vs +4.7, +4.7, +6.7, +0.4) and online
first_layer on defocus_blur (+5.5 vs +6.3). Online first_layer collapses onto "frog"
on the three noises, and online all collapses everywhere. Online first_2_layers is the
best online setting on shot_noise (+7.9) and defocus_blur (+6.8), as in the paper. At a
gaining lr online MEMO is bistable: the same setting gains about 20 points on some
seeded streams and collapses on others, so one 1,000-image tuning stream does not
predict the held-out one. Online first_layer's collapses on the noises trace to the JPEG
copy: on exact pixels of the same images it gains +16.5, +20.2 and +6.5 on gaussian,
shot and impulse noise (results/memo_exact), and on gaussian_noise from a source trained
on the JPEG pixels +9.7 ± 0.4 over 9,000 images (results/scratch_source/memo). Online
all collapses in both of those too, from the scratch source after gaining for 3,000
images.

Cost on 2 CPU cores: 4-9 adapted images/s per stream (2 steps halve it), so one online
setting's tuning (9 streams of 1,000) plus its held-out stream is 40-60 minutes
on one core; the runs resume stream by stream, and a held-out stream every 500 images.
Episodic one-step candidates of a stage, and a corruption's episodic one-step held-out
streams, share one pass (about 50 minutes per corruption for both episodic settings).

What the paper's text gives and what we chose (its grid values were lost from our copy):
- 1,000 tuning / 9,000 held-out images per corruption (class-balanced, seeded here);
- learning rate: 3 values, then 3 multiples of the best: we use per-mode decades
  around MEMO's values, reaching up because freezing more layers moves fewer weights
  (online SGD 5e-2, 5e-3, 5e-4 around MEMO's 5e-3; episodic AdamW 1e-2, 1e-3, 1e-4 around
  our untuned 5e-4), and the multiples 0.5, 1, 2;
- steps 1 or 2; weight decay: 4 values, we use 0, 1e-4, 1e-3, 1e-2;
- 32 augmentations; AdamW episodic, SGD online (A.6: "work better").
- search: `coordinate` (lr, then the finer lr, then steps, then weight decay, each
  around the best so far: 9 streams of 1,000 per setting, what 2 CPU cores afford);
  `--config.tune.search=grid` runs the full product (40 streams).
"""
import ml_collections

from configs import memo_cifar10c


def get_config(arg=None):
  c = memo_cifar10c.get_config(arg)
  c.title = 'MEMO on CIFAR-10-C as in the paper (App. A.6), ResNet-26'
  c.num_images = 9000  # the held-out stream, after the tuning images
  # Issue 16's settings, online first (the paper's headline, Fig. 4: first layers
  # against all).
  c.settings = ('online/first_layer', 'online/all', 'online/first_2_layers',
                'episodic/first_layer', 'episodic/all')
  c.tune = ml_collections.ConfigDict(dict(
      images=1000, search='coordinate', lr_multipliers=(0.5, 1.0, 2.0), steps=(1, 2),
      weight_decays=(0.0, 1e-4, 1e-3, 1e-2)))
  c.online.tune_lrs = (5e-2, 5e-3, 5e-4)
  c.episodic.tune_lrs = (1e-2, 1e-3, 1e-4)
  c.stream_save_every = 500
  c.compare_with = 'memo_cifar10c_table9'
  return c
