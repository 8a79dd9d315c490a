"""FMoW (WILDS) surgical fine-tuning from CLIP ViT-B/16 (paper Section 2, Table 1, A.4).

    SURGERY_DATA_DIR=/data python -m experiments.main --config=configs/fmow.py \
        --workdir=workdir/fmow --config.init_checkpoint=/weights/open_clip_vit_b16.bin

Expect tuning later blocks to beat tuning `all` and the embedding: regions differ in
building shape and spacing, close to a feature-level shift (Table 1). Needs WILDS'
fmow_v1.1/ (rgb_metadata.csv, country_code_mapping.csv, images/rgb_img_<i>.png) in
$SURGERY_DATA_DIR/wilds (or `--config.data_dir`). `init_checkpoint`: a CLIP ViT-B/16
state dict; a new 62-way head.

Stage 1 (`source_stage`, kind 'erm'): every layer on WILDS' train split (images before
2013, about 77,000), SGD with momentum 0.9, cosine decay, batch 32, 5 epochs, the last
kept, as the paper; lr 1e-3, our pick (the paper's value was lost from our copy). Stage
2: per method x lr x seed, 10 epochs of SGD on one image per class of the OOD test
images from Africa (2016 on; the paper's "Africa test", about 2,500 images), one more
per class (where a class has it) to pick the epoch and lr, tested on the rest;
`--config.corruptions=ood` uses the whole OOD test and reports accuracy per region.
The 8 target lrs are our log-spaced grid (the paper's were lost). See
surgery/datasets/wilds.py.
"""
from configs import camelyon17


def get_config(arg=None):
  c = camelyon17.get_config(arg)
  c.dataset = 'fmow'
  c.title = 'FMoW (WILDS), CLIP ViT-B/16'
  c.corruptions = ('africa',)
  c.tune_per_class = 1
  c.val_per_class = 1
  c.model.clip_vit_b16.num_classes = 62
  c.source_stage.epochs = 5
  return c
