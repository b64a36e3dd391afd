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

Shape legend: r rank, d_in / d_out the layer's in / out.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

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
