"""Parameter groups: the forms an optimizer's ``params`` may take, the checks every
hyper-parameter passes, layer-wise learning-rate decay (one group per depth) and LoRA+ (B's
learning rate a multiple of A's).

A group is a dict ``{"params": {name: Param}, <hyper-parameter>: value, …}``. Names are GPT-2's
(the keys of ``model.named_parameters()``), so optimizer state, checkpoints and the trainable
masks speak the same keys. Hyper-parameters are returned as Python floats: under NumPy 2 (NEP 50)
a Python float keeps a float32 array float32, whereas an ``np.float64`` scalar would silently
upcast the result to float64.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from minift.param import Param

__all__ = [
    "params_by_name",
    "split_into_groups",
    "layerwise_lr_groups",
    "loraplus_param_groups",
    "sum_of_squares",
    "check_real",
    "check_lr",
    "check_weight_decay",
    "check_unit_interval",
    "check_bool",
]


# ---------------------------------------------------------------------------------------------
# Parameter groups
# ---------------------------------------------------------------------------------------------


def params_by_name(params: Any, where: str, next_index: list[int]) -> dict[str, Param]:
    """A group's "params" as a dict name -> Param. A list is named by position: "0", "1", ...

    ``next_index`` is shared by all the groups of one optimizer, so that lists in two different
    groups continue the numbering ("0", "1" | "2", "3") instead of both starting at "0".
    """
    if isinstance(params, Param):
        raise TypeError(
            f"{where}: expected a dict name -> Param or a list of Params, got a single Param "
            "(wrap it in a list)"
        )
    if isinstance(params, Mapping):
        named = {}
        for name, p in params.items():
            if not isinstance(name, str):
                raise TypeError(f"{where}: expected str names, got {type(name).__name__} {name!r}")
            if not isinstance(p, Param):
                raise TypeError(f"{where}[{name!r}]: expected a Param, got {type(p).__name__}")
            named[name] = p
        return named
    if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(
            f"{where}: expected a dict name -> Param or a list of Params, "
            f"got {type(params).__name__}"
        )
    named = {}
    for position, p in enumerate(params):
        if not isinstance(p, Param):
            raise TypeError(f"{where}[{position}]: expected a Param, got {type(p).__name__}")
        named[str(next_index[0])] = p
        next_index[0] += 1
    return named


def split_into_groups(params: Any) -> list[dict[str, Any]]:
    """Every accepted form of ``params`` as a list of group dicts whose "params" is name -> Param.

    Accepted: a dict name -> Param, a list of Params, or a list of group dicts
    ``{"params": <dict or list>, <per-group options>}``. Each Param and each name may appear once
    across all groups: a Param listed twice would be stepped twice per step.
    """
    if isinstance(params, Param):
        raise TypeError("params: expected a dict name -> Param or a list, got a single Param")
    if isinstance(params, Mapping):
        raw_groups = [{"params": params}]
    elif isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(
            "params: expected a dict name -> Param, a list of Params or a list of param-group "
            f"dicts, got {type(params).__name__}"
        )
    else:
        items = list(params)
        if not items:
            raise ValueError("params: expected at least one Param, got an empty list")
        is_group = [isinstance(item, Mapping) for item in items]
        if all(is_group):
            raw_groups = items
        elif any(is_group):
            raise TypeError("params: expected a list of Params OR a list of group dicts, got a mix")
        else:
            raw_groups = [{"params": items}]

    next_index = [0]
    group_of_name: dict[str, int] = {}
    name_of_param: dict[int, str] = {}  # id(Param) -> its name, to catch a Param listed twice
    groups = []
    for i, raw in enumerate(raw_groups):
        if "params" not in raw:
            raise ValueError(f"param group {i}: missing the 'params' key (got keys {sorted(raw)})")
        named = params_by_name(raw["params"], f"param group {i} 'params'", next_index)
        if not named:
            raise ValueError(f"param group {i}: 'params' is empty, expected at least one Param")
        for name, p in named.items():
            if name in group_of_name:
                raise ValueError(
                    f"params: the name {name!r} appears twice "
                    f"(param groups {group_of_name[name]} and {i})"
                )
            if id(p) in name_of_param:
                raise ValueError(
                    f"params: the same Param is listed twice, as {name_of_param[id(p)]!r} and "
                    f"{name!r} (a shared weight must be listed once, or it is stepped twice)"
                )
            group_of_name[name] = i
            name_of_param[id(p)] = name
        groups.append({**raw, "params": named})
    return groups


# ---------------------------------------------------------------------------------------------
# Hyper-parameter checks: each returns a Python float (NEP 50, see above)
# ---------------------------------------------------------------------------------------------


def check_real(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}{name}: expected a real number, got {type(value).__name__}")
    return float(value)


def check_lr(value: Any, where: str = "") -> float:
    lr = check_real(value, "lr", where)
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"{where}lr: expected a finite number >= 0, got {lr}")
    return lr


def check_weight_decay(value: Any, where: str = "") -> float:
    weight_decay = check_real(value, "weight_decay", where)
    if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
        raise ValueError(f"{where}weight_decay: expected a finite number >= 0, got {weight_decay}")
    return weight_decay


def check_unit_interval(value: Any, name: str, where: str = "") -> float:
    """A decay rate in [0, 1): 1 would never forget, so the buffer would grow without bound."""
    x = check_real(value, name, where)
    if not 0.0 <= x < 1.0:
        raise ValueError(f"{where}{name}: expected a number in [0, 1), got {x}")
    return x


def check_bool(value: Any, name: str, where: str = "") -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}{name}: expected True or False, got {type(value).__name__}")
    return bool(value)


def sum_of_squares(x: np.ndarray) -> float:
    """Σ x² accumulated in float64, so a float32 sum of many squares neither overflows nor drops
    small terms. (A temporary copy for a scalar; the parameters and state stay in their dtype.)"""
    flat = np.asarray(x).ravel().astype(np.float64, copy=False)  # [n]
    return float(np.dot(flat, flat))


# ---------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (discriminative fine-tuning)
# ---------------------------------------------------------------------------------------------

# a whole path component "h.{i}.": "transformer.h.3.mlp.c_fc.weight" is block 3, "each.0.w" is not
_BLOCK_NAME = re.compile(r"(?:^|\.)h\.(\d+)\.")
_EMBEDDING_NAME = re.compile(r"(?:^|\.)(?:wte|wpe)\.")


def layerwise_lr_groups(
    named_params: Mapping[str, Param],
    base_lr: float,
    decay: float,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Param groups whose lr shrinks from the head down (ULMFiT's discriminative fine-tuning,
    Howard & Ruder 2018; "layer-wise lr decay").

    Lower layers hold more general features that fine-tuning should disturb less. With L blocks
    and decay γ in (0, 1], a param's depth is read from its GPT-2 name:

        top         everything else (ln_f.*, heads such as score.*)   lr = base_lr
        block i     names containing the component  h.{i}.            lr = base_lr · γ^(L − i)
        embeddings  wte.*, wpe.*                                      lr = base_lr · γ^(L + 1)

    so the last block h.{L−1} gets base_lr·γ and block 0 gets base_lr·γ^L. L is one more than the
    largest block index among ALL the given params, frozen ones included: that is the number of
    blocks of the model, even when its lower blocks are frozen and so absent from the groups.

    Returns ``[{"name": "embeddings" | "h.{i}" | "top", "params": {name: Param}, "lr": ...,
    "weight_decay": weight_decay}, ...]`` from the bottom up, for SGD or AdamW. Frozen params are
    left out, and so is a group with no trainable param.
    """
    named = params_by_name(named_params, "named_params", [0])
    base_lr = check_lr(base_lr, "base_")
    decay = check_real(decay, "decay", "")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay: expected a number in (0, 1], got {decay}")
    weight_decay = check_weight_decay(weight_decay)

    def depth(name: str) -> str:
        block = _BLOCK_NAME.search(name)
        if block is not None:
            return f"h.{int(block.group(1))}"
        if _EMBEDDING_NAME.search(name) is not None:
            return "embeddings"
        return "top"

    block_indices = [int(m.group(1)) for name in named if (m := _BLOCK_NAME.search(name))]
    n_blocks = max(block_indices) + 1 if block_indices else 0  # L

    lr_of = {"embeddings": base_lr * decay ** (n_blocks + 1), "top": base_lr}
    for i in range(n_blocks):
        lr_of[f"h.{i}"] = base_lr * decay ** (n_blocks - i)

    members: dict[str, dict[str, Param]] = {key: {} for key in lr_of}
    for name, p in named.items():
        if p.trainable:
            members[depth(name)][name] = p

    order = ["embeddings", *(f"h.{i}" for i in range(n_blocks)), "top"]  # bottom up
    return [
        {"name": key, "params": members[key], "lr": lr_of[key], "weight_decay": weight_decay}
        for key in order
        if members[key]
    ]


# A LayerNorm's gain and shift, GPT-2's (ln_1, ln_f) and BERT's (LayerNorm): never decayed
_NORM_NAME = re.compile(r"(^|\.)(ln_\w+|LayerNorm)\.")


def loraplus_param_groups(
    named_params: Mapping[str, Param], lr: float, loraplus_lr_ratio: float, *, weight_decay=0.0
) -> list[dict[str, Any]]:
    """LoRA+ (Hayou et al., 2024): B learns ``loraplus_lr_ratio`` times faster than A.

    With A [r, in] and B [out, r] of very unequal widths, one learning rate for both is not the
    efficient choice; LoRA+ sets η_B = λ·η_A, with λ > 1 (PEFT's ``loraplus_lr_ratio``). The
    groups are those of PEFT's ``create_loraplus_optimizer``, and like it, by the parameters'
    names and shapes:

        "A"           lora_A and every other trainable matrix          lr,     weight_decay
        "B"           lora_B, and every other 1-D parameter (a bias,   λ·lr,   weight_decay
                      DoRA's magnitude …)
        "B_no_decay"  those of "B" that are biases or LayerNorm's      λ·lr,   0

    Frozen params are left out, and so is a group with no trainable param. A schedule scales
    every group's lr by the same factor (minift.schedule), so the ratio holds throughout.
    """
    named = params_by_name(named_params, "named_params", [0])
    lr = check_lr(lr)
    ratio = check_real(loraplus_lr_ratio, "loraplus_lr_ratio", "")
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"loraplus_lr_ratio: expected a finite number > 0, got {ratio}")
    weight_decay = check_weight_decay(weight_decay)
    members: dict[str, dict[str, Param]] = {"A": {}, "B": {}, "B_no_decay": {}}
    for name, p in named.items():
        if not p.trainable:
            continue
        if "lora_B" not in name and p.value.ndim != 1:
            members["A"][name] = p
        elif "bias" in name or _NORM_NAME.search(name):
            members["B_no_decay"][name] = p
        else:
            members["B"][name] = p
    settings = {
        "A": (lr, weight_decay),
        "B": (ratio * lr, weight_decay),
        "B_no_decay": (ratio * lr, 0.0),
    }
    return [
        {
            "name": key,
            "params": members[key],
            "lr": settings[key][0],
            "weight_decay": settings[key][1],
        }
        for key in members
        if members[key]
    ]
