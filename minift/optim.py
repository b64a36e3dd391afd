"""Optimizers: how an accumulated gradient becomes a step of the parameters.

    SGD           θ ← θ − α ∂L/∂θ, the article's equation A2 (+ momentum, L2 decay)
    AdamW         Adam's bias-corrected moments with weight decay DECOUPLED from the gradient
                  (Loshchilov & Hutter 2019), as torch.optim.AdamW computes it
    LARS / LAMB   the same two updates, rescaled per parameter by a trust ratio ‖θ‖/‖u‖
                  (You et al. 2017 / 2019): the article's §2.2 "adaptive per-layer learning rate"

and the tools a fine-tuning loop uses around them: parameter groups with their own hyper-parameters,
layer-wise learning-rate decay (`layerwise_lr_groups`), global gradient clipping (`clip_grad_norm`),
a warm-up + cosine schedule (`warmup_cosine`, `LRScheduler`), and optimizer state that a checkpoint
saves and restores bit-exactly (`state_dict`, `load_state_dict`).

Notation. Every per-parameter array has the shape of its parameter, written [*]:

    θ        a parameter's value, Param.value                                [*]
    g        its accumulated gradient ∂L/∂θ, Param.grad                      [*]
    α        learning rate ("lr", per group)
    λ        weight decay ("weight_decay", per group)
    μ, b     SGD momentum and its buffer ("momentum_buffer")                 [*]
    β1, β2   Adam's decay rates ("betas")
    m, v     Adam's first and second moments ("exp_avg", "exp_avg_sq")       [*]
    ε        Adam's denominator guard ("eps")
    t        a parameter's step count: 1 at its first update
    u        the update direction, θ ← θ − α·u                                [*]
    r        trust ratio ‖θ‖ / ‖u‖, with ‖·‖ the L2 norm over all entries
    [N]      a flat list of N entries (one per param group)

Conventions, each for a reason:

- Params are named (GPT-2's names, the keys of ``model.named_parameters()``); optimizer state is
  keyed by those names, so a checkpoint's optimizer tensors read ``exp_avg/h.0.attn.c_attn.weight``.
- Every update is IN PLACE on ``Param.value`` (``-=``, ``*=``): a module holding a reference to
  the array, or two modules sharing one Param, see the new values without being told.
- Hyper-parameters are stored as Python floats. Under NumPy 2 (NEP 50) a Python float keeps a
  float32 array float32, whereas an ``np.float64`` scalar would silently upcast the result to
  float64. State arrays are allocated in the parameter's dtype for the same reason.
- A frozen Param (``trainable=False``) is skipped entirely and never holds state; a trainable
  Param whose ``grad`` is None (no backward reached it) is skipped for that step, and its step
  count t starts at its first gradient (as in PyTorch).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from minift.param import Param

__all__ = [
    "Optimizer",
    "SGD",
    "AdamW",
    "layerwise_lr_groups",
    "clip_grad_norm",
    "warmup_cosine",
    "LRScheduler",
]


# ---------------------------------------------------------------------------------------------
# Parameter groups
# ---------------------------------------------------------------------------------------------


def _named_params(params: Any, where: str, next_index: list[int]) -> dict[str, Param]:
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


def _split_into_groups(params: Any) -> list[dict[str, Any]]:
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
        named = _named_params(raw["params"], f"param group {i} 'params'", next_index)
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
# Hyper-parameter checks: each returns a Python float (see NEP 50 in the module docstring)
# ---------------------------------------------------------------------------------------------


def _real(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}{name}: expected a real number, got {type(value).__name__}")
    return float(value)


def _check_lr(value: Any, where: str = "") -> float:
    lr = _real(value, "lr", where)
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"{where}lr: expected a finite number >= 0, got {lr}")
    return lr


def _check_weight_decay(value: Any, where: str = "") -> float:
    weight_decay = _real(value, "weight_decay", where)
    if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
        raise ValueError(f"{where}weight_decay: expected a finite number >= 0, got {weight_decay}")
    return weight_decay


def _check_unit_interval(value: Any, name: str, where: str = "") -> float:
    """A decay rate in [0, 1): 1 would never forget, so the buffer would grow without bound."""
    x = _real(value, name, where)
    if not 0.0 <= x < 1.0:
        raise ValueError(f"{where}{name}: expected a number in [0, 1), got {x}")
    return x


def _check_bool(value: Any, name: str, where: str = "") -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}{name}: expected True or False, got {type(value).__name__}")
    return bool(value)


# ---------------------------------------------------------------------------------------------
# Norms and the trust ratio
# ---------------------------------------------------------------------------------------------


def _sum_of_squares(x: np.ndarray) -> float:
    """Σ x² accumulated in float64, so a float32 sum of many squares neither overflows nor drops
    small terms. (A temporary copy for a scalar; the parameters and state stay in their dtype.)"""
    flat = np.asarray(x).ravel().astype(np.float64, copy=False)  # [n]
    return float(np.dot(flat, flat))


def _trust_ratio(theta: np.ndarray, update: np.ndarray) -> float:
    """r = ‖θ‖ / ‖u‖, and r = 1 when either norm is 0.

    Why 1 for ‖θ‖ = 0: a parameter that starts at zero (LoRA's B, a zero-initialised bias) would
    otherwise get r = 0 at every step and never move. Why 1 for ‖u‖ = 0: there is nothing to scale.
    """
    theta_norm = math.sqrt(_sum_of_squares(theta))
    update_norm = math.sqrt(_sum_of_squares(update))
    if theta_norm == 0.0 or update_norm == 0.0:
        return 1.0
    return theta_norm / update_norm


# ---------------------------------------------------------------------------------------------
# The optimizer skeleton: groups, skipping rules, step counts, state for checkpoints
# ---------------------------------------------------------------------------------------------


class Optimizer:
    """What SGD and AdamW share: param groups, which params a step touches, and their state.

    ``param_groups``       list of dicts: "params" (name -> Param) and that group's hyper-parameters
    ``state``              name -> {state name -> array [*] in the param's dtype}
    ``step_counts``        name -> t, the number of updates that param has received
    ``last_trust_ratios``  name -> r of its last update (only for groups with trust_ratio=True)

    A subclass names its state arrays in ``state_names`` and defines ``_check_hyper`` (validate one
    group's hyper-parameters), ``_state_kinds`` (the arrays a stepped param must have) and
    ``_update`` (the math of one parameter's step).
    """

    state_names: tuple[str, ...] = ()

    def __init__(self, params: Any, defaults: dict[str, Any]):
        self.defaults = self._check_hyper(dict(defaults), "")
        self.param_groups: list[dict[str, Any]] = []
        for i, group in enumerate(_split_into_groups(params)):
            # the group's own keys win; the ones it leaves out take the constructor's values
            merged = {**self.defaults, **group}
            self.param_groups.append(self._check_hyper(merged, f"param group {i}: "))
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.step_counts: dict[str, int] = {}
        self.last_trust_ratios: dict[str, float] = {}

    # --- to be defined by each optimizer ---------------------------------------------------------

    def _check_hyper(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        raise NotImplementedError

    def _state_kinds(self, group: dict[str, Any]) -> tuple[str, ...]:
        raise NotImplementedError

    def _update(self, name: str, p: Param, group: dict[str, Any], t: int) -> None:
        raise NotImplementedError

    # --- the loop every optimizer runs ----------------------------------------------------------

    def step(self, run_tasks: Callable[[list], None] | None = None) -> None:
        """Update every trainable Param that has a gradient, with its group's hyper-parameters.

        ``run_tasks`` (optional) is handed the per-parameter updates as a list of (size,
        zero-argument function) and runs them all: ``DataParallel.run_tasks`` spreads them over
        its threads. Each update reads and writes its own parameter's arrays and state only, so
        their order does not matter. Without it they run here, one after another.
        """
        tasks = []
        for i, group in enumerate(self.param_groups):
            # checked again here because a group's lr is meant to be edited between steps
            # (LRScheduler does it), and a bad value must fail loudly, not train on NaN
            hyper = self._check_hyper(dict(group), f"param group {i}: ")
            for name, p in group["params"].items():
                if not p.trainable or p.grad is None:
                    continue
                if p.grad.shape != p.value.shape:
                    raise ValueError(
                        f"{name}: gradient shape {p.grad.shape} does not match the parameter's "
                        f"shape {p.value.shape}"
                    )
                t = self.step_counts.get(name, 0) + 1
                self.step_counts[name] = t
                tasks.append((p.size, functools.partial(self._update, name, p, hyper, t)))
        if run_tasks is None:
            for _, update in tasks:
                update()
        else:
            run_tasks(tasks)

    def zero_grad(self) -> None:
        """Forget every accumulated gradient (grads accumulate until cleared, see param.py)."""
        for group in self.param_groups:
            for p in group["params"].values():
                p.zero_grad()

    def state_bytes(self) -> int:
        """Bytes held by the optimizer state arrays (AdamW: 2 per trainable element × itemsize)."""
        return sum(array.nbytes for arrays in self.state.values() for array in arrays.values())

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(tensors, meta): copies of the state arrays and a JSON-serialisable description.

        tensors   "<state name>/<param name>" -> array [*], e.g. "exp_avg/h.0.attn.c_attn.weight"
        meta      {"type": class name,
                   "groups": [{<hyper-parameter>: value, ..., "params": [param names]}, ...],
                   "step_counts": {param name: t}}
        """
        tensors = {
            f"{kind}/{name}": array.copy()
            for name, arrays in self.state.items()
            for kind, array in arrays.items()
        }
        groups = []
        for group in self.param_groups:
            saved = {key: _jsonable(group[key]) for key in self.defaults}
            saved["params"] = list(group["params"])
            groups.append(saved)
        meta = {
            "type": type(self).__name__,
            "groups": groups,
            "step_counts": dict(self.step_counts),
        }
        return tensors, meta

    def load_state_dict(self, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` saved; strict, and all-or-nothing.

        Everything is checked before anything is changed: the optimizer type, the number of
        groups, each group's param names (unknown or missing), each tensor's name, shape and dtype,
        and that every param with a step count has all its state arrays. The groups'
        hyper-parameters (including an lr a scheduler had set) are restored too, so stepping after
        loading is bit-identical to never having saved.
        """
        this_type = type(self).__name__
        if meta.get("type") != this_type:
            raise ValueError(
                f"optimizer type: this is {this_type}, the state was saved by {meta.get('type')!r}"
            )
        saved_groups = meta.get("groups")
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups):
            count = len(saved_groups) if isinstance(saved_groups, list) else saved_groups
            raise ValueError(
                f"param groups: expected {len(self.param_groups)} saved groups, got {count}"
            )

        param_of: dict[str, Param] = {}
        group_index_of: dict[str, int] = {}
        restored_hyper = []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
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
            absent = [key for key in self.defaults if key not in saved]
            if absent:
                raise ValueError(f"param group {i}: hyper-parameter {absent[0]!r} missing")
            hyper = {key: saved[key] for key in self.defaults}
            restored_hyper.append(self._check_hyper(hyper, f"saved param group {i}: "))
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
            if not slash or kind not in self.state_names:
                raise ValueError(
                    f"state tensor {key!r}: expected '<state>/<param name>' with <state> one of "
                    f"{self.state_names}"
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
            state.setdefault(name, {})[kind] = array.copy()  # a copy: stepping must not edit it
        for name in step_counts:
            for kind in self._state_kinds(restored_hyper[group_index_of[name]]):
                if kind not in state.get(name, {}):
                    raise ValueError(f"state tensor {kind + '/' + name!r} missing")

        # every check passed: now commit
        for group, hyper in zip(self.param_groups, restored_hyper, strict=True):
            group.update(hyper)
        self.state = state
        self.step_counts = {name: int(t) for name, t in step_counts.items()}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------------------------
# SGD (A2), heavy-ball momentum, L2 decay, LARS
# ---------------------------------------------------------------------------------------------


class SGD(Optimizer):
    """Stochastic gradient descent: the article's equation A2, plus three options.

    With momentum = 0, weight_decay = 0 and trust_ratio = False it is EXACTLY A2,

        θ ← θ − α ∂L/∂θ,

    computed as ``value -= lr * grad``: bit for bit the array ``value - lr * grad``.

    The options, in the order they act on g = ∂L/∂θ:

        weight_decay λ   classic L2, the gradient of (λ/2)‖θ‖²        g ← g + λθ
        momentum μ       heavy ball, b starts at 0                    b ← μb + g ;  u = b
                         (without momentum u = g)
        trust_ratio      LARS (You et al. 2017, in the form of        r = ‖θ‖/‖u‖ (1 if a norm is 0)
                         You et al. 2019, Algorithm 1, φ = identity,  θ ← θ − α r u
                         no trust coefficient: r rescales the final update)

    and without trust_ratio the update is θ ← θ − α u. ``Param.grad`` itself is never modified.
    """

    state_names = ("momentum_buffer",)

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        trust_ratio: bool = False,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_ratio=trust_ratio
        )
        super().__init__(params, defaults)

    def _check_hyper(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        group["lr"] = _check_lr(group["lr"], where)
        group["momentum"] = _check_unit_interval(group["momentum"], "momentum", where)
        group["weight_decay"] = _check_weight_decay(group["weight_decay"], where)
        group["trust_ratio"] = _check_bool(group["trust_ratio"], "trust_ratio", where)
        return group

    def _state_kinds(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0.0 else ()

    def _update(self, name: str, p: Param, group: dict[str, Any], t: int) -> None:
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        theta, g = p.value, p.grad  # [*], [*]

        if weight_decay != 0.0:
            g = g + weight_decay * theta  # a new array: Param.grad stays ∂L/∂θ

        if momentum != 0.0:
            arrays = self.state.setdefault(name, {})
            if "momentum_buffer" not in arrays:
                arrays["momentum_buffer"] = np.zeros_like(theta)
            b = arrays["momentum_buffer"]  # [*]
            b *= momentum
            b += g  # b ← μb + g
            u = b
        else:
            u = g

        if group["trust_ratio"]:
            r = _trust_ratio(theta, u)
            self.last_trust_ratios[name] = r
            theta -= (lr * r) * u  # θ ← θ − α r u
        else:
            theta -= lr * u  # θ ← θ − α u  (A2 when u = g)


# ---------------------------------------------------------------------------------------------
# AdamW and LAMB
# ---------------------------------------------------------------------------------------------


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), computed as torch.optim.AdamW.

    At a parameter's t-th update (t counts from its first gradient; m and v start at 0):

        θ ← θ − α λ θ                                decoupled weight decay
        m ← β1 m + (1 − β1) g                        first moment  (mean of g)
        v ← β2 v + (1 − β2) g²                       second moment (mean of g², elementwise)
        m̂ = m / (1 − β1^t),  v̂ = v / (1 − β2^t)      bias correction: m, v started at 0
        θ ← θ − α m̂ / (√v̂ + ε)

    Why decoupled: an L2 term λθ added to g would be divided by √v̂ like the rest of the gradient,
    so the weights with the largest gradients would be decayed least. Decoupled, every weight
    shrinks by the same factor (1 − αλ) per step, whatever its gradient.

    With trust_ratio=True it is LAMB (You et al. 2019, Algorithm 2): the decay joins the update
    direction, and the whole step is rescaled per parameter,

        u = m̂ / (√v̂ + ε) + λθ
        r = ‖θ‖ / ‖u‖          (r = 1 when either norm is 0)
        θ ← θ − α r u
    """

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        trust_ratio: bool = False,
    ):
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, trust_ratio=trust_ratio
        )
        super().__init__(params, defaults)
        self._scratch_buffers: dict[tuple, np.ndarray] = {}  # (dtype, thread) -> flat array

    def _check_hyper(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        group["lr"] = _check_lr(group["lr"], where)
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
            raise TypeError(f"{where}betas: expected a pair (β1, β2), got {type(betas).__name__}")
        betas = tuple(betas)
        if len(betas) != 2:
            raise ValueError(f"{where}betas: expected a pair (β1, β2), got {len(betas)} values")
        group["betas"] = (
            _check_unit_interval(betas[0], "betas[0]", where),
            _check_unit_interval(betas[1], "betas[1]", where),
        )
        eps = _real(group["eps"], "eps", where)
        if not (math.isfinite(eps) and eps > 0.0):
            raise ValueError(f"{where}eps: expected a finite number > 0, got {eps}")
        group["eps"] = eps
        group["weight_decay"] = _check_weight_decay(group["weight_decay"], where)
        group["trust_ratio"] = _check_bool(group["trust_ratio"], "trust_ratio", where)
        return group

    def _state_kinds(self, group: dict[str, Any]) -> tuple[str, ...]:
        return self.state_names

    def _update(self, name: str, p: Param, group: dict[str, Any], t: int) -> None:
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        theta, g = p.value, p.grad  # [*], [*]

        if name not in self.state:
            self.state[name] = {"exp_avg": np.zeros_like(theta), "exp_avg_sq": np.zeros_like(theta)}
        m = self.state[name]["exp_avg"]  # [*]
        v = self.state[name]["exp_avg_sq"]  # [*]
        # one scratch array of θ's shape, reused by every parameter and every step, so a step
        # allocates nothing; the same operations in the same order as the formulas, bit for bit
        tmp = self._scratch(theta)  # [*]

        m *= beta1
        m += np.multiply(g, 1.0 - beta1, out=tmp)  # m ← β1 m + (1 − β1) g
        v *= beta2
        np.multiply(g, g, out=tmp)
        v += np.multiply(tmp, 1.0 - beta2, out=tmp)  # v ← β2 v + (1 − β2) g²

        bias_correction1 = 1.0 - beta1**t
        bias_correction2 = 1.0 - beta2**t
        # √v̂ + ε, written √v / √(1 − β2^t) + ε: the order of operations PyTorch uses
        denom = np.sqrt(v, out=tmp)  # [*]
        denom /= math.sqrt(bias_correction2)
        denom += eps

        if group["trust_ratio"]:
            u = m / bias_correction1  # m̂                                          [*]
            u /= denom  # m̂ / (√v̂ + ε)
            if weight_decay != 0.0:
                u += weight_decay * theta  # + λθ
            r = _trust_ratio(theta, u)
            self.last_trust_ratios[name] = r
            theta -= (lr * r) * u  # θ ← θ − α r u
        else:
            if weight_decay != 0.0:
                theta *= 1.0 - lr * weight_decay  # θ ← θ − α λ θ
            step = np.divide(m, denom, out=denom)
            step *= lr / bias_correction1
            theta -= step  # θ ← θ − α m̂ / (√v̂ + ε)

    def _scratch(self, like: np.ndarray) -> np.ndarray:
        """A reusable work array shaped like ``like`` (a view into one flat buffer per dtype and
        thread).

        Not optimizer state: it is never saved and ``state_bytes`` does not count it.
        """
        key = (like.dtype, threading.get_ident())  # one per thread: updates may run in parallel
        flat = self._scratch_buffers.get(key)
        if flat is None or flat.size < like.size:
            flat = self._scratch_buffers[key] = np.empty(like.size, dtype=like.dtype)
        return flat[: like.size].reshape(like.shape)


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
    named = _named_params(named_params, "named_params", [0])
    base_lr = _check_lr(base_lr, "base_")
    decay = _real(decay, "decay", "")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay: expected a number in (0, 1], got {decay}")
    weight_decay = _check_weight_decay(weight_decay)

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


# ---------------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------------


def clip_grad_norm(params: Any, max_norm: float) -> float:
    """Rescale all gradients TOGETHER so their global L2 norm is at most max_norm (as PyTorch).

        ‖g‖ = √( Σ over trainable params with a grad  Σ over entries  g² )
        if ‖g‖ > max_norm:   g ← g · max_norm / (‖g‖ + 1e-6)      for every grad, in place

    One factor for all grads keeps the direction of the step and only shortens it.

    ``params``: an optimizer, or any form an optimizer accepts (dict, list of Params, group dicts).
    Returns ‖g‖ BEFORE clipping. A non-finite ‖g‖ (inf or nan) is returned as is and the grads are
    left untouched: scaling by max_norm/inf would turn them into zeros and nans and hide the blow-up
    that the training loop should report instead.
    """
    max_norm = _real(max_norm, "max_norm", "")
    if not max_norm > 0.0:
        raise ValueError(f"max_norm: expected a number > 0, got {max_norm}")
    groups = params.param_groups if isinstance(params, Optimizer) else _split_into_groups(params)
    grads = [
        p.grad
        for group in groups
        for p in group["params"].values()
        if p.trainable and p.grad is not None
    ]
    total_norm = math.sqrt(sum(_sum_of_squares(g) for g in grads))
    if math.isfinite(total_norm) and total_norm > max_norm:
        scale = max_norm / (total_norm + 1e-6)
        for g in grads:
            g *= scale
    return total_norm


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------------------------


def warmup_cosine(
    step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warm-up, cosine decay.

        step < W:            (step + 1) / W                        1/W, 2/W, ..., 1
        W ≤ step ≤ T − 1:    min_ratio + (1 − min_ratio) · ½ (1 + cos(π p)),
                             p = (step − W) / (T − 1 − W)          1 at W, min_ratio at T − 1
        step > T − 1:        the value at T − 1 (clamped)

    with W = warmup_steps and T = total_steps. The warm-up starts at 1/W rather than 0 so the
    first step is not wasted. When W ≥ T − 1 there is no room to decay: after warm-up the
    multiplier stays 1.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps: expected >= 0, got {warmup_steps}")
    if total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1, got {total_steps}")
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps: expected <= total_steps = {total_steps}, got {warmup_steps}"
        )
    min_ratio = _real(min_ratio, "min_ratio", "")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio: expected a number in [0, 1], got {min_ratio}")

    step = min(int(step), total_steps - 1)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - 1 - warmup_steps)
    progress = (step - warmup_steps) / decay_steps  # p in [0, 1]
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRScheduler:
    """Sets every group's lr to base_lr × schedule_fn(t), t = 0, 1, 2, ... one call at a time.

    The base lrs are each group's lr when the scheduler is built. Call ``scheduler.step()`` BEFORE
    ``optimizer.step()``: optimizer step t then runs with base_lr × schedule_fn(t), e.g.

        scheduler = LRScheduler(opt, partial(warmup_cosine, warmup_steps=100, total_steps=1000))
        for t in range(1000):
            ...backward...
            scheduler.step()
            opt.step()

    ``state_dict()`` holds t AND the base lrs: a scheduler rebuilt after the optimizer's state was
    loaded would otherwise take an already-scheduled lr for a base lr.
    """

    def __init__(self, optimizer: Optimizer, schedule_fn: Callable[[int], float]):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an Optimizer, got {type(optimizer).__name__}")
        if not callable(schedule_fn):
            raise TypeError(f"schedule_fn: expected a callable, got {type(schedule_fn).__name__}")
        self.optimizer = optimizer
        self.schedule_fn = schedule_fn
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]  # [N]
        self.t = 0

    def step(self) -> None:
        multiplier = float(self.schedule_fn(self.t))  # a Python float, whatever fn returns (NEP 50)
        if not (math.isfinite(multiplier) and multiplier >= 0.0):
            raise ValueError(
                f"schedule_fn({self.t}): expected a finite multiplier >= 0, got {multiplier}"
            )
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * multiplier
        self.t += 1

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        t, base_lrs = state["t"], state["base_lrs"]
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"t: expected an integer >= 0, got {t!r}")
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"base_lrs: expected {len(self.optimizer.param_groups)} (one per param group), "
                f"got {len(base_lrs)}"
            )
        self.base_lrs = [_check_lr(lr, "base_") for lr in base_lrs]
        self.t = int(t)
