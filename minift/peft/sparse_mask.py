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

import numpy as np

__all__ = [
    "MASKS",
    "check_choice",
    "check_indices",
    "choose_mask_indices",
    "kept_count",
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


def mask_from_indices(indices, shape):
    """D as a boolean array: True at the kept flat positions.  # int [k] -> bool [in, out]"""
    D = np.zeros(int(np.prod(shape)), dtype=bool)
    D[indices] = True
    return D.reshape(shape)


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
