r"""LoRA: low-rank adaptation (Hu et al., 2021), the article's §2.3, §4.1.3 and §4.2.3.

What the article writes, and what LoRA is
-----------------------------------------
The article (A5) writes W = L·G with "L a low-rank matrix and G a Gaussian matrix", and (A6)
L = U·Vᵀ with U, V orthogonal. Published LoRA keeps the pretrained weight and ADDS a low-rank
change:

    W = W₀ + ΔW,     ΔW = s · B · A,     B ∈ ℝ^{d_out × r},  A ∈ ℝ^{r × d_in},  r ≪ min(d_in, d_out)

W₀ is frozen; only A and B train. In the article's notation U = B and Vᵀ = A, and they are NOT
orthogonal (orthogonality belongs to AdaLoRA's P·Λ·Q, with a regulariser; see adalora.py).
The "Gaussian matrix" is most likely a memory of A's random initialisation:

    A ~ Kaiming-uniform, U(−1/√d_in, 1/√d_in) (PEFT's default), or N(0, 1/r²) ("gaussian")
    B = 0

so ΔW = 0 at step 0 and the adapted model starts EXACTLY at the pretrained one (PEFT's other
``init_lora_weights``, False, "pissa" and "olora", are in lora_init.py). (One factor
must be zero for that, one random, or nothing moves: with A = B = 0 both gradients vanish. With
B = 0, ∂L/∂A = s·Bᵀ·G = 0 on the first step only, and B's own gradient s·G·Aᵀ gets it going;
A = 0 with B random would work as well, mirrored. B = 0 is the paper's and PEFT's convention.)

The scale s = α/r (``lora_alpha / r``), or s = α/√r with rsLoRA (Kalajdzievski, 2023), whose
updates keep their size as r grows. A's input may pass through dropout (``lora_dropout``).

Gradients (the article's A11, done right)
-----------------------------------------
With G = ∂L/∂W the gradient of the loss with respect to the effective weight (paper layout,
[d_out, d_in]), the chain rule through ΔW = s·B·A gives

    ∂L/∂B = s · G · Aᵀ          ∂L/∂A = s · Bᵀ · G

(A11's "∂(UVᵀG)/∂L · ∂G/∂L" is not a chain rule: G does not depend on L.)

minift stores a Linear weight [in, out] (y = x·W, GPT-2's layout) but A and B as PEFT and the
paper do, A [r, in] and B [out, r]. So in minift's layout ΔW = s·(B·A)ᵀ = s·Aᵀ·Bᵀ and

    y = x·W₀ + b + s · (x·Aᵀ)·Bᵀ

Two ways to compute it, both here and tested equal:
- the clear path forms ΔW [in, out] and multiplies once: y = x·(W₀ + ΔW) + b;
- the fast path never forms ΔW: u = x·Aᵀ [N, r], then y = x·W₀ + b + s·u·Bᵀ. Its forward adds
  N·r·(d_in + d_out) multiply-adds to the base's (the clear path adds r·d_in·d_out to form ΔW),
  and its backward needs no dW₀, the N·d_in·d_out product a trained W₀ would cost:

      du = s · dy·B          [N, r]         dB = s · dyᵀ·u       [out, r]
      dA = duᵀ · x           [r, in]        dx = dy·W₀ᵀ + du·A   [N, in]

Training uses the fast path: that, and no optimizer state for W₀, is where LoRA's speed and
memory savings come from (the article's §3.3.3 claims the opposite; benchmarks/ measures it).

Trainable parameters per adapted matrix: r·(d_in + d_out), against d_in·d_out for full
fine-tuning. Merging (W₀ ← W₀ + ΔW) makes the deployed model exactly as large and fast as the
base; unmerging subtracts ΔW again.

Shape legend: N positions (any leading shape ...), r rank, d_in / d_out the layer's in / out.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.errors import check_int
from minift.nn import Linear
from minift.param import Param
from minift.peft.adapted import AdaptedLinear
from minift.peft.base import PeftConfig, register
from minift.peft.lora_init import SVD_INITS, check_init, random_init, warn_if_peft_cannot_load
from minift.peft.registry import TARGET_MODULES, Option, register_method
from minift.peft.targets import (
    check_name_patterns,
    check_narrowing,
    check_peft_only_fields,
    pattern_key,
    wrap_targets,
)

# ------------------------------------------------------------------------------------------------
# The math, as pure functions


def check_lora_alpha(lora_alpha) -> None:
    """α must be a finite number: a NaN or infinite α would train a NaN model without a word."""
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float, np.number)):
        raise TypeError(f"lora_alpha: expected a number, got {lora_alpha!r}")
    if not math.isfinite(lora_alpha):
        raise ValueError(f"lora_alpha: expected a finite number, got {lora_alpha}")


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """s = α/r, or α/√r with rsLoRA."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def lora_delta_weight(A, B, scaling):
    """ΔW in minift's layout: s·(B·A)ᵀ.  # [r, in], [out, r] -> [in, out]"""
    return scaling * (B @ A).T


def lora_delta_weight_backward(dDelta, A, B, scaling):
    """The clear path's backward, A11 done right: with G = dΔWᵀ (the paper's [out, in] layout),
    dA = s·Bᵀ·G and dB = s·G·Aᵀ.  # [in, out] -> [r, in], [out, r]"""
    G = dDelta.T  # (out, in)
    return scaling * (B.T @ G), scaling * (G @ A.T)


def lora_forward_clear(x, W0, b, A, B, scaling):
    """The clear path: y = x·(W₀ + ΔW) + b, forming ΔW.  # [..., in] -> [..., out]"""
    return F.linear_forward(x, W0 + lora_delta_weight(A, B, scaling), b)[0]


def lora_forward(x, W0, b, A, B, scaling, x_lora=None):
    """The fast path: y = x·W₀ + b + s·(x_lora·Aᵀ)·Bᵀ, never forming ΔW.

    ``x_lora`` is the input of the low-rank path (x after LoRA dropout; x itself by default).
    x [..., in], W0 [in, out], b [out] or None, A [r, in], B [out, r] -> y [..., out]
    """
    x_lora = x if x_lora is None else x_lora
    y, base_cache = F.linear_forward(x, W0, b)  # x·W₀ + b, (..., out)
    u = x_lora.reshape(-1, A.shape[1]) @ A.T  # (N, r), every leading position a row
    y2 = y.reshape(-1, B.shape[0])  # (N, out), a view of y (a fresh, contiguous array)
    y2 += (scaling * u) @ B.T  # + s·u·Bᵀ, added into y in place
    return y, (base_cache, x_lora, u, A, B, scaling)


def lora_backward(dy, cache, need_base_grads=False):
    """Returns (dx, dx_lora, dA, dB, dW0, db): see the module docstring for the equations.

    dx is the gradient through the frozen W₀ only, dx_lora the one through the low-rank path
    (the caller adds them, after undoing the dropout on dx_lora). dW0 and db are computed only
    when ``need_base_grads`` (a frozen W₀ gets no gradient: that work is skipped).
    """
    base_cache, x_lora, u, A, B, scaling = cache
    dx, dW0, db = F.linear_backward(dy, base_cache, need_base_grads, need_base_grads)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
    du = scaling * (dy2 @ B)  # (N, r)
    dB = scaling * (dy2.T @ u)  # (out, r)
    dA = du.T @ x_lora.reshape(-1, x_lora.shape[-1])  # (r, in)
    dx_lora = (du @ A).reshape(x_lora.shape)  # (..., in)
    return dx, dx_lora, dA, dB, dW0, (db if need_base_grads else None)


# ------------------------------------------------------------------------------------------------
# The layer


class LowRankLinear(AdaptedLinear):
    """What LoRA's family shares: a rank r that fits the base layer, a scale s (its
    ``delta_constants``), and dropout on the input of the low-rank path (``lora_dropout``)."""

    def __init__(self, base_layer: Linear, r: int, scaling: float, lora_dropout, *, rng):
        _check_rank(r, base_layer.in_features, base_layer.out_features)
        super().__init__(base_layer, lora_dropout, rng=rng)
        self.r = r
        self.scaling = scaling

    def delta_constants(self):
        return (self.scaling,)


class LoraLinear(LowRankLinear):
    """A frozen Linear plus s·B·A: ``base_layer`` (W₀, b), ``lora_A`` [r, in], ``lora_B`` [out, r].

    Its pair is ``lora_forward`` / ``lora_backward`` (the fast path); ``merge()`` folds ΔW into
    W₀ (then forward is the base layer's alone), ``unmerge()`` subtracts it again; the
    ``merged`` flag guards both, as in loralib.
    """

    kind = "LoRA"
    delta_params = ("lora_A", "lora_B")
    delta_forward = staticmethod(lora_forward)
    delta_backward = staticmethod(lora_backward)

    def __init__(
        self,
        base_layer: Linear,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
        init_lora_weights: bool | str = True,
        *,
        rng: np.random.Generator,
    ):
        super().__init__(
            base_layer, r, lora_scaling(r, lora_alpha, use_rslora), lora_dropout, rng=rng
        )
        dtype = base_layer.weight.dtype
        check_init(init_lora_weights)
        if init_lora_weights in SVD_INITS:  # part of W₀ moves into A, B: see lora_init.py
            W0 = base_layer.weight.value
            A, B, residual = SVD_INITS[init_lora_weights](W0, r, self.scaling)
            # a new Param, not W₀ written in place: a failed load puts the old one back
            base_layer.weight = Param(residual.astype(dtype), trainable=base_layer.weight.trainable)
        else:
            A, B = random_init(init_lora_weights, r, self.in_features, self.out_features, rng)
        self.lora_A = Param(A.astype(dtype))
        self.lora_B = Param(B.astype(dtype))

    def delta_weight(self) -> np.ndarray:  # [in, out]
        return lora_delta_weight(self.lora_A.value, self.lora_B.value, self.scaling)


# The layers of LoRA's variants, by the LoraConfig flag that selects them, each registered where
# it is defined (dora.py: "use_dora"), so that this file needs none of them.
LORA_VARIANTS: dict[str, type[LoraLinear]] = {}


def _check_rank_value(r):
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise ValueError(f"expected a positive integer rank, got {r!r}")


def _check_rank(r, d_in, d_out):
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
        raise TypeError(f"r: expected an integer rank, got {r!r}")
    if not 1 <= r <= min(d_in, d_out):
        raise ValueError(
            f"r: expected a rank in [1, min(in, out)] = [1, {min(d_in, d_out)}] for a "
            f"{d_in}×{d_out} weight, got {r}"
        )


# ------------------------------------------------------------------------------------------------
# The config


@register
@dataclass
class LoraConfig(PeftConfig):
    """LoRA with PEFT's field names. Trainable count: Σ over targets of r·(d_in + d_out).

    Which layers: ``target_modules`` (or ``"all-linear"``), less ``exclude_modules``, kept only in
    the blocks ``layers_to_transform`` lists (``layers_pattern`` names the block list); each
    layer's r and α: the first key of ``rank_pattern`` / ``alpha_pattern`` that matches its name,
    else ``r`` / ``lora_alpha`` (targets.py has the rules). ``init_lora_weights``: lora_init.py.
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | str = True
    fan_in_fan_out: bool | None = None  # the file's layout; None: the model's (hf_fan_in_fan_out)
    bias: str = "none"
    rank_pattern: dict = dataclasses.field(default_factory=dict)  # name regex -> r
    alpha_pattern: dict = dataclasses.field(default_factory=dict)  # name regex -> α
    exclude_modules: list[str] | str | None = None
    layers_to_transform: int | list[int] | None = None  # block indices
    layers_pattern: list[str] | str | None = None  # the name of the block list ("h")
    # LoRA+: B's lr = ratio × A's (param_groups.loraplus_param_groups); PEFT's LoraConfig lacks it
    loraplus_lr_ratio: float | None = None

    fields_peft_lacks = ("loraplus_lr_ratio",)
    peft_type = "LORA"
    positive_fields = ("lora_alpha",)  # α ≤ 0 flips or erases the update
    default_target_modules = ("c_attn",)  # PEFT's default for GPT-2

    def __post_init__(self):
        super().__post_init__()
        check_int("r", self.r, what="a positive integer rank")
        check_lora_alpha(self.lora_alpha)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(
                f"lora_dropout: expected a probability in [0, 1), got {self.lora_dropout}"
            )
        check_init(self.init_lora_weights)
        if self.use_dora and self.init_lora_weights not in (True, "gaussian"):
            raise ValueError(
                "init_lora_weights: DoRA's magnitude starts from ‖W₀‖, which needs ΔW = 0 at "
                f"init (True or 'gaussian'), got {self.init_lora_weights!r}"
            )
        self._check_patterns()
        ratio = self.loraplus_lr_ratio
        if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < ratio < math.inf):
            raise ValueError(f"loraplus_lr_ratio: expected a finite number > 0, got {ratio!r}")
        check_peft_only_fields(self, "LoRA")

    def _check_patterns(self):
        for field, check in (("rank_pattern", _check_rank_value), ("alpha_pattern", None)):
            for key, value in check_name_patterns(self, field).items():
                try:
                    re.compile(key)
                    (check or check_lora_alpha)(value)
                except (TypeError, ValueError, re.error) as e:
                    message = str(e).removeprefix("lora_alpha: ")
                    raise type(e)(f"{field}: {key!r}: {message}") from None
        check_narrowing(self)

    def apply(self, model, rng):
        wrap_targets(self, model, rng)

    def wrap(self, name, layer, rng):
        layer_class = LORA_VARIANTS["use_dora"] if self.use_dora else LoraLinear
        r_key = pattern_key(self.rank_pattern, name)
        alpha_key = pattern_key(self.alpha_pattern, name)
        return layer_class(
            layer,
            self.r if r_key is None else self.rank_pattern[r_key],
            self.lora_alpha if alpha_key is None else self.alpha_pattern[alpha_key],
            self.lora_dropout,
            self.use_rslora,
            self.init_lora_weights,
            rng=rng,
        )

    def peft_fields(self, peft_model):
        warn_if_peft_cannot_load(self.init_lora_weights, self.fan_in_fan_out)
        return {}

    def peft_key(self, name):
        # PEFT's lora_A / lora_B are nn.Linear modules, so their keys end in ".weight":
        # base_model.model.transformer.h.0.attn.c_attn.lora_A.weight
        key = super().peft_key(name)
        return key + ".weight" if name.endswith((".lora_A", ".lora_B")) else key


LORA_OPTIONS = [
    Option("r", "rank r", low=1),
    Option("lora_alpha", "LoRA scale α: s = α/r", type=float, low=0, low_open=True),
    Option("lora_dropout", "dropout on LoRA's input", type=float, low=0, high=1, high_open=True),
    TARGET_MODULES,
]
LORAPLUS = Option("loraplus_lr_ratio", "LoRA+: B's lr = ratio·lr", type=float, low=0, low_open=True)
LORA_DEFAULTS = {"r": 8, "lora_alpha": 16, "target_modules": ["c_attn", "attn.c_proj"]}

register_method("lora", LoraConfig, "LoRA r=8 on c_attn and attn.c_proj (§2.3; Hu et al. 2021)",
                lr=1e-2, classification_lr=3e-3, lr_grid=[1e-3, 3e-3, 1e-2, 3e-2],
                defaults=LORA_DEFAULTS, options=[*LORA_OPTIONS, LORAPLUS])  # fmt: skip
