"""The mask D of sparse fine-tuning (sparse.py): which connections of a weight stay.

Exactly k = round(density · d_in · d_out) ones per matrix (Python's round, half to even), so
the count is a closed form, not a random number. ``mask="random"`` draws them uniformly without
replacement from a seed; ``mask="magnitude"`` keeps the k entries of largest |W₀| (ties to the
lower flat index). Other choices in the literature: the entries with the largest Fisher
information (FISH mask, Sung, Nair & Raffel, 2021), the entries that moved most in a first
full fine-tuning run (LT-SFT, Ansell et al., 2022), or a mask learned with a relaxed L₀ penalty
(diff pruning, Guo, Rush & Kim, 2021). The mask is drawn from ``SparseConfig.mask_seed`` and the
layer's name, not from ``get_peft_model``'s seed, so adapter_config.json alone rebuilds it.

Shape legend: d_in / d_out a weight's in / out, k the number of kept entries.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = [
    "MASKS",
    "check_choice",
    "check_density",
    "check_indices",
    "check_mask",
    "choose_mask_indices",
    "kept_count",
    "layer_mask_indices",
    "mask_from_indices",
]

MASKS = ("random", "magnitude")


def check_choice(value, choices, name):
    """value, if it is one of ``choices``; else a ValueError naming ``name`` and the choices."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def kept_count(density: float, n: int) -> int:
    """k = round(density · n): how many of n entries a mask of this density keeps."""
    return round(density * n)


def choose_mask_indices(W0, density, mask, rng, name="weight"):
    """The k = round(density·W₀.size) flat positions D keeps, sorted.  # [in, out] -> int [k]

    ``mask="random"``: uniform without replacement from ``rng``; ``"magnitude"``: the k
    largest |W₀| (a stable sort, so ties go to the lower flat index).
    """
    check_choice(mask, MASKS, "mask")
    n = W0.size
    k = kept_count(density, n)
    if k < 1:
        raise ValueError(
            f"density: {density} keeps round({density}·{n}) = 0 of the {n} entries of {name} "
            f"{W0.shape}; expected at least one (density > {0.5 / n:.3g})"
        )
    if mask == "random":
        chosen = rng.choice(n, size=k, replace=False)
    else:
        chosen = np.argsort(-np.abs(W0).reshape(-1), kind="stable")[:k]
    return np.sort(chosen).astype(np.int64)


def layer_mask_indices(W0, density, mask, mask_seed, name):
    """``choose_mask_indices`` for the layer called ``name``, drawn from (mask_seed, name).

    Not from get_peft_model's seed: the saved adapter_config.json (which holds ``mask_seed``)
    must rebuild the same mask, whatever seed the model is loaded with.
    """
    rng = np.random.default_rng([mask_seed, zlib.crc32(name.encode())])
    return choose_mask_indices(W0, density, mask, rng, name)


def check_density(density) -> float:
    """``density`` as a float, if it is a number in (0, 1]; else an error naming ``density``."""
    d = density
    if isinstance(d, bool) or not isinstance(d, (int, float, np.integer, np.floating)):
        raise TypeError(f"density: expected a number in (0, 1], got {d!r}")
    if not 0.0 < d <= 1.0:
        raise ValueError(f"density: expected a fraction in (0, 1], got {d}")
    return float(d)


def mask_from_indices(indices, shape):
    """D as a boolean array: True at the kept flat positions.  # int [k] -> bool [in, out]"""
    D = np.zeros(int(np.prod(shape)), dtype=bool)
    D[indices] = True
    return D.reshape(shape)


def check_mask(mask, shape):
    """D as a boolean array, if it has the weight's ``shape``; else a ValueError naming ``mask``.

    0/1 or bool [in, out] -> bool [in, out]
    """
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask: expected the weight's shape {tuple(shape)}, got {mask.shape}")
    return mask.astype(bool)


def check_indices(indices, shape):
    """indices as sorted int64, if they are distinct flat positions of a weight of ``shape``.

    int [k] -> int [k]; a ValueError naming ``indices`` otherwise.
    """
    indices = np.asarray(indices)
    size = int(np.prod(shape))
    if indices.ndim != 1 or indices.dtype.kind not in "iu" or indices.size == 0:
        raise ValueError(
            f"indices: expected a non-empty 1-D integer array of flat positions, got "
            f"shape {indices.shape} dtype {indices.dtype}"
        )
    if indices.min() < 0 or indices.max() >= size or np.unique(indices).size != indices.size:
        raise ValueError(
            f"indices: expected distinct flat positions in [0, {size}) for a weight of "
            f"shape {tuple(shape)}, got min {indices.min()}, max {indices.max()}"
        )
    return np.sort(indices).astype(np.int64)
