"""Tests for minift.optim: each test is named for the claim it proves.

References are written independently of the implementation, straight from the equations:
A2 for SGD, Loshchilov & Hutter (2019, Algorithm 2) for AdamW, You et al. (2019) for LARS/LAMB.
Comparisons run in float64 to 1e-12 unless a test states another threshold and why.
"""

from __future__ import annotations

import json
import math
import re
from functools import partial

import numpy as np
import pytest
from helpers import require
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from minift.optim import (
    SGD,
    AdamW,
    LRScheduler,
    clip_grad_norm,
    layerwise_lr_groups,
    warmup_cosine,
)
from minift.param import Param

FAST = settings(max_examples=25, deadline=None)
shapes = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)
seeds = st.integers(0, 2**32 - 1)


def param_with_grad(rng, shape, dtype=np.float64, trainable=True):
    p = Param(rng.standard_normal(shape).astype(dtype), trainable=trainable)
    p.grad = rng.standard_normal(shape).astype(dtype)
    return p


def norm(x):
    return float(np.sqrt(np.sum(np.asarray(x, dtype=np.float64) ** 2)))


# --- independent references, one plain loop over t each ------------------------------------------


def reference_adamw(theta0, grads, lr, beta1, beta2, eps, wd):
    """Loshchilov & Hutter 2019, Algorithm 2, with η_t·α = lr and η_t·λ = lr·wd (PyTorch's form):
    θ_t = θ_{t−1} − lr·(m̂_t / (√v̂_t + ε) + wd·θ_{t−1})."""
    theta, m, v = theta0.copy(), np.zeros_like(theta0), np.zeros_like(theta0)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        theta = theta - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * theta)
    return theta


def reference_lamb(theta0, grads, lr, beta1, beta2, eps, wd):
    """You et al. 2019, Algorithm 2 (φ = identity): returns θ and the last trust ratio."""
    theta, m, v = theta0.copy(), np.zeros_like(theta0), np.zeros_like(theta0)
    r = None
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        u = m_hat / (np.sqrt(v_hat) + eps) + wd * theta
        r = norm(theta) / norm(u) if norm(theta) > 0 and norm(u) > 0 else 1.0
        theta = theta - lr * r * u
    return theta, r


def reference_sgd(theta0, grads, lr, momentum, wd, trust):
    """Heavy ball with L2 decay; with trust, LARS (You et al. 2019, Algorithm 1, φ = identity)."""
    theta, b = theta0.copy(), np.zeros_like(theta0)
    r = None
    for g in grads:
        g = g + wd * theta
        b = momentum * b + g
        r = norm(theta) / norm(b) if trust and norm(theta) > 0 and norm(b) > 0 else 1.0
        theta = theta - lr * r * b
    return theta, r


# --- SGD -----------------------------------------------------------------------------------------


@FAST
@given(shape=shapes, seed=seeds, dtype=st.sampled_from([np.float32, np.float64]))
def test_sgd_is_article_a2_exactly(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    p = param_with_grad(rng, shape, dtype)
    lr = 0.037
    expected = p.value - lr * p.grad  # A2: θ − α ∂L/∂θ
    SGD({"w": p}, lr=lr).step()
    assert p.value.dtype == dtype
    assert np.array_equal(p.value, expected)


@FAST
@given(
    shape=shapes,
    seed=seeds,
    momentum=st.floats(0.0, 0.99),
    wd=st.floats(0.0, 0.1),
    trust=st.booleans(),
)
def test_sgd_momentum_l2_and_lars_match_reference(shape, seed, momentum, wd, trust):
    rng = np.random.default_rng(seed)
    theta0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(4)]
    p = Param(theta0.copy())
    opt = SGD({"w": p}, lr=0.05, momentum=momentum, weight_decay=wd, trust_ratio=trust)
    for g in grads:
        p.grad = g.copy()
        opt.step()
    expected, r = reference_sgd(theta0, grads, 0.05, momentum, wd, trust)
    np.testing.assert_allclose(p.value, expected, rtol=1e-12, atol=1e-12)
    if trust:
        assert opt.last_trust_ratios["w"] == pytest.approx(r, rel=1e-12)
    else:
        assert opt.last_trust_ratios == {}


def test_sgd_never_modifies_the_grad():
    rng = np.random.default_rng(0)
    p = param_with_grad(rng, (3, 4))
    grad_before = p.grad.copy()
    SGD({"w": p}, lr=0.1, momentum=0.9, weight_decay=0.1, trust_ratio=True).step()
    assert np.array_equal(p.grad, grad_before)


# --- AdamW ---------------------------------------------------------------------------------------


@FAST
@given(
    shape=shapes,
    seed=seeds,
    lr=st.floats(1e-4, 1e-1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.0, 0.9999),
    eps=st.floats(1e-10, 1e-6),
    wd=st.floats(0.0, 0.1),
    grad_scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_adamw_matches_reference_recurrence(shape, seed, lr, beta1, beta2, eps, wd, grad_scale):
    rng = np.random.default_rng(seed)
    theta0 = rng.standard_normal(shape)
    grads = [grad_scale * rng.standard_normal(shape) for _ in range(5)]
    p = Param(theta0.copy())
    opt = AdamW({"w": p}, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    for g in grads:
        p.grad = g.copy()
        opt.step()
    expected = reference_adamw(theta0, grads, lr, beta1, beta2, eps, wd)
    np.testing.assert_allclose(p.value, expected, rtol=1e-12, atol=1e-12)
    assert opt.step_counts == {"w": 5}


@pytest.mark.reference
def test_adamw_matches_torch_optim_adamw():
    torch = require("torch", "reference")
    rng = np.random.default_rng(7)
    theta0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(6)]
    hyper = dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.05)

    p = Param(theta0.copy())
    opt = AdamW({"w": p}, **hyper)
    theta_torch = torch.tensor(theta0.copy(), dtype=torch.float64, requires_grad=True)
    opt_torch = torch.optim.AdamW([theta_torch], **hyper)
    for g in grads:
        p.grad = g.copy()
        opt.step()
        theta_torch.grad = torch.tensor(g, dtype=torch.float64)
        opt_torch.step()
    np.testing.assert_allclose(p.value, theta_torch.detach().numpy(), rtol=1e-12, atol=1e-12)


@FAST
@given(shape=shapes, seed=seeds, lr=st.floats(1e-4, 1e-1))
def test_first_adam_step_has_size_lr(shape, seed, lr):
    rng = np.random.default_rng(seed)
    p = param_with_grad(rng, shape)
    # |g| >= 1e-3, so the first step lr·|g|/(|g| + ε) is lr to within ε/|g| <= 1e-5: that is the
    # stated tolerance below (m̂ = g and √v̂ = |g| at t = 1, whatever β1, β2)
    p.grad = p.grad + np.where(p.grad >= 0, 1e-3, -1e-3)
    before = p.value.copy()
    AdamW({"w": p}, lr=lr, weight_decay=0.0).step()
    step = p.value - before
    np.testing.assert_allclose(np.abs(step), lr, rtol=1e-5)
    assert np.all(np.sign(step) == -np.sign(p.grad))


def test_decoupled_weight_decay_shrinks_with_zero_grad():
    rng = np.random.default_rng(1)
    p = Param(rng.standard_normal((5, 6)))
    theta0 = p.value.copy()
    lr, wd = 0.01, 0.1
    opt = AdamW({"w": p}, lr=lr, weight_decay=wd)
    p.grad = np.zeros_like(theta0)
    opt.step()
    # m = v = 0, so the Adam term is 0/ε = 0 and only the decay θ(1 − αλ) acts
    assert np.array_equal(p.value, theta0 * (1.0 - lr * wd))
    for _ in range(9):
        opt.step()
    np.testing.assert_allclose(p.value, theta0 * (1.0 - lr * wd) ** 10, rtol=1e-12)


def test_decoupled_weight_decay_is_not_scaled_by_adam_denominator():
    # same θ, gradients 10⁶ apart in scale: an L2 term added to g would be divided by √v̂ ∝ |g|;
    # decoupled, the part of the step due to the decay is α·λ·θ for both
    rng = np.random.default_rng(2)
    theta0 = rng.standard_normal(8)
    lr, wd = 0.01, 0.2
    for grad_scale in (1e-3, 1e3):
        g = grad_scale * rng.standard_normal(8)
        with_decay, without_decay = Param(theta0.copy()), Param(theta0.copy())
        with_decay.grad, without_decay.grad = g.copy(), g.copy()
        AdamW({"w": with_decay}, lr=lr, weight_decay=wd).step()
        AdamW({"w": without_decay}, lr=lr, weight_decay=0.0).step()
        np.testing.assert_allclose(
            without_decay.value - with_decay.value, lr * wd * theta0, rtol=1e-9, atol=1e-15
        )  # 1e-9: the difference of two O(1) numbers keeps ~1e-16/(α·λ) = 5e-14 relative accuracy


def test_step_count_starts_at_first_grad_per_param():
    rng = np.random.default_rng(3)
    a, b = Param(rng.standard_normal(4)), Param(rng.standard_normal(4))
    opt = AdamW({"a": a, "b": b}, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    for _ in range(3):
        a.grad = rng.standard_normal(4)
        opt.step()
    assert "b" not in opt.state and "b" not in opt.step_counts
    b_before = b.value.copy()
    b.grad = rng.standard_normal(4)
    a.grad = rng.standard_normal(4)
    opt.step()
    assert opt.step_counts == {"a": 4, "b": 1}
    # b's first update is bias-corrected with t = 1, not the optimizer's 4th step
    expected = reference_adamw(b_before, [b.grad], 0.01, 0.9, 0.999, 1e-8, 0.0)
    np.testing.assert_allclose(b.value, expected, rtol=1e-12, atol=1e-12)


# --- trust ratios (LARS / LAMB) ------------------------------------------------------------------


@FAST
@given(shape=shapes, seed=seeds, wd=st.floats(0.0, 0.1), steps=st.integers(1, 4))
def test_lamb_trust_ratio_formula(shape, seed, wd, steps):
    rng = np.random.default_rng(seed)
    theta0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(steps)]
    p = Param(theta0.copy())
    opt = AdamW({"w": p}, lr=0.02, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd, trust_ratio=True)
    for g in grads:
        p.grad = g.copy()
        opt.step()
    expected, r = reference_lamb(theta0, grads, 0.02, 0.9, 0.99, 1e-8, wd)
    np.testing.assert_allclose(p.value, expected, rtol=1e-12, atol=1e-12)
    assert opt.last_trust_ratios["w"] == pytest.approx(r, rel=1e-12)


@pytest.mark.parametrize(
    "make_opt",
    [
        partial(SGD, lr=0.1, trust_ratio=True),
        partial(AdamW, lr=0.1, weight_decay=0.0, trust_ratio=True),
    ],
    ids=["LARS", "LAMB"],
)
def test_trust_ratio_is_one_for_a_zero_param(make_opt):
    # a zero-initialised parameter (LoRA's B) would never move with r = ‖θ‖/‖u‖ = 0
    p = Param(np.zeros((3, 2)))
    p.grad = np.arange(6.0).reshape(3, 2) - 2.0
    opt = make_opt({"lora_B": p})
    opt.step()
    assert opt.last_trust_ratios["lora_B"] == 1.0
    assert np.any(p.value != 0.0)


def test_per_layer_trust_ratios_differ_between_layers():
    # the point of §2.2: two layers of different scale get different effective learning rates
    rng = np.random.default_rng(4)
    small, large = Param(0.01 * rng.standard_normal(10)), Param(10.0 * rng.standard_normal(10))
    opt = AdamW({"small": small, "large": large}, lr=0.01, trust_ratio=True)
    small.grad, large.grad = rng.standard_normal(10), rng.standard_normal(10)
    opt.step()
    ratios = opt.last_trust_ratios
    assert ratios["large"] > 100 * ratios["small"]


# --- what a step touches -------------------------------------------------------------------------


ALL_OPTIMIZERS = [
    partial(SGD, lr=0.1),
    partial(SGD, lr=0.1, momentum=0.9, weight_decay=0.01, trust_ratio=True),
    partial(AdamW, lr=0.1),
    partial(AdamW, lr=0.1, trust_ratio=True),
]
OPT_IDS = ["sgd", "lars", "adamw", "lamb"]


@pytest.mark.parametrize("make_opt", ALL_OPTIMIZERS, ids=OPT_IDS)
def test_frozen_params_bit_identical_and_stateless(make_opt):
    rng = np.random.default_rng(5)
    trained = param_with_grad(rng, (3, 3))
    frozen = param_with_grad(rng, (4,), trainable=False)  # a stray grad must still be ignored
    frozen_before = frozen.value.copy()
    opt = make_opt({"trained": trained, "frozen": frozen})
    for _ in range(3):
        opt.step()
    assert np.array_equal(frozen.value, frozen_before)
    assert "frozen" not in opt.state and "frozen" not in opt.step_counts
    assert "frozen" not in opt.last_trust_ratios
    assert opt.step_counts == {"trained": 3}


@pytest.mark.parametrize("make_opt", ALL_OPTIMIZERS, ids=OPT_IDS)
def test_params_without_grad_are_untouched_and_stateless(make_opt):
    rng = np.random.default_rng(6)
    trained = param_with_grad(rng, (2, 3))
    unused = Param(rng.standard_normal(5))
    unused_before = unused.value.copy()
    opt = make_opt({"trained": trained, "unused": unused})
    opt.step()
    assert np.array_equal(unused.value, unused_before)
    assert "unused" not in opt.state and "unused" not in opt.step_counts


@pytest.mark.parametrize("make_opt", ALL_OPTIMIZERS, ids=OPT_IDS)
def test_updates_are_in_place_so_shared_arrays_stay_shared(make_opt):
    rng = np.random.default_rng(8)
    p = param_with_grad(rng, (3, 4))
    array, row_view = p.value, p.value[0]  # what another module might hold
    before = array.copy()
    make_opt({"w": p}).step()
    assert p.value is array
    assert not np.array_equal(array, before)
    assert np.array_equal(row_view, p.value[0])


@pytest.mark.parametrize("make_opt", ALL_OPTIMIZERS, ids=OPT_IDS)
def test_float32_params_and_state_stay_float32(make_opt):
    rng = np.random.default_rng(9)
    p = param_with_grad(rng, (4, 5), dtype=np.float32)
    opt = make_opt({"w": p})
    # np.float64 scalars (a schedule using np.cos, an lr read from a float64 array) must not upcast
    opt.param_groups[0]["lr"] = np.float64(0.05)
    scheduler = LRScheduler(opt, lambda t: np.cos(np.float64(0.1) * t))
    for _ in range(3):
        scheduler.step()
        opt.step()
    assert p.value.dtype == np.float32
    assert all(a.dtype == np.float32 for arrays in opt.state.values() for a in arrays.values())


def test_float32_sgd_uses_python_float_lr():
    # NEP 50: value - np.float64(lr) * grad computes in float64; A2 here must be the float32 sum
    rng = np.random.default_rng(10)
    p = param_with_grad(rng, (50,), dtype=np.float32)
    lr = np.float64(0.1234567)
    expected = p.value - float(lr) * p.grad
    SGD({"w": p}, lr=lr).step()
    assert np.array_equal(p.value, expected)


def test_grad_with_wrong_shape_raises_naming_the_param():
    p = Param(np.zeros((2, 3)))
    p.grad = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"attn\.c_attn\.weight.*\(3, 2\).*\(2, 3\)"):
        AdamW({"attn.c_attn.weight": p}).step()


def test_zero_grad_clears_every_param():
    rng = np.random.default_rng(11)
    ps = [param_with_grad(rng, (2,)) for _ in range(3)]
    opt = SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.5}], lr=0.1)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


# --- parameter groups ----------------------------------------------------------------------------


def test_param_group_lrs_apply():
    rng = np.random.default_rng(12)
    fast, slow, default = (param_with_grad(rng, (3,)) for _ in range(3))
    expected = {
        "fast": fast.value - 0.5 * fast.grad,
        "slow": slow.value - 0.01 * slow.grad,
        "default": default.value - 0.1 * default.grad,
    }
    opt = SGD(
        [
            {"params": {"fast": fast}, "lr": 0.5},
            {"params": {"slow": slow}, "lr": 0.01},
            {"params": {"default": default}},
        ],
        lr=0.1,
    )
    opt.step()
    for name, p in [("fast", fast), ("slow", slow), ("default", default)]:
        assert np.array_equal(p.value, expected[name]), name


def test_group_missing_keys_take_constructor_defaults_and_extra_keys_stay():
    a, b = Param(np.zeros(2)), Param(np.zeros(2))
    opt = AdamW(
        [{"params": [a], "lr": 0.1, "name": "head"}, {"params": [b], "betas": (0.5, 0.6)}],
        lr=0.01,
        weight_decay=0.05,
    )
    first, second = opt.param_groups
    assert (first["lr"], first["weight_decay"], first["name"]) == (0.1, 0.05, "head")
    assert (second["lr"], second["betas"], second["eps"]) == (0.01, (0.5, 0.6), 1e-8)


def test_list_params_are_named_by_position_across_groups():
    ps = [Param(np.zeros(1)) for _ in range(3)]
    assert list(SGD(ps, lr=0.1).param_groups[0]["params"]) == ["0", "1", "2"]
    opt = SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.1)
    assert [list(g["params"]) for g in opt.param_groups] == [["0"], ["1", "2"]]
    assert opt.param_groups[1]["params"]["2"] is ps[2]


def test_step_rejects_an_lr_edited_to_nan():
    p = param_with_grad(np.random.default_rng(13), (3,))
    before = p.value.copy()
    opt = SGD({"w": p}, lr=0.1)
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert np.array_equal(p.value, before)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda ps: SGD(ps, lr=-0.1), ValueError, r"lr.*>= 0.*-0\.1"),
        (lambda ps: SGD(ps, lr=float("nan")), ValueError, "lr.*finite"),
        (lambda ps: AdamW(ps, lr=float("inf")), ValueError, "lr.*finite"),
        (lambda ps: SGD(ps, lr="0.1"), TypeError, "lr.*real number"),
        (lambda ps: SGD(ps, lr=0.1, weight_decay=-0.01), ValueError, "weight_decay"),
        (lambda ps: AdamW(ps, weight_decay=-0.01), ValueError, "weight_decay"),
        (lambda ps: SGD(ps, lr=0.1, momentum=1.0), ValueError, r"momentum.*\[0, 1\).*1\.0"),
        (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), ValueError, "momentum"),
        (lambda ps: AdamW(ps, betas=(1.0, 0.999)), ValueError, r"betas\[0\].*\[0, 1\)"),
        (lambda ps: AdamW(ps, betas=(0.9, 1.5)), ValueError, r"betas\[1\]"),
        (lambda ps: AdamW(ps, betas=(-0.1, 0.9)), ValueError, r"betas\[0\]"),
        (lambda ps: AdamW(ps, betas=(0.9,)), ValueError, "betas.*pair"),
        (lambda ps: AdamW(ps, eps=0.0), ValueError, "eps.*> 0"),
        (lambda ps: AdamW(ps, eps=-1e-8), ValueError, "eps"),
        (lambda ps: AdamW(ps, trust_ratio="yes"), TypeError, "trust_ratio"),
        (lambda ps: AdamW([{"params": ps, "lr": -1.0}]), ValueError, "param group 0: lr"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(build, error, match):
    with pytest.raises(error, match=match):
        build({"w": Param(np.zeros(2))})


def test_bad_params_raise_naming_what_was_expected():
    p, q = Param(np.zeros(2)), Param(np.zeros(2))
    with pytest.raises(ValueError, match="params.*empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="params.*empty"):
        SGD({}, lr=0.1)
    with pytest.raises(ValueError, match="param group 1: missing the 'params' key"):
        SGD([{"params": [p]}, {"lr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match=r"\[1\]: expected a Param, got ndarray"):
        SGD([p, np.zeros(2)], lr=0.1)
    with pytest.raises(TypeError, match=r"\['b'\]: expected a Param, got list"):
        SGD({"a": p, "b": [1.0]}, lr=0.1)
    with pytest.raises(TypeError, match="params.*single Param"):
        SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="mix"):
        SGD([p, {"params": [q]}], lr=0.1)
    with pytest.raises(ValueError, match="same Param.*'a'.*'b'"):
        SGD([{"params": {"a": p}}, {"params": {"b": p}}], lr=0.1)
    with pytest.raises(ValueError, match="name 'a' appears twice"):
        SGD([{"params": {"a": p}}, {"params": {"a": q}}], lr=0.1)


# --- state for checkpoints -----------------------------------------------------------------------


def make_named_params(values=None):
    """Two trainable float32 params and a frozen one; same initial values for every call."""
    rng = np.random.default_rng(14)
    named = {
        "h.0.attn.c_attn.weight": Param(rng.standard_normal((4, 6)).astype(np.float32)),
        "h.0.ln_1.bias": Param(rng.standard_normal(6).astype(np.float32)),
        "wte.weight": Param(rng.standard_normal((5, 4)).astype(np.float32), trainable=False),
    }
    for name, value in (values or {}).items():
        named[name].value = value.copy()
    return named


def set_grads(named, rng, step):
    named["h.0.attn.c_attn.weight"].grad = rng.standard_normal((4, 6)).astype(np.float32)
    if step >= 2:  # the bias's step count starts later than the weight's
        named["h.0.ln_1.bias"].grad = rng.standard_normal(6).astype(np.float32)


def two_groups(named):
    return [
        {"params": {k: v for k, v in named.items() if "attn" in k}, "lr": 0.02},
        {"params": {k: v for k, v in named.items() if "attn" not in k}},
    ]


@pytest.mark.parametrize(
    "make_opt",
    [
        partial(AdamW, lr=0.01, weight_decay=0.1),
        partial(AdamW, lr=0.01, weight_decay=0.1, trust_ratio=True),
        partial(SGD, lr=0.01, momentum=0.9, weight_decay=0.01),
        partial(SGD, lr=0.01, momentum=0.9, trust_ratio=True),
    ],
    ids=["adamw", "lamb", "sgd_momentum", "lars"],
)
def test_state_dict_roundtrip_resumes_bit_exactly(make_opt):
    schedule = partial(warmup_cosine, warmup_steps=3, total_steps=10, min_ratio=0.1)
    saved_at, total = 4, 9

    # the uninterrupted run
    named = make_named_params()
    opt = make_opt(two_groups(named))
    scheduler = LRScheduler(opt, schedule)
    rng = np.random.default_rng(15)
    for step in range(total):
        set_grads(named, rng, step)
        scheduler.step()
        opt.step()
    uninterrupted = {name: p.value.copy() for name, p in named.items()}

    # the same run, saved after `saved_at` steps (through JSON, as a checkpoint file would) ...
    named = make_named_params()
    opt = make_opt(two_groups(named))
    scheduler = LRScheduler(opt, schedule)
    rng = np.random.default_rng(15)
    for step in range(saved_at):
        set_grads(named, rng, step)
        scheduler.step()
        opt.step()
    tensors, meta = opt.state_dict()
    tensors_as_saved = {key: array.copy() for key, array in tensors.items()}
    meta = json.loads(json.dumps(meta))
    scheduler_state = json.loads(json.dumps(scheduler.state_dict()))
    values = {name: p.value.copy() for name, p in named.items()}
    assert opt.state_bytes() == sum(a.nbytes for a in tensors.values()) > 0

    # ... and resumed in fresh objects; the scheduler is built AFTER the optimizer was loaded
    named = make_named_params(values)
    opt = make_opt(two_groups(named))
    for group in opt.param_groups:  # hyper-parameters come from the checkpoint, not the code
        group["weight_decay"] = 0.5
    opt.load_state_dict(tensors, meta)
    scheduler = LRScheduler(opt, schedule)
    scheduler.load_state_dict(scheduler_state)
    for step in range(saved_at, total):
        set_grads(named, rng, step)
        scheduler.step()
        opt.step()

    for name, p in named.items():
        assert np.array_equal(p.value, uninterrupted[name]), name
    # loading copied the arrays: the resumed steps did not write into the checkpoint's tensors
    for key, array in tensors.items():
        assert np.array_equal(array, tensors_as_saved[key]), key


def test_state_dict_names_tensors_by_state_and_param():
    named = make_named_params()
    opt = AdamW(named, lr=0.01)
    set_grads(named, np.random.default_rng(16), step=5)
    opt.step()
    tensors, meta = opt.state_dict()
    assert sorted(tensors) == [
        "exp_avg/h.0.attn.c_attn.weight",
        "exp_avg/h.0.ln_1.bias",
        "exp_avg_sq/h.0.attn.c_attn.weight",
        "exp_avg_sq/h.0.ln_1.bias",
    ]
    assert meta["type"] == "AdamW"
    assert meta["step_counts"] == {"h.0.attn.c_attn.weight": 1, "h.0.ln_1.bias": 1}
    assert meta["groups"][0]["betas"] == [0.9, 0.999]
    assert json.loads(json.dumps(meta)) == meta
    # the saved arrays are copies: stepping on does not change a checkpoint already taken
    first_moment = tensors["exp_avg/h.0.ln_1.bias"].copy()
    opt.step()
    assert np.array_equal(tensors["exp_avg/h.0.ln_1.bias"], first_moment)


def saved_adamw_state():
    named = make_named_params()
    opt = AdamW(named, lr=0.01)
    set_grads(named, np.random.default_rng(17), step=5)
    opt.step()
    return opt.state_dict()


def test_load_state_dict_is_strict_and_all_or_nothing():
    tensors, meta = saved_adamw_state()

    def fresh(**changes):
        named = make_named_params()
        for name, p in changes.items():
            if p is None:
                del named[name]
            else:
                named[name] = p
        return AdamW(named, lr=0.01)

    with pytest.raises(ValueError, match="optimizer type: this is SGD.*'AdamW'"):
        SGD(make_named_params(), lr=0.1).load_state_dict(tensors, meta)
    with pytest.raises(ValueError, match=r"unknown param 'h\.0\.ln_1\.bias'"):
        fresh(**{"h.0.ln_1.bias": None}).load_state_dict(tensors, meta)
    with pytest.raises(ValueError, match=r"param 'lm_head\.weight' missing"):
        fresh(**{"lm_head.weight": Param(np.zeros(3, np.float32))}).load_state_dict(tensors, meta)
    wrong_shape = fresh(**{"h.0.ln_1.bias": Param(np.zeros(7, np.float32))})
    with pytest.raises(ValueError, match=r"exp_avg.*ln_1\.bias.*shape \(7,\), got \(6,\)"):
        wrong_shape.load_state_dict(tensors, meta)
    wrong_dtype = fresh(**{"h.0.ln_1.bias": Param(np.zeros(6, np.float64))})
    with pytest.raises(ValueError, match=r"ln_1\.bias.*dtype float64, got float32"):
        wrong_dtype.load_state_dict(tensors, meta)

    opt = fresh()
    without_one = {k: v for k, v in tensors.items() if k != "exp_avg_sq/h.0.ln_1.bias"}
    with pytest.raises(ValueError, match=r"'exp_avg_sq/h\.0\.ln_1\.bias' missing"):
        opt.load_state_dict(without_one, meta)
    with pytest.raises(ValueError, match="unknown param 'nope'"):
        opt.load_state_dict({**tensors, "exp_avg/nope": np.zeros(1)}, meta)
    with pytest.raises(ValueError, match="momentum_buffer"):
        opt.load_state_dict({**tensors, "momentum_buffer/h.0.ln_1.bias": np.zeros(6)}, meta)
    bad_lr = {**meta, "groups": [{**meta["groups"][0], "lr": -1.0}]}
    with pytest.raises(ValueError, match="saved param group 0: lr"):
        opt.load_state_dict(tensors, bad_lr)
    # nothing of the failed loads leaked in
    assert opt.state == {} and opt.step_counts == {} and opt.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("kind", ["exp_avg", "exp_avg_sq"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_load_state_dict_refuses_a_non_finite_state_naming_the_tensor(kind, bad):
    """A NaN in a moment would turn the first step after a resume into NaN weights."""
    tensors, meta = saved_adamw_state()
    key = f"{kind}/h.0.ln_1.bias"
    damaged = {**tensors, key: tensors[key].copy()}
    damaged[key][3] = bad
    named = make_named_params()
    opt = AdamW(named, lr=0.01)
    with pytest.raises(ValueError, match=re.escape(f"'{key}': holds {bad} at (3,)")):
        opt.load_state_dict(damaged, meta)
    assert opt.state == {} and opt.step_counts == {}
    opt.load_state_dict(tensors, meta)  # the same state, finite, loads
    assert np.array_equal(opt.state["h.0.ln_1.bias"][kind], tensors[key])


@FAST
@given(
    sizes=st.lists(st.tuples(shapes, st.booleans()), min_size=1, max_size=5),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=seeds,
)
def test_state_bytes_proportional_to_trainable_params(sizes, dtype, seed):
    rng = np.random.default_rng(seed)
    named = {
        f"p{i}": param_with_grad(rng, shape, dtype, trainable=trainable)
        for i, (shape, trainable) in enumerate(sizes)
    }
    trainable_elements = sum(p.size for p in named.values() if p.trainable)
    itemsize = np.dtype(dtype).itemsize

    adamw = AdamW(named)
    sgd_momentum, sgd_plain = SGD(named, lr=0.1, momentum=0.9), SGD(named, lr=0.1)
    assert adamw.state_bytes() == 0  # nothing before the first step
    for opt in (adamw, sgd_momentum, sgd_plain):
        opt.step()
    assert adamw.state_bytes() == 2 * trainable_elements * itemsize
    assert sgd_momentum.state_bytes() == trainable_elements * itemsize
    assert sgd_plain.state_bytes() == 0


# --- gradient clipping ---------------------------------------------------------------------------


def params_with_global_grad_norm(rng, param_shapes, norm):
    """Params whose grads, taken together, have the L2 norm ``norm`` (up to rounding)."""
    ps = [param_with_grad(rng, shape) for shape in param_shapes]
    drawn = math.sqrt(sum(float(np.sum(p.grad**2)) for p in ps))
    for p in ps:
        p.grad *= norm / drawn
    return ps


@FAST
@given(
    param_shapes=st.lists(shapes, min_size=1, max_size=4),
    seed=seeds,
    max_norm=st.floats(0.01, 10.0),
    ratio=st.floats(1.01, 1e3),
)
def test_clip_grad_norm_scales_a_norm_above_max_down_to_max(param_shapes, seed, max_norm, ratio):
    rng = np.random.default_rng(seed)
    ps = params_with_global_grad_norm(rng, param_shapes, ratio * max_norm)
    grads_before = [p.grad.copy() for p in ps]
    grad_objects = [p.grad for p in ps]
    expected_norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads_before))
    assert expected_norm > max_norm  # what this test is about, by construction

    returned = clip_grad_norm(ps, max_norm)

    assert returned == pytest.approx(expected_norm, rel=1e-12)
    scale = max_norm / (expected_norm + 1e-6)
    for p, before, obj in zip(ps, grads_before, grad_objects, strict=True):
        assert p.grad is obj  # scaled in place
        np.testing.assert_allclose(p.grad, before * scale, rtol=1e-12)
    # the +1e-6 in the denominator leaves the new norm just below max_norm: max·‖g‖/(‖g‖ + 1e-6)
    new_norm = math.sqrt(sum(float(np.sum(p.grad**2)) for p in ps))
    assert new_norm == pytest.approx(max_norm * expected_norm / (expected_norm + 1e-6), rel=1e-12)
    assert new_norm <= max_norm


@FAST
@given(
    param_shapes=st.lists(shapes, min_size=1, max_size=4),
    seed=seeds,
    max_norm=st.floats(0.01, 10.0),
    ratio=st.floats(1e-3, 0.99),
)
def test_clip_grad_norm_leaves_a_norm_below_max_untouched(param_shapes, seed, max_norm, ratio):
    rng = np.random.default_rng(seed)
    ps = params_with_global_grad_norm(rng, param_shapes, ratio * max_norm)
    before = [p.grad.copy() for p in ps]
    expected_norm = math.sqrt(sum(float(np.sum(g**2)) for g in before))
    assert expected_norm < max_norm  # by construction

    assert clip_grad_norm(ps, max_norm) == pytest.approx(expected_norm, rel=1e-12)
    for p, b in zip(ps, before, strict=True):
        assert np.array_equal(p.grad, b)


def test_clip_grad_norm_ignores_frozen_and_gradless_and_accepts_an_optimizer():
    trained = Param(np.zeros(2))
    trained.grad = np.array([3.0, 4.0])  # norm 5
    frozen = Param(np.zeros(2), trainable=False)
    frozen.grad = np.array([100.0, 100.0])  # a stray grad: not counted, not scaled
    unused = Param(np.zeros(3))
    named = {"trained": trained, "frozen": frozen, "unused": unused}
    opt = AdamW([{"params": {"trained": trained}}, {"params": {"frozen": frozen, "u": unused}}])

    assert clip_grad_norm(opt, max_norm=10.0) == pytest.approx(5.0, rel=1e-15)
    assert clip_grad_norm(named, max_norm=1.0) == pytest.approx(5.0, rel=1e-15)
    np.testing.assert_allclose(trained.grad, [3.0 / (5 + 1e-6), 4.0 / (5 + 1e-6)], rtol=1e-15)
    assert np.array_equal(frozen.grad, [100.0, 100.0])
    assert unused.grad is None


def test_clip_grad_norm_returns_non_finite_norm_and_leaves_grads():
    a, b = Param(np.zeros(2)), Param(np.zeros(2))
    a.grad, b.grad = np.array([np.inf, 1.0]), np.array([1.0, 2.0])
    assert clip_grad_norm([a, b], max_norm=1.0) == math.inf
    assert np.array_equal(a.grad, [np.inf, 1.0]) and np.array_equal(b.grad, [1.0, 2.0])
    a.grad = np.array([np.nan, 1.0])
    assert math.isnan(clip_grad_norm([a, b], max_norm=1.0))
    assert np.array_equal(b.grad, [1.0, 2.0])


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan")])
def test_clip_grad_norm_rejects_non_positive_max_norm(max_norm):
    p = Param(np.zeros(2))
    p.grad = np.ones(2)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm([p], max_norm)


# --- schedules -----------------------------------------------------------------------------------


def test_warmup_cosine_endpoints():
    f = partial(warmup_cosine, warmup_steps=10, total_steps=111, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1)  # (0 + 1) / 10: the first step already moves
    assert f(4) == pytest.approx(0.5)
    assert f(9) == 1.0  # warm-up ends at the peak ...
    assert f(10) == 1.0  # ... where the cosine starts
    assert f(60) == pytest.approx(0.55)  # half way down: (1 + min_ratio) / 2
    assert f(110) == pytest.approx(0.1)  # min_ratio at total_steps − 1
    assert f(10_000) == pytest.approx(0.1)  # clamped beyond
    assert warmup_cosine(0, warmup_steps=0, total_steps=5) == 1.0  # no warm-up: start at the peak
    assert warmup_cosine(4, warmup_steps=0, total_steps=5) == pytest.approx(0.0, abs=1e-15)
    assert warmup_cosine(7, warmup_steps=5, total_steps=5) == 1.0  # no room to decay


@FAST
@given(
    warmup=st.integers(0, 20),
    extra=st.integers(0, 50),
    min_ratio=st.floats(0.0, 1.0),
)
def test_warmup_cosine_rises_then_falls_within_bounds(warmup, extra, min_ratio):
    total = max(1, warmup + extra)
    values = [
        warmup_cosine(s, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio)
        for s in range(total + 5)
    ]
    assert all(min(min_ratio, 1.0 / max(warmup, 1)) - 1e-12 <= v <= 1.0 for v in values)
    rising, falling = values[:warmup], values[warmup:]
    assert all(a < b for a, b in zip(rising, rising[1:], strict=False))
    assert all(a >= b - 1e-15 for a, b in zip(falling, falling[1:], strict=False))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(step=0, warmup_steps=-1, total_steps=10), "warmup_steps"),
        (dict(step=0, warmup_steps=0, total_steps=0), "total_steps"),
        (dict(step=0, warmup_steps=11, total_steps=10), "warmup_steps.*total_steps"),
        (dict(step=0, warmup_steps=1, total_steps=10, min_ratio=-0.1), "min_ratio"),
        (dict(step=0, warmup_steps=1, total_steps=10, min_ratio=1.5), "min_ratio"),
        (dict(step=-1, warmup_steps=1, total_steps=10), "step"),
    ],
)
def test_warmup_cosine_rejects_bad_arguments(kwargs, match):
    step = kwargs.pop("step")
    with pytest.raises(ValueError, match=match):
        warmup_cosine(step, **kwargs)


def test_lr_scheduler_sets_each_group_from_its_base_lr():
    rng = np.random.default_rng(19)
    a, b = param_with_grad(rng, (3,)), param_with_grad(rng, (3,))
    opt = SGD([{"params": {"a": a}, "lr": 0.1}, {"params": {"b": b}, "lr": 0.01}], lr=0.5)
    scheduler = LRScheduler(opt, lambda t: 0.5**t)
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]  # t = 0: multiplier 1
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.005]  # t = 1: multiplier 0.5
    expected = a.value - 0.05 * a.grad
    opt.step()  # the optimizer steps with the scheduled lr
    assert np.array_equal(a.value, expected)
    state = scheduler.state_dict()
    assert state == {"t": 2, "base_lrs": [0.1, 0.01]}

    rebuilt = LRScheduler(opt, lambda t: 0.5**t)  # would take 0.05, 0.005 as its base lrs ...
    rebuilt.load_state_dict(state)  # ... until the saved base lrs are restored
    rebuilt.step()
    assert [g["lr"] for g in opt.param_groups] == [0.025, 0.0025]


def test_lr_scheduler_rejects_bad_multipliers_and_state():
    opt = SGD([Param(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"schedule_fn\(0\).*-1"):
        LRScheduler(opt, lambda t: -1.0).step()
    with pytest.raises(ValueError, match="schedule_fn"):
        LRScheduler(opt, lambda t: float("nan")).step()
    with pytest.raises(ValueError, match="base_lrs.*one per param group"):
        LRScheduler(opt, lambda t: 1.0).load_state_dict({"t": 0, "base_lrs": [0.1, 0.2]})
    with pytest.raises(TypeError, match="schedule_fn"):
        LRScheduler(opt, 0.5)


# --- layer-wise lr decay -------------------------------------------------------------------------


def gpt2_like_params():
    names = [
        "wte.weight",
        "wpe.weight",
        "h.0.attn.c_attn.weight",
        "h.0.ln_1.weight",
        "h.1.mlp.c_fc.weight",
        "h.2.attn.c_proj.weight",
        "ln_f.weight",
        "score.weight",
    ]
    named = {name: Param(np.zeros(2)) for name in names}
    named["h.1.attn.c_attn.weight"] = Param(np.zeros(2), trainable=False)
    return named


def test_layerwise_lr_groups_decay_from_head_down():
    base_lr, decay = 1e-3, 0.5  # L = 3 blocks
    groups = layerwise_lr_groups(gpt2_like_params(), base_lr, decay, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["embeddings", "h.0", "h.1", "h.2", "top"]
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["top"] == base_lr
    assert lrs["h.2"] == pytest.approx(base_lr * 0.5)  # γ^(L − i) = γ^1
    assert lrs["h.1"] == pytest.approx(base_lr * 0.25)
    assert lrs["h.0"] == pytest.approx(base_lr * 0.125)  # γ^L
    assert lrs["embeddings"] == pytest.approx(base_lr * 0.0625)  # γ^(L + 1)
    members = {g["name"]: sorted(g["params"]) for g in groups}
    assert members["embeddings"] == ["wpe.weight", "wte.weight"]
    assert members["h.0"] == ["h.0.attn.c_attn.weight", "h.0.ln_1.weight"]
    assert members["h.1"] == ["h.1.mlp.c_fc.weight"]  # the frozen c_attn is left out
    assert members["top"] == ["ln_f.weight", "score.weight"]
    assert all(g["weight_decay"] == 0.01 for g in groups)
    # and an optimizer takes them as they are
    opt = AdamW(groups, lr=1.0)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]


def test_layerwise_depth_reads_whole_name_components_and_counts_frozen_blocks():
    named = {
        "transformer.wte.weight": Param(np.zeros(1)),
        "transformer.h.0.mlp.c_fc.weight": Param(np.zeros(1), trainable=False),
        "transformer.h.1.mlp.c_fc.weight": Param(np.zeros(1)),
        "each.0.weight": Param(np.zeros(1)),  # contains "h.0." but is not block 0
    }
    groups = layerwise_lr_groups(named, base_lr=1.0, decay=0.5)
    lrs = {g["name"]: g["lr"] for g in groups}
    members = {g["name"]: list(g["params"]) for g in groups}
    assert members == {
        "embeddings": ["transformer.wte.weight"],
        "h.1": ["transformer.h.1.mlp.c_fc.weight"],
        "top": ["each.0.weight"],
    }
    # L = 2 even though block 0 is frozen: block 1 is one step below the top
    assert lrs == {"embeddings": 0.125, "h.1": 0.5, "top": 1.0}


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5, float("nan")])
def test_layerwise_lr_groups_rejects_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match=r"decay.*\(0, 1\]"):
        layerwise_lr_groups(gpt2_like_params(), 1e-3, decay)


def test_layerwise_decay_one_is_a_single_lr():
    groups = layerwise_lr_groups(gpt2_like_params(), 3e-4, 1.0)
    assert {g["lr"] for g in groups} == {3e-4}


def adamw_with_temporaries(theta, m, v, g, t, lr, beta1, beta2, eps, wd):
    """AdamW's step written as the formulas read, one new array per operation."""
    theta = theta * (1.0 - lr * wd)
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * np.square(g)
    denom = np.sqrt(v) / math.sqrt(1.0 - beta2**t) + eps
    return theta - (lr / (1.0 - beta1**t)) * (m / denom), m, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_in_place_step_is_bit_identical_to_the_formulas(dtype):
    """The step reuses one scratch array for every parameter (so it allocates nothing); it must
    still be the same operations in the same order: equal bit for bit, not just close."""
    rng = np.random.default_rng(0)
    shapes = [(7, 5), (3,), (40,), (2, 3, 4)]  # smaller and larger than the scratch in turn
    params = {f"p{i}": Param(rng.standard_normal(s).astype(dtype)) for i, s in enumerate(shapes)}
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, wd=0.1)
    opt = AdamW(params, lr=hyper["lr"], betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    expected = {
        k: (p.value.copy(), np.zeros_like(p.value), np.zeros_like(p.value))
        for k, p in params.items()
    }
    for t in range(1, 5):
        for k, p in params.items():
            p.grad = rng.standard_normal(p.shape).astype(dtype)
            expected[k] = adamw_with_temporaries(*expected[k], p.grad, t, **hyper)
        opt.step()
        for k, p in params.items():
            assert np.array_equal(p.value, expected[k][0]), (k, t)
            assert np.array_equal(opt.state[k]["exp_avg"], expected[k][1]), (k, t)
            assert np.array_equal(opt.state[k]["exp_avg_sq"], expected[k][2]), (k, t)
    assert opt.state_bytes() == 2 * sum(p.value.nbytes for p in params.values())
