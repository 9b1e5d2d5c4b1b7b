"""The one index space every symbol input shares, between batching (`peftx.training.batching`) and the input
adapters (`peftx.inputs`).

0 is padding, 1 the family's start token, 2 its end token, and task symbol i is index i + OFFSET.
Continuous inputs mark each real position VALUE ("take this position's vector from `values`").
"""

PAD, BOS, EOS = 0, 1, 2
NUM_FRAMING = 3  # indices 0..2: padding, start, end
OFFSET = NUM_FRAMING  # task symbol i -> i + OFFSET
VALUE = OFFSET  # continuous inputs: this position's vector is in `values`

__all__ = ["PAD", "BOS", "EOS", "NUM_FRAMING", "OFFSET", "VALUE"]
