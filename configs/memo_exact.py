"""MEMO on the exact pixels of the first 1,017 CIFAR-10 test images, against their JPEG
copy (issue 28): `memo_paper`'s protocol and search, scaled to 1,017 images.

    python -m experiments.tools.cifar10_jpeg_twin --exact=../shared/data/cifar10_exact \
        --jpeg=../shared/data/cifar10 --out=workdir/cifar10_jpeg_twin
    python -m experiments.main --config=configs/memo_exact.py:exact \
        --workdir=workdir/memo_exact/exact
    python -m experiments.main --config=configs/memo_exact.py:jpeg \
        --workdir=workdir/memo_exact/jpeg

Both read the same 1,017 images in the same order (`cifar10_exact`'s PNGs, or links to
their JPEG twins in `../shared/data/cifar10`), regenerate each corruption with the
same seed, and draw the same seeded tuning stream of 217 images and held-out stream of
the other 800. So the two workdirs differ in the pixels only. (`data_dir` says where data
lies, not what it is, so it is not in the fingerprint: keep the two in separate
workdirs.) The classes of those images are unequal (87 to 114), so the streams are not
class-balanced (`class_balanced=False`). An accuracy on 800 images has a standard error
of about 1.7 points.

Measured (results/memo_exact/README.md; summary.md has every cell). Gain over no
adaptation on the 800 held-out images, exact pixels / JPEG copy, for gaussian_noise,
shot_noise, impulse_noise, defocus_blur (paired s.e. 1.0 to 2.0 points):
- online first_layer: +16.5/-6.1, +20.2/-17.0, +6.5/+12.5, +5.1/+6.0 (Table 9: +16.5,
  +15.9, +9.5, +6.3). Reproduces on exact pixels (within 3 points on three, shot_noise
  gains 4.3 more); on the JPEG copy gaussian_noise and shot_noise drift onto one class.
  The JPEG copy is what turned the paper's gain into a collapse.
- online all: -32.0/-26.6, -26.4/-31.1, -20.1/-21.4, +3.8/-36.9 (Table 9: -0.1, +0.7,
  -0.2, +4.0). On the noises it collapses on both pixel sets, so not the JPEG copy; with
  the lr searched down to 5e-6 (`--config.online.tune_lrs=5e-4,5e-5,5e-6`,
  results/memo_exact/online_all_low_lr) the search picks 5e-6 and the gains are -0.6,
  +0.4, +0.5, within 3 points: the paper's near-zero cells are an lr that changes next
  to nothing. On defocus_blur the JPEG copy decides it (+3.8 against -36.9).
- episodic all: +7.1/+4.9, +5.8/+4.5, +10.6/+8.5, -2.2/+1.0 (Table 9: +4.7, +4.7, +6.7,
  +0.4): within 3 points on 3 of 4 (exact) and 4 of 4 (JPEG). Episodic MEMO resets per
  image: the JPEG copy moves its gain by 3.2 points at most.
- online first_layer beats online all on all four, as the paper says.
"""
from configs import memo_paper
from surgery.errors import SurgeryError

DATA = {'exact': '../shared/data/cifar10_exact', 'jpeg': 'workdir/cifar10_jpeg_twin'}


def get_config(arg='exact'):
  arg = arg or 'exact'
  if arg not in DATA:
    raise SurgeryError(f'configs/memo_exact.py:<pixels>: exact or jpeg, got {arg!r}')
  c = memo_paper.get_config()
  c.title = (f'MEMO on the first 1,017 CIFAR-10 test images, '
             f'{"exact pixels" if arg == "exact" else "their JPEG copy"}, ResNet-26')
  c.data_dir = DATA[arg]
  c.class_balanced = False
  c.tune.images = 217
  c.num_images = 800
  c.stream_save_every = 200
  return c
