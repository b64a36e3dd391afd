"""The template every weight-level method fills in: a frozen Linear, plus the method's change.

LoRA, DoRA, AdaLoRA, IA3 and the sparse layers all wrap a target Linear (``base_layer``, W₀
[in, out] and b [out]) and compute a new function of the same input. What differs is the math;
everything around it is the same and lives here, once:

    forward(x)      merged? then the base layer alone. Else read W₀, b and the method's Params,
                    apply dropout to the input of the method's path (where the method has it),
                    and call the method's pure ``delta_forward``
    backward(dy)    merged? then the base layer alone. Else call ``delta_backward``, which
                    returns dx through the frozen W₀ (frozen means no dW, never no dx) and the
                    gradients; ADD each into its Param (W₀'s and b's only if they train),
                    and add the dropout path's dx
    merge()         W₀, b ← the method's merge formula, refusing a non-finite result (PEFT's
                    safe_merge); ``unmerge()`` undoes it; the ``merged`` flag guards both

A quantized base (QLoRA: an ``NF4Linear`` of minift/quant.py) is read as its dequantized Ŵ₀ and
never trains. Merging it DEQUANTIZES: the merged layer is a float Linear holding Ŵ₀ + ΔW (bigger
than the NF4 one, and exact), and unmerge puts the NF4 layer back bit for bit. (PEFT re-quantizes
Ŵ₀ + ΔW to 4 bits instead: a second rounding, which unmerging could not undo.)

A method's layer is then a subclass that gives, beside its equations:

    delta_forward   its pure forward   (x, W₀, b, *params, *delta_constants()[, x_lora])
                                       -> (y, cache)
    delta_backward  its pure backward  (dy, cache, *backward_options(), need_base_grads)
                                       -> (dx[, dx_lora], *dparams, dW₀, db)
    delta_params    the names of its Params, in the order its pair takes them and returns
                    their gradients (a dotted name reaches into a child module)
    lora_dropout    set by ``__init__(base_layer, dropout=p)``: x_lora is x after dropout, and
                    dx_lora comes back through it (PEFT's name; the methods with dropout are LoRAs)

and its merge formula: ``delta_weight()`` (ΔW [in, out], for W = W₀ + ΔW, exact to undo by
subtracting), or ``merged_weights()`` / ``unmerged_weights()`` for anything else.

A layer that cannot merge (an adapter, non-linear in its input) still shares the sizes, the
Params' lookup and the gradients' accumulation (``delta_values``, ``accumulate``).

Shape legend: N positions (any leading shape ...), d_in / d_out the base layer's in / out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from minift.nn import Dropout, Linear, Module
from minift.param import Param
from minift.quant import NF4Linear


class AdaptedLinear(Module):
    """A Linear that a method has wrapped: ``base_layer`` inside, the method's Params beside it.

    ``merge()`` folds the method into ``base_layer`` (after which forward and backward are the
    base's alone), ``unmerge()`` takes it out again, ``merged_layer()`` is what merge_and_unload
    puts in the layer's place. See the module docstring for what a subclass gives.
    """

    kind: ClassVar[str] = "adapted"  # the method's name, in messages
    merge_formula: ClassVar[str] = "W₀ + ΔW"  # what merge writes, in its error message
    delta_params: ClassVar[tuple[str, ...]] = ()
    delta_forward: ClassVar[Callable[..., tuple[np.ndarray, Any]]]
    delta_backward: ClassVar[Callable[..., tuple]]
    lora_dropout: Dropout | None = None  # None: the method's path sees x itself

    def __init__(
        self,
        base_layer: Linear,
        dropout: float | None = None,
        *,
        rng: np.random.Generator | None = None,
    ):
        self.base_layer = base_layer
        if dropout is not None:
            self.lora_dropout = Dropout(dropout, rng=rng)
        self.merged = False
        self._undo = None  # what unmerge needs that the merged weights lost
        self._quantized_base = None  # the NF4Linear a merge replaced by a float Linear
        self._cache = None
        self._base_only = False  # the last forward skipped the method (merged, or dropped)

    @property
    def in_features(self):
        return self.base_layer.in_features

    @property
    def out_features(self):
        return self.base_layer.out_features

    # -- the method's pieces -------------------------------------------------------------------

    def delta_constants(self) -> tuple:
        """The fixed arguments ``delta_forward`` takes after the Params (LoRA's s)."""
        return ()

    def backward_options(self) -> tuple:
        """The arguments ``delta_backward`` takes after the cache (DoRA's detached norm)."""
        return ()

    def skips_delta(self) -> bool:
        """True: this forward is the base layer's alone (LyCORIS's module dropout draws it)."""
        return False

    def delta_draws(self) -> dict:
        """Keyword arguments of ``delta_forward`` drawn anew at each forward in training
        (LyCORIS's rank-dropout row scale)."""
        return {}

    def param(self, name: str) -> Param:
        """A Param of ``delta_params`` by its (dotted) name."""
        owner, _, attr = name.rpartition(".")
        return getattr(self.get_submodule(owner), attr)

    def delta_values(self) -> list[np.ndarray]:
        """The values of the method's Params, in ``delta_params`` order."""
        return [self.param(name).value for name in self.delta_params]

    def accumulate(self, grads) -> None:
        """ADD each gradient into its Param of ``delta_params`` (same order)."""
        for name, g in zip(self.delta_params, grads, strict=True):
            self.param(name).accumulate_grad(g)

    # -- forward and backward ------------------------------------------------------------------

    def forward(self, x):  # [..., in] -> [..., out]
        self._base_only = self.merged or self.skips_delta()
        if self._base_only:
            return self.base_layer.forward(x)
        base = self.base_layer
        b = None if base.bias is None else base.bias.value
        dropout = {} if self.lora_dropout is None else {"x_lora": self.lora_dropout.forward(x)}
        y, self._cache = self.delta_forward(
            x, base.weight.value, b, *self.delta_values(), *self.delta_constants(),
            **self.delta_draws(), **dropout,
        )  # fmt: skip
        return y

    def backward(self, dy):  # [..., out] -> [..., in]
        if self._base_only:
            return self.base_layer.backward(dy)
        base = self.base_layer
        # a frozen W₀ and b get no gradient: that work is skipped (dx is always computed); a
        # quantized W₀ is frozen by construction (and reading its weight would dequantize it)
        W0_trains = not isinstance(base, NF4Linear) and base.weight.trainable
        need_base = W0_trains or (base.bias is not None and base.bias.trainable)
        dx, *grads = self.delta_backward(dy, self._cache, *self.backward_options(), need_base)
        if self.lora_dropout is not None:
            dx_lora, *grads = grads
            dx = dx + self.lora_dropout.backward(dx_lora)  # forward fed x to both paths
        *dparams, dW0, db = grads
        self.accumulate(dparams)
        if dW0 is not None and W0_trains:
            base.weight.accumulate_grad(dW0)
        if db is not None:
            base.bias.accumulate_grad(db)
        return dx

    # -- merging -------------------------------------------------------------------------------

    def delta_weight(self) -> np.ndarray:  # [in, out]
        raise TypeError(f"merge: this {self.kind} layer has no merge formula")

    def merged_weights(self):
        """(W, b or None for b unchanged, what unmerge needs): here W = W₀ + ΔW."""
        return self.base_layer.weight.value + self.delta_weight(), None, None

    def unmerged_weights(self, W, b, undo):
        """(W₀, b₀ or None for b unchanged) from the merged W, b: here W₀ = W − ΔW."""
        return W - self.delta_weight(), None

    def merge(self) -> None:
        if self.merged:
            raise RuntimeError(f"merge: this {self.kind} layer is already merged")
        W, b, undo = self.merged_weights()
        if not (np.isfinite(W).all() and (b is None or np.isfinite(b).all())):
            raise ValueError(
                f"merge: {self.merge_formula} has non-finite entries; the adapter is broken"
            )
        if isinstance(self.base_layer, NF4Linear):
            self._quantized_base = self.base_layer
            self.base_layer = self._quantized_base.float_linear(W)
        self._write_base(W, b)
        self._undo = undo
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError(f"unmerge: this {self.kind} layer is not merged")
        base = self.base_layer
        if self._quantized_base is not None:  # the codes were never touched: put them back
            self.base_layer, self._quantized_base = self._quantized_base, None
        else:
            b = None if base.bias is None else base.bias.value
            self._write_base(*self.unmerged_weights(base.weight.value, b, self._undo))
        self._undo = None
        self.merged = False

    def merged_layer(self) -> Linear:
        """The base Linear with the method folded in (merging first if need be)."""
        if not self.merged:
            self.merge()
        self._undo = self._quantized_base = None  # no unmerge after this
        return self.base_layer

    def _write_base(self, W, b) -> None:
        self.base_layer.weight.value[...] = W
        if b is not None:
            self.base_layer.bias.value[...] = b
