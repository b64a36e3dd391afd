r"""VeRA: vector-based random matrix adaptation (Kopiczko et al., 2024), PEFT's layout.

"VeRA: Vector-based Random Matrix Adaptation" keeps LoRA's low-rank shape but FREEZES both
factors at random values, and trains only two vectors that scale them:

    W = W₀ + ΔW,     ΔW = Λ_b · B · Λ_d · A,     Λ_b = diag(λ_b),  Λ_d = diag(λ_d)

    A ∈ ℝ^{r × d_in},  B ∈ ℝ^{d_out × r}    frozen, random, SHARED by every adapted layer
    λ_d ∈ ℝ^r  (``vera_lambda_d``)          trainable, every entry d_initial (0.1) at init
    λ_b ∈ ℝ^{d_out}  (``vera_lambda_b``)    trainable, zeros at init, so ΔW = 0 at step 0

There is no α and no scale s: λ_d and λ_b are the scale. Because A and B never train, the rank r
costs one number per layer, and r may exceed d_in and d_out (the paper uses r = 1024 on a d = 768
model): ΔW's rank is at most min(r, d_in, d_out) whatever r is.

One pair for the whole model, sliced per layer
-----------------------------------------------
As in PEFT, ONE A [r, max d_in] and ONE B [max d_out, r] are drawn, sized for the largest adapted
layer, and a layer of d_in inputs and d_out outputs uses the top-left slices A[:, :d_in] and
B[:d_out, :]. They are drawn from ``projection_prng_key``, Kaiming-uniform as PEFT draws them:
U(−√(6/fan_in), √(6/fan_in)), fan_in = max d_in for A and r for B. minift draws them with NumPy's
generator, PEFT with torch's: the same key gives different matrices. With ``save_projection``
(True, PEFT's default) the file carries A and B (``base_model.vera_A``, ``base_model.vera_B``), so
an adapter loads exactly both ways. Without it, a file holds only the vectors: minift's own file
records how minift drew A and B and a checksum of them, and loading redraws and compares; a file
PEFT wrote that way is refused (minift cannot redraw torch's matrices).

The forward, and its backward
-----------------------------
In minift's layout (y = x·W, W [in, out]) ΔW is (Λ_b·B·Λ_d·A)ᵀ = Aᵀ·Λ_d·Bᵀ·Λ_b, and, never
forming it (``x_lora`` is x after ``vera_dropout``):

    u = x_lora·Aᵀ   [N, r]      v = u ⊙ λ_d   [N, r]      z = v·Bᵀ   [N, out]
    y = x·W₀ + b + z ⊙ λ_b

Each step is a product or a scale, so backward walks them in reverse:

    dλ_b = Σ_N dy ⊙ z           dz = dy ⊙ λ_b          dv = dz·B
    dλ_d = Σ_N dv ⊙ u           du = dv ⊙ λ_d          dx_lora = du·A

and dx = dy·W₀ᵀ + dx_lora (through the dropout). A and B get no gradient: they are constants.

GPT-2's Conv1D
--------------
PEFT's VeRA wraps GPT-2's Conv1D itself (not only nn.Linear): it sets ``fan_in_fan_out`` to True
there, which only transposes the merged ΔW; A, B and the vectors are stored as above whatever the
layout. So minift's file for GPT-2 is PEFT's for GPT-2, key for key.

Trainable parameters per adapted layer: r + d_out (the shared A, B are not trained, and not
Params here: PEFT keeps them as buffers, outside its parameter count, and so does minift).

Shape legend: N positions (any leading shape ...), r rank, d_in / d_out the layer's in / out.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.errors import FileFormatError, check_int
from minift.nn import Linear
from minift.param import Param
from minift.peft.adapted import AdaptedLinear
from minift.peft.base import PeftConfig, PeftModel, register
from minift.peft.registry import TARGET_MODULES, Option, register_method
from minift.peft.targets import check_layer_fields, check_peft_only_fields, select_targets

# ------------------------------------------------------------------------------------------------
# The math, as pure functions


def vera_forward(x, W0, b, vera_lambda_d, vera_lambda_b, A, B, x_lora=None):
    """y = x·W₀ + b + λ_b ⊙ ((λ_d ⊙ (x_lora·Aᵀ))·Bᵀ), never forming ΔW.

    x [..., in], W0 [in, out], b [out] or None, λ_d [r], λ_b [out], A [r, in], B [out, r]
    -> y [..., out]
    """
    x_lora = x if x_lora is None else x_lora
    y, base_cache = F.linear_forward(x, W0, b)  # x·W₀ + b, (..., out)
    u = x_lora.reshape(-1, A.shape[1]) @ A.T  # (N, r)
    z = (u * vera_lambda_d) @ B.T  # (N, out)
    y2 = y.reshape(-1, B.shape[0])  # (N, out), a view of y (a fresh, contiguous array)
    y2 += z * vera_lambda_b
    return y, (base_cache, x_lora, u, z, vera_lambda_d, vera_lambda_b, A, B)


def vera_backward(dy, cache, need_base_grads=False):
    """Returns (dx, dx_lora, dλ_d, dλ_b, dW0, db); the module docstring has the equations.

    dx is the gradient through the frozen W₀ only, dx_lora the one through A (the caller adds
    them, after undoing the dropout on dx_lora). dW0 and db only when ``need_base_grads``.
    """
    base_cache, x_lora, u, z, lambda_d, lambda_b, A, B = cache
    dx, dW0, db = F.linear_backward(dy, base_cache, need_base_grads, need_base_grads)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
    # forward was y += z ⊙ λ_b, so dλ_b = Σ dy ⊙ z and dz = dy ⊙ λ_b
    dlambda_b = (dy2 * z).sum(axis=0)  # (out,)
    dv = (dy2 * lambda_b) @ B  # (N, r): z = v·Bᵀ
    # v = u ⊙ λ_d, so dλ_d = Σ dv ⊙ u and du = dv ⊙ λ_d
    dlambda_d = (dv * u).sum(axis=0)  # (r,)
    dx_lora = ((dv * lambda_d) @ A).reshape(x_lora.shape)  # (..., in): u = x_lora·Aᵀ
    return dx, dx_lora, dlambda_d, dlambda_b, dW0, (db if need_base_grads else None)


def vera_delta_weight(A, B, vera_lambda_d, vera_lambda_b):
    """ΔW in minift's layout: (Λ_b·B·Λ_d·A)ᵀ = (Aᵀ·Λ_d)·(Bᵀ·Λ_b).  # -> [in, out]"""
    return (A.T * vera_lambda_d) @ (B.T * vera_lambda_b)


# How minift draws A and B, as its files without the projections record it
PROJECTION_GENERATOR = "numpy default_rng(projection_prng_key), A then B, U(±sqrt(6/fan_in))"


def vera_projections(r: int, d_in: int, d_out: int, projection_prng_key: int):
    """The shared A [r, d_in] and B [d_out, r], Kaiming-uniform (fan_in: d_in for A, r for B),
    in float64; the same key always gives the same matrices (on one NumPy generator)."""
    rng = np.random.default_rng(projection_prng_key)
    A = rng.uniform(-np.sqrt(6 / d_in), np.sqrt(6 / d_in), (r, d_in))
    B = rng.uniform(-np.sqrt(6 / r), np.sqrt(6 / r), (d_out, r))
    return A, B


def projections_digest(A, B) -> str:
    """SHA-256 of A's and B's float64 bytes: what a file without them records."""
    h = hashlib.sha256()
    for M in (A, B):
        h.update(f"{M.shape}|".encode())
        h.update(np.ascontiguousarray(M, dtype="<f8").tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# The layer


class VeraLinear(AdaptedLinear):
    """A frozen Linear plus Λ_b·B·Λ_d·A: ``base_layer`` (W₀, b), the trainable ``vera_lambda_d``
    [r] and ``vera_lambda_b`` [out], and ``vera_A`` / ``vera_B``, the model's shared projections
    (plain arrays, the same objects in every layer), of which it uses the top-left slices.

    Its pair is ``vera_forward`` / ``vera_backward``; ``merge()`` adds ΔW to W₀, ``unmerge()``
    subtracts it. The dropout on the input of the random path is the template's ``lora_dropout``.
    """

    kind = "VeRA"
    delta_params = ("vera_lambda_d", "vera_lambda_b")
    delta_forward = staticmethod(vera_forward)
    delta_backward = staticmethod(vera_backward)

    def __init__(self, base_layer: Linear, vera_A, vera_B, vera_dropout=0.0, d_initial=0.1,
                 init_weights=True, *, rng):  # fmt: skip
        super().__init__(base_layer, vera_dropout, rng=rng)
        if vera_A.shape[1] < self.in_features or vera_B.shape[0] < self.out_features:
            raise ValueError(
                f"vera_A, vera_B: expected at least [r, {self.in_features}] and "
                f"[{self.out_features}, r] for this layer, got {vera_A.shape} and {vera_B.shape}"
            )
        self.vera_A, self.vera_B = vera_A, vera_B
        r, dtype = vera_A.shape[0], base_layer.weight.dtype
        if init_weights:
            lambda_d, lambda_b = np.full(r, d_initial), np.zeros(self.out_features)
        else:  # PEFT's, only to test that the method moves the output
            lambda_d, lambda_b = rng.standard_normal(r), np.ones(self.out_features)
        self.vera_lambda_d = Param(lambda_d.astype(dtype))
        self.vera_lambda_b = Param(lambda_b.astype(dtype))

    def delta_constants(self):
        return (self.vera_A[:, : self.in_features], self.vera_B[: self.out_features, :])

    def delta_weight(self) -> np.ndarray:  # [in, out]
        return vera_delta_weight(*self.delta_constants(), *self.delta_values())


# ------------------------------------------------------------------------------------------------
# The model: its file holds the shared projections once


class VeraModel(PeftModel):
    """get_peft_model's result for VeRA: a PeftModel whose file also holds the shared A and B
    (PEFT's ``base_model.vera_A`` / ``base_model.vera_B``), or, without ``save_projection``, a
    record of how minift drew them, checked on loading (module docstring)."""

    PROJECTION_KEYS = ("base_model.vera_A", "base_model.vera_B")
    METADATA_KEY = "minift_vera_projections"

    def projections(self):
        """(A, B) as the layers share them."""
        layer = self.get_submodule(self._tuner_layers()[0])
        return layer.vera_A, layer.vera_B

    def _drawn_record(self) -> str:
        cfg, (A, B) = self.peft_config, self.projections()
        drawn = vera_projections(cfg.r, A.shape[1], B.shape[0], cfg.projection_prng_key)
        return f"{PROJECTION_GENERATOR}; sha256 {projections_digest(*drawn)}"

    def adapter_state_dict(self):
        tensors = super().adapter_state_dict()
        if self.peft_config.save_projection:
            for key, M in zip(self.PROJECTION_KEYS, self.projections(), strict=True):
                tensors[key] = np.ascontiguousarray(M)
        return tensors

    def adapter_metadata(self):
        return {} if self.peft_config.save_projection else {self.METADATA_KEY: self._drawn_record()}

    def _load_adapter_tensors(self, tensors, path, config_path=None, metadata=None):
        tensors, loaded = dict(tensors), []
        saved = self.peft_config.save_projection
        if not saved:  # a projection in the file is then an unexpected key, refused below
            self._check_drawn_record(metadata or {}, path)
        pairs = zip(self.PROJECTION_KEYS, self.projections(), strict=True) if saved else ()
        for key, M in pairs:
            if key not in tensors:
                why = "save_projection is true, so the file must hold the shared projections"
                raise FileFormatError(path, f"missing key {key!r}: {why}")
            value = tensors.pop(key)
            if value.dtype.kind != "f" or value.shape != M.shape:
                got = f"{value.dtype} of shape {value.shape}"
                raise FileFormatError(path, f"expected floats of shape {M.shape}, got {got}", key)
            loaded.append((M, value))
        super()._load_adapter_tensors(tensors, path, config_path, metadata)
        for M, value in loaded:  # in place: every layer holds these same arrays
            np.copyto(M, value, casting="same_kind")

    def _check_drawn_record(self, metadata, path):
        record = metadata.get(self.METADATA_KEY)
        if record is None:
            raise FileFormatError(
                path,
                "save_projection is false, so vera_A and vera_B are not in the file, and no "
                "record says minift drew them: PEFT draws them with torch's generator, which "
                "minift cannot reproduce; save the adapter with save_projection=True",
            )
        if record != self._drawn_record():
            raise FileFormatError(
                path,
                f"expected vera_A and vera_B drawn as {self._drawn_record()!r}, got {record!r}: "
                "drawn by another generator, they would load as another model",
                self.METADATA_KEY,
            )


# ------------------------------------------------------------------------------------------------
# The config


@register
@dataclass
class VeraConfig(PeftConfig):
    """VeRA with PEFT's field names and defaults. Trainable count: Σ over targets of r + d_out.

    r                    the shared projections' rank (PEFT's default 256; may exceed d_in, d_out)
    projection_prng_key  the seed of A and B (minift's generator, not torch's: module docstring)
    save_projection      write A and B into the adapter file (True: it loads exactly anywhere)
    vera_dropout         dropout on the input of the random path
    d_initial            λ_d's value at init (λ_b starts at 0)
    init_weights         True: that init; False: λ_d ~ N(0, 1), λ_b = 1, as PEFT (for tests)
    fan_in_fan_out       the file's layout, None: the model's (see peft_files.hf_fan_in_fan_out)
    layers_to_transform, layers_pattern   only these blocks, as LoRA (targets.py)
    """

    r: int = 256
    projection_prng_key: int = 0
    save_projection: bool = True
    vera_dropout: float = 0.0
    d_initial: float = 0.1
    fan_in_fan_out: bool | None = None
    bias: str = "none"
    init_weights: bool = True
    layers_to_transform: int | list[int] | None = None
    layers_pattern: list[str] | str | None = None

    peft_type = "VERA"
    peft_model_class = VeraModel
    default_target_modules = ("c_attn",)  # PEFT's default for GPT-2

    def __post_init__(self):
        super().__post_init__()
        check_int("r", self.r)
        check_int("projection_prng_key", self.projection_prng_key, minimum=0)
        if not 0.0 <= self.vera_dropout < 1.0:
            raise ValueError(
                f"vera_dropout: expected a probability in [0, 1), got {self.vera_dropout}"
            )
        d = self.d_initial
        if isinstance(d, bool) or not isinstance(d, (int, float, np.number)) or not np.isfinite(d):
            raise ValueError(f"d_initial: expected a finite number, got {d!r}")
        for field in ("save_projection", "init_weights"):
            if not isinstance(getattr(self, field), bool):
                raise TypeError(f"{field}: expected True or False, got {getattr(self, field)!r}")
        check_peft_only_fields(self, "VeRA")
        check_layer_fields(self.layers_to_transform, self.layers_pattern, self.target_modules)

    def apply(self, model, rng):
        targets = self.target_modules or list(self.default_target_modules)
        names = select_targets(model, targets, None, self.layers_to_transform, self.layers_pattern)
        layers = [model.get_submodule(name) for name in names]
        d_in = max(layer.in_features for layer in layers)
        d_out = max(layer.out_features for layer in layers)
        dtype = layers[0].weight.dtype
        A, B = (M.astype(dtype) for M in vera_projections(self.r, d_in, d_out,
                                                          self.projection_prng_key))  # fmt: skip
        for name, layer in zip(names, layers, strict=True):
            wrapped = VeraLinear(layer, A, B, self.vera_dropout, self.d_initial, self.init_weights,
                                 rng=rng)  # fmt: skip
            model.set_submodule(name, wrapped)

    def peft_fields(self, peft_model):
        if not self.save_projection:
            warnings.warn(
                "save_projection=False: PEFT would draw other vera_A and vera_B (torch's "
                "generator) from projection_prng_key; only minift can load this adapter",
                stacklevel=4,
            )
        return {}


VERA_OPTIONS = [
    Option("r", "rank r", low=1),
    Option("vera_dropout", "dropout on VeRA's input", type=float, low=0, high=1, high_open=True),
    TARGET_MODULES,
]
VERA_DEFAULTS = {"r": 256, "target_modules": ["c_attn", "attn.c_proj"]}  # LoRA's targets

# the sweep chose larger learning rates than LoRA's for both kinds of task: VeRA trains only the
# scales of frozen random matrices
register_method("vera", VeraConfig, "VeRA r=256 on c_attn, attn.c_proj (Kopiczko et al. 2024)",
                lr=1e-1, classification_lr=3e-2, lr_grid=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
                defaults=VERA_DEFAULTS, options=VERA_OPTIONS)  # fmt: skip
