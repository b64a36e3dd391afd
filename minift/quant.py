r"""NF4: the 4-bit NormalFloat quantization of QLoRA (Dettmers et al., 2023), in NumPy.

QLoRA keeps the frozen base in 4 bits and trains LoRA on top (the LoRA part is minift/peft/
qlora.py); this file is the 4 bits. Derivation: derivations/13-qlora-nf4.md.

The 16 levels (the paper's §3 and appendix; bitsandbytes' ``create_normal_map``)
--------------------------------------------------------------------------------
Pretrained weights are close to normal, so the levels are quantiles of N(0, 1): equal numbers
of weights fall between neighbouring levels. A symmetric set of 16 would have no exact 0, so NF4
takes 8 positive and 7 negative quantiles, adds 0, and scales the set into [−1, 1]:

    δ = ½(1/32 + 1/30),   Φ⁻¹ the normal quantile function
    positive:  Φ⁻¹(pᵢ) for pᵢ = 8 of the 9 evenly spaced points from 1 − δ down to ½ (½ left out)
    negative: −Φ⁻¹(pⱼ) for pⱼ = 7 of the 8 evenly spaced points from 1 − δ down to ½ (½ left out)
    q = sorted(positive ∪ {0} ∪ negative) / Φ⁻¹(1 − δ)          (q₀ = −1, q₇ = 0, q₁₅ = 1)

(1 − δ rather than 1: Φ⁻¹(1) is infinite; δ is the midpoint of the two outermost quantile
offsets, 1/32 and 1/30, of 16 and 15 equal slices.)

Block-wise absmax quantization (block size B = 64)
--------------------------------------------------
The weight, flattened, is cut into blocks of B values (the last may be shorter). Each block k
keeps its absolute maximum cₖ = max |wᵢ| (float32) and each value the index of the level nearest
to wᵢ/cₖ:

    codeᵢ = argmin_j |q_j − wᵢ/cₖ|          ŵᵢ = q[codeᵢ] · cₖ

so |wᵢ − ŵᵢ| ≤ ½ max_j (q_{j+1} − q_j) · cₖ, and a block of zeros (cₖ = 0) comes back as zeros.
Two 4-bit codes share a byte (the first in the high nibble, as bitsandbytes packs them).

Double quantization (the paper's §3)
------------------------------------
A float32 cₖ per 64 weights costs 32/64 = 0.5 bits per weight. Double quantization centres the
constants (c − mean(c): they are all positive, so centring uses the signed range) and quantizes
them in blocks of 256 to 8 bits, keeping one float32 scale per 256 constants and the mean:

    bits per weight = 4 + 8/64 + 32/(64·256) ≈ 4.127          (without: 4 + 32/64 = 4.5)

The paper uses 8-bit floats for the second step; here the 8 bits are the paper's own Eq. (1),
symmetric absmax int8: c₂ = round(127 · (c − mean)/s) with s the block's max |c − mean|. Same
size, a uniform grid instead of a float one (measured by benchmarks/qlora.py).

The layer
---------
``NF4Linear`` is a frozen Linear whose W₀ is stored as codes and scales (its ``buffers``, saved
with the model's state dict). Its forward dequantizes W₀ into the compute dtype and multiplies;
its backward returns dx through that dequantized W₀ and no dW (the codes do not train):

    y = x·Ŵ₀ + b        dx = dy·Ŵ₀ᵀ        db = Σ dy (if b trains)

Shape legend: n = d_in·d_out weights, nb = ⌈n/B⌉ blocks, N positions (any leading shape ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from minift import functional as F
from minift.nn import Linear, Module
from minift.param import Param

__all__ = [
    "NF4_DELTA",
    "NF4_LEVELS",
    "nf4_levels",
    "quantize_blockwise",
    "dequantize_blockwise",
    "pack_4bit",
    "unpack_4bit",
    "quantize_absmax_int8",
    "dequantize_absmax_int8",
    "NF4Weight",
    "nf4_quantize",
    "nf4_dequantize",
    "nf4_linear_forward",
    "nf4_linear_backward",
    "NF4Linear",
    "QuantConfig",
    "quantize_model",
]

# ------------------------------------------------------------------------------------------------
# The 16 levels

NF4_DELTA = 0.5 * (1 / 32 + 1 / 30)


def nf4_levels() -> np.ndarray:
    """The 16 NF4 levels q, ascending, in [−1, 1], with q₇ = 0 (see the module docstring)."""
    # The standard library's normal quantile (Wichura's AS241, to ~1e-16), not scipy.stats': the
    # levels are built at import, and importing scipy.stats would cost every process a second.
    ppf = np.vectorize(NormalDist().inv_cdf)
    positive = ppf(np.linspace(1 - NF4_DELTA, 0.5, 9)[:-1])  # 8, ½ left out
    negative = -ppf(np.linspace(1 - NF4_DELTA, 0.5, 8)[:-1])  # 7, ½ left out
    q = np.sort(np.concatenate([negative, [0.0], positive]))
    return q / ppf(1 - NF4_DELTA)


NF4_LEVELS = nf4_levels()  # float64 [16]
DOUBLE_QUANT_BLOCKSIZE = 256  # the paper's block size for the constants


# ------------------------------------------------------------------------------------------------
# Block-wise absmax quantization onto a codebook, and 4-bit packing


def _check_blocksize(blocksize) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)):
        raise TypeError(f"blocksize: expected an integer, got {blocksize!r}")
    if blocksize < 2 or blocksize % 2:
        raise ValueError(
            f"blocksize: expected an even integer ≥ 2 (2 codes a byte), got {blocksize}"
        )


def _check_float(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, got {np.size(x) - np.isfinite(x).sum()} "
                         "non-finite")  # fmt: skip
    return x


def _blocks(x: np.ndarray, blocksize: int) -> np.ndarray:
    """x [n] zero-padded to whole blocks: [nb, B] (padding never raises a block's absmax)."""
    nb = -(-x.size // blocksize)
    return np.pad(x, (0, nb * blocksize - x.size)).reshape(nb, blocksize)


def quantize_blockwise(x, levels, blocksize: int):
    """codeᵢ = argmin_j |levels_j − xᵢ/cₖ| with cₖ = max |x| over xᵢ's block.

    x [n] float, levels [L] ascending -> (codes uint8 [n], absmax float32 [nb]). An all-zero
    block has cₖ = 0 and every code that of the level nearest 0.
    """
    x = _check_float(x, "x").ravel()
    _check_blocksize(blocksize)
    blocks = _blocks(x, blocksize)  # (nb, B)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)  # (nb,), the stored constants
    scale = np.where(absmax > 0, absmax, 1).astype(np.float64)[:, None]  # 0/0 nowhere
    normed = blocks / scale  # (nb, B) in [−1, 1]
    # the nearest level: count the midpoints below (a tie goes to the upper level)
    midpoints = (levels[1:] + levels[:-1]) / 2
    codes = np.searchsorted(midpoints, normed, side="right").astype(np.uint8)
    return codes.ravel()[: x.size], absmax


def dequantize_blockwise(codes, absmax, levels, blocksize: int, dtype=np.float32):
    """x̂ᵢ = levels[codeᵢ] · cₖ.  # uint8 [n], float [nb] -> dtype [n]"""
    _check_blocksize(blocksize)
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(f"codes: expected dtype uint8, got {codes.dtype}")
    nb = -(-codes.size // blocksize)
    if np.shape(absmax) != (nb,):
        raise ValueError(f"absmax: expected shape ({nb},) for {codes.size} codes in blocks of "
                         f"{blocksize}, got {np.shape(absmax)}")  # fmt: skip
    scale = np.repeat(np.asarray(absmax, dtype=np.float64), blocksize)[: codes.size]  # (n,)
    return (np.asarray(levels, dtype=np.float64)[codes] * scale).astype(dtype)


def pack_4bit(codes):
    """Two codes a byte, the first in the high nibble.  # uint8 [n] (each < 16) -> uint8 [⌈n/2⌉]"""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 1:
        raise TypeError(f"codes: expected a 1-D uint8 array, got {codes.ndim}-D {codes.dtype}")
    if codes.size and codes.max() > 15:
        raise ValueError(f"codes: expected 4-bit codes (0..15), got {codes.max()}")
    padded = np.pad(codes, (0, codes.size % 2))  # an odd count: a zero low nibble at the end
    return (padded[0::2] << 4) | padded[1::2]


def unpack_4bit(packed, n: int):
    """The inverse of ``pack_4bit``.  # uint8 [⌈n/2⌉] -> uint8 [n]"""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.shape != (-(-n // 2),):
        raise ValueError(f"packed: expected uint8 [{-(-n // 2)}] for {n} codes, got "
                         f"{packed.dtype} {list(packed.shape)}")  # fmt: skip
    return np.stack([packed >> 4, packed & 0x0F], axis=1).ravel()[:n]


# ------------------------------------------------------------------------------------------------
# Double quantization of the constants


def quantize_absmax_int8(c, blocksize: int = DOUBLE_QUANT_BLOCKSIZE):
    """c₂ = round(127·(c − μ)/sₖ), sₖ = max |c − μ| over the block, μ = mean(c).

    c [nb] float32 -> (c2 int8 [nb], s float32 [⌈nb/blocksize⌉], μ float32 [1])
    """
    c = _check_float(c, "absmax").astype(np.float32)
    mean = np.array([c.mean()], dtype=np.float32)
    centred = c.astype(np.float64) - mean[0]
    blocks = _blocks(centred, blocksize)  # (⌈nb/256⌉, 256)
    s = np.abs(blocks).max(axis=1).astype(np.float32)
    safe = np.where(s > 0, s, 1).astype(np.float64)[:, None]
    c2 = np.rint(127 * blocks / safe).astype(np.int8).ravel()[: c.size]
    return c2, s, mean


def dequantize_absmax_int8(c2, s, mean, blocksize: int = DOUBLE_QUANT_BLOCKSIZE):
    """ĉ = c₂·sₖ/127 + μ.  # int8 [nb], float32 [⌈nb/256⌉], [1] -> float32 [nb]"""
    scale = np.repeat(np.asarray(s, dtype=np.float64), blocksize)[: np.size(c2)]
    c = np.asarray(c2, dtype=np.float64) * scale / 127 + float(mean[0])
    return np.maximum(c, 0).astype(np.float32)  # an absmax is ≥ 0; rounding may dip below


# ------------------------------------------------------------------------------------------------
# A whole weight in NF4


@dataclass
class NF4Weight:
    """A weight of ``shape`` in NF4: packed codes, and its absmax constants, either as float32
    (``absmax``) or double-quantized (``absmax_codes``, ``absmax_scale``, ``absmax_mean``)."""

    shape: tuple[int, ...]
    blocksize: int
    codes: np.ndarray  # uint8 [⌈n/2⌉], two codes a byte
    absmax: np.ndarray | None = None  # float32 [nb]
    absmax_codes: np.ndarray | None = None  # int8 [nb]
    absmax_scale: np.ndarray | None = None  # float32 [⌈nb/256⌉]
    absmax_mean: np.ndarray | None = None  # float32 [1]

    @property
    def double_quant(self) -> bool:
        return self.absmax is None

    def constants(self) -> np.ndarray:  # float32 [nb]
        if not self.double_quant:
            return self.absmax
        return dequantize_absmax_int8(self.absmax_codes, self.absmax_scale, self.absmax_mean)

    def nbytes(self) -> int:
        """What the weight takes in memory: codes and constants."""
        arrays = (self.codes, self.absmax, self.absmax_codes, self.absmax_scale, self.absmax_mean)
        return sum(a.nbytes for a in arrays if a is not None)


def nf4_quantize(W, blocksize: int = 64, double_quant: bool = False) -> NF4Weight:
    """W (any shape, float32/float64) in NF4, block-wise over W flattened in C order."""
    W = _check_float(W, "W")
    codes, absmax = quantize_blockwise(W.ravel(), NF4_LEVELS, blocksize)
    q = NF4Weight(W.shape, blocksize, pack_4bit(codes))
    if double_quant:
        q.absmax_codes, q.absmax_scale, q.absmax_mean = quantize_absmax_int8(absmax)
    else:
        q.absmax = absmax
    return q


def nf4_dequantize(q: NF4Weight, dtype=np.float32) -> np.ndarray:
    """Ŵ = q[code] · c, in ``dtype``, of the weight's shape."""
    n = math.prod(q.shape)
    codes = unpack_4bit(q.codes, n)
    return dequantize_blockwise(codes, q.constants(), NF4_LEVELS, q.blocksize, dtype).reshape(
        q.shape
    )


# ------------------------------------------------------------------------------------------------
# The frozen NF4 Linear: its pure pair, then the layer


def nf4_linear_forward(x, q: NF4Weight, b=None):
    """y = x·Ŵ₀ + b, Ŵ₀ dequantized in x's dtype.  # [..., in], NF4 [in, out], [out] -> [.., out]"""
    return F.linear_forward(x, nf4_dequantize(q, x.dtype), b)


def nf4_linear_backward(dy, cache, need_db=False):
    """dx = dy·Ŵ₀ᵀ through the dequantized weight; no dW (codes do not train); db = Σ dy if
    ``need_db``. Returns (dx [..., in], db [out] or None)."""
    dx, _, db = F.linear_backward(dy, cache, need_dW=False, need_db=need_db)
    return dx, db


class NF4Linear(Linear):
    """A frozen Linear stored in NF4: ``weight_codes`` and the constants as buffers, ``bias`` a
    float Param. ``weight`` reads as a frozen Param of the dequantized Ŵ₀ (made on each read,
    in ``dtype``), so code that reads a Linear's weight (LoRA's template) reads Ŵ₀."""

    def __init__(self, q: NF4Weight, bias, dtype):
        if len(q.shape) != 2:
            raise ValueError(f"q: expected a 2-D weight [in, out], got shape {q.shape}")
        self.in_features, self.out_features = q.shape
        self.blocksize = q.blocksize
        self.dtype = np.dtype(dtype)
        self.weight_codes = q.codes
        if q.double_quant:
            self.weight_absmax_codes = q.absmax_codes
            self.weight_absmax_scale = q.absmax_scale
            self.weight_absmax_mean = q.absmax_mean
            self.buffers = ("weight_codes", "weight_absmax_codes", "weight_absmax_scale",
                            "weight_absmax_mean")  # fmt: skip
        else:
            self.weight_absmax = q.absmax
            self.buffers = ("weight_codes", "weight_absmax")
        self.bias = bias
        self._cache = None

    @classmethod
    def from_linear(cls, layer: Linear, blocksize: int = 64, double_quant: bool = False):
        """Quantize a Linear's W₀; its bias stays the same Param."""
        W = layer.weight.value
        return cls(nf4_quantize(W, blocksize, double_quant), layer.bias, W.dtype)

    def nf4_weight(self) -> NF4Weight:
        names = ("codes", "absmax", "absmax_codes", "absmax_scale", "absmax_mean")
        arrays = {n: getattr(self, "weight_" + n, None) for n in names}
        return NF4Weight((self.in_features, self.out_features), self.blocksize, **arrays)

    def dequantize(self) -> np.ndarray:  # [in, out]
        return nf4_dequantize(self.nf4_weight(), self.dtype)

    @property
    def weight(self):
        return Param(self.dequantize(), trainable=False)

    @weight.setter
    def weight(self, value):
        raise TypeError(
            "weight: an NF4Linear's weight is quantized and frozen; build a new layer with "
            "NF4Linear.from_linear instead of writing it"
        )

    def nbytes(self) -> int:
        return self.nf4_weight().nbytes()

    def float_linear(self, W=None) -> Linear:
        """A float Linear holding W (default: Ŵ₀), frozen, with a copy of this layer's bias."""
        W = self.dequantize() if W is None else W
        bias = self.bias is not None
        layer = Linear(*W.shape, bias, rng=np.random.default_rng(0), dtype=self.dtype)
        layer.weight = Param(np.array(W, dtype=self.dtype), trainable=False)
        if bias:
            layer.bias = Param(self.bias.value.copy(), trainable=self.bias.trainable)
        return layer

    def forward(self, x):  # [..., in] -> [..., out]
        b = None if self.bias is None else self.bias.value
        out, self._cache = nf4_linear_forward(x, self.nf4_weight(), b)
        return out

    def backward(self, dout):  # [..., out] -> [..., in]
        need_db = self.bias is not None and self.bias.trainable
        dx, db = nf4_linear_backward(dout, self._cache, need_db)
        if db is not None:
            self.bias.accumulate_grad(db)
        return dx


# ------------------------------------------------------------------------------------------------
# Quantizing a model's blocks


@dataclass
class QuantConfig:
    """How ``quantize_model`` stores the frozen base (bitsandbytes' ``bnb_4bit_quant_type``,
    ``bnb_4bit_use_double_quant``; its block size is 64)."""

    quant_type: str = "nf4"  # NF4 only (bitsandbytes' "fp4" is not here)
    blocksize: int = 64
    double_quant: bool = False

    def __post_init__(self):
        if self.quant_type != "nf4":
            raise ValueError(f"quant_type: expected 'nf4', got {self.quant_type!r}")
        _check_blocksize(self.blocksize)
        if not isinstance(self.double_quant, bool):
            raise TypeError(f"double_quant: expected True or False, got {self.double_quant!r}")


BLOCK_LIST = "h"  # GPT-2's name for the list of transformer blocks


def quantize_model(model: Module, config: QuantConfig | None = None) -> list[str]:
    """Replace every Linear inside the blocks (``h.*``) with its NF4Linear, in place; the
    embeddings, the tied LM head and a classifier's head stay in float. Returns the names.

    A layer that is already quantized, or wrapped by a method, is refused: quantize first,
    then ``get_peft_model``.
    """
    config = QuantConfig() if config is None else config
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config: expected a QuantConfig, got {type(config).__name__}")
    names = []
    for name, module in list(model.named_modules()):
        in_blocks = name.split(".", 1)[0] == BLOCK_LIST
        if hasattr(module, "base_layer") and in_blocks:
            raise TypeError(
                f"model: {name} is wrapped by a fine-tuning method already; quantize the base "
                "before get_peft_model"
            )
        if isinstance(module, NF4Linear):
            raise TypeError(f"model: {name} is quantized already")
        if in_blocks and isinstance(module, Linear):
            names.append(name)
    if not names:
        raise ValueError(f"model: no Linear inside {BLOCK_LIST!r} to quantize")
    for name in names:
        layer = NF4Linear.from_linear(
            model.get_submodule(name), config.blocksize, config.double_quant
        )
        model.set_submodule(name, layer)
    return names
