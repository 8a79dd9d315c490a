"""FMoW (WILDS) surgical fine-tuning from CLIP ViT-B/16 (paper Section 2, Table 1, A.4).

    SURGERY_DATA_DIR=/data python -m experiments.main --config=configs/fmow.py \
        --workdir=workdir/fmow --config.init_checkpoint=/weights/open_clip_pytorch_model.bin

Expect tuning one of the later residual blocks to beat tuning `all` and the
embedding on Africa: regions differ in building shape and spacing, close to a
feature-level shift (paper Table 1: "tuning later attention blocks works best for
FMoW"). Needs WILDS' fmow_v1.1/ (rgb_metadata.csv, country_code_mapping.csv,
images/rgb_img_<i>.png) in $SURGERY_DATA_DIR/wilds (or `--config.data_dir`).
`init_checkpoint`: CLIP ViT-B/16 weights (open_clip or OpenAI state dict); a new 62-way
head.

Stage 1 (`source_stage`, kind 'erm'): every layer on WILDS' train split (original train
images from before 2013, about 77,000), SGD with momentum 0.9, cosine decay to 0, batch
32, 5 epochs, the last kept, as the paper; lr 1e-3, our pick as for Camelyon17 (the
paper's value was lost from our copy; WILDS' FMoW baseline uses Adam, so it gives no SGD
value). Stage 2: per method x lr x seed, 10 epochs of SGD (momentum 0.9, no weight
decay, cosine annealing as stage 1) on one image per class of WILDS' OOD test images (2016 on) from
Africa (the paper's "Africa test", about 2,500 images; classes Africa lacks are not
drawn, so up to 62), one more per class where a class has it to pick the epoch and lr
(the paper names no validation set: ours), tested on the rest. The 8 target lrs are our
log-spaced grid 3e-5 ... 1e-1 (half-decade steps; the paper's were lost).
`--config.corruptions=ood` targets the whole OOD test and adds per-region accuracy and
the worst region (WILDS' headline metric) to the tables; `asia`, `europe`, `americas`,
`oceania` target another region. See surgery/datasets/wilds.py.
"""
from configs import camelyon17


def get_config(arg=None):
  c = camelyon17.get_config(arg)
  c.dataset = 'fmow'
  c.title = 'FMoW (WILDS), CLIP ViT-B/16'
  c.corruptions = ('africa',)
  c.tune_per_class = 1  # "62 label-balanced images"
  c.val_per_class = 1  # ours: the paper names no validation set
  c.model.clip_vit_b16.num_classes = 62
  c.source_stage.epochs = 5
  return c
