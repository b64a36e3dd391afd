"""Every fused variant in minift.functional computes what the clear pair above it computes.

In float64 the two agree to 1e-12 relative: they do the same multiplications and additions,
only in another order or grouping (x·(1 + a·x²) for x + a·x³; a sort-then-sum for a scatter-add;
the attention scale applied after a matmul instead of before), so they differ by a few rounding
errors of 1e-16 each. In float32 the same rounding errors are of 1e-7: 1e-5 relative.
No input array is modified, save by the two ``_inplace`` softmax variants, made to overwrite.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minift import functional as F

examples = settings(max_examples=15, deadline=None)
seeds = st.integers(0, 2**31 - 1)
dim = st.integers(1, 6)
RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def close(a, b, dtype, scale=None):
    """a == b to RTOL of ``scale``, by default the largest entry (entries near 0 carry the others'
    rounding)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype == dtype
    scale = max(np.abs(b).max() if scale is None else scale, 1e-30)
    assert np.abs(a - b).max() <= RTOL[dtype] * scale, np.abs(a - b).max() / scale


def frozen_copies(*arrays):
    """Copies to compare with afterwards: a fused variant must leave its inputs as they were."""
    return [a.copy() for a in arrays]


dtypes = st.sampled_from([np.float64, np.float32])


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@examples
@given(seeds, dim, dim, st.integers(2, 9), dtypes)
def test_layer_norm_fused_forward_is_bit_identical_and_backward_equal_to_the_clear_pair(
    seed, B, T, C, dtype
):
    rng = np.random.default_rng(seed)
    x, g, b, dout = (randn(rng, s, dtype) for s in ((B, T, C), (C,), (C,), (B, T, C)))
    before = frozen_copies(x, g, b, dout)
    out, cache = F.layer_norm_forward(x, g, b)
    out_f, cache_f = F.layer_norm_forward_fused(x, g, b)
    assert np.array_equal(out_f, out)  # bit for bit: the same operations in the same order
    for got, want in zip(
        F.layer_norm_backward_fused(dout, cache_f),
        F.layer_norm_backward(dout, cache),
        strict=True,
    ):
        close(got, want, dtype)
    dx, dgamma, dbeta = F.layer_norm_backward_fused(dout, cache_f, need_dparams=False)
    assert dgamma is None and dbeta is None
    close(dx, F.layer_norm_backward(dout, cache)[0], dtype)
    for a, a0 in zip((x, g, b, dout), before, strict=True):
        assert np.array_equal(a, a0)


@examples
@given(seeds, dim, dim, dim, dtypes)
def test_gelu_fused_pair_equals_the_clear_pair_and_leaves_inputs_unchanged(seed, a, b, c, dtype):
    rng = np.random.default_rng(seed)
    x = randn(rng, (a, b, c), dtype) * 3.0
    dout = randn(rng, x.shape, dtype)
    before = frozen_copies(x, dout)
    out, cache = F.gelu_forward(x)
    out_f, cache_f = F.gelu_forward_fused(x)
    close(out_f, out, dtype)
    # gelu′(x) far in the left tail is ½(1 + t) + ½x(1 − t²)…: terms of order 1 that cancel to
    # 1e-12, so both versions carry an ABSOLUTE rounding of about 1e-16·|dout|, whatever the
    # result's size; the scale is |dout|'s (a 1-element draw at x ≈ −6 showed it)
    dx_clear = F.gelu_backward(dout, cache)
    scale = max(np.abs(dx_clear).max(), np.abs(dout).max())
    close(F.gelu_backward_fused(dout, cache_f), dx_clear, dtype, scale)
    assert np.array_equal(x, before[0]) and np.array_equal(dout, before[1])


@examples
@given(seeds, dim, dim, dim, dtypes)
def test_gelu_erf_fused_forward_equals_the_clear_pair_and_shares_its_backward(seed, a, b, c, dtype):
    """float64: the clear pair itself; float32: Φ from normal_cdf_float32, within 1e-6 of
    ndtr's where |x| ≤ 2 (the tails: test_functional.py), and the clear backward on its cache."""
    rng = np.random.default_rng(seed)
    x = np.clip(randn(rng, (a, b, c), dtype), -2, 2)
    dout = randn(rng, x.shape, dtype)
    before = frozen_copies(x, dout)
    out, cache = F.gelu_erf_forward(x)
    out_f, cache_f = F.gelu_erf_forward_fused(x)
    if dtype == np.float64:
        assert np.array_equal(out_f, out) and np.array_equal(cache_f[1], cache[1])
    else:
        assert out_f.dtype == cache_f[1].dtype == np.float32
        assert np.abs(cache_f[1] - cache[1]).max() <= 1e-6 * np.abs(cache[1]).max()
        close(out_f, out, dtype)
        close(F.gelu_erf_backward(dout, cache_f), F.gelu_erf_backward(dout, cache), dtype)
    assert np.array_equal(x, before[0]) and np.array_equal(dout, before[1])


@examples
@given(seeds, dim, st.integers(1, 7), dtypes)
def test_softmax_inplace_pair_equals_the_clear_pair(seed, a, n, dtype):
    rng = np.random.default_rng(seed)
    x = randn(rng, (a, 3, n), dtype) * 5.0
    dout = randn(rng, x.shape, dtype)
    p, _ = F.softmax_forward(x)
    got = F.softmax_inplace(x.copy())
    close(got, p, dtype)
    # dout − Σ dout ⊙ p cancels where p is one-hot: the rounding is of the terms, not the result
    terms = p * (np.abs(dout) + (np.abs(dout) * p).sum(axis=-1, keepdims=True))
    dx = F.softmax_backward(dout, p)
    close(F.softmax_backward_inplace(dout.copy(), p), dx, dtype, scale=terms.max())


def test_softmax_inplace_overwrites_and_returns_its_argument():
    x = np.array([[1.0, 2.0, 3.0]])
    assert F.softmax_inplace(x) is x and np.isclose(x.sum(), 1.0)


@examples
@given(seeds, dim, dim, st.integers(1, 12), st.integers(1, 5), dtypes)
def test_embedding_backward_sorted_equals_the_scatter_add_and_leaves_inputs_unchanged(
    seed, B, T, V, C, dtype
):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, T))  # repeats on purpose: they must accumulate
    dout = randn(rng, (B, T, C), dtype)
    cache = (ids, (V, C))
    before = frozen_copies(ids, dout)
    close(F.embedding_backward_sorted(dout, cache), F.embedding_backward(dout, cache), dtype)
    assert np.array_equal(ids, before[0]) and np.array_equal(dout, before[1])


def test_embedding_backward_sorted_of_no_ids_is_zero():
    got = F.embedding_backward_sorted(np.zeros((0, 3)), (np.zeros(0, dtype=int), (4, 3)))
    assert np.array_equal(got, np.zeros((4, 3)))


@pytest.mark.parametrize("T, Tk", [(1, 1), (4, 4), (3, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_causal_mask_cached_is_the_mask_built_once_and_read_only(T, Tk, dtype):
    got = F.causal_mask_cached(T, Tk, dtype)
    assert np.array_equal(got, F.causal_mask(T, Tk, dtype)) and got.dtype == dtype
    assert F.causal_mask_cached(T, Tk, dtype) is got  # built once
    with pytest.raises(ValueError, match="read-only"):
        got[0, 0] = 1.0


@examples
@given(seeds, dim, st.integers(1, 3), st.integers(1, 7), st.integers(1, 4), dtypes, st.booleans())
def test_mha_fused_pair_equals_the_clear_pair_and_leaves_inputs_unchanged(
    seed, B, nh, T, hs, dtype, with_mask
):
    rng = np.random.default_rng(seed)
    C = nh * hs
    qkv = randn(rng, (B, T, 3 * C), dtype)
    dy = randn(rng, (B, T, C), dtype)
    mask = None
    if with_mask:  # an additive padding-style mask, finite as the docstring asks
        mask = np.where(rng.random((B, 1, 1, T)) < 0.3, -1e4, 0.0).astype(dtype)
    before = frozen_copies(qkv, dy)
    y, cache = F.mha_forward(qkv, nh, mask)
    y_f, cache_f = F.mha_forward_fused(qkv, nh, mask)
    close(y_f, y, dtype)
    dqkv, _, _ = F.mha_backward(dy, cache)
    dqkv_f, dk_extra, dv_extra = F.mha_backward_fused(dy, cache_f)
    assert dk_extra is None and dv_extra is None
    close(dqkv_f, dqkv, dtype)
    assert np.array_equal(qkv, before[0]) and np.array_equal(dy, before[1])


def test_mha_backward_fused_with_extra_key_rows_is_the_clear_backward():
    rng = np.random.default_rng(0)
    B, nh, T, P, hs = 2, 2, 3, 2, 4
    qkv = rng.standard_normal((B, T, 3 * nh * hs))
    ek, ev = rng.standard_normal((2, B, nh, P, hs))
    dy = rng.standard_normal((B, T, nh * hs))
    _, cache = F.mha_forward(qkv, nh, None, ek, ev)
    for got, want in zip(F.mha_backward_fused(dy, cache), F.mha_backward(dy, cache), strict=True):
        assert np.array_equal(got, want)
