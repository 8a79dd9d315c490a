"""MEMO test-time adaptation (Zhang, Levine & Finn, 2021) with surgical freezing.

The unsupervised experiments of Lee et al., "Surgical Fine-Tuning Improves Adaptation
to Distribution Shifts" (ICLR 2023), Sec. 2.2 and App. A.6.
"""
from surgery.memo.adapt import (DEFAULTS, MEMO_MAP, MODES, adapt_stream, image_keys,
                                make_adapt_predict, marginal_entropy, memo_group_map, memo_mask,
                                memo_optimizer, run_stream, traced_optimizer)
from surgery.memo.augment import augment_batch, augment_batch_float, augmix
