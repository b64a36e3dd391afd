"""What the training loop does to a step besides the update rule: clip the gradients' global
norm, then set this step's learning rate (linear warm-up, cosine decay).

Both work on an optimizer's ``param_groups`` (minift.optim), or for clipping on any form an
optimizer accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from minift.errors import check_int
from minift.param_groups import check_lr, check_real, split_into_groups, sum_of_squares

__all__ = ["clip_grad_norm", "warmup_cosine", "LRScheduler"]


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
    max_norm = check_real(max_norm, "max_norm", "")
    if not max_norm > 0.0:
        raise ValueError(f"max_norm: expected a number > 0, got {max_norm}")
    groups = params.param_groups if hasattr(params, "param_groups") else split_into_groups(params)
    grads = [
        p.grad
        for group in groups
        for p in group["params"].values()
        if p.trainable and p.grad is not None
    ]
    total_norm = math.sqrt(sum(sum_of_squares(g) for g in grads))
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
    check_int("step", step, minimum=0)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps: expected >= 0, got {warmup_steps}")
    if total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1, got {total_steps}")
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps: expected <= total_steps = {total_steps}, got {warmup_steps}"
        )
    min_ratio = check_real(min_ratio, "min_ratio", "")
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

    def __init__(self, optimizer: Any, schedule_fn: Callable[[int], float]):
        if not isinstance(getattr(optimizer, "param_groups", None), list):
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
        check_int("t", t, minimum=0)
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"base_lrs: expected {len(self.optimizer.param_groups)} (one per param group), "
                f"got {len(base_lrs)}"
            )
        self.base_lrs = [check_lr(lr, "base_") for lr in base_lrs]
        self.t = int(t)
