"""The two reference points of every table: the source model as it is, and tuning every
parameter (the paper's `all`, a.k.a. full fine-tuning)."""
from surgery.methods.registry import Method

METHODS = (
    Method('no_adaptation', evaluate_only=True, order=0),
    Method('all', order=1),
)
