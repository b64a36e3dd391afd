r"""LoHa: a low-rank Hadamard product (Hyeon-Woo et al., 2022, FedPara; LyCORIS), PEFT's layout.

"FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning" writes a
weight as the ELEMENTWISE product of two low-rank products. LyCORIS and PEFT use it as the change
of a frozen weight, scaled as LoRA's:

    ΔW = s · (W₁ₐ·W₁ᵦ) ⊙ (W₂ₐ·W₂ᵦ),      s = α/r
    W₁ₐ, W₂ₐ ∈ ℝ^{d_out × r},  W₁ᵦ, W₂ᵦ ∈ ℝ^{r × d_in}          (PEFT: hada_w1_a, hada_w1_b, …)

Why a product of products: each factor P = W·W has rank ≤ r, but rank(P₁ ⊙ P₂) ≤ r², so LoHa
reaches rank r² with the 2r(d_in + d_out) numbers of a LoRA of rank 2r (the paper's point). At
r = 4 it trains exactly what LoRA r = 8 trains, with ΔW of rank up to 16.

At init (PEFT's ``init_weights=True``) W₁ₐ, W₁ᵦ and W₂ₐ are drawn as torch's
``kaiming_uniform_(a=√5)`` and W₂ᵦ = 0: P₂ = 0, so ΔW = 0 and the adapted model starts exactly
at the base. (W₂ᵦ's own gradient, s·W₂ₐᵀ·(G ⊙ P₁), is not zero, so it moves on the first step.)

Where it sits: ΔW is in the [out, in] layout PEFT gives it on torch's nn.Linear; minift's
weights are [in, out] (GPT-2's Conv1D), so the layer adds ΔWᵀ (lycoris.py says why):

    y = x·(W₀ + ΔWᵀ) + b

Gradients
---------
ΔW is never low rank, so the layer forms it (r·d_in·d_out multiply-adds per product) and the
Linear's backward gives G = ∂L/∂ΔW = (xᵀ·dy)ᵀ, summed over every position. Then, with
P₁ = W₁ₐ·W₁ᵦ and P₂ = W₂ₐ·W₂ᵦ, since ΔW[i, j] = s·P₁[i, j]·P₂[i, j] entry by entry:

    dP₁ = s · G ⊙ P₂                dP₂ = s · G ⊙ P₁                      [out, in]
    dW₁ₐ = dP₁·W₁ᵦᵀ   [out, r]      dW₁ᵦ = W₁ₐᵀ·dP₁   [r, in]             (P = A·B's rule)
    dW₂ₐ = dP₂·W₂ᵦᵀ                 dW₂ᵦ = W₂ₐᵀ·dP₂

and dx = dy·(W₀ + ΔWᵀ)ᵀ flows on through the frozen weight. Merging writes W₀ + ΔWᵀ into the
base layer; unmerging subtracts ΔWᵀ again.

Trainable parameters (closed form): 2r·(d_in + d_out) per wrapped Linear.

The file (PEFT's): ``base_model.model.transformer.h.{i}.attn.c_attn.hada_w1_a`` [out, r], and
``hada_w1_b`` [r, in], ``hada_w2_a``, ``hada_w2_b`` likewise; ``peft_type`` "LOHA".

Shape legend: N positions (any leading shape ...), r rank, d_in / d_out the layer's in / out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minift.nn import Linear
from minift.param import Param
from minift.peft.base import register
from minift.peft.lycoris import (
    LYCORIS_OPTIONS,
    LycorisConfig,
    LycorisLinear,
    dense_delta_backward,
    dense_delta_forward,
    kaiming_uniform,
)
from minift.peft.registry import register_method

# ------------------------------------------------------------------------------------------------
# The math, as pure functions


def loha_delta_weight(w1_a, w1_b, w2_a, w2_b, scaling):
    """ΔW = s·(W₁ₐ·W₁ᵦ) ⊙ (W₂ₐ·W₂ᵦ).  # [out, r], [r, in], [out, r], [r, in] -> [out, in]"""
    return scaling * ((w1_a @ w1_b) * (w2_a @ w2_b))


def loha_delta_weight_backward(G, w1_a, w1_b, w2_a, w2_b, scaling):
    """(dW₁ₐ, dW₁ᵦ, dW₂ₐ, dW₂ᵦ) from G = ∂L/∂ΔW [out, in]: see the module docstring."""
    dP1 = scaling * G * (w2_a @ w2_b)  # (out, in): each factor's gradient is G times the other
    dP2 = scaling * G * (w1_a @ w1_b)
    return dP1 @ w1_b.T, w1_a.T @ dP1, dP2 @ w2_b.T, w2_a.T @ dP2


def loha_forward(x, W0, b, w1_a, w1_b, w2_a, w2_b, scaling, row_scale=None):
    """y = x·(W₀ + ΔWᵀ) + b with LoHa's ΔW [out, in], its rows scaled by the rank-dropout
    ``row_scale`` when given (lycoris.py).

    x [..., in], W0 [in, out], b [out] or None, w1_a/w2_a [out, r], w1_b/w2_b [r, in],
    row_scale [out] or None -> y [..., out]
    """
    delta = loha_delta_weight(w1_a, w1_b, w2_a, w2_b, scaling)  # (out, in)
    y, linear_cache = dense_delta_forward(x, W0, b, delta, row_scale)
    return y, (linear_cache, w1_a, w1_b, w2_a, w2_b, scaling)


def loha_backward(dy, cache, need_base_grads=False):
    """Returns (dx, dw1_a, dw1_b, dw2_a, dw2_b, dW0, db); dW0 and db only when
    ``need_base_grads`` (a frozen W₀ gets no gradient, but dx always flows through it)."""
    linear_cache, *factors, scaling = cache
    dx, G, dW0, db = dense_delta_backward(dy, linear_cache, need_base_grads)
    return dx, *loha_delta_weight_backward(G, *factors, scaling), dW0, db


# ------------------------------------------------------------------------------------------------
# The layer


class LoHaLinear(LycorisLinear):
    """A frozen Linear plus ΔWᵀ = s·((W₁ₐ·W₁ᵦ) ⊙ (W₂ₐ·W₂ᵦ))ᵀ: ``base_layer`` (W₀, b) and PEFT's
    ``hada_w1_a`` [out, r], ``hada_w1_b`` [r, in], ``hada_w2_a`` [out, r], ``hada_w2_b`` [r, in].

    Its pair is ``loha_forward`` / ``loha_backward``; ``merge()`` writes W₀ + ΔWᵀ into the base
    layer and ``unmerge()`` subtracts it again, guarded by the ``merged`` flag.
    """

    kind = "LoHa"
    delta_params = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    delta_forward = staticmethod(loha_forward)
    delta_backward = staticmethod(loha_backward)

    def __init__(self, base_layer: Linear, r: int, alpha: float, init_weights=True,
                 rank_dropout=0.0, module_dropout=0.0, *, rng):  # fmt: skip
        d_in, d_out = base_layer.in_features, base_layer.out_features
        if not 1 <= r <= min(d_in, d_out):
            # each product W·W has rank ≤ min(in, out) whatever r is: a larger r buys nothing
            raise ValueError(
                f"r: expected a rank in [1, min(in, out)] = [1, {min(d_in, d_out)}] for a "
                f"{d_in}×{d_out} weight, got {r}"
            )
        super().__init__(base_layer, rank_dropout, module_dropout, rng=rng)
        self.r = r
        self.scaling = alpha / r
        dtype = base_layer.weight.dtype
        self.hada_w1_a = Param(kaiming_uniform(rng, (d_out, r), dtype))
        self.hada_w1_b = Param(kaiming_uniform(rng, (r, d_in), dtype))
        self.hada_w2_a = Param(kaiming_uniform(rng, (d_out, r), dtype))
        if init_weights:
            self.hada_w2_b = Param(np.zeros((r, d_in), dtype))  # P₂ = 0, so ΔW = 0
        else:
            self.hada_w2_b = Param(kaiming_uniform(rng, (r, d_in), dtype))

    def delta_constants(self):
        return (self.scaling,)

    def delta_weight(self):  # [in, out]
        return loha_delta_weight(*self.delta_values(), self.scaling).T


# ------------------------------------------------------------------------------------------------
# The config


@register
@dataclass
class LoHaConfig(LycorisConfig):
    """LoHa with PEFT's field names and defaults (lycoris.py has the shared ones).

    Trainable count: Σ over targets of 2r·(d_in + d_out).
    """

    peft_type = "LOHA"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.init_weights, bool):
            raise TypeError(f"init_weights: expected True or False, got {self.init_weights!r}")

    def wrap(self, name, layer, rng):
        r, alpha = self.r_and_alpha(name)
        return LoHaLinear(layer, r, alpha, self.init_weights, self.rank_dropout,
                          self.module_dropout, rng=rng)  # fmt: skip


LOHA_DEFAULTS = {"r": 4, "alpha": 4, "target_modules": ["c_attn", "attn.c_proj"]}

register_method("loha", LoHaConfig, "LoHa r=4 on c_attn and attn.c_proj (Hyeon-Woo et al. 2022)",
                lr=3e-2, classification_lr=1e-2, lr_grid=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                defaults=LOHA_DEFAULTS, options=LYCORIS_OPTIONS)  # fmt: skip
