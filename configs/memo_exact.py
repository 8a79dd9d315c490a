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

Measured so far (results/memo_exact/summary.md has every cell; most of defocus_blur
and most JPEG cells still to run). Beyond gaussian_noise below: on exact pixels
shot_noise's online first_layer gains +20.2 ± 1.7 (Table 9: +15.9) and online all
collapses (-26.4); impulse_noise's online first_layer gains +6.5 ± 1.7 (Table 9: +9.5),
online all collapses (-20.1), episodic all gains +10.6 ± 1.5 (Table 9: +6.7);
defocus_blur's online first_layer gains +5.1 ± 1.3 (Table 9: +6.3) and online all
+3.8 ± 1.4 (Table 9: +4.0; no collapse on this blur). gaussian_noise, gain over no adaptation on the 800 held-out
images, with its paired s.e.:
- online first_layer: exact +16.5 ± 1.6 (Table 9: +16.5, reproduced); JPEG -6.1 ± 1.8.
  The JPEG copy is what turned the paper's gain into a collapse.
- online all: exact -32.0, JPEG -26.6. It collapses on both: not the JPEG copy. Its
  best lr is the grid's lowest (2.5e-4), so the paper's -0.1 is probably an lr that
  changes nothing.
- online first_2_layers: exact +5.4 ± 1.0; JPEG -7.9 ± 1.8.
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
