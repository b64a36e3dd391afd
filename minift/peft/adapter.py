r"""Adapters: small bottleneck networks inserted into every block (Houlsby et al., 2019).

"Parameter-Efficient Transfer Learning for NLP" keeps the pretrained network frozen and inserts,
after each sub-layer's output projection and before its residual add, a trainable ADAPTER: a
bottleneck MLP with a skip connection of its own,

    h ← h + f(h·W_down + b_down)·W_up + b_up        W_down ∈ ℝ^{d × m},  W_up ∈ ℝ^{m × d}

that projects the d features down to m ≪ d, applies a non-linearity f, and projects back up.
Twice per block: after the attention and after the MLP. (The first published PEFT method of the
family; LoRA, two years later, kept the low-rank bottleneck but put it beside a weight rather
than after a layer, precisely so that it could be merged away.)

In minift the adapter wraps the Linear whose output it transforms, ``attn.c_proj`` and
``mlp.c_proj``; the residual add comes after it, as in the paper (GPT-2's residual dropout
follows the adapter here, where Houlsby's BERT drops out before it: with dropout 0, as
minift's default, the order does not matter):

    y = base(x)                   the frozen c_proj, y [..., d]
    out = y + up(f(down(y)))      the adapter, out [..., d]

Initialisation. W_up = 0 and b_up = 0, so the adapter's branch is exactly 0 and the adapted
model's output equals the base model's at step 0, bit for bit (Houlsby initialise both
matrices near zero, std 1e-2, for a NEAR-identity; a zero up-projection makes it exact, as
the adapters of He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer
Learning", and as LoRA's B = 0). W_down is drawn as LoRA's A is (Kaiming-uniform,
U(−1/√d, 1/√d)), b_down = 0. With W_up = 0 the first step's gradient reaches W_up
(∂L/∂W_up = zᵀ·dout, z = f(down(y)) ≠ 0) and W_down starts moving one step later. The other
choice, W_down = 0, is no dead end with GELU (f′(0) = ½ lets W_down move at once) but is with
ReLU, whose zero input gives z = 0 and f′ = 0 everywhere: only b_up would ever learn.

Gradients, with a = y·W_down + b_down [..., m], z = f(a), out = y + z·W_up + b_up:

    dW_up = Σ_N zᵀ·dout        db_up = Σ_N dout          dz = dout·W_upᵀ
    da = dz ⊙ f′(a)            dW_down = Σ_N yᵀ·da        db_down = Σ_N da
    dy = dout + da·W_downᵀ     (the skip, plus the branch)

then dx = base.backward(dy) through the frozen c_proj (no dW for it, but dx flows on).

Not mergeable. f is non-linear, so y + f(y·W_down)·W_up is no Linear of y: no weight can absorb
it, and the adapters stay at inference, costing 2·d·m multiply-adds per adapter and per token
(LoRA's case against adapters; ``merge_and_unload`` refuses with a TypeError).

Trainable parameters (closed form): per adapter 2·d·m + m + d (the two matrices and their
biases); with the defaults, two adapters per block of width d = C:

    2·L·(2·C·m + m + C)

Houlsby also trained the LayerNorms (add them with ``modules_to_save``, e.g. ``["h.0.ln_1"]``);
minift's default trains the adapters alone, so the count above is all of it.

Shape legend: N positions (any leading shape ...), d the adapted layer's output width, m the
bottleneck size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.nn import Linear
from minift.peft.adapted import AdaptedLinear
from minift.peft.base import PeftConfig, register
from minift.peft.registry import TARGET_MODULES, Option, register_method

# ------------------------------------------------------------------------------------------------
# The math, as pure functions


def relu_forward(x):
    """relu(x) = max(x, 0).  # [...] -> [...]"""
    return np.maximum(x, 0.0), x > 0


def relu_backward(dout, cache):
    """relu′(x) = 1 where x > 0, else 0."""
    return dout * cache


NON_LINEARITIES = {
    "gelu": (F.gelu_forward, F.gelu_backward),  # GPT-2's tanh approximation
    "relu": (relu_forward, relu_backward),
}


def adapter_forward(y, W_down, b_down, W_up, b_up, non_linearity="gelu"):
    """out = y + f(y·W_down + b_down)·W_up + b_up.

    y [..., d], W_down [d, m], b_down [m], W_up [m, d], b_up [d] -> out [..., d]
    """
    act_forward, _ = NON_LINEARITIES[non_linearity]
    a, down_cache = F.linear_forward(y, W_down, b_down)  # (..., m)
    z, act_cache = act_forward(a)  # (..., m)
    u, up_cache = F.linear_forward(z, W_up, b_up)  # (..., d)
    return y + u, (down_cache, act_cache, up_cache, non_linearity)


def adapter_backward(dout, cache):
    """Returns (dy, dW_down, db_down, dW_up, db_up); see the module docstring."""
    down_cache, act_cache, up_cache, non_linearity = cache
    _, act_backward = NON_LINEARITIES[non_linearity]
    dz, dW_up, db_up = F.linear_backward(dout, up_cache)  # (..., m)
    da = act_backward(dz, act_cache)  # (..., m)
    dy_branch, dW_down, db_down = F.linear_backward(da, down_cache)  # (..., d)
    # forward was out = y + branch(y), so dy = dout + branchᵀ(dout)
    return dout + dy_branch, dW_down, db_down, dW_up, db_up


# ------------------------------------------------------------------------------------------------
# The layer


class AdapterLinear(AdaptedLinear):
    """A frozen Linear followed by a bottleneck adapter: out = y + up(f(down(y))), y = base(x).

    ``adapter_down`` (d → m) and ``adapter_up`` (m → d) are Linears in GPT-2's [in, out]
    layout, so the Params read ``h.0.mlp.c_proj.adapter_down.weight`` [d, m] and so on; the
    adapter calls the pure functions above on their values. Its pair acts on the base layer's
    OUTPUT, so forward runs the base layer first and backward runs it last; it cannot merge.
    """

    kind = "adapter"
    delta_params = (
        "adapter_down.weight",
        "adapter_down.bias",
        "adapter_up.weight",
        "adapter_up.bias",
    )

    def __init__(
        self,
        base_layer: Linear,
        bottleneck_size: int,
        non_linearity: str = "gelu",
        *,
        rng: np.random.Generator,
    ):
        super().__init__(base_layer)
        d = base_layer.out_features
        dtype = base_layer.weight.dtype
        self.non_linearity = non_linearity
        self.adapter_down = Linear(d, bottleneck_size, rng=rng, dtype=dtype)
        self.adapter_up = Linear(bottleneck_size, d, rng=rng, dtype=dtype)
        bound = 1.0 / math.sqrt(d)  # Kaiming-uniform, as LoRA's A
        self.adapter_down.weight.value[...] = rng.uniform(-bound, bound, (d, bottleneck_size))
        self.adapter_up.weight.value[...] = 0.0  # the branch is exactly 0 at init

    def forward(self, x):  # [..., in] -> [..., d]
        y = self.base_layer.forward(x)
        out, self._cache = adapter_forward(y, *self.delta_values(), self.non_linearity)
        return out

    def backward(self, dout):  # [..., d] -> [..., in]
        dy, *grads = adapter_backward(dout, self._cache)
        self.accumulate(grads)
        return self.base_layer.backward(dy)  # frozen W₀: no dW, but dx flows

    def merged_layer(self) -> Linear:
        """There is none: y + f(y·W_down)·W_up is not linear in y, so no Linear computes it."""
        raise TypeError(
            "merged_layer: an adapter is non-linear (f = "
            f"{self.non_linearity}), so it cannot be folded into the Linear it follows"
        )


# ------------------------------------------------------------------------------------------------
# The config


@register
@dataclass
class AdapterConfig(PeftConfig):
    """Houlsby adapters after the attention's and the MLP's output projections.

    bottleneck_size   m, the adapter's hidden width (Houlsby tried 8, 64 and 256 for d = 1024)
    non_linearity     f: "gelu" (GPT-2's, tanh approximation) or "relu"
    target_modules    the Linears whose OUTPUT is adapted; default ["attn.c_proj", "mlp.c_proj"]

    Trainable count: Σ over targets of 2·d·m + m + d, d the target's output width; with the
    defaults 2·L·(2·C·m + m + C).
    """

    bottleneck_size: int = 16
    non_linearity: str = "gelu"

    peft_type = "MINIFT_ADAPTER"
    default_target_modules = ("attn.c_proj", "mlp.c_proj")
    mergeable = False  # f is non-linear: no weight can absorb the adapter
    not_mergeable_reason = "an adapter adds a non-linear function of the output, not a weight"

    def __post_init__(self):
        super().__post_init__()
        m = self.bottleneck_size
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
            raise TypeError(f"bottleneck_size: expected a positive integer, got {m!r}")
        if m < 1:
            raise ValueError(f"bottleneck_size: expected a positive integer (>= 1), got {m}")
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(
                f"non_linearity: expected one of {sorted(NON_LINEARITIES)}, "
                f"got {self.non_linearity!r}"
            )

    def wrap(self, name, layer, rng):
        return AdapterLinear(layer, self.bottleneck_size, self.non_linearity, rng=rng)


register_method("adapter", AdapterConfig, "Houlsby adapters, bottleneck 16 (Houlsby et al. 2019)",
                lr=3e-2, classification_lr=3e-3, lr_grid=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                defaults={"bottleneck_size": 16},
                options=[Option("bottleneck_size", "bottleneck width", low=1),
                         TARGET_MODULES])  # fmt: skip
