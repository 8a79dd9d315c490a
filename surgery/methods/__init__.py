"""Fine-tuning methods, one file each; `registry` holds the contract every file declares
(`METHOD`), and the runner finds them by listing this package:

  baselines.py         no_adaptation, all
  auto_rgn.py          Auto-RGN (Section 5): per-tensor lr from relative gradient norms
  gradual_unfreeze.py  gradual_unfreeze_first_last / _last_first (Table 4)
  l1_sp.py             L1-SP, a penalty towards the pre-trained weights (Table 4)
  llrd.py              layer-wise lr decay: lr x decay^(depth from the head)
  auto_snr.py          Auto-SNR, freeze the noisiest tensors each epoch (Table 4)
  cross_val.py         Cross-Val: the surgical option and lr validation picks (Table 4)

The surgical options themselves (first_layer, block1, ..., last) come from each model.

Used directly, Table 4's single-run baselines work over parameter groups.

All tune every leaf the surgical mask leaves them (usually all of them):

    # Gradual Unfreeze (First Last): one more group tuned each epoch
    labels = surgery.assign_groups(params, spec.groups)
    order = unfreeze_order('first_last', spec.groups)
    tx = gradual_unfreeze(base, labels, order, steps_per_epoch)
    # L1-SP ("Regularize"): the base optimizer, a penalty in the loss
    step = surgery.make_train_step(model, base, extra_loss=l1_sp_penalty(params, lam))
    # Auto-SNR: tx = auto_snr(base); before each epoch
    opt_state = set_snr_weights(opt_state, snr_weights(example_loss, params, batch, threshold))
"""
from surgery.methods.auto_snr import (VARIANTS as AUTO_SNR_VARIANTS, AutoSNRState, auto_snr,
                                      channel_variance_per_tensor, frozen_set, normalise,
                                      per_example_grads, set_snr_weights, snr_criterion,
                                      snr_per_tensor, snr_weights)
from surgery.methods.gradual_unfreeze import (ORDERS as UNFREEZE_ORDERS, GradualUnfreezeState,
                                              gradual_unfreeze, unfreeze_order)
from surgery.methods.l1_sp import l1_sp_penalty
