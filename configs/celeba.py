"""CelebA (Blond_Hair, spurious Male) surgical fine-tuning from an ImageNet ResNet-50
(paper Section 2, A.3, A.4).

    SURGERY_DATA_DIR=/data python -m experiments.main --config=configs/celeba.py \
        --workdir=workdir/celeba --config.init_checkpoint=/weights/resnet50-0676ba61.pth

Expect `last` to beat tuning `all` on the balanced target (an output-level shift), on
group-balanced and on worst-group accuracy. Needs CelebA in $SURGERY_DATA_DIR/celeba (or
`--config.data_dir`): img_align_celeba/, list_attr_celeba.csv and list_eval_partition.csv
(the Kaggle release group_DRO reads; `source_layout='raw'`, the default), or TFDS
celeb_a/<version>/ as array_record (`--config.source_layout=tfds`; same images and
split; the title and config.json say which copy a workdir used). `init_checkpoint` is a
torchvision ResNet-50 state dict; its head is replaced by a new 2-way one.

Stage 1 (`source_stage`, kind 'erm'): every layer on the released train split (162,770
images), Adam, 50 epochs as the paper, keeping the epoch with the best accuracy on the
released val split ("the best checkpoint based on early stopping"). The paper gives no
lr: 1e-4 with weight decay 1e-4 and batch 128, no augmentation, exactly group_DRO's ERM
command for CelebA (there with SGD; 1e-4 is also a usual Adam lr for fine-tuning a
ResNet-50). Stage 2: per method x lr x seed, 50 epochs of Adam, weight decay 1e-4, lrs
{1e-3, 5e-4, 1e-4} (paper A.4) on 100 images per (hair, gender) group from the
released val split, the epoch and lr picked on the rest of it (19,467) by worst-group
accuracy, tested on the released test split (19,962 images, decoded a batch at a time).
See surgery/datasets/spurious.py.
"""
from ml_collections import FieldReference

from configs import waterbirds


def get_config(arg=None):
  c = waterbirds.get_config(arg)
  c.dataset = 'celeba'
  c.data_dir = ''  # else $SURGERY_DATA_DIR/celeba
  c.source_layout = 'raw'  # or 'tfds' (celeb_a as array_record)
  # Follows source_layout, also when it is set on the command line.
  c.title = (FieldReference('CelebA (Blond_Hair; spurious: Male; images: ')
             + c.get_ref('source_layout') + '), ResNet-50')
  c.lrs = (1e-3, 5e-4, 1e-4)  # paper A.4, for every method
  c.last_lrs = (1e-3, 5e-4, 1e-4)
  c.epochs = 50
  c.source_stage.epochs = 50
  return c
