"""Finite-difference gradient checks: the proof that every hand-written backward pass is right.

Central differences, in float64:

    ∂f/∂θᵢ ≈ (f(θ + h·eᵢ) − f(θ − h·eᵢ)) / 2h    error: O(h²) truncation, O(ε/h) rounding

For an op whose output is an array rather than a scalar, we check it against a fixed random
upstream gradient ``dout`` (as CS231n's ``eval_numerical_gradient_array``): the scalar is
f(θ) = Σ op(θ) ⊙ dout, whose exact gradient is what ``op_backward(dout, cache)`` returns.

Relative error, the number every test compares with 1e-7:

    rel_error(a, n) = ‖a − n‖₂ / max(‖a‖₂ + ‖n‖₂, 1e-300)

a norm over the whole array, not entry by entry, so that entries whose true gradient is 0 (and
whose estimate is rounding noise of size 1e-11) do not turn a correct gradient into a failure.
A wrong backward gives errors of order 1e-2 to 1; a right one, in float64 with h = 1e-5, about
1e-9 or below. The report also names the entry where the two disagree most.

Check at a random point, not at the initialisation: with GPT-2's small init (std 0.02) many
paths carry gradients near 1e-5, where rounding noise of the loss is a large part of the
difference quotient and a weak check. ``randomize_params`` moves every parameter to a random
point of order one first, so every path of the backward is exercised with a clear signal.

Check with dropout ON, too: with p = 0 every mask is all ones and a backward that forgets its
mask passes. ``fixed_dropout_masks`` makes the masks constants of the loss, the same at every
probe, so the difference quotient measures θ alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from minift.functional import cross_entropy
from minift.nn import Dropout, Module
from minift.param import Param

DEFAULT_H = 1e-5


def rel_error(analytic, numeric) -> float:
    """‖a − n‖₂ / max(‖a‖₂ + ‖n‖₂, 1e-300)."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"numeric: expected shape {a.shape}, got {n.shape}")
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), 1e-300))


def _require_float64(x, name):
    if x.dtype != np.float64:
        raise TypeError(
            f"{name}: finite differences need float64 (float32 rounding swamps h), got {x.dtype}"
        )


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h=DEFAULT_H, indices=None):
    """Central-difference gradient of the scalar ``f()`` with respect to ``x``, perturbed in place.

    ``indices`` (flat positions) limits the check to some entries; the others stay 0 in the result.
    x is restored exactly after every probe.
    """
    _require_float64(x, "x")
    grad = np.zeros_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat_x, x):
        raise ValueError("x: must be contiguous so that it can be perturbed in place")
    for i in range(x.size) if indices is None else indices:
        old = flat_x[i]
        flat_x[i] = old + h
        f_plus = f()
        flat_x[i] = old - h
        f_minus = f()
        flat_x[i] = old
        flat_grad[i] = (f_plus - f_minus) / (2.0 * h)
    return grad


def numerical_gradient_array(op: Callable[[], np.ndarray], x, dout, h=DEFAULT_H):
    """Gradient of Σ op() ⊙ dout with respect to x: checks a backward pass against its forward."""
    return numerical_gradient(lambda: float(np.sum(op() * dout)), x, h)


def randomize_params(params: Mapping[str, Param], seed=0, scale=0.3) -> None:
    """Set every Param to a random point: N(0, scale²), or 1 + N(0, scale²) for LayerNorm gains.

    LayerNorm weights are recognised by name, in any case (GPT-2's ``ln_1.weight``, BERT's
    ``LayerNorm.weight``).
    """
    rng = np.random.default_rng(seed)
    for name, p in params.items():
        lower = name.lower()
        base = 1.0 if ("ln" in lower or "norm" in lower) and lower.endswith(".weight") else 0.0
        p.value[...] = base + scale * rng.standard_normal(p.shape)


def cross_entropy_loss(model, idx, targets):
    """The ``loss_fn`` that check_gradients takes, for a model whose forward gives logits.

    loss_fn(run_backward) -> mean cross-entropy of model.forward(idx) against targets; with
    run_backward it also clears the gradients and runs model.backward, so every Param's grad is
    the gradient of exactly this loss.
    """

    def loss_fn(run_backward):
        value, dlogits = cross_entropy(model.forward(idx), targets)
        if run_backward:
            model.zero_grad()
            model.backward(dlogits)
        return value

    return loss_fn


@dataclass
class GradcheckReport:
    """Per-parameter relative errors, and where the worst disagreement is."""

    errors: dict[str, float] = field(default_factory=dict)
    worst_entry: dict[str, tuple[tuple[int, ...], float, float]] = field(default_factory=dict)

    @property
    def worst(self) -> tuple[str, float]:
        if not self.errors:
            raise ValueError("worst: the report is empty, nothing was checked")
        name = max(self.errors, key=self.errors.get)
        return name, self.errors[name]

    def ok(self, tol=1e-7) -> bool:
        """Every checked error below ``tol``, and at least one checked: an empty report (no
        trainable Param, a backward that returned nothing) proves nothing and is not a pass."""
        return bool(self.errors) and all(e < tol for e in self.errors.values())

    def add(self, name, analytic, numeric, indices=None) -> None:
        """Record the comparison of one array (only its flat ``indices``, when given)."""
        a_flat, n_flat = analytic.reshape(-1), numeric.reshape(-1)
        if indices is not None:
            a_flat, n_flat = a_flat[indices], n_flat[indices]
        self.errors[name] = rel_error(a_flat, n_flat)
        k = int(np.argmax(np.abs(a_flat - n_flat)))
        flat_k = k if indices is None else int(indices[k])
        self.worst_entry[name] = (
            tuple(int(i) for i in np.unravel_index(flat_k, analytic.shape)),
            float(a_flat[k]),
            float(n_flat[k]),
        )

    def __str__(self):
        if not self.errors:
            return "nothing was checked: no trainable parameter, no gradient"
        lines = [f"{'parameter':<40} {'rel. error':>11}   worst entry (analytic vs numeric)"]
        for name, err in self.errors.items():
            idx, a, n = self.worst_entry[name]
            lines.append(f"{name:<40} {err:11.2e}   {idx}: {a:+.10e} vs {n:+.10e}")
        return "\n".join(lines)


def check_gradients(
    loss_fn: Callable[[bool], float],
    params: Mapping[str, Param],
    h=DEFAULT_H,
    max_entries: int | None = None,
    seed=0,
) -> GradcheckReport:
    """Compare the analytic gradient of every trainable Param with central differences.

    ``loss_fn(backward)`` runs the forward pass and returns the scalar loss; when ``backward`` is
    True it must also zero the gradients and run the backward pass, filling ``Param.grad``.
    ``max_entries`` checks a random sample of that many entries of each larger parameter (the
    norms in the relative error are then taken over the sampled entries only).
    """
    for name, p in params.items():
        _require_float64(p.value, f"params[{name!r}]")
    loss_fn(True)
    analytic = {
        name: (np.zeros_like(p.value) if p.grad is None else p.grad.copy())
        for name, p in params.items()
        if p.trainable
    }
    rng = np.random.default_rng(seed)
    report = GradcheckReport()
    for name, a in analytic.items():
        x = params[name].value
        indices = None
        if max_entries is not None and x.size > max_entries:
            indices = np.sort(rng.choice(x.size, size=max_entries, replace=False))
        n = numerical_gradient(lambda: loss_fn(False), x, h, indices)
        report.add(name, a, n, indices)
    return report


def check_pair(forward, backward, inputs, rng=0, h=DEFAULT_H) -> GradcheckReport:
    """Check a functional pair: ``backward`` against central differences of Σ forward(...) ⊙ dout.

    ``forward(*inputs) -> (out, cache)`` and ``backward(dout, cache)`` returns one gradient per
    floating-point array among ``inputs``, in their order (a bare array when there is one). The
    other inputs (token ids, head counts, None) take none. ``dout`` is drawn N(0, 1) from ``rng``
    (a Generator or a seed). The report names each gradient ``inputs[i]``, i the input's position.

    A backward that returns more or fewer gradients than that is refused: zipped with the inputs,
    the extra ones, or the inputs left without one, would never be checked.
    """
    rng = np.random.default_rng(rng)
    positions = [
        i for i, x in enumerate(inputs) if isinstance(x, np.ndarray) and x.dtype.kind == "f"
    ]
    for i in positions:
        _require_float64(inputs[i], f"inputs[{i}]")
    out, cache = forward(*inputs)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    if len(grads) != len(positions):
        raise ValueError(
            f"backward: expected {len(positions)} gradients, one per floating-point input "
            f"(inputs{positions}), got {len(grads)}"
        )
    report = GradcheckReport()
    for i, g in zip(positions, grads, strict=True):
        if g is None:
            raise ValueError(f"backward: returned None for the gradient of inputs[{i}]")
        numeric = numerical_gradient_array(lambda: forward(*inputs)[0], inputs[i], dout, h)
        report.add(f"inputs[{i}]", np.asarray(g), numeric)
    return report


def fixed_dropout_masks(loss_fn: Callable[[bool], float], module: Module):
    """``loss_fn`` with the same dropout masks at every call, so a check runs with dropout ON.

    A finite difference compares two forward passes; if each drew its own mask, it would measure
    the change of mask, not of θ. Every Dropout below ``module`` (and every layer that draws a
    dropout of its own: ``_active_dropouts``) draws from a Generator: the returned loss_fn puts
    each of them back to the state it has now before calling ``loss_fn``.
    The masks are then constants of the loss, and the check covers how each backward uses them.

    Refused when no Dropout below ``module`` is active (p > 0, training mode): with every mask
    all ones, a backward that forgets its mask would still pass, and the check would prove less
    than its name says.
    """
    active = _active_dropouts(module)
    if not active:
        raise ValueError(
            "module: expected at least one active Dropout (p > 0, training mode) below it, "
            "found none; call train() and give the layers a dropout probability"
        )
    generators = list({id(m.rng): m.rng for m in active}.values())
    states = [g.bit_generator.state for g in generators]

    def loss_with_fixed_masks(run_backward):
        for g, state in zip(generators, states, strict=True):
            g.bit_generator.state = state
        return loss_fn(run_backward)

    return loss_with_fixed_masks


def _active_dropouts(module: Module) -> list[Module]:
    """Every Dropout with p > 0 in training mode, and every layer whose ``draws_at_random`` is
    true (LoHa's and LoKr's rank and module dropouts): each draws from its ``rng``."""
    return [
        m
        for _, m in module.named_modules()
        if (isinstance(m, Dropout) and m.p > 0 and m.training) or getattr(m, "draws_at_random", 0)
    ]


def check_module(module: Module, x, rng=0, h=DEFAULT_H) -> GradcheckReport:
    """Every trainable Param of ``module``, and its input, through L = Σ module.forward(x) ⊙ dout.

    ``dout`` is drawn N(0, 1) from ``rng`` (a Generator or a seed). When a Dropout below
    ``module`` is active, its masks are held fixed (``fixed_dropout_masks``), so the check covers
    what each backward does with them. The report holds each Param under its own name and the
    gradient of x under ``"input"``.
    """
    _require_float64(x, "x")
    dout = np.random.default_rng(rng).standard_normal(module.forward(x).shape)
    analytic_dx = []

    def loss_fn(run_backward):
        value = float(np.sum(module.forward(x) * dout))
        if run_backward:
            module.zero_grad()
            analytic_dx[:] = [module.backward(dout)]
        return value

    if _active_dropouts(module):
        loss_fn = fixed_dropout_masks(loss_fn, module)
    report = check_gradients(loss_fn, module.named_parameters(), h)
    report.add("input", analytic_dx[0], numerical_gradient(lambda: loss_fn(False), x, h))
    return report
