"""An optimizer's saved state, checked whole before any of it is restored.

``Optimizer.load_state_dict`` (minift.optim) hands what ``state_dict`` saved, tensors and meta,
to ``checked_state``, which refuses anything that does not fit the optimizer: another optimizer
type, other groups or params, a hyper-parameter out of range, a state tensor of another name,
shape or dtype, holding NaN or ±inf, or missing. Only then does the optimizer commit it, so a
failed load changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from minift.param import Param

__all__ = ["checked_state"]


def checked_state(
    optimizer: Any, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]], dict[str, int]]:
    """(each group's hyper-parameters, the state arrays, the step counts) that ``tensors`` and
    ``meta`` describe for ``optimizer``, every one checked; ValueError naming the first misfit.

    tensors   "<state name>/<param name>" -> array [*] (copies are returned)
    meta      {"type": …, "groups": [{<hyper-parameter>: …, "params": [names]}], "step_counts"}
    """
    this_type = type(optimizer).__name__
    if meta.get("type") != this_type:
        raise ValueError(
            f"optimizer type: this is {this_type}, the state was saved by {meta.get('type')!r}"
        )
    saved_groups = meta.get("groups")
    if not isinstance(saved_groups, list) or len(saved_groups) != len(optimizer.param_groups):
        count = len(saved_groups) if isinstance(saved_groups, list) else saved_groups
        raise ValueError(
            f"param groups: expected {len(optimizer.param_groups)} saved groups, got {count}"
        )

    param_of: dict[str, Param] = {}
    group_index_of: dict[str, int] = {}
    restored_hyper = []
    for i, (group, saved) in enumerate(zip(optimizer.param_groups, saved_groups, strict=True)):
        names, saved_names = list(group["params"]), list(saved.get("params", []))
        unknown = [n for n in saved_names if n not in group["params"]]
        if unknown:
            raise ValueError(
                f"param group {i}: unknown param {unknown[0]!r} in the saved state "
                "(this optimizer has no param of that name in this group)"
            )
        missing = [n for n in names if n not in saved_names]
        if missing:
            raise ValueError(f"param group {i}: param {missing[0]!r} missing from saved state")
        absent = [key for key in optimizer.defaults if key not in saved]
        if absent:
            raise ValueError(f"param group {i}: hyper-parameter {absent[0]!r} missing")
        hyper = {key: saved[key] for key in optimizer.defaults}
        restored_hyper.append(optimizer._check_hyper(hyper, f"saved param group {i}: "))
        for name in names:
            param_of[name] = group["params"][name]
            group_index_of[name] = i

    step_counts = dict(meta.get("step_counts", {}))
    for name, t in step_counts.items():
        if name not in param_of:
            raise ValueError(f"step_counts: unknown param {name!r}")
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
            raise ValueError(f"step_counts[{name!r}]: expected an integer >= 1, got {t!r}")

    state: dict[str, dict[str, np.ndarray]] = {}
    for key, array in tensors.items():
        kind, slash, name = key.partition("/")
        if not slash or kind not in optimizer.state_names:
            raise ValueError(
                f"state tensor {key!r}: expected '<state>/<param name>' with <state> one of "
                f"{optimizer.state_names}"
            )
        if name not in param_of:
            raise ValueError(f"state tensor {key!r}: unknown param {name!r}")
        if name not in step_counts:
            raise ValueError(f"state tensor {key!r}: param {name!r} has no step count in meta")
        value = param_of[name].value
        array = np.asarray(array)
        if array.shape != value.shape:
            raise ValueError(
                f"state tensor {key!r}: expected shape {value.shape}, got {array.shape}"
            )
        if array.dtype != value.dtype:
            raise ValueError(
                f"state tensor {key!r}: expected dtype {value.dtype}, got {array.dtype}"
            )
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
            raise ValueError(
                f"state tensor {key!r}: holds {array[where]} at {where}, expected finite numbers"
            )
        state.setdefault(name, {})[kind] = array.copy()  # a copy: stepping must not edit it
    for name in step_counts:
        for kind in optimizer._state_kinds(restored_hyper[group_index_of[name]]):
            if kind not in state.get(name, {}):
                raise ValueError(f"state tensor {kind + '/' + name!r} missing")

    return restored_hyper, state, {name: int(t) for name, t in step_counts.items()}
