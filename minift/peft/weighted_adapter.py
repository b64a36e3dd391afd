r"""Combining LoRA adapters into one: PEFT's ``add_weighted_adapter``, its three formulas.

Read lora.py first. Adapter i changes a layer by ΔWᵢ = sᵢ·Bᵢ·Aᵢ (paper layout, [out, in]), with
Aᵢ [rᵢ, in], Bᵢ [out, rᵢ] and its scale sᵢ = αᵢ/rᵢ. Given weights wᵢ (negative ones subtract an
adapter), PEFT builds a NEW adapter (A, B) whose α equals its rank, so its scale is 1 (√r under
rsLoRA, which it inherits from the first adapter's config) and its change is B·A itself. Three
ways, with cᵢ = wᵢ·sᵢ:

"cat"     A = [c₁A₁; c₂A₂; …] (rows stacked), B = [B₁, B₂, …] (columns side by side), so

              B·A = Σᵢ cᵢ·Bᵢ·Aᵢ = Σᵢ wᵢ·ΔWᵢ         exactly, at rank r = Σᵢ rᵢ

"linear"  every rᵢ equal to r; each cᵢ split into √|cᵢ| on B and sgn(cᵢ)·√|cᵢ| on A (the sign on
          A ONLY: on both it would cancel), and the factors ADDED:

              A = Σⱼ sgn(cⱼ)·√|cⱼ|·Aⱼ,    B = Σᵢ √|cᵢ|·Bᵢ
              B·A = Σᵢ cᵢ·Bᵢ·Aᵢ  +  Σ_{i≠j} √|cᵢ|·sgn(cⱼ)·√|cⱼ|·Bᵢ·Aⱼ

          at rank r: cheap, but the cross terms Bᵢ·Aⱼ (i ≠ j) are in it, which no adapter
          learned (PEFT calls it "a very rough approximation"). With one adapter it is exact:
          B·A = c₁·B₁·A₁.

"svd"     the best rank-r approximation of the exact sum (Eckart–Young): with
          ΔW = Σᵢ wᵢ·ΔWᵢ = U·diag(S)·Vᵀ,

              B = U[:, :r]·diag(S[:r]),    A = Vᵀ[:r, :]

          r = ``svd_rank``, or the largest rᵢ; exact when r ≥ rank(ΔW). ``svd_clamp`` = q clips
          every entry of A and B to ±(the q-quantile of all their entries together). Singular
          vectors have arbitrary signs: compare B·A, never A and B, with another implementation.

PEFT 0.21 puts the weights of "linear" and "svd" (and "linear"'s √|cᵢ|) in a float32 tensor
(torch.tensor's default), rounding them even on a float64 model; minift keeps them float64, so the
two agree to float64 rounding where those numbers are exact in float32 (0.5, -0.75 …).

The functions take the adapters' (Aᵢ, Bᵢ, sᵢ) and the weights, and return the new (A, B), in the
layout of lora.py's Params (A [r, in], B [out, r]). Which adapters, which layers and the new
config: adapters.py (``add_weighted_adapter``).

Shape legend: rᵢ the ranks, r the new rank, d_in / d_out the layer's in / out.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from minift.errors import check_int

COMBINATION_TYPES = ("linear", "cat", "svd")


def cat_combination(As, Bs, scalings, weights):
    """ "cat": A = [w₁s₁A₁; …], B = [B₁, …], so B·A = Σ wᵢ·sᵢ·Bᵢ·Aᵢ.
    # [rᵢ, in], [out, rᵢ] -> [Σrᵢ, in], [out, Σrᵢ]"""
    A = np.concatenate([A * w * s for A, s, w in zip(As, scalings, weights, strict=True)], axis=0)
    B = np.concatenate(Bs, axis=1)
    return A, B


def linear_combination(As, Bs, scalings, weights):
    """ "linear": A = Σ sgn(cᵢ)·√|cᵢ|·Aᵢ, B = Σ √|cᵢ|·Bᵢ, cᵢ = wᵢ·sᵢ (equal ranks).
    # [r, in], [out, r] -> [r, in], [out, r]"""
    if len({A.shape for A in As}) != 1:
        raise ValueError(
            f"combination_type 'linear': expected adapters of one rank, got ranks "
            f"{[A.shape[0] for A in As]}; use 'cat' or 'svd'"
        )
    c = [w * s for s, w in zip(scalings, weights, strict=True)]
    A = sum((1 if ci >= 0 else -1) * math.sqrt(abs(ci)) * Ai for ci, Ai in zip(c, As, strict=True))
    B = sum(math.sqrt(abs(ci)) * Bi for ci, Bi in zip(c, Bs, strict=True))
    return A, B


def svd_combination(As, Bs, scalings, weights, rank, clamp=None):
    """ "svd": the top-``rank`` SVD of ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ, B = U·diag(S), A = Vᵀ, each entry
    clipped to ±(the ``clamp``-quantile of all entries) when ``clamp`` is given.
    # [rᵢ, in], [out, rᵢ] -> [rank, in], [out, rank]"""
    delta = sum(w * (s * (B @ A)) for A, B, s, w in zip(As, Bs, scalings, weights, strict=True))
    U, S, Vh = np.linalg.svd(delta, full_matrices=False)  # (out, k), (k,), (k, in)
    B = U[:, :rank] * S[:rank]  # (out, rank): U·diag(S)
    A = Vh[:rank]  # (rank, in)
    if clamp is not None:
        hi = np.quantile(np.concatenate([B.ravel(), A.ravel()]), clamp)
        B, A = np.clip(B, -hi, hi), np.clip(A, -hi, hi)
    return A, B


# ------------------------------------------------------------------------------------------------
# The new adapter: which rank, which config, which layers (PEFT 0.21's rules)


def add_weighted_adapter(
    peft_model,
    adapters,
    weights,
    adapter_name,
    combination_type="svd",
    svd_rank=None,
    svd_clamp=None,
) -> None:
    """``PeftModel.add_weighted_adapter``: a new adapter ``adapter_name``, inactive and frozen.

    Its config is the first adapter's with r the new rank and α = r (scale 1), the adapters'
    targets together (regexes joined by "|", lists united) and no rank or alpha pattern; the new
    rank is the adapters' own ("linear", which needs them equal), their sum ("cat"), or
    ``svd_rank``, else the largest ("svd"). One adapter is always combined "linear" (PEFT's
    rule). Each layer combines the adapters that adapt it.
    """
    if not isinstance(adapters, (list, tuple)) or not adapters:
        raise ValueError(f"adapters: expected a list of adapter names, got {adapters!r}")
    for name in adapters:
        if name not in peft_model.peft_configs:
            raise ValueError(
                f"adapters: no adapter {name!r}; the model has {list(peft_model.peft_configs)}"
            )
    weights = _checked_weights(weights, len(adapters))
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(
            f"combination_type: expected one of {list(COMBINATION_TYPES)}, got "
            f"{combination_type!r} (PEFT's ties/dare/magnitude_prune are not in minift)"
        )
    combination_type = "linear" if len(adapters) == 1 else combination_type  # PEFT's rule
    configs = [peft_model.peft_configs[name] for name in adapters]
    for name, cfg in zip(adapters, configs, strict=True):
        if cfg.peft_type != "LORA" or cfg.use_dora or cfg.rank_pattern:
            raise ValueError(
                f"adapters: {name!r} is not a plain LoRA (DoRA or a rank_pattern); "
                "add_weighted_adapter combines LoRA adapters of one rank per adapter"
            )
    ranks = [cfg.r for cfg in configs]
    if combination_type == "linear" and len(set(ranks)) != 1:
        raise ValueError(
            f"adapters: combination_type 'linear' needs one rank, got {ranks}; use 'cat' or 'svd'"
        )
    check_int("svd_rank", svd_rank, optional=True)
    clamp_ok = isinstance(svd_clamp, (int, float)) and 0 <= svd_clamp <= 1
    if svd_clamp is not None and (isinstance(svd_clamp, bool) or not clamp_ok):
        raise ValueError(f"svd_clamp: expected a quantile in [0, 1], got {svd_clamp!r}")
    rank = {"linear": ranks[0], "cat": sum(ranks), "svd": svd_rank or max(ranks)}
    new_rank = rank[combination_type]
    new_config = dataclasses.replace(
        configs[0],
        r=new_rank,
        lora_alpha=new_rank,
        target_modules=_joined_targets(
            [cfg.target_modules or list(cfg.default_target_modules) for cfg in configs]
        ),
        rank_pattern={},
        alpha_pattern={},
    )
    peft_model.add_adapter(adapter_name, new_config)
    layers = {a: peft_model.adapter_layers(a) for a in adapters}
    try:
        for module, layer in peft_model.adapter_layers(adapter_name).items():
            sources = [
                (layers[a][module], w)
                for a, w in zip(adapters, weights, strict=True)
                if module in layers[a]
            ]
            if not sources:
                raise ValueError(f"adapters: none of {adapters} adapts {module!r}")
            A, B = _combined(sources, combination_type, new_rank, svd_clamp)
            for p, value in ((layer.lora_A, A), (layer.lora_B, B)):
                p.value[...] = 0  # "cat" fills the first rows (columns) only, as PEFT does
                p.value[tuple(slice(0, n) for n in value.shape)] = value
    except BaseException:
        peft_model.delete_adapter(adapter_name)
        raise


def _checked_weights(weights, n: int) -> list[float]:
    if not isinstance(weights, (list, tuple)) or len(weights) != n:
        raise ValueError(f"weights: expected {n} numbers, one per adapter, got {weights!r}")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w):
            raise ValueError(f"weights: expected finite numbers, got {weights!r}")
    return [float(w) for w in weights]


def _combined(sources, combination_type: str, rank: int, clamp):
    """One layer's new (A, B) from [(an adapter's layer there, its weight)]."""
    As = [layer.lora_A.value for layer, _ in sources]
    Bs = [layer.lora_B.value for layer, _ in sources]
    scalings = [layer.scaling for layer, _ in sources]
    weights = [w for _, w in sources]
    if combination_type == "svd":
        return svd_combination(As, Bs, scalings, weights, rank, clamp)
    combine = linear_combination if combination_type == "linear" else cat_combination
    return combine(As, Bs, scalings, weights)


def _joined_targets(targets: list) -> list[str] | str:
    """PEFT's new target_modules: regexes joined by "|", lists united; never the two mixed."""
    if len({isinstance(t, str) for t in targets}) > 1:
        raise ValueError(
            "adapters: their target_modules mix a regex and a list of names, which PEFT "
            f"cannot combine either: {targets}"
        )
    if isinstance(targets[0], str):
        return "|".join(f"({t})" for t in targets)
    return sorted({name for t in targets for name in t})
