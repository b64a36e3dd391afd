r"""Sparse connections, the article's A4 (§2.2 "稀疏连接", §4.1.2), as fine-tuning methods.

What the article writes
-----------------------
"Reduce the density of the connections in the model":

    W₂ = σ(W₁ ⊙ D)                                                            (A4)

with ⊙ the elementwise product, D a sparse 0/1 matrix (the MASK: Dᵢⱼ = 1 keeps connection
i → j, 0 cuts it) and σ an activation. minift reads it as a parametrization of a layer's
weight: the layer computes y = x·W₂ + b, and W₁ is what trains. D is FIXED (chosen once, by
sparse_mask.py, never trained).

Its gradient, with G = ∂L/∂W₂ = xᵀ·dy the gradient with respect to the weight the layer uses,
is the chain rule through z = W₁ ⊙ D and W₂ = σ(z), one entry at a time:

    ∂L/∂W₁ = D ⊙ σ′(W₁ ⊙ D) ⊙ G                                              (A4′)

so a cut connection (Dᵢⱼ = 0) gets exactly zero gradient: it never learns.

Which σ
-------
A cut connection has zᵢⱼ = 0, so its weight is σ(0). For the connection to be ABSENT, σ(0)
must be 0; a sigmoid (σ(0) = ½) would leave every cut connection at ½, not sparse at all. And
for a change that starts at zero to move, σ′(0) must not be 0 (a ReLU's σ′(0) = 0 would freeze
it). minift offers the two activations that pass both tests: ``"identity"`` (σ(z) = z, σ′ = 1)
and ``"tanh"`` (σ′ = 1 − σ², and every entry stays in (−1, 1)).

Two layers, two readings of A4
------------------------------
1. ``MaskedLinear``, the article's literal form: y = x·σ(W₁ ⊙ D) + b with W₁ the layer's own
   weight (``base_layer.weight``, it trains; it starts at the pretrained W₀). At step 0 the
   layer is ALREADY different from the pretrained one: W₀ pruned to ``density`` and, with tanh,
   squashed (only density = 1 with σ = identity gives the base output). The cut entries of W₁ do
   not affect the output and get zero gradient, but they are still stored and counted, and
   AdamW's decoupled weight decay still shrinks them (harmless: they never reach the output,
   whose cut entries stay σ(0) = 0). Trainable: d_in · d_out per target. This is PRUNING
   (Han et al., 2015) then training, not a parameter-efficient method.

2. ``SparseDeltaLinear``, sparse fine-tuning as the libraries do it: A4 applied to the CHANGE,

       W = W₀ + σ(Δ ⊙ D)          W₀ frozen, Δ trained, Δ = 0 at init

   so at step 0 the output is the base model's exactly (σ(0) = 0). Δ is not stored as a dense
   [in, out] array: only its k kept entries are, as a 1-D Param δ ∈ ℝᵏ (``sparse_delta``) at the
   mask's flat positions (``indices``). Forward SCATTERS σ(δ) into a copy of W₀; backward
   GATHERS the dense gradient at the same positions — A4′ restricted to where D = 1:

       W = W₀;  W.flat[indices] += σ(δ)            ∂L/∂δ = σ′(δ) ⊙ G.flat[indices]

   Why compact: the count is exact (k per target, not d_in·d_out with most of it dead); the
   optimizer keeps state for k numbers; and the masked entries are not there to be touched, so
   AdamW's weight decay (which shrinks EVERY stored entry, gradient or not) cannot move them:
   the effective weight's masked entries are W₀'s, bit for bit, after any amount of training.
   ``merge()`` writes W₀.flat[indices] + σ(δ) into W₀ (nothing else changes) and remembers the k
   old values, so ``unmerge()`` restores W₀ bit for bit. This (indices, values) storage is how
   sparse fine-tuning libraries keep their deltas (Ansell et al., 2022; 2024).
   Backward forms the dense G = xᵀ·dy and reads k entries of it; a faster engine would compute
   only those, Σₙ x[n, i]·dy[n, j] for each kept (i, j): N·k work instead of N·d_in·d_out.

Shape legend: N positions (any leading shape ...), d_in / d_out a layer's in / out, k the number
of kept entries (``len(indices)``). Weights are [in, out], as everywhere in minift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.errors import check_int
from minift.nn import Linear
from minift.param import Param
from minift.peft.adapted import AdaptedLinear
from minift.peft.base import PeftConfig, register
from minift.peft.registry import TARGET_MODULES, Option, register_method
from minift.peft.sparse_mask import (
    MASKS,
    check_choice,
    check_density,
    check_indices,
    check_mask,
    layer_mask_indices,
    mask_from_indices,
)

__all__ = [
    "ACTIVATIONS",
    "MaskedLinear",
    "SparseConfig",
    "SparseDeltaLinear",
    "activation_backward",
    "activation_forward",
    "masked_linear_backward",
    "masked_linear_forward",
    "sparse_delta_backward",
    "sparse_delta_forward",
    "sparse_delta_weight",
    "sparse_weight_backward",
    "sparse_weight_forward",
]

ACTIVATIONS = ("identity", "tanh")  # σ(0) = 0 (cut means absent) and σ′(0) = 1 (Δ = 0 moves)
MODES = ("delta", "literal")


# ------------------------------------------------------------------------------------------------
# σ and σ′


def activation_forward(z, activation):
    """s = σ(z), elementwise.  # [*] -> [*]"""
    check_choice(activation, ACTIVATIONS, "activation")
    s = np.tanh(z) if activation == "tanh" else np.array(z, copy=True)
    return s, (activation, s)


def activation_backward(ds, cache):
    """dz = σ′(z) ⊙ ds: identity σ′ = 1; tanh σ′ = 1 − σ(z)², read off the saved output."""
    activation, s = cache
    return ds * (1.0 - s * s) if activation == "tanh" else np.array(ds, copy=True)


# ------------------------------------------------------------------------------------------------
# A4 as a weight parametrization


def sparse_weight_forward(W1, D, activation):
    """A4: W₂ = σ(W₁ ⊙ D).  # [in, out], 0/1 [in, out] -> [in, out]"""
    z = W1 * D  # (in, out): the cut connections are 0
    W2, act_cache = activation_forward(z, activation)
    return W2, (D, act_cache)


def sparse_weight_backward(dW2, cache):
    """A4′: ∂L/∂W₁ = D ⊙ σ′(W₁ ⊙ D) ⊙ ∂L/∂W₂.  # [in, out] -> [in, out]"""
    D, act_cache = cache
    return D * activation_backward(dW2, act_cache)


def masked_linear_forward(x, W1, b, D, activation):
    """The literal layer: y = x·σ(W₁ ⊙ D) + b.

    x [..., in], W1 [in, out], b [out] or None, D 0/1 [in, out] -> y [..., out]
    """
    W, weight_cache = sparse_weight_forward(W1, D, activation)
    y, linear_cache = F.linear_forward(x, W, b)
    return y, (linear_cache, weight_cache)


def masked_linear_backward(dy, cache, need_dW1=True):
    """Returns (dx [..., in], dW1 [in, out] or None, db [out] or None).

    forward was y = x·W + b with W = σ(W₁ ⊙ D), so dW = xᵀ·dy, then A4′ carries it to W₁.
    """
    linear_cache, weight_cache = cache
    dx, dW, db = F.linear_backward(dy, linear_cache, need_dW=need_dW1)
    dW1 = None if dW is None else sparse_weight_backward(dW, weight_cache)
    return dx, dW1, db


# ------------------------------------------------------------------------------------------------
# Sparse fine-tuning: W = W₀ + σ(Δ ⊙ D), Δ stored as its k kept entries δ


def sparse_delta_weight(delta, indices, shape, activation):
    """σ(Δ ⊙ D) as a dense array: σ(δ) at the kept positions, 0 elsewhere.  # [k] -> [in, out]"""
    dense = np.zeros(shape, dtype=delta.dtype)
    dense.flat[indices] = activation_forward(delta, activation)[0]
    return dense


def sparse_delta_forward(x, W0, b, delta, indices, activation):
    """y = x·(W₀ + σ(Δ ⊙ D)) + b, scattering σ(δ) into a copy of W₀.

    x [..., in], W0 [in, out], b [out] or None, delta [k], indices int [k] -> y [..., out]
    """
    s, act_cache = activation_forward(delta, activation)  # (k,)
    W = W0.copy()  # (in, out): W₀ itself is never written
    W.flat[indices] += s  # scatter: only the k kept entries differ from W₀
    y, linear_cache = F.linear_forward(x, W, b)
    return y, (linear_cache, indices, act_cache)


def sparse_delta_backward(dy, cache, need_dW0=False):
    """Returns (dx [..., in], ddelta [k], dW0 [in, out] or None, db [out] or None).

    forward was y = x·W + b, so G = ∂L/∂W = xᵀ·dy; W's kept entries are W₀ + σ(δ), so
    ∂L/∂δ = σ′(δ) ⊙ G.flat[indices] (gather: A4′ where D = 1). G is also W₀'s gradient.
    """
    linear_cache, indices, act_cache = cache
    dx, G, db = F.linear_backward(dy, linear_cache, need_dW=True)
    ddelta = activation_backward(G.reshape(-1)[indices], act_cache)  # (k,)
    return dx, ddelta, (G if need_dW0 else None), db


# ------------------------------------------------------------------------------------------------
# The layers


class MaskedLinear(AdaptedLinear):
    """The literal A4 layer: y = x·σ(W₁ ⊙ D) + b, with W₁ = ``base_layer.weight`` and D = ``mask``.

    W₁ trains if its Param is trainable (``SparseConfig(mode="literal")`` makes it so). Its pair
    is ``masked_linear_forward`` / ``masked_linear_backward``. ``merge()`` writes σ(W₁ ⊙ D) into
    the weight and keeps W₁ aside, so ``unmerge()`` restores it exactly (σ is not invertible on
    the cut entries). W₁ IS the base weight: ``PeftModel.unload()`` returns the trained W₁.
    """

    kind = "masked"
    merge_formula = "σ(W₁ ⊙ D)"
    delta_forward = staticmethod(masked_linear_forward)
    delta_backward = staticmethod(masked_linear_backward)

    def __init__(self, base_layer: Linear, mask, activation: str = "identity"):
        check_choice(activation, ACTIVATIONS, "activation")
        mask = check_mask(mask, base_layer.weight.shape)
        super().__init__(base_layer)
        self.mask = mask  # D, fixed
        self.activation = activation

    def delta_constants(self):
        return (self.mask, self.activation)

    def effective_weight(self) -> np.ndarray:  # [in, out]
        """σ(W₁ ⊙ D), the weight the layer multiplies by."""
        if self.merged:
            return self.base_layer.weight.value.copy()
        return sparse_weight_forward(self.base_layer.weight.value, self.mask, self.activation)[0]

    def merged_weights(self):
        """weight ← σ(W₁ ⊙ D); unmerge needs W₁ (a copy)."""
        return self.effective_weight(), None, self.base_layer.weight.value.copy()

    def unmerged_weights(self, W, b, W1):
        """weight ← W₁, the copy merge kept: exact."""
        return W1, None


class SparseDeltaLinear(AdaptedLinear):
    """Sparse fine-tuning: W = W₀ + σ(Δ ⊙ D), W₀ = ``base_layer.weight`` frozen, Δ stored as
    ``sparse_delta`` [k] at the fixed flat positions ``indices`` [k] (zero at init).

    Its pair is ``sparse_delta_forward`` / ``sparse_delta_backward``. ``merge()`` adds σ(δ) to
    W₀'s k kept entries and keeps their old values, so ``unmerge()`` puts them back bit for bit.
    """

    kind = "sparse"
    merge_formula = "W₀ + σ(Δ ⊙ D)"
    delta_params = ("sparse_delta",)
    delta_forward = staticmethod(sparse_delta_forward)
    delta_backward = staticmethod(sparse_delta_backward)

    def __init__(self, base_layer: Linear, indices, activation: str = "identity"):
        check_choice(activation, ACTIVATIONS, "activation")
        W0 = base_layer.weight
        indices = check_indices(indices, W0.shape)
        super().__init__(base_layer)
        self.indices = indices  # D's kept positions, fixed
        self.activation = activation
        self.sparse_delta = Param(np.zeros(indices.size, dtype=W0.dtype))  # δ, Δ = 0 at init

    def delta_constants(self):
        return (self.indices, self.activation)

    @property
    def mask(self) -> np.ndarray:  # bool [in, out]
        return mask_from_indices(self.indices, self.base_layer.weight.shape)

    def delta_weight(self) -> np.ndarray:  # [in, out]
        """σ(Δ ⊙ D): σ(δ) at the kept positions, 0 elsewhere."""
        return sparse_delta_weight(
            self.sparse_delta.value, self.indices, self.base_layer.weight.shape, self.activation
        )

    def effective_weight(self) -> np.ndarray:  # [in, out]
        """W₀ + σ(Δ ⊙ D), computed as forward computes it."""
        W = self.base_layer.weight.value.copy()
        if not self.merged:
            W.flat[self.indices] += activation_forward(self.sparse_delta.value, self.activation)[0]
        return W

    def merged_weights(self):
        """W₀.flat[indices] + σ(δ) at the kept entries; unmerge needs their old values."""
        kept = self.base_layer.weight.value.flat[self.indices]  # a copy
        return self.effective_weight(), None, kept

    def unmerged_weights(self, W, b, kept):
        """W₀.flat[indices] ← the values merge replaced (bit for bit)."""
        W = W.copy()
        W.flat[self.indices] = kept
        return W, None


# ------------------------------------------------------------------------------------------------
# The config


@register
@dataclass
class SparseConfig(PeftConfig):
    """Sparse connections (A4) on every target Linear.

    ``density`` in (0, 1]: the fraction of each weight's entries the mask keeps;
    ``mask``: "random" or "magnitude" (largest |W₀|); ``activation``: σ, "identity" or "tanh";
    ``mode``: "delta" (W = W₀ + σ(Δ ⊙ D), Δ compact, sparse fine-tuning) or "literal"
    (W = σ(W₁ ⊙ D), the article's form); ``mask_seed``: the random mask's seed (with the layer's
    name, so the file rebuilds the same mask).

    Trainable count, summed over the targets (d_in × d_out each; biases stay frozen):
        mode="delta"    Σ round(density · d_in · d_out)      (only the kept entries exist)
        mode="literal"  Σ d_in · d_out                       (W₁ dense; the kept ones matter)
    """

    density: float = 0.05
    mask: str = "random"
    activation: str = "identity"
    mode: str = "delta"
    mask_seed: int = 0

    peft_type = "MINIFT_SPARSE"
    default_target_modules = ("c_attn",)

    def __post_init__(self):
        super().__post_init__()
        self.density = check_density(self.density)
        check_choice(self.mask, MASKS, "mask")
        check_choice(self.activation, ACTIVATIONS, "activation")
        check_choice(self.mode, MODES, "mode")
        check_int("mask_seed", self.mask_seed, minimum=0)

    def wrap(self, name, layer, rng):  # rng unused: the mask is drawn from (mask_seed, name)
        W0 = layer.weight.value
        indices = layer_mask_indices(W0, self.density, self.mask, self.mask_seed, name)
        if self.mode == "delta":
            return SparseDeltaLinear(layer, indices, self.activation)
        layer.weight.trainable = True  # W₁ is the layer's own weight
        return MaskedLinear(layer, mask_from_indices(indices, layer.weight.shape), self.activation)


register_method("sparse", SparseConfig,
                "the article's sparse connections, 5 % of every Linear (§2.2, A4)",
                lr=3e-2, classification_lr=1e-2, lr_grid=[3e-3, 1e-2, 3e-2, 1e-1],
                defaults={"density": 0.05, "target_modules": ["c_attn", "c_proj", "c_fc"]},
                options=[Option("density", "share of each matrix kept", type=float, low=0, high=1,
                                low_open=True), TARGET_MODULES])  # fmt: skip
