r"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024), LoRA with a magnitude.

Read lora.py first: DoRA is LoRA's ΔW = s·B·A with one more trainable vector.

Magnitude and direction
-----------------------
Every output unit of a Linear layer has a weight vector (the weights feeding that unit). Weight
normalization (Salimans & Kingma, 2016) writes each of those vectors as a LENGTH times a unit
DIRECTION. DoRA adapts the two separately: the direction with LoRA, the length with a vector m
of its own,

    W = m ⊙ V / ‖V‖_c,      V = W₀ + ΔW,      ΔW = s · B · A     (LoRA's, see lora.py)

with ‖V‖_c one norm per output unit. The paper measured, over fine-tuning steps, how much the
magnitudes and the directions moved: in full fine-tuning the two changes were negatively
correlated, under LoRA (which moves both through B·A) positively. Giving the magnitude its own
d_out parameters lets DoRA's updates behave more like full fine-tuning's.

Which norm, in which layout (read this twice)
---------------------------------------------
The paper writes ‖·‖_c, "the vector-wise norm of a matrix across each column". What PEFT
computes (and what minift follows) is ONE NORM PER OUTPUT UNIT: PEFT turns the weight into
torch's [d_out, d_in] layout and takes ``torch.linalg.norm(weight, dim=1)``, a norm over the
IN axis, d_out numbers. minift stores a Linear weight [in, out] (y = x·W, GPT-2's layout), so
an output unit's weight vector is a COLUMN of W, and the same d_out numbers are

    n = ‖V‖_c = sqrt(Σ_i V[i, :]²)        (``np.linalg.norm(V, axis=0)``: over the in axis)  [out]

In this layout "the norm of each column" is literally what the code does; in torch's layout
the same numbers are row norms. Either way: d_out norms, each over d_in entries.

Initialisation: A as LoRA's, B = 0, and m = ‖W₀‖_c, so V = W₀, n = m and W = W₀ EXACTLY at
step 0 (m/n is 1.0 to the bit: m and n are the same computation on the same array).

Forward
-------
With u = x·Aᵀ, LoRA's output without the bias is z = x·W₀ + s·u·Bᵀ = x·V, so

    y = x·W + b = (x·V) ⊙ (m/n) + b = z ⊙ g + b,      g = m / n   [out]

DoRA's output is LoRA's output rescaled per output unit (the bias is not rescaled). Two paths,
both here and tested equal:
- the clear path forms W = m ⊙ V/n and multiplies once (``dora_forward_clear``);
- the layer's path computes z with LoRA's fast path and rescales it (``dora_forward``). With
  LoRA dropout only the low-rank path sees the dropped input, z = x·W₀ + s·(x_drop·Aᵀ)·Bᵀ,
  which is what PEFT computes (then z is not x·V, and only this path is exact).

Backward: the true gradient, derived
------------------------------------
Take one output unit o: its column v = V[:, o], norm n = ‖v‖, unit direction u = v/n, weight
column w = m·u. With dw = ∂L/∂w (the column of dW = xᵀ·dy, from the linear backward):

    ∂w/∂m = u                                  so   dm = uᵀ·dw = Σ_i (dW ⊙ V/n)[i, o]
    ∂u/∂v = (I − u·uᵀ)/n    (the norm moves)   so   dv = (m/n)·(dw − u·(uᵀ·dw))
                                                       = (m/n)·(dw − u·dm)

or, for all columns at once (U = V/n, products per column):

    dm = Σ_in (dW ⊙ U)            [out]
    dV = (m/n) ⊙ (dW − U ⊙ dm)    [in, out]

The second term removes from dW its component ALONG the column: a change of v's length does
not change w at all (the norm divides it out), so the gradient of v has no such component.
Then V = W₀ + s·(B·A)ᵀ gives A and B their gradients from dV exactly as LoRA's from dW:

    dA = s · Bᵀ · dVᵀ   [r, in]        dB = s · dVᵀ · Aᵀ   [out, r]       (dW₀ = dV, if trained)

The layer never forms dW = xᵀ·dy (N·d_in·d_out work): with z = x·V,

    dm = Σ_N (dy ⊙ z) / n                      (= Σ_in (dW ⊙ U): the same number)
    dz = dy ⊙ g  → LoRA's fast backward gives dA, dB of the (m/n)·dW part, and dx
    dV_norm = −(g ⊙ dm) ⊙ U  → dA, dB of the second part, through the formula above

Detaching the norm (PEFT's default, the paper's §4.3)
-----------------------------------------------------
Backpropagating through n keeps V (or the pieces to recompute it) for the backward pass. The
paper suggests treating ‖V‖_c as a constant ("detached from the gradient graph") to save that
memory; PEFT always does. Then the second term disappears:

    detached:   dV = (m/n) ⊙ dW        (dm unchanged: n does not depend on m)

The forward is identical; the gradients of A and B are NOT the gradient of the loss any more
(the tests show a finite-difference check failing on them, and passing on m). minift
backpropagates the TRUE gradient by default; ``DoraLinear(..., dora_detach_norm=True)`` (one
layer) or ``DoraLinear.dora_detach_norm = True`` (every layer that did not choose) switches to
PEFT's. LoraConfig has no field for it (neither has PEFT's).

Merging, parameters, files
--------------------------
Merging writes W₀ ← m ⊙ V/n. Unmerging recovers W₀ = V − ΔW with V = W ⊙ (n/m), using the
norms n kept at merge time (PEFT caches the same vector); m must then have no zero entry.

Trainable parameters per adapted matrix: r·(d_in + d_out) + d_out (LoRA's plus m).

In PEFT's adapter files the magnitude of ``h.0.attn.c_attn`` is saved under
``base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector`` (no ``.weight``: PEFT
strips it, see its save_and_load.py), shape [d_out]: exactly what LoraConfig.peft_key gives
the Param named ``lora_magnitude_vector`` here, and the shape minift stores.

Shape legend: N positions (any leading shape ...), r rank, d_in / d_out the layer's in / out.
"""

from __future__ import annotations

import numpy as np

from minift import functional as F
from minift.nn import Linear
from minift.param import Param
from minift.peft.lora import (
    LORA_DEFAULTS,
    LORA_OPTIONS,
    LORA_VARIANTS,
    LORAPLUS,
    LoraConfig,
    LoraLinear,
    lora_backward,
    lora_delta_weight,
    lora_delta_weight_backward,
    lora_forward,
)
from minift.peft.registry import register_method

# ------------------------------------------------------------------------------------------------
# The math, as pure functions: the clear path


def dora_weight_forward(V, m):
    """W = m ⊙ V/‖V‖_c: each column (output unit) of V rescaled to length m.

    V [in, out], m [out] -> W [in, out], cache (U = V/n, n, m)
    """
    n = np.linalg.norm(V, axis=0)  # (out,): one norm per output unit, over the in axis
    U = V / n  # (in, out), unit columns
    return m * U, (U, n, m)


def dora_weight_backward(dW, cache, detach_norm=False):
    """(dV, dm) from dW: dm = Σ_in dW ⊙ U, dV = (m/n) ⊙ (dW − U ⊙ dm), or (m/n) ⊙ dW detached."""
    U, n, m = cache
    dm = np.sum(dW * U, axis=0)  # (out,)
    dV = (m / n) * dW  # (in, out)
    if not detach_norm:
        dV -= U * ((m / n) * dm)  # the norm's share: no gradient along the column itself
    return dV, dm


def dora_forward_clear(x, W0, b, A, B, m, scaling):
    """The clear path: y = x·W + b with W = m ⊙ V/n formed.  # [..., in] -> [..., out]"""
    W, weight_cache = dora_weight_forward(W0 + lora_delta_weight(A, B, scaling), m)
    y, linear_cache = F.linear_forward(x, W, b)
    return y, (linear_cache, weight_cache, A, B, scaling)


def dora_backward_clear(dy, cache, detach_norm=False):
    """Returns (dx, dA, dB, dm, dW0, db) through W: linear backward, then the chain above."""
    linear_cache, weight_cache, A, B, scaling = cache
    dx, dW, db = F.linear_backward(dy, linear_cache)
    dV, dm = dora_weight_backward(dW, weight_cache, detach_norm)
    dA, dB = lora_delta_weight_backward(dV, A, B, scaling)
    return dx, dA, dB, dm, dV, db  # V = W₀ + ΔW, so dW₀ = dV


# ------------------------------------------------------------------------------------------------
# The layer's path: LoRA's fast path, rescaled per output unit


def dora_forward(x, W0, b, A, B, m, scaling, x_lora=None):
    """y = (x·W₀ + s·(x_lora·Aᵀ)·Bᵀ) ⊙ (m/n) + b, never forming W or dW.

    ``x_lora`` is the input of the low-rank path (x after LoRA dropout; x itself by default).
    x [..., in], W0 [in, out], b [out] or None, A [r, in], B [out, r], m [out] -> y [..., out]
    """
    z, lora_cache = lora_forward(x, W0, None, A, B, scaling, x_lora)  # (..., out), no bias
    V = W0 + lora_delta_weight(A, B, scaling)  # (in, out): needed for n, and for dV_norm
    n = np.linalg.norm(V, axis=0)  # (out,)
    y = z * (m / n)
    if b is not None:
        y = y + b
    return y, (lora_cache, z, V, n, m, A, B, scaling, b is not None)


def dora_backward(dy, cache, detach_norm=False, need_base_grads=False):
    """Returns (dx, dx_lora, dA, dB, dm, dW0, db); see the module docstring for the equations.

    As in lora.py, dx is the gradient through the W₀ path and dx_lora the one through the
    low-rank path (the caller undoes the dropout on it and adds them). dW0 and db are computed
    only when ``need_base_grads`` (a frozen W₀ gets no gradient).
    """
    lora_cache, z, V, n, m, A, B, scaling, has_bias = cache
    g = m / n  # (out,)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
    dm = np.sum(dy2 * z.reshape(dy2.shape), axis=0) / n  # forward was y = z·m/n + b
    dx, dx_lora, dA, dB, dW0, _ = lora_backward(dy * g, lora_cache, need_base_grads)
    if not detach_norm:
        # forward was g = m/n with n = ‖V‖_c: dn = −g·dm, and dV = dn ⊙ V/n
        dV_norm = V * (-(g / n) * dm)  # (in, out)
        dA_norm, dB_norm = lora_delta_weight_backward(dV_norm, A, B, scaling)
        dA += dA_norm
        dB += dB_norm
        if dW0 is not None:
            dW0 += dV_norm
    db = dy2.sum(axis=0) if (has_bias and need_base_grads) else None
    return dx, dx_lora, dA, dB, dm, dW0, db


# ------------------------------------------------------------------------------------------------
# The layer


class DoraLinear(LoraLinear):
    """A LoraLinear whose output is rescaled per output unit: ``lora_magnitude_vector`` m [out].

    Its pair is ``dora_forward`` / ``dora_backward`` (the layer's path, never forming W).
    ``dora_detach_norm`` (class default False: the true gradient) selects PEFT's detached norm;
    pass it to the constructor for one layer, or set ``DoraLinear.dora_detach_norm`` for all
    layers that were not given one. ``merge()`` writes W = m ⊙ V/n into W₀, ``unmerge()``
    recovers W₀; the ``merged`` flag guards both.
    """

    kind = "DoRA"
    merge_formula = "m ⊙ V/‖V‖"
    delta_params = ("lora_A", "lora_B", "lora_magnitude_vector")
    delta_forward = staticmethod(dora_forward)
    delta_backward = staticmethod(dora_backward)

    dora_detach_norm: bool = False

    def __init__(self, base_layer: Linear, *lora_args, dora_detach_norm=None, **lora_kwargs):
        """LoraLinear's arguments (``base_layer``, ``r``, ``lora_alpha``, …, ``rng=``), and
        ``dora_detach_norm``: True, False, or None for the class default."""
        if dora_detach_norm is not None and not isinstance(dora_detach_norm, bool):
            raise TypeError(
                f"dora_detach_norm: expected True, False or None, got {dora_detach_norm!r}"
            )
        super().__init__(base_layer, *lora_args, **lora_kwargs)
        norms = np.linalg.norm(base_layer.weight.value, axis=0)  # (out,) = ‖W₀‖_c
        if not np.all(norms > 0):
            zero = np.flatnonzero(~(norms > 0))
            raise ValueError(
                "base_layer.weight: DoRA divides each output unit's weight vector by its norm; "
                f"expected nonzero columns, got zero (or non-finite) norms in columns "
                f"{zero[:10].tolist()}"
            )
        self.lora_magnitude_vector = Param(norms)
        if dora_detach_norm is not None:
            self.dora_detach_norm = dora_detach_norm

    def effective_weight(self) -> np.ndarray:  # [in, out]
        """W = m ⊙ V/‖V‖_c, the weight this layer computes with (formed: the clear path)."""
        V = self.base_layer.weight.value + self.delta_weight()
        return dora_weight_forward(V, self.lora_magnitude_vector.value)[0]

    def backward_options(self):
        return (self.dora_detach_norm,)

    def merged_weights(self):
        """W₀ ← m ⊙ V/n; unmerge needs n, the norms at merge time."""
        V = self.base_layer.weight.value + self.delta_weight()
        W, (_, n, _) = dora_weight_forward(V, self.lora_magnitude_vector.value)
        return W, None, n

    def unmerged_weights(self, W, b, n):
        """W₀ = W ⊙ (n/m) − ΔW: V from the merged W and the norms kept at merge time."""
        m = self.lora_magnitude_vector.value
        if np.any(m == 0):
            raise ValueError(
                "unmerge: lora_magnitude_vector has zero entries, so the merged weight lost "
                f"those columns of W₀ (columns {np.flatnonzero(m == 0)[:10].tolist()})"
            )
        return W * (n / m) - self.delta_weight(), None


LORA_VARIANTS["use_dora"] = DoraLinear  # LoraConfig(use_dora=True) wraps with this layer

register_method("dora", LoraConfig, "DoRA: LoRA with a learned magnitude (Liu et al. 2024)",
                lr=1e-2, classification_lr=3e-3, lr_grid=[1e-3, 3e-3, 1e-2, 3e-2],
                defaults={**LORA_DEFAULTS, "use_dora": True},
                options=[*LORA_OPTIONS, LORAPLUS])  # fmt: skip
