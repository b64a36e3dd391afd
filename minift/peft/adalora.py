r"""AdaLoRA: adaptive budget allocation (Zhang et al., 2023), the article's "adaptively adjust".

The article's §2.3 says LoRA trains the low-rank matrix and "adaptively adjusts" it. Plain LoRA
adjusts nothing: every adapted matrix keeps the rank r it was given, for the whole run. AdaLoRA
is the method that does adapt: it starts every matrix at rank ``init_r`` and, while training,
moves a fixed total budget of ranks to the matrices where they matter, pruning the rest down
to an average of ``target_r``. Read lora.py first.

Parametrization: SVD-shaped, the article's A6 where it belongs
--------------------------------------------------------------
    W = W₀ + ΔW,     ΔW = s · P · Λ · Q,     Λ = diag(λ)

    P [d_out, r]   left singular vectors    PEFT's ``lora_B``
    λ [r]          singular values          PEFT's ``lora_E`` (stored [r, 1] in PEFT's files)
    Q [r, d_in]    right singular vectors   PEFT's ``lora_A``

This is the article's A6 ("L = U·Vᵀ, U and V orthogonal") made true: P and Q are pushed towards
orthonormal columns / rows by a regulariser (adalora_training.py), so λᵢ measures how much
the i-th rank-one piece P[:, i]·Q[i, :] contributes, and zeroing λᵢ removes exactly that piece
without the cost of an actual SVD. r = ``init_r`` for every target at the start.

Initialisation (PEFT's): λ = 0, so ΔW = 0 and the adapted model starts exactly at the base;
P, Q ~ N(0, 0.02²). On the first step only λ gets a gradient (∂L/∂P and ∂L/∂Q are scaled by λ;
the regulariser's gradient moves them too), as LoRA's B gets things going there.

Scale (PEFT's, not α/r): s = α / (r + 10⁻⁵) with r = init_r, and α = r when ``lora_alpha`` ≤ 0.
PEFT divides by its ``ranknum`` + 10⁻⁵, a guard for rank 0, and never changes ranknum when
ranks are pruned; minift computes the same number, so an adapter gives the same outputs here
and in PEFT.

LoRA in disguise: forward and backward
--------------------------------------
P·Λ·Q = (P·Λ)·Q is LoRA's B·A with B = P·diag(λ) and A = Q. So the layer runs LoRA's fast path
(lora.py) with B = P·diag(λ), and the chain rule through that product finishes the job:

    forward   y = x·W₀ + b + s · (x·Qᵀ) · (P·diag(λ))ᵀ
    backward  dB from lora_backward, then   dP = dB · diag(λ)      [out, r]
                                            dλ = Σ_out dB ⊙ P       [r]
              (dQ is LoRA's dA unchanged)

Training: what AdaLoRA adds to the loop
---------------------------------------
The orthogonality regulariser that keeps P and Q near orthonormal, the importance scores, the
shrinking rank budget and the hook that runs them in the ONE training loop are the second half
of this chapter, adalora_training.py (imported back here, so ``minift.peft.adalora`` names
them all).

Parameters and files
--------------------
Trainable parameters per adapted matrix: init_r·(d_in + d_out + 1). Pruning zeroes values but
frees no memory during training (as in PEFT). PEFT's file keys are
``base_model.model.transformer.h.0.attn.c_attn.lora_A`` / ``lora_B`` / ``lora_E`` (no
``.weight``: PEFT stores them as bare parameters), shapes [r, in], [out, r], [r, 1]; once a
``rank_pattern`` is set, PEFT saves only the kept ranks, and so does minift (the config's
peft_value / from_peft_value prune and re-expand them).

Shape legend: N positions (any leading shape ...), r = init_r, d_in / d_out the layer's in / out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minift.nn import Linear
from minift.param import Param
from minift.peft.adalora_training import (  # noqa: F401  (the chapter's second half, named here too)
    AdaLoraTrainHook,
    RankAllocator,
    adalora_regularizer,
    budget_schedule,
    orth_deviation_backward,
    orth_deviation_forward,
    rank_pattern_key,
    svd_layers,
)
from minift.peft.base import PeftConfig, register
from minift.peft.lora import (
    LORA_OPTIONS,
    LowRankLinear,
    check_lora_alpha,
    lora_backward,
    lora_delta_weight,
    lora_forward,
)
from minift.peft.registry import Option, register_method
from minift.peft.targets import check_peft_only_fields

# ------------------------------------------------------------------------------------------------
# The math, as pure functions


def adalora_scaling(r: int, lora_alpha: float) -> float:
    """PEFT's s = α / (r + 10⁻⁵), with α = r when lora_alpha ≤ 0."""
    return (lora_alpha if lora_alpha > 0 else float(r)) / (r + 1e-5)


def adalora_delta_weight(A, E, B, scaling):
    """ΔW = s·(P·diag(λ)·Q)ᵀ in minift's layout.  # [r, in], [r], [out, r] -> [in, out]"""
    return lora_delta_weight(A, B * E, scaling)


def adalora_forward(x, W0, b, A, E, B, scaling, x_lora=None):
    """y = x·W₀ + b + s·(x_lora·Qᵀ)·(P·diag(λ))ᵀ: LoRA's fast path with B = P·diag(λ).

    x [..., in], W0 [in, out], b [out] or None, A = Q [r, in], E = λ [r], B = P [out, r]
    -> y [..., out]
    """
    y, lora_cache = lora_forward(x, W0, b, A, B * E, scaling, x_lora)
    return y, (lora_cache, E, B)


def adalora_backward(dy, cache, need_base_grads=False):
    """Returns (dx, dx_lora, dA, dE, dB, dW0, db): LoRA's backward, then through B·diag(λ)."""
    lora_cache, E, B = cache
    dx, dx_lora, dA, dBE, dW0, db = lora_backward(dy, lora_cache, need_base_grads)
    dB = dBE * E  # (out, r): forward was B·diag(λ), column i scaled by λᵢ
    dE = np.sum(dBE * B, axis=0)  # (r,)
    return dx, dx_lora, dA, dE, dB, dW0, db


# ------------------------------------------------------------------------------------------------
# The layer


class SVDLinear(LowRankLinear):
    """A frozen Linear plus s·P·Λ·Q (PEFT's name for it): ``lora_A`` = Q [r, in],
    ``lora_E`` = λ [r], ``lora_B`` = P [out, r].

    Its pair is ``adalora_forward`` / ``adalora_backward``; ``merge()`` folds ΔW into W₀
    (masked λᵢ = 0 add nothing), ``unmerge()`` subtracts it again; the ``merged`` flag guards both.
    """

    kind = "AdaLoRA"
    delta_params = ("lora_A", "lora_E", "lora_B")
    delta_forward = staticmethod(adalora_forward)
    delta_backward = staticmethod(adalora_backward)

    def __init__(self, base_layer: Linear, r: int, lora_alpha: float, lora_dropout=0.0, *, rng):
        super().__init__(base_layer, r, adalora_scaling(r, lora_alpha), lora_dropout, rng=rng)
        dtype = base_layer.weight.dtype
        self.lora_A = Param(rng.normal(0.0, 0.02, (r, self.in_features)).astype(dtype))  # Q
        self.lora_E = Param(np.zeros(r, dtype=dtype))  # λ = 0: ΔW = 0 at step 0
        self.lora_B = Param(rng.normal(0.0, 0.02, (self.out_features, r)).astype(dtype))  # P

    def delta_weight(self) -> np.ndarray:  # [in, out]
        return adalora_delta_weight(
            self.lora_A.value, self.lora_E.value, self.lora_B.value, self.scaling
        )


# ------------------------------------------------------------------------------------------------
# The config


@register
@dataclass
class AdaLoraConfig(PeftConfig):
    """AdaLoRA, PEFT's field names. Trainable count: Σ over targets of init_r·(d_in + d_out + 1).

    ``total_step`` is required (the budget schedule needs it), and the schedule must leave a
    budgeting phase: tinit < total_step − tfinal. ``r`` is LoRA's field, unused (as in PEFT,
    where AdaLoraConfig inherits it); it is here so that PEFT's adapter_config.json loads.
    """

    target_r: int = 8  # average rank per target at the end
    init_r: int = 12  # rank of every target at the start
    tinit: int = 0  # warm-up steps at the full budget
    tfinal: int = 0  # final steps at the final allocation
    deltaT: int = 1  # steps between two allocations
    beta1: float = 0.85  # EMA of the sensitivity
    beta2: float = 0.85  # EMA of the uncertainty
    orth_reg_weight: float = 0.5  # w of the orthogonality regulariser (0: off)
    total_step: int | None = None  # the run's number of steps
    rank_pattern: dict | None = None  # written by the RankAllocator
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    init_lora_weights: bool = True
    fan_in_fan_out: bool | None = None  # the file's layout; None: the model's (hf_fan_in_fan_out)
    bias: str = "none"
    r: int = 8  # unused: AdaLoRA's rank is init_r

    peft_type = "ADALORA"
    positive_fields = ("lora_alpha",)  # α ≤ 0 flips or erases the update
    default_target_modules = ("c_attn",)  # PEFT's default for GPT-2
    mergeable = True

    def __post_init__(self):
        super().__post_init__()
        for name in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "total_step"):
            value = getattr(self, name)
            if name == "total_step" and value is None:
                raise ValueError(
                    "total_step: AdaLoRA's budget schedule needs the run's number of steps; "
                    "expected a positive integer, got None"
                )
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name}: expected an integer, got {value!r}")
        check_lora_alpha(self.lora_alpha)
        if self.init_r < 1:
            raise ValueError(f"init_r: expected a positive rank, got {self.init_r}")
        if not 0 <= self.target_r <= self.init_r:
            raise ValueError(
                f"target_r: expected a rank in [0, init_r] = [0, {self.init_r}], "
                f"got {self.target_r}"
            )
        if self.tinit < 0 or self.tfinal < 0 or self.deltaT < 1:
            raise ValueError(
                "tinit, tfinal, deltaT: expected tinit ≥ 0, tfinal ≥ 0, deltaT ≥ 1, got "
                f"{self.tinit}, {self.tfinal}, {self.deltaT}"
            )
        if self.total_step < 1 or self.tinit >= self.total_step - self.tfinal:
            raise ValueError(
                "total_step: expected tinit < total_step − tfinal (a budgeting phase), got "
                f"tinit={self.tinit}, tfinal={self.tfinal}, total_step={self.total_step}"
            )
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name}: expected a value in (0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.orth_reg_weight) and self.orth_reg_weight >= 0):
            raise ValueError(f"orth_reg_weight: expected a weight ≥ 0, got {self.orth_reg_weight}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(
                f"lora_dropout: expected a probability in [0, 1), got {self.lora_dropout}"
            )
        if self.init_lora_weights is not True:
            raise ValueError(
                f"init_lora_weights: expected True (λ = 0, P, Q Gaussian), got "
                f"{self.init_lora_weights!r}"
            )
        check_peft_only_fields(self, "AdaLoRA")
        if self.rank_pattern is not None and not isinstance(self.rank_pattern, dict):
            raise TypeError(f"rank_pattern: expected a dict or None, got {self.rank_pattern!r}")

    def train_hooks(self, peft_model, steps: int) -> list:
        """What the training loop adds for AdaLoRA: the regulariser and the rank allocator."""
        if steps != self.total_step:
            raise ValueError(
                f"total_step: the budget schedule was set for {self.total_step} steps, "
                f"the training runs {steps}"
            )
        return [AdaLoraTrainHook(peft_model)]

    def wrap(self, name, layer, rng):
        return SVDLinear(layer, self.init_r, self.lora_alpha, self.lora_dropout, rng=rng)

    # -- PEFT's file layout: bare keys, λ as [r, 1], only the kept ranks once pruned ----------

    def peft_key(self, name):
        # e.g. base_model.model.transformer.h.0.attn.c_attn.lora_E (no ".weight")
        return f"base_model.model.transformer.{name}"

    def _kept(self, name):  # which of init_r ranks the file holds, or None for all
        module, _, attr = name.rpartition(".")
        if self.rank_pattern is None or attr not in ("lora_A", "lora_E", "lora_B"):
            return None
        key = rank_pattern_key(module)
        if key not in self.rank_pattern:
            raise ValueError(f"rank_pattern: no entry {key!r} for the parameter {name!r}")
        return np.asarray(self.rank_pattern[key], dtype=bool)

    def peft_value(self, name, value):
        kept = self._kept(name)
        if kept is not None:
            value = value[:, kept] if name.endswith(".lora_B") else value[kept]
        return value.reshape(-1, 1) if name.endswith(".lora_E") else value

    def from_peft_value(self, name, value):
        if name.endswith(".lora_E"):
            value = value.reshape(-1)
        kept = self._kept(name)
        if kept is None:
            return value
        rank_axis = 1 if name.endswith(".lora_B") else 0
        if value.shape[rank_axis] != kept.sum():
            return value  # not what the pattern says: the strict shape check will report it
        shape = list(value.shape)
        shape[rank_axis] = kept.size
        full = np.zeros(shape, dtype=value.dtype)  # pruned ranks: λᵢ = 0 and zero P, Q rows
        if rank_axis == 1:
            full[:, kept] = value
        else:
            full[kept] = value
        return full


def schedule_for(steps: int) -> dict:
    """AdaLoRA's budget schedule for ``steps`` steps of training, in PEFT's usual shape: a tenth
    at the full budget (tinit), the last fifth fixed (tfinal)."""
    return {"tinit": steps // 10, "tfinal": steps // 5, "deltaT": max(1, steps // 20),
            "total_step": steps}  # fmt: skip


# lr set by hand, for both kinds
register_method("adalora", AdaLoraConfig, "AdaLoRA: rank 12 -> 8 by importance (Zhang et al. 2023)",
                lr=1e-2, compare=False, defaults={"init_r": 12, "target_r": 8, "lora_alpha": 16},
                per_steps=schedule_for,
                options=[Option("init_r", "rank at the start", low=1),
                         Option("target_r", "average rank at the end", low=1),
                         *LORA_OPTIONS[1:]])  # fmt: skip
