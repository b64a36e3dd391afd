"""minift: LLM fine-tuning from scratch in NumPy, every gradient written by hand and checked.

import numpy as np, minift
cfg = minift.GPTConfig(vocab_size=96, block_size=64, n_layer=2, n_head=4, d_model=64)
model = minift.GPT(cfg, seed=0, dtype=np.float64)
logits = model.forward(idx)                              # int (B, T) -> (B, T, V)
loss, dlogits = minift.cross_entropy(logits, targets)    # mean over non-ignored tokens
model.zero_grad(); model.backward(dlogits)               # fills Param.grad
"""

from minift.article import squared_error
from minift.functional import cross_entropy
from minift.model import GPT, GPTConfig, GPTForSequenceClassification, KVCache
from minift.param import Param

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "GPTForSequenceClassification",
    "KVCache",
    "Param",
    "cross_entropy",
    "squared_error",
]
