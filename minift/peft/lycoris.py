"""What LoHa and LoKr share, as PEFT's ``LycorisConfig`` does: the config's fields, their checks,
which layers are wrapped and with which r and α, and the layer around a dense ΔW.

Both methods come from LyCORIS and reach PEFT through the same base class, so their configs
have the same fields with the same meaning:

    r, alpha              the rank and α; each layer's ΔW is scaled by s = α/r
    rank_pattern,         per-layer r and α: the first key (in dict order) that matches the end
    alpha_pattern         of the layer's Hugging Face name wins (targets.pattern_key)
    target_modules,       which Linears are wrapped, as LoRA's (targets.wrap_targets)
    exclude_modules,
    layers_to_transform,
    layers_pattern
    init_weights          True: ΔW = 0 at init (one factor starts at zero); False: every factor
                          random (only to test that the method moves the output)
    rank_dropout,         training-time randomness PEFT draws with torch's generator (a row
    module_dropout        mask of ΔW; skipping the whole adapter). minift implements neither:
                          only 0, their default, is accepted, anything else is refused by name
    use_effective_conv2d  a convolution's option; a Linear ignores it (PEFT too), so either
                          value is accepted and changes nothing

Where PEFT puts them
-------------------
PEFT builds LoHa and LoKr only on torch's ``nn.Linear`` (and convolutions), whose weight is
[out, in]; on GPT-2's Conv1D ([in, out]) it raises a TypeError. Their factors therefore
describe ΔW in the [out, in] layout (``hada_w1_a`` [out, r] …), and a file PEFT wrote holds
them so. minift keeps the factors in exactly those shapes and applies ΔW transposed to its
[in, out] weights, y = x·(W₀ + ΔWᵀ) + b, so that a file is the same file in both: minift's
adapter on a GPT-2 equals PEFT's on the same GPT-2 with each Conv1D swapped for an
``nn.Linear`` holding W₀ᵀ (the reference tests do exactly that).

Both compute ΔW in full (neither is low rank: LoHa's has rank up to r², LoKr's is a Kronecker
product), so both run through one pair, ``dense_delta_forward`` / ``dense_delta_backward``:
y = x·(W₀ + ΔWᵀ) + b, whose backward hands G = ∂L/∂ΔW [out, in] to the method's own
weight-level backward.

Shape legend: N positions (any leading shape ...), d_in / d_out the wrapped layer's in / out.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.peft.base import PeftConfig
from minift.peft.registry import TARGET_MODULES, Option
from minift.peft.targets import check_name_patterns, check_narrowing, pattern_key, wrap_targets

# ------------------------------------------------------------------------------------------------
# The base layer with a dense ΔW beside it


def dense_delta_forward(x, W0, b, delta):
    """y = x·(W₀ + ΔWᵀ) + b, ΔW in PEFT's [out, in] layout.

    x [..., in], W0 [in, out], b [out] or None, delta [out, in] -> y [..., out]
    """
    return F.linear_forward(x, W0 + delta.T, b)


def dense_delta_backward(dy, cache, need_base_grads=False):
    """(dx, G, dW0, db): dx = dy·(W₀ + ΔWᵀ)ᵀ, G = ∂L/∂ΔW = (xᵀ·dy)ᵀ [out, in] (every position
    summed), and dW0 = xᵀ·dy, db = Σ dy only when ``need_base_grads``."""
    dx, dW, db = F.linear_backward(dy, cache, True, need_base_grads)
    return dx, dW.T, (dW if need_base_grads else None), db


def kaiming_uniform(rng, shape, dtype):
    """torch's ``kaiming_uniform_(a=√5)`` on a 2-D tensor: U(−1/√fan_in, 1/√fan_in), fan_in its
    number of columns (PEFT's init for LyCORIS factors)."""
    bound = 1.0 / math.sqrt(shape[1])
    return rng.uniform(-bound, bound, shape).astype(dtype)


# ------------------------------------------------------------------------------------------------
# The config


@dataclass
class LycorisConfig(PeftConfig):
    """The fields LoHa and LoKr share (module docstring), with PEFT's names and defaults."""

    r: int = 8
    alpha: float = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    use_effective_conv2d: bool = False
    init_weights: bool = True
    rank_pattern: dict = dataclasses.field(default_factory=dict)  # name regex -> r
    alpha_pattern: dict = dataclasses.field(default_factory=dict)  # name regex -> α
    exclude_modules: list[str] | str | None = None
    layers_to_transform: int | list[int] | None = None  # block indices
    layers_pattern: list[str] | str | None = None  # the name of the block list ("h")

    positive_fields = ("alpha",)  # α ≤ 0 flips or erases the update
    default_target_modules = ("c_attn",)  # PEFT's default for GPT-2 (LoRA's mapping)

    def __post_init__(self):
        super().__post_init__()
        check_rank(self.r, "r")
        check_alpha(self.alpha, "alpha")
        for field in ("rank_dropout", "module_dropout"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{field}: expected a number, got {value!r}")
            if value != 0:
                raise ValueError(
                    f"{field}: expected 0 (minift does not implement PEFT's training-time "
                    f"{field.replace('_', ' ')}), got {value}"
                )
        if not isinstance(self.use_effective_conv2d, bool):
            raise TypeError(
                f"use_effective_conv2d: expected True or False, got {self.use_effective_conv2d!r}"
            )
        for field, check in (("rank_pattern", check_rank), ("alpha_pattern", check_alpha)):
            for key, value in check_name_patterns(self, field).items():
                try:
                    re.compile(key)
                except re.error as e:
                    message = f"{field}: {key!r}: not a valid regular expression ({e})"
                    raise re.error(message) from None
                check(value, f"{field}: {key!r}")
        check_narrowing(self)

    def apply(self, model, rng):
        wrap_targets(self, model, rng)

    def r_and_alpha(self, name: str) -> tuple[int, float]:
        """This layer's r and α: ``rank_pattern`` / ``alpha_pattern``'s first match, else r, α."""
        r_key = pattern_key(self.rank_pattern, name)
        alpha_key = pattern_key(self.alpha_pattern, name)
        r = self.r if r_key is None else self.rank_pattern[r_key]
        return r, (self.alpha if alpha_key is None else self.alpha_pattern[alpha_key])


def check_rank(r, field: str) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise ValueError(f"{field}: expected a positive integer rank, got {r!r}")


def check_alpha(alpha, field: str) -> None:
    """α a finite number > 0: a NaN α trains a NaN model, a negative one flips the update."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise TypeError(f"{field}: expected a number, got {alpha!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"{field}: expected a finite number > 0, got {alpha}")


LYCORIS_OPTIONS = [
    Option("r", "rank r", low=1),
    Option("alpha", "LyCORIS scale α: s = α/r", type=float, low=0, low_open=True),
    TARGET_MODULES,
]
