r"""LoRA's initialisations: PEFT's ``init_lora_weights``, each a pure function of W₀.

With W = W₀ + s·B·A (paper layout, W₀ [d_out, d_in]; lora.py), the choices are

    True        A ~ U(−1/√d_in, 1/√d_in) (torch's kaiming_uniform_, a = √5),  B = 0
    "gaussian"  A ~ N(0, 1/r²),                                               B = 0
    False       A ~ U(−1/√d_in, 1/√d_in),  B ~ U(−1/√r, 1/√r)  (nn.Linear's defaults; ΔW ≠ 0:
                the model does NOT start at the pretrained one — PEFT's choice for tests)

and two that START from W₀'s own structure and keep the model's output unchanged by moving part
of W₀ into A and B, the base keeping the residual W₀ʳᵉˢ = W₀ − s·B·A:

    "pissa"  (Meng et al., 2024)  W₀ = U·diag(S)·Vᵀ (SVD, S descending);  with S_r the top r,
             A = diag(√(S_r/s))·V_rᵀ [r, d_in],  B = U_r·diag(√(S_r/s)) [d_out, r],
             so s·B·A = U_r·diag(S_r)·V_rᵀ, the best rank-r approximation of W₀: the principal
             directions train, the residual stays frozen.
    "olora"  (Büyükakyüz, 2024)   W₀ = Q·R (reduced QR);  B = Q[:, :r],  A = R[:r, :],
             no 1/s in A or B, so s·B·A = s·Q_r·R_r; B's columns are orthonormal.

Either way W₀ʳᵉˢ + s·B·A = W₀ exactly in exact arithmetic (tests: to 1e-10 in float64). SVD and
QR fix their vectors only up to sign, so two implementations agree on B·A and W₀ʳᵉˢ, not on A
and B. PEFT factorises in float32; minift in the model's dtype. PEFT gives PiSSA GPT-2's [in, out]
Conv1D transposed, but not OLoRA: its QR takes the stored [in, out] weight, builds B [in, r] and
A [r, out], and the model fails at its first forward. minift's weights are [in, out] throughout
and both inits transpose to the paper's layout first: OLoRA on GPT-2 is minift's extension, the
file it writes loads only in minift (saving it warns so).

Saving such an adapter: its A and B are only meaningful with the residual base. minift does what
PEFT's from_pretrained does: adapter_config.json says ``"pissa"`` (or ``"olora"``), and loading
the file onto the ORIGINAL base model runs the same factorisation again (computing the residual)
before the trained A, B overwrite the initial ones. The file is for the original base, never for
the residual one. (So too ``unload()`` returns the residual base, and ``merge_and_unload()`` the
original W₀ plus the trained change.)

Or, as PEFT's ``save_pretrained(..., path_initial_model_for_weight_conversion=folder)`` does,
write the trained adapter as a PLAIN LoRA for the original base (``as_plain_lora``): with the
initial A₀, B₀ saved in ``folder`` before training, W₀ = W₀ʳᵉˢ + s·B₀·A₀, so the trained model is

    W₀ʳᵉˢ + s·B·A = W₀ + s·(B·A − B₀·A₀) = W₀ + s·[B | −B₀]·[A ; A₀]

a LoRA of rank 2r (A' = [A ; A₀] [2r, d_in], B' = [B | −B₀] [d_out, 2r]) with the same s: r and α
doubled (α·√2 under rsLoRA, whose s = α/√r), ``init_lora_weights`` True, and nothing to
factorise at load. Any LoRA converts so (a plain one's B₀ = 0 just adds r zero columns).

Shape legend: r rank, d_in / d_out the layer's in / out.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from minift.errors import FileFormatError
from minift.peft.peft_files import read_adapter

INITS = (True, False, "gaussian", "pissa", "olora")


def check_init(init) -> None:
    """``init_lora_weights`` must be one of ``INITS``; PEFT's others are named and refused."""
    if isinstance(init, (bool, str)) and init in INITS:
        return
    hint = ""
    if isinstance(init, str) and init.startswith("pissa_niter_"):
        hint = " (the randomized SVD of 'pissa_niter_K' is not implemented: use 'pissa')"
    raise ValueError(
        f"init_lora_weights: expected True, False, 'gaussian', 'pissa' or 'olora', "
        f"got {init!r}{hint}"
    )


def random_init(init, r: int, d_in: int, d_out: int, rng):
    """(A [r, in], B [out, r]) for True, "gaussian" or False (module docstring)."""
    if init == "gaussian":
        A = rng.normal(0.0, 1.0 / r, (r, d_in))
    else:  # kaiming_uniform_(a=√5): bound = √(6/((1 + a²)·fan_in)) = 1/√fan_in
        A = rng.uniform(-1.0 / math.sqrt(d_in), 1.0 / math.sqrt(d_in), (r, d_in))
    if init is False:
        B = rng.uniform(-1.0 / math.sqrt(r), 1.0 / math.sqrt(r), (d_out, r))
    else:
        B = np.zeros((d_out, r))
    return A, B


def pissa_init(W0, r: int, scaling: float):
    """PiSSA: (A [r, in], B [out, r], W₀ʳᵉˢ [in, out]) from W₀ [in, out] (module docstring)."""
    W = W0.T  # (out, in), the paper's layout
    U, S, Vt = np.linalg.svd(W, full_matrices=False)  # W = U·diag(S)·Vt
    root = np.sqrt(S[:r] / scaling)  # (r,) √(S_r/s)
    A = root[:, None] * Vt[:r]  # (r, in)
    B = U[:, :r] * root  # (out, r)
    return A, B, (W - scaling * (B @ A)).T


def olora_init(W0, r: int, scaling: float):
    """OLoRA: (A [r, in], B [out, r], W₀ʳᵉˢ [in, out]) from W₀ [in, out] (module docstring)."""
    W = W0.T  # (out, in)
    Q, R = np.linalg.qr(W)  # (out, k), (k, in), k = min(out, in)
    B, A = Q[:, :r], R[:r]
    return A, B, (W - scaling * (B @ A)).T


SVD_INITS = {"pissa": pissa_init, "olora": olora_init}


def warn_if_peft_cannot_load(init, fan_in_fan_out) -> None:
    """Saving an OLoRA adapter for GPT-2: say that it loads in minift only.

    PEFT 0.21's OLoRA factorises the stored weight as is; on GPT-2's [in, out] Conv1D that gives
    B [in, r] and A [r, out], and the adapted model fails at its first forward.
    """
    if init == "olora" and fan_in_fan_out:
        warnings.warn(
            "init_lora_weights: 'olora' on [in, out] (Conv1D) weights is minift's extension; "
            "PEFT 0.21 cannot apply this adapter to GPT-2 (it loads in minift only)",
            stacklevel=4,
        )


def as_plain_lora(peft_model, initial) -> tuple[dict, dict]:
    """(adapter_config.json's dict, the tensors) of ``peft_model``'s trained LoRA adapter,
    rewritten as the plain LoRA of rank 2r it is on the original base (module docstring), from
    the folder ``initial`` where the adapter was saved at init.

    Refused (ValueError) where PEFT refuses: ``check_one_lora``. The initial adapter must hold
    exactly the same A and B keys, of the same shapes, else a FileFormatError names its file and
    the key; other tensors (``modules_to_save``) are kept (PEFT drops them).
    """
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # OLoRA's "loads in minift only": a plain LoRA loads in PEFT
        config = peft_model.adapter_config()
    tensors = peft_model.adapter_state_dict()
    check_one_lora(config, list(peft_model.peft_configs))
    _, initial_tensors, _, _, weights_path = read_adapter(initial, ("LORA",))
    factors = sorted(k for k in tensors if ".lora_A." in k or ".lora_B." in k)
    if sorted(k for k in initial_tensors) != factors:
        missing = sorted(set(factors) - set(initial_tensors))
        extra = sorted(set(initial_tensors) - set(factors))
        raise FileFormatError(
            weights_path,
            f"expected the A and B of the adapter being saved, at init; missing {missing[:3]}, "
            f"extra {extra[:3]}",
        )
    converted = dict(tensors)
    for key in factors:
        trained, at_init = tensors[key], initial_tensors[key]
        if at_init.shape != trained.shape or at_init.dtype.kind != "f":
            got = f"{at_init.dtype} of shape {at_init.shape}"
            raise FileFormatError(weights_path, f"expected shape {trained.shape}, got {got}", key)
        at_init = at_init.astype(trained.dtype)
        if ".lora_A." in key:  # A' = [A ; A₀]
            converted[key] = np.concatenate([trained, at_init], axis=0)
        else:  # B' = [B | −B₀]
            converted[key] = np.concatenate([trained, -at_init], axis=1)
    config = dict(config, init_lora_weights=True, r=2 * config["r"])
    config["lora_alpha"] *= math.sqrt(2) if config.get("use_rslora") else 2
    for field in ("rank_pattern", "alpha_pattern"):
        config[field] = {k: 2 * v for k, v in (config.get(field) or {}).items()}
    return config, converted


def check_one_lora(config: dict, adapter_names: list[str]) -> None:
    """The conversion's preconditions (PEFT's): one adapter, "default", a LoRA without DoRA, and
    no per-layer patterns under rsLoRA. Else a ValueError naming the argument."""
    where = "path_initial_model_for_weight_conversion"
    if adapter_names != ["default"]:
        raise ValueError(
            f"{where}: converts the one adapter 'default'; this model has {adapter_names}"
        )
    if config["peft_type"] != "LORA" or config.get("use_dora"):
        method = "DoRA" if config.get("use_dora") else config["peft_type"]
        raise ValueError(f"{where}: only a LoRA's change is a difference of two low-rank "
                         f"products; this adapter is {method}")  # fmt: skip
    if config.get("use_rslora") and (config.get("rank_pattern") or config.get("alpha_pattern")):
        raise ValueError(
            f"{where}: not with rank_pattern or alpha_pattern under use_rslora (PEFT refuses it "
            "too: α·√2 keeps s = α/√r only where r alone is doubled)"
        )
