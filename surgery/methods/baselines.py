"""The two reference points of every table: the source model as it is, and tuning every
parameter (the paper's `all`, a.k.a. full fine-tuning)."""
from surgery.methods.registry import Method

NO_ADAPTATION = 'no_adaptation'  # also the baseline row of MEMO's runner

METHODS = (
    Method(NO_ADAPTATION, evaluate_only=True, order=0),
    Method('all', order=1),
)
