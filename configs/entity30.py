"""Entity-30 (BREEDS) surgical fine-tuning from an ImageNet ResNet-50 (paper Section 2, A.4).

    SURGERY_DATA_DIR=/data python -m experiments.main --config=configs/entity30.py \
        --workdir=workdir/entity30 --config.init_checkpoint=/weights/resnet50-0676ba61.pth

Expect a middle block to beat tuning `all` (a feature-level shift). Everything as in
configs/living17.py, with 30 superclasses of 8 ImageNet classes (4 source, 4 target):
1,500 tune images (50 per superclass), 300 for validation, 6,000 ImageNet val images to
test.
"""
from configs import living17


def get_config(arg=None):
  c = living17.get_config(arg)
  c.dataset = 'entity30'
  c.title = 'Entity-30 (BREEDS), ResNet-50'
  c.model.resnet50.num_classes = 30
  return c
