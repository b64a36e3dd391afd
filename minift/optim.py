"""Optimizers: how an accumulated gradient becomes a step of the parameters.

    SGD           θ ← θ − α ∂L/∂θ, the article's equation A2 (+ momentum, L2 decay)
    AdamW         Adam's bias-corrected moments with weight decay DECOUPLED from the gradient
                  (Loshchilov & Hutter 2019), as torch.optim.AdamW computes it
    LARS / LAMB   the same two updates, rescaled per parameter by a trust ratio ‖θ‖/‖u‖
                  (You et al. 2017 / 2019): the article's §2.2 "adaptive per-layer learning rate"

with their state saved and restored bit-exactly for a checkpoint (``state_dict``,
``load_state_dict``). What a loop uses around them lives beside its users, and is importable from
here too: parameter groups and layer-wise learning-rate decay (minift/param_groups.py), global
gradient clipping and the warm-up + cosine schedule (minift/schedule.py), the checks of a saved
state (minift/optim_state.py), and the per-thread work arrays (minift/parallel.py).

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from minift.optim_state import checked_state
from minift.parallel import ThreadScratch
from minift.param import Param
from minift.param_groups import (
    check_bool,
    check_lr,
    check_real,
    check_unit_interval,
    check_weight_decay,
    layerwise_lr_groups,
    split_into_groups,
    sum_of_squares,
)
from minift.schedule import LRScheduler, clip_grad_norm, warmup_cosine

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
# Norms and the trust ratio
# ---------------------------------------------------------------------------------------------


def _trust_ratio(theta: np.ndarray, update: np.ndarray) -> float:
    """r = ‖θ‖ / ‖u‖, and r = 1 when either norm is 0.

    Why 1 for ‖θ‖ = 0: a parameter that starts at zero (LoRA's B, a zero-initialised bias) would
    otherwise get r = 0 at every step and never move. Why 1 for ‖u‖ = 0: there is nothing to scale.
    """
    theta_norm = math.sqrt(sum_of_squares(theta))
    update_norm = math.sqrt(sum_of_squares(update))
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
        for i, group in enumerate(split_into_groups(params)):
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

        Everything is checked before anything is changed (minift.optim_state): the optimizer
        type, the groups and their param names, each tensor's name, shape, dtype and finiteness,
        and that every param with a step count has all its state arrays. The groups'
        hyper-parameters (including an lr a scheduler had set) are restored too, so stepping after
        loading is bit-identical to never having saved.
        """
        hyper, state, step_counts = checked_state(self, tensors, meta)
        for group, saved in zip(self.param_groups, hyper, strict=True):
            group.update(saved)
        self.state = state
        self.step_counts = step_counts


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
        group["lr"] = check_lr(group["lr"], where)
        group["momentum"] = check_unit_interval(group["momentum"], "momentum", where)
        group["weight_decay"] = check_weight_decay(group["weight_decay"], where)
        group["trust_ratio"] = check_bool(group["trust_ratio"], "trust_ratio", where)
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
        self._scratch = ThreadScratch()  # work arrays for the update, not optimizer state

    def _check_hyper(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        group["lr"] = check_lr(group["lr"], where)
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
            raise TypeError(f"{where}betas: expected a pair (β1, β2), got {type(betas).__name__}")
        betas = tuple(betas)
        if len(betas) != 2:
            raise ValueError(f"{where}betas: expected a pair (β1, β2), got {len(betas)} values")
        group["betas"] = (
            check_unit_interval(betas[0], "betas[0]", where),
            check_unit_interval(betas[1], "betas[1]", where),
        )
        eps = check_real(group["eps"], "eps", where)
        if not (math.isfinite(eps) and eps > 0.0):
            raise ValueError(f"{where}eps: expected a finite number > 0, got {eps}")
        group["eps"] = eps
        group["weight_decay"] = check_weight_decay(group["weight_decay"], where)
        group["trust_ratio"] = check_bool(group["trust_ratio"], "trust_ratio", where)
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
        tmp = self._scratch.like(theta)  # [*]

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
