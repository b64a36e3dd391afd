r"""LoKr: a Kronecker product as the change of a weight (LyCORIS; Edalati et al. 2022, KronA).

The weight's change is the Kronecker product of a small matrix and a larger one, scaled as LoRA's:

    ΔW = s · W₁ ⊗ W₂,      s = α/r,     W₁ ∈ ℝ^{a × c},  W₂ ∈ ℝ^{b × d},   d_out = a·b,  d_in = c·d

Every entry of W₁ scales a whole b × d block: (W₁ ⊗ W₂)[i·b + k, j·d + l] = W₁[i, j]·W₂[k, l].
So ac + bd numbers describe a d_out × d_in change of rank rank(W₁)·rank(W₂): with a ≈ b ≈ √d_out
and c ≈ d ≈ √d_in, a full-rank ΔW for about 2√(d_in·d_out) parameters.

How PEFT (and LyCORIS) chooses the shapes, for nn.Linear's [out, in] weight:

    (c, d) = factorization(d_in, decompose_factor),  (a, b) = factorization(d_out, decompose_factor)

``factorization(n, f)`` splits n = m·k: into (f, n/f) if f > 0 divides n; otherwise into the
divisor pair nearest √n (m ≤ k) whose smaller side does not pass f (f = −1: no bound). Then r
decides which factors are themselves low rank:

    W₂ = W₂ₐ·W₂ᵦ  (b × r, r × d)   where r < max(b, d)/2, else W₂ is a full b × d matrix
    W₁ = W₁ₐ·W₁ᵦ  (a × r, r × c)   likewise, but only with ``decompose_both``

(PEFT's names: lokr_w1 or lokr_w1_a, lokr_w1_b; lokr_w2 or lokr_w2_a, lokr_w2_b.) r is used only
where it makes a factor smaller than the full one would be, so any r ≥ 1 is valid (PEFT's rule).

At init (``init_weights=True``) W₁ = 0 (or W₁ₐ = 0) and the rest is torch's
``kaiming_uniform_(a=√5)``: ΔW = 0, the adapted model starts at the base. ``init_weights=
"lycoris"`` zeroes W₂ (or W₂ᵦ) instead; ``False`` draws every factor.

Where it sits: as LoHa, ΔW is in PEFT's [out, in] layout and minift adds ΔWᵀ to its [in, out]
weight, y = x·(W₀ + ΔWᵀ) + b (lycoris.py says why).

Gradients: the Kronecker product, by reshaping
------------------------------------------------
Read ΔW [a·b, c·d] as a 4-index array Δ[i, k, j, l] = s·W₁[i, j]·W₂[k, l] (a reshape, no copy):
a product of two factors with no index shared. So, with G = ∂L/∂ΔW reshaped the same way,

    dW₁[i, j] = s · Σ_{k,l} G[i, k, j, l]·W₂[k, l]        einsum("ikjl,kl->ij")
    dW₂[k, l] = s · Σ_{i,j} G[i, k, j, l]·W₁[i, j]        einsum("ikjl,ij->kl")

(each is the other factor contracted against every block of G), and where a factor is low rank,
W = Wₐ·Wᵦ gives dWₐ = dW·Wᵦᵀ and dWᵦ = Wₐᵀ·dW, the matrix product's rule.

Trainable parameters (closed form), per wrapped Linear: (a·c, or r·(a + c) with W₁ split)
+ (b·d, or r·(b + d) with W₂ split); see ``lokr_shapes``.

The file (PEFT's): ``base_model.model.transformer.h.{i}.attn.c_attn.lokr_w1`` [a, c] and so on,
each factor under its own name in the shapes above; ``peft_type`` "LOKR".

Shape legend: N positions (any leading shape ...), r rank, d_in / d_out the layer's in / out,
a·b = d_out and c·d = d_in the Kronecker split.
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
from minift.peft.registry import Option, register_method

# ------------------------------------------------------------------------------------------------
# The shapes


def factorization(n: int, factor: int = -1) -> tuple[int, int]:
    """n = m·k as LyCORIS splits it: (factor, n/factor) if factor > 0 divides n; else walk n's
    divisors upwards from 1 while the smaller side is below the larger and within ``factor``
    (−1: no bound), and return the last pair reached, smaller side first."""
    if factor > 0 and n % factor == 0:
        return factor, n // factor
    bound = n if factor == -1 else factor
    m = 1
    while m < n // m:
        next_m = next(k for k in range(m + 1, n + 1) if n % k == 0)
        if next_m > bound:
            break
        m = next_m
    return min(m, n // m), max(m, n // m)


def lokr_shapes(d_in, d_out, r, decompose_both=False, decompose_factor=-1) -> dict:
    """{PEFT's factor name: its shape} for a d_in → d_out Linear (module docstring)."""
    c, d = factorization(d_in, decompose_factor)
    a, b = factorization(d_out, decompose_factor)
    shapes = {}
    if decompose_both and r < max(a, c) / 2:
        shapes.update(lokr_w1_a=(a, r), lokr_w1_b=(r, c))
    else:
        shapes.update(lokr_w1=(a, c))
    if r < max(b, d) / 2:
        shapes.update(lokr_w2_a=(b, r), lokr_w2_b=(r, d))
    else:
        shapes.update(lokr_w2=(b, d))
    return shapes


# ------------------------------------------------------------------------------------------------
# The math, as pure functions


def kron_forward(W1, W2, scaling):
    """ΔW = s·W₁ ⊗ W₂, as a reshape of the 4-index product.  # [a, c], [b, d] -> [a·b, c·d]"""
    (a, c), (b, d) = W1.shape, W2.shape
    return (scaling * np.einsum("ij,kl->ikjl", W1, W2)).reshape(a * b, c * d)


def kron_backward(G, W1, W2, scaling):
    """(dW₁, dW₂) from G = ∂L/∂ΔW [a·b, c·d]: each factor contracted against G's blocks."""
    (a, c), (b, d) = W1.shape, W2.shape
    G4 = G.reshape(a, b, c, d)  # [i, k, j, l]: block (i, j), entry (k, l) inside it
    return scaling * np.einsum("ikjl,kl->ij", G4, W2), scaling * np.einsum("ikjl,ij->kl", G4, W1)


def lokr_forward(x, W0, b, w1, w1_a, w1_b, w2, w2_a, w2_b, scaling, row_scale=None):
    """y = x·(W₀ + ΔWᵀ) + b with ΔW = s·W₁ ⊗ W₂; each factor given whole (w1, w2) or as its
    low-rank pair (w1_a, w1_b; w2_a, w2_b), the unused slots None; ΔW's rows scaled by the
    rank-dropout ``row_scale`` when given (lycoris.py).

    x [..., in], W0 [in, out], b [out] or None, w1 [a, c] or w1_a [a, r], w1_b [r, c],
    w2 [b, d] or w2_a [b, r], w2_b [r, d], row_scale [a·b] or None -> y [..., out]
    """
    W1 = w1 if w1 is not None else w1_a @ w1_b  # (a, c)
    W2 = w2 if w2 is not None else w2_a @ w2_b  # (b, d)
    y, linear_cache = dense_delta_forward(x, W0, b, kron_forward(W1, W2, scaling), row_scale)
    split_1 = None if w1 is not None else (w1_a, w1_b)  # None: the factor was given whole
    split_2 = None if w2 is not None else (w2_a, w2_b)
    return y, (linear_cache, W1, W2, split_1, split_2, scaling)


def lokr_backward(dy, cache, need_base_grads=False):
    """Returns (dx, the gradients of the factors given, in lokr_forward's order, dW0, db); dW0
    and db only when ``need_base_grads``."""
    linear_cache, W1, W2, split_1, split_2, scaling = cache
    dx, G, dW0, db = dense_delta_backward(dy, linear_cache, need_base_grads)
    dW1, dW2 = kron_backward(G, W1, W2, scaling)
    return dx, *_factor_grads(dW1, split_1), *_factor_grads(dW2, split_2), dW0, db


def _factor_grads(dW, split):
    """(dW,) for a factor given whole; for W = Wₐ·Wᵦ, (dWₐ, dWᵦ) = (dW·Wᵦᵀ, Wₐᵀ·dW)."""
    if split is None:
        return (dW,)
    W_a, W_b = split
    return dW @ W_b.T, W_a.T @ dW


# ------------------------------------------------------------------------------------------------
# The layer

SLOTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


class LoKrLinear(LycorisLinear):
    """A frozen Linear plus ΔWᵀ = s·(W₁ ⊗ W₂)ᵀ: ``base_layer`` (W₀, b) and PEFT's factors,
    ``lokr_w1`` or ``lokr_w1_a``/``lokr_w1_b``, ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b``, in
    the shapes ``lokr_shapes`` gives.

    Its pair is ``lokr_forward`` / ``lokr_backward``; ``delta_params`` names the factors this
    layer has, and ``delta_values`` fills lokr_forward's six slots, None where a factor is not
    used. ``merge()`` writes W₀ + ΔWᵀ into the base layer, ``unmerge()`` subtracts it again.
    """

    kind = "LoKr"
    delta_forward = staticmethod(lokr_forward)
    delta_backward = staticmethod(lokr_backward)

    def __init__(self, base_layer: Linear, r, alpha, decompose_both=False, decompose_factor=-1,
                 init_weights=True, rank_dropout=0.0, module_dropout=0.0,
                 rank_dropout_scale=False, *, rng):  # fmt: skip
        super().__init__(base_layer, rank_dropout, module_dropout, rng=rng)
        self.rescale_rank_dropout = rank_dropout_scale  # PEFT's LoKr rescales only when asked
        self.r = r
        self.scaling = alpha / r
        shapes = lokr_shapes(self.in_features, self.out_features, r, decompose_both,
                             decompose_factor)  # fmt: skip
        # ΔW = 0 at init: one side of the product starts at zero (W₁'s by default, as PEFT)
        zero = {True: ("lokr_w1", "lokr_w1_a"), "lycoris": ("lokr_w2", "lokr_w2_b")}
        zero = zero.get(init_weights, ())
        dtype = base_layer.weight.dtype
        for name, shape in shapes.items():
            value = np.zeros(shape, dtype) if name in zero else kaiming_uniform(rng, shape, dtype)
            setattr(self, name, Param(value))
        self.delta_params = tuple(shapes)

    def delta_values(self):
        """lokr_forward's six factor slots, in ``SLOTS`` order, None for a factor not used."""
        return [self.param(n).value if n in self.delta_params else None for n in SLOTS]

    def delta_constants(self):
        return (self.scaling,)

    def delta_weight(self):  # [in, out]
        w1, w1_a, w1_b, w2, w2_a, w2_b = self.delta_values()
        W1 = w1 if w1 is not None else w1_a @ w1_b
        W2 = w2 if w2 is not None else w2_a @ w2_b
        return kron_forward(W1, W2, self.scaling).T


# ------------------------------------------------------------------------------------------------
# The config


@register
@dataclass
class LoKrConfig(LycorisConfig):
    """LoKr with PEFT's field names and defaults (lycoris.py has the shared ones).

    decompose_both      split W₁ into W₁ₐ·W₁ᵦ too, where r is small enough (module docstring)
    decompose_factor    the Kronecker split's bound f: −1 (near √n) or a positive integer
    rank_dropout_scale  divide rank dropout's kept rows by the fraction kept (PEFT's LoKr
                        does only when asked; LoHa always does)
    init_weights        True (W₁ = 0), "lycoris" (W₂ = 0) or False (every factor random)

    Trainable count: Σ over targets of the sizes of ``lokr_shapes``.
    """

    init_weights: bool | str = True
    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False

    peft_type = "LOKR"

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.init_weights, bool) or self.init_weights == "lycoris"):
            raise ValueError(
                f"init_weights: expected True, False or 'lycoris', got {self.init_weights!r}"
            )
        for field in ("decompose_both", "rank_dropout_scale"):
            if not isinstance(getattr(self, field), bool):
                raise TypeError(f"{field}: expected True or False, got {getattr(self, field)!r}")
        f = self.decompose_factor
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or not (f == -1 or f > 0):
            raise ValueError(f"decompose_factor: expected -1 or a positive integer, got {f!r}")

    def wrap(self, name, layer, rng):
        r, alpha = self.r_and_alpha(name)
        return LoKrLinear(layer, r, alpha, self.decompose_both, self.decompose_factor,
                          self.init_weights, self.rank_dropout, self.module_dropout,
                          self.rank_dropout_scale, rng=rng)  # fmt: skip


LOKR_DEFAULTS = {"r": 8, "alpha": 8, "target_modules": ["c_attn", "attn.c_proj"]}
DECOMPOSE_FACTOR = Option("decompose_factor", "LoKr's split bound f (-1: near √n)", low=-1)

register_method("lokr", LoKrConfig, "LoKr on c_attn and attn.c_proj: W₁ ⊗ W₂ (LyCORIS)",
                lr=3e-2, classification_lr=1e-2, lr_grid=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                defaults=LOKR_DEFAULTS,
                options=[*LYCORIS_OPTIONS, DECOMPOSE_FACTOR])  # fmt: skip
