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
    rank_dropout,         training-time randomness, drawn at every forward in training mode
    module_dropout        (``LycorisLinear``): a row mask of ΔW; skipping the whole adapter
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

Their two dropouts (PEFT's, from LyCORIS; both only in training mode, both off by default)
------------------------------------------------------------------------------------------
Rank dropout drops whole ROWS of ΔW (output units), a new mask at every forward:

    kᵢ ~ Bernoulli(1 − rank_dropout),   mᵢ = kᵢ / mean(k)  (LoHa always; LoKr only with
                                                          rank_dropout_scale; else mᵢ = kᵢ)
    ΔW' = diag(m)·ΔW,        y = x·(W₀ + ΔW'ᵀ) + b,        G = diag(m)·(xᵀ·dy)ᵀ

so the method's backward receives G already masked and scaled: a dropped row gets no gradient.
Module dropout skips the method altogether: with probability module_dropout a forward is the base
layer's alone (y = x·W₀ + b), and its backward gives the method's Params nothing (PEFT: no
gradient at all). Two differences from PEFT, on purpose: the draws come from minift's generator
(PEFT's from torch's: the same distribution, other numbers), and a mask that drops every row
leaves ΔW' = 0 where PEFT divides by mean(k) = 0 and trains on NaN.

Shape legend: N positions (any leading shape ...), d_in / d_out the wrapped layer's in / out.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.errors import check_int
from minift.peft.adapted import AdaptedLinear
from minift.peft.base import PeftConfig
from minift.peft.registry import TARGET_MODULES, Option
from minift.peft.targets import check_name_patterns, check_narrowing, pattern_key, wrap_targets

# ------------------------------------------------------------------------------------------------
# The base layer with a dense ΔW beside it


def dense_delta_forward(x, W0, b, delta, row_scale=None):
    """y = x·(W₀ + (diag(m)·ΔW)ᵀ) + b, ΔW in PEFT's [out, in] layout, m the rank-dropout row
    scale (None: no rank dropout, m = 1).

    x [..., in], W0 [in, out], b [out] or None, delta [out, in], row_scale [out] or None
    -> y [..., out]
    """
    if row_scale is not None:
        delta = row_scale[:, None] * delta
    y, linear_cache = F.linear_forward(x, W0 + delta.T, b)
    return y, (linear_cache, row_scale)


def dense_delta_backward(dy, cache, need_base_grads=False):
    """(dx, G, dW0, db): dx = dy·(W₀ + ΔW'ᵀ)ᵀ, G = ∂L/∂ΔW = diag(m)·(xᵀ·dy)ᵀ [out, in] (every
    position summed), and dW0 = xᵀ·dy, db = Σ dy only when ``need_base_grads``."""
    linear_cache, row_scale = cache
    dx, dW, db = F.linear_backward(dy, linear_cache, True, need_base_grads)
    G = dW.T if row_scale is None else row_scale[:, None] * dW.T
    return dx, G, (dW if need_base_grads else None), db


def rank_dropout_rows(rng, d_out: int, p: float, rescale: bool):
    """m [d_out]: each row kept with probability 1 − p (kᵢ = 1), then divided by mean(k) when
    ``rescale``; no row kept gives m = 0 (PEFT's mean(k) = 0 would give NaN)."""
    keep = (rng.random(d_out) > p).astype(np.float64)
    return keep / keep.mean() if rescale and keep.any() else keep


class LycorisLinear(AdaptedLinear):
    """What LoHaLinear and LoKrLinear share: their two dropouts, drawn from ``rng`` at every
    forward in training mode (module docstring); in eval mode both are off."""

    rescale_rank_dropout = True  # LoHa's: m = k / mean(k); LoKr's follows rank_dropout_scale

    def __init__(self, base_layer, rank_dropout=0.0, module_dropout=0.0, *, rng):
        super().__init__(base_layer)
        self.rank_dropout, self.module_dropout = float(rank_dropout), float(module_dropout)
        self.rng = rng

    @property
    def draws_at_random(self) -> bool:
        """True when a forward in training mode draws (gradcheck's fixed_dropout_masks)."""
        return self.training and (self.rank_dropout > 0 or self.module_dropout > 0)

    def skips_delta(self):
        # PEFT applies the adapter when rand > module_dropout
        return (
            self.training and self.module_dropout > 0 and self.rng.random() <= self.module_dropout
        )

    def delta_draws(self):
        if not (self.training and self.rank_dropout > 0):
            return {}
        m = rank_dropout_rows(self.rng, self.out_features, self.rank_dropout,
                              self.rescale_rank_dropout)  # fmt: skip
        return {"row_scale": m.astype(self.base_layer.weight.dtype)}


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
            if not 0.0 <= value < 1.0:  # 1 would drop every row, or the adapter, every time
                raise ValueError(f"{field}: expected a probability in [0, 1), got {value}")
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
    check_int(field, r, what="a positive integer rank")


def check_alpha(alpha, field: str) -> None:
    """α a finite number > 0: a NaN α trains a NaN model, a negative one flips the update."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise TypeError(f"{field}: expected a number, got {alpha!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"{field}: expected a finite number > 0, got {alpha}")


LYCORIS_OPTIONS = [
    Option("r", "rank r", low=1),
    Option("alpha", "LyCORIS scale α: s = α/r", type=float, low=0, low_open=True),
    Option("rank_dropout", "drop rows of ΔW", type=float, low=0, high=1, high_open=True),
    Option("module_dropout", "skip the adapter", type=float, low=0, high=1, high_open=True),
    TARGET_MODULES,
]
