"""Single-run baselines and Auto-SNR of paper Section 4 (Table 4), over parameter groups.

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
