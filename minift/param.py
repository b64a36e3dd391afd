"""Param: a trainable (or frozen) array and the gradient that backward accumulates into it.

Gradients ACCUMULATE: every backward pass adds into ``Param.grad`` and nothing clears it but
``zero_grad()``. That one rule is what makes weight tying work: two layers that hold the SAME Param
object (the tied LM head, or the article's parameter sharing, A3) each add their gradient, so the
shared weight receives the sum of the gradients of its uses.

``grad`` is None until the first backward that reaches this Param; a frozen Param
(``trainable=False``) never gets one, because the layers skip its weight gradient altogether
(frozen means "no dW", never "no dx": the gradient still flows through it to the layers below).
"""

from __future__ import annotations

import numpy as np


class Param:
    """A named array of a model: ``value``, its accumulated ``grad``, and whether it trains."""

    __slots__ = ("value", "grad", "trainable")

    def __init__(self, value: np.ndarray, trainable: bool = True):
        value = np.asarray(value)
        if value.dtype.kind != "f":
            raise TypeError(
                f"Param value: expected a floating-point array, got dtype {value.dtype}"
            )
        self.value = value
        self.grad: np.ndarray | None = None
        self.trainable = bool(trainable)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def size(self) -> int:
        return self.value.size

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    def accumulate_grad(self, g: np.ndarray) -> None:
        """grad += g (allocating on first use). Frozen Params ignore the call."""
        if not self.trainable:
            return
        if g.shape != self.value.shape:
            raise ValueError(
                f"gradient shape {g.shape} does not match the parameter's shape {self.value.shape}"
            )
        if self.grad is None:
            self.grad = np.array(g, dtype=self.value.dtype, copy=True)
        else:
            self.grad += g

    def zero_grad(self) -> None:
        """Forget the accumulated gradient (None, so frozen and unused Params cost nothing)."""
        self.grad = None

    def __repr__(self) -> str:
        state = "trainable" if self.trainable else "frozen"
        return f"Param(shape={self.value.shape}, dtype={self.value.dtype}, {state})"
