"""ImageNet-C surgical fine-tuning from RobustBench's Standard_R50 (paper Section 2, A.4).

    SURGERY_DATA_DIR=/data python -m experiments.main --config=configs/imagenet_c.py \
        --workdir=workdir/imagenet_c --config.init_checkpoint=/weights/Standard_R50.pt

Expect an early group (first_layer or block1) to beat tuning `all` and `last` on average
over the 15 corruptions at severity 5, as for the paper's other input-level shift
(CIFAR-10-C). Needs ImageNet-C in $SURGERY_DATA_DIR/imagenet-c (or `--config.data_dir`):
Hendrycks & Dietterich's released tarballs unpacked, <corruption>/5/<wnid>/*.JPEG
(source_layout='release', the default: the images the paper used), or TFDS
imagenet2012_corrupted/<corruption>_5/<version>/ as array_record
(`--config.source_layout=tfds`; TFDS regenerates the corruptions, so its numbers are not
the release's; the title and config.json say which copy a workdir used).

`init_checkpoint`: RobustBench's ImageNet `Standard_R50` (torchvision's ResNet-50 V1
weights inside an ImageNet-normalisation wrapper; our resnet50 normalises inside and
reads it), 1000 classes, head kept; no source stage. Per corruption x method x lr x seed:
10 epochs of Adam, weight decay 1e-4, lrs {1e-3, 1e-4, 1e-5} for every method (paper
A.4), on 5 images per class (5,000), the epoch and lr picked on 5 more per class, tested
on the other 40 per class (40,000); see surgery/datasets/imagenet_c.py. mCE as in the
paper's Table 6: `surgery.datasets.imagenet_c.mce` (severity-5 errors over AlexNet's
errors averaged over severities 1-5).
"""
import ml_collections
from ml_collections import FieldReference

from configs import cifar10c

CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
               'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
               'elastic_transform', 'pixelate', 'jpeg_compression')


def get_config(arg=None):
  c = cifar10c.get_config()
  c.dataset = 'imagenet_c'
  c.data_dir = ''  # else $SURGERY_DATA_DIR/imagenet-c
  c.source_layout = 'release'  # or 'tfds' (imagenet2012_corrupted, regenerated images)
  c.severity = 5
  # Follows the two fields above, also when they are set on the command line.
  c.title = (FieldReference('ImageNet-C (severity ') + c.get_ref('severity').to_str()
             + ', images: ' + c.get_ref('source_layout') + '), ResNet-50 Standard_R50')
  c.init_checkpoint = ''  # required: RobustBench Standard_R50.pt (or a torchvision state dict)
  c.corruptions = CORRUPTIONS
  c.methods = ('no_adaptation', 'all', 'first_layer', 'block1', 'block2', 'block3', 'block4',
               'last', 'auto_rgn', 'cross_val')
  c.seeds = (0, 1, 2)
  c.lrs = (1e-3, 1e-4, 1e-5)  # paper A.4, for every method
  c.last_lrs = (1e-3, 1e-4, 1e-5)
  c.weight_decay = 1e-4
  c.epochs = 10
  c.batch_size = 64
  c.eval_batch_size = 256
  c.tune_per_class = 5
  c.val_per_class = 5
  c.test_per_class = 0  # 0: every image not tuned or validated on (40 per class)
  # 224: centre crop only, as Hendrycks & Dietterich evaluate; 256: RobustBench's older
  # Res256Crop224 (short side to 256, then the centre crop)
  c.eval_resize = 224
  c.model.name = 'resnet50'
  c.model.resnet50 = ml_collections.ConfigDict(dict(
      num_classes=1000, new_head=False, width=64, stage_sizes=(3, 4, 6, 3), dtype='float32'))
  if arg:
    c.seeds = tuple(int(s) for s in arg.split(','))
  return c
