"""Ring 1: every forward/backward pair of minift.functional against float64 central differences."""

import math

import numpy as np
import pytest
import reference as ref
from helpers import require, well_spread_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from minift import functional as F
from minift import gradcheck
from minift.gradcheck import numerical_gradient, numerical_gradient_array, rel_error

TOL = 1e-7
fast = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**31 - 1)
dim = st.integers(1, 6)


def randn(rng, *shape):
    return rng.standard_normal(shape)


def check_pair(forward, backward, inputs, rng):
    """Backward against central differences of Σ forward(...) ⊙ dout, for every float input."""
    report = gradcheck.check_pair(forward, backward, inputs, rng)
    assert report.ok(TOL), str(report)


# -- linear -------------------------------------------------------------------------------------


@fast
@given(seeds, dim, dim, dim, dim, st.booleans())
def test_linear_backward_matches_finite_differences(seed, B, T, n_in, n_out, bias):
    rng = np.random.default_rng(seed)
    x, W = randn(rng, B, T, n_in), randn(rng, n_in, n_out)
    b = randn(rng, n_out) if bias else None
    out, cache = F.linear_forward(x, W, b)
    dout = randn(rng, *out.shape)
    dx, dW, db = F.linear_backward(dout, cache)
    fwd = lambda: F.linear_forward(x, W, b)[0]  # noqa: E731
    assert rel_error(dx, numerical_gradient_array(fwd, x, dout)) < TOL
    assert rel_error(dW, numerical_gradient_array(fwd, W, dout)) < TOL
    if bias:
        assert rel_error(db, numerical_gradient_array(fwd, b, dout)) < TOL
    else:
        assert db is None


def test_linear_frozen_weight_skips_dW_but_not_dx():
    rng = np.random.default_rng(0)
    x, W = randn(rng, 2, 3, 4), randn(rng, 4, 5)
    out, cache = F.linear_forward(x, W)
    dout = randn(rng, *out.shape)
    dx, dW, _ = F.linear_backward(dout, cache, need_dW=False)
    assert dW is None
    np.testing.assert_allclose(dx, dout @ W.T)


# -- embedding ----------------------------------------------------------------------------------


@fast
@given(seeds, dim, dim, st.integers(1, 5), dim)
def test_embedding_backward_matches_finite_differences(seed, B, T, V, C):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, T))
    W = randn(rng, V, C)
    out, cache = F.embedding_forward(ids, W)
    dout = randn(rng, *out.shape)
    dW = F.embedding_backward(dout, cache)
    numeric = numerical_gradient_array(lambda: F.embedding_forward(ids, W)[0], W, dout)
    assert rel_error(dW, numeric) < TOL


def test_embedding_repeated_ids_accumulate():
    W = np.zeros((3, 2))
    ids = np.array([[1, 1, 1, 2]])
    _, cache = F.embedding_forward(ids, W)
    dW = F.embedding_backward(np.ones((1, 4, 2)), cache)
    np.testing.assert_array_equal(dW, [[0, 0], [3, 3], [1, 1]])


# -- layer norm, gelu, softmax ------------------------------------------------------------------


@fast
@given(seeds, dim, dim, st.integers(3, 8))
def test_layer_norm_backward_matches_finite_differences(seed, B, T, C):
    # C = 2 is left out: there x̂ = ±1 whatever x is, the true dx is 0 and a relative error of
    # rounding noise against 0 means nothing.
    rng = np.random.default_rng(seed)
    check_pair(
        F.layer_norm_forward,
        F.layer_norm_backward,
        (well_spread_rows(rng, B, T, C), 1 + 0.5 * randn(rng, C), randn(rng, C)),
        rng,
    )


def test_layer_norm_output_is_normalised():
    rng = np.random.default_rng(1)
    x = 5 + 3 * randn(rng, 4, 16)
    out, _ = F.layer_norm_forward(x, np.ones(16), np.zeros(16), eps=0.0)
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(-1), 1, atol=1e-12)


@fast
@given(seeds, dim, dim, dim)
def test_gelu_tanh_backward_matches_finite_differences(seed, a, b, c):
    rng = np.random.default_rng(seed)
    # Not below −3.5: there u < −4.3, tanh(u) = −1 + 4e-4 and the forward's 1 + tanh(u) keeps
    # only 12 of its 16 digits (at x = −5.2, 9), so central differences of the forward itself
    # cannot reach 1e-7 relative where gelu′ is 1e-7 small (hypothesis found x = −5.21: 6e-6).
    x = np.maximum(3 * randn(rng, a, b, c), -3.5)
    check_pair(F.gelu_forward, F.gelu_backward, (x,), rng)


@fast
@given(seeds, dim, dim, dim)
def test_gelu_erf_backward_matches_finite_differences(seed, a, b, c):
    rng = np.random.default_rng(seed)
    check_pair(F.gelu_erf_forward, F.gelu_erf_backward, (3 * randn(rng, a, b, c),), rng)


@fast
@given(seeds, st.floats(-12.0, -3.0))
def test_gelu_erf_backward_matches_finite_differences_alone_in_the_far_left_tail(seed, x0):
    """One entry, so nothing larger hides its error in the norm: where Φ(x) is 1e-3 to 1e-33."""
    rng = np.random.default_rng(seed)
    check_pair(F.gelu_erf_forward, F.gelu_erf_backward, (np.array([x0]),), rng)


def test_gelu_erf_forward_keeps_full_precision_in_the_left_tail():
    """Φ(x) = ½·erfc(−x/√2) has no cancellation; ½·(1 + erf(x/√2)) would keep 1 digit at −8."""
    x = np.array([-3.0, -5.0, -8.0, -10.0, -20.0])
    exact = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x])
    np.testing.assert_allclose(F.gelu_erf_forward(x)[0], exact, rtol=1e-13)


def test_normal_cdf_float32_is_within_its_stated_error_of_the_exact_cdf():
    """Against float64's ndtr on two million float32 points of [−12, 8]: the bounds its
    docstring states, and the right limits at ±inf; NaN stays NaN."""
    from scipy.special import ndtr

    x = np.linspace(-12, 8, 2_000_001, dtype=np.float32)
    got = F.normal_cdf_float32(x)
    assert got.dtype == np.float32
    exact = ndtr(x.astype(np.float64))
    rel = np.abs(got - exact) / exact
    assert rel.max() < 2e-5
    assert rel[x >= -2].max() < 1e-6
    assert rel.max() > 1e-7  # it IS an approximation: coarser than float32 rounding in the tail
    special = F.normal_cdf_float32(np.array([-np.inf, np.inf, np.nan, -1e30, 1e30], np.float32))
    np.testing.assert_array_equal(special[[0, 1, 3, 4]], [0.0, 1.0, 0.0, 1.0])
    assert np.isnan(special[2])


def test_the_fit_behind_normal_cdf_float32_is_the_one_its_comment_describes():
    """Refit: degree-9 Chebyshev least squares of log(erfc(z)/t) + z², t = 1/(1 + z/2), on
    400,001 points of [0, 12], turned into powers of t: the stored coefficients, to float32."""
    from scipy.special import erfc

    z = np.linspace(0, 12, 400_001)
    t = 1.0 / (1.0 + 0.5 * z)
    cheb = np.polynomial.chebyshev.chebfit(2 * t - 1, np.log(erfc(z) / t) + z * z, 9)
    in_u = np.polynomial.Polynomial(np.polynomial.chebyshev.cheb2poly(cheb))
    in_t = in_u(np.polynomial.Polynomial([-1.0, 2.0])).coef  # u = 2t − 1
    np.testing.assert_allclose(F._ERFC_POLY, in_t, rtol=1e-6, atol=1e-7)
    fitted = t * np.exp(np.polynomial.polynomial.polyval(t, in_t) - z * z)
    assert np.max(np.abs(fitted / erfc(z) - 1)) < 3.1e-7


def test_gelu_tanh_approximates_exact_gelu():
    x = np.linspace(-6, 6, 1001)
    tanh_form, _ = F.gelu_forward(x)
    erf_form, _ = F.gelu_erf_forward(x)
    # the tanh approximation is known to stay within about 1e-3 of the exact GELU
    assert np.abs(tanh_form - erf_form).max() < 1e-3
    assert np.abs(tanh_form - erf_form).max() > 1e-6  # and it IS an approximation


@fast
@given(seeds, dim, dim, dim)
def test_softmax_backward_matches_finite_differences(seed, a, b, c):
    rng = np.random.default_rng(seed)
    check_pair(F.softmax_forward, F.softmax_backward, (2 * randn(rng, a, b, c),), rng)


def test_softmax_is_stable_for_huge_logits():
    p, _ = F.softmax_forward(np.array([[1e4, -1e4, 0.0], [1e4, 1e4, -1e4]]))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, [[1, 0, 0], [0.5, 0.5, 0]])


def test_dropout_backward_uses_the_same_mask():
    rng = np.random.default_rng(0)
    x = randn(rng, 50, 40)
    out, cache = F.dropout_forward(x, 0.3, np.random.default_rng(5))
    dout = randn(rng, *x.shape)
    dx = F.dropout_backward(dout, cache)
    kept = out != 0
    np.testing.assert_allclose(dx[kept], dout[kept] / 0.7)
    assert (dx[~kept] == 0).all()
    assert 0.6 < kept.mean() < 0.8
    same, _ = F.dropout_forward(x, 0.0, np.random.default_rng(5))
    assert same is x


# -- attention ----------------------------------------------------------------------------------


@fast
@given(seeds, st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(0, 3), dim)
def test_attention_backward_matches_finite_differences(seed, B, nh, T, P, hs):
    rng = np.random.default_rng(seed)
    q, k, v = randn(rng, B, nh, T, hs), randn(rng, B, nh, P + T, hs), randn(rng, B, nh, P + T, hs)
    check_pair(F.attention_forward, F.attention_backward, (q, k, v), rng)


@fast
@given(seeds, st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(0, 3), dim)
def test_mha_with_extra_rows_backward_matches_finite_differences(seed, B, nh, T, P, hs):
    rng = np.random.default_rng(seed)
    C = nh * hs
    qkv = randn(rng, B, T, 3 * C)
    extra_k = randn(rng, B, nh, P, hs) if P else None
    extra_v = randn(rng, B, nh, P, hs) if P else None
    # random key padding; key P (the sequence's first token, seen by every query) stays visible,
    # since a row with every key masked has no gradient worth checking
    mask = np.where(rng.random((B, 1, 1, P + T)) < 0.2, -1e9, 0.0)
    mask[..., P] = 0.0
    fwd = lambda: F.mha_forward(qkv, nh, mask, extra_k, extra_v)[0]  # noqa: E731
    y, cache = F.mha_forward(qkv, nh, mask, extra_k, extra_v)
    dy = randn(rng, *y.shape)
    dqkv, dk, dv = F.mha_backward(dy, cache)
    assert rel_error(dqkv, numerical_gradient_array(fwd, qkv, dy)) < TOL
    if P:
        assert rel_error(dk, numerical_gradient_array(fwd, extra_k, dy)) < TOL
        assert rel_error(dv, numerical_gradient_array(fwd, extra_v, dy)) < TOL
    else:
        assert dk is None and dv is None


@fast
@given(seeds, st.integers(2, 8), st.integers(0, 3))
def test_attention_is_causal(seed, T, P):
    """Changing the keys/values of positions after t never changes the output at or before t."""
    rng = np.random.default_rng(seed)
    q, k, v = randn(rng, 1, 2, T, 3), randn(rng, 1, 2, P + T, 3), randn(rng, 1, 2, P + T, 3)
    t = int(rng.integers(0, T - 1))
    y, _ = F.attention_forward(q, k, v)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, P + t + 1 :] += randn(rng, 1, 2, T - t - 1, 3)
    v2[:, :, P + t + 1 :] += randn(rng, 1, 2, T - t - 1, 3)
    y2, _ = F.attention_forward(q, k2, v2)
    np.testing.assert_array_equal(y[:, :, : t + 1], y2[:, :, : t + 1])
    assert not np.allclose(y[:, :, t + 1 :], y2[:, :, t + 1 :])


def test_causal_mask_lets_every_query_see_the_extra_rows():
    m = F.causal_mask(3, 5)  # 2 extra rows, then 3 queries
    assert (m[:, :2] == 0).all()
    np.testing.assert_array_equal(np.isinf(m[:, 2:]), np.triu(np.ones((3, 3), bool), 1))


def test_split_and_merge_heads_are_inverse():
    x = np.arange(2 * 3 * 8.0).reshape(2, 3, 8)
    assert F.split_heads(x, 4).shape == (2, 4, 3, 2)
    np.testing.assert_array_equal(F.merge_heads(F.split_heads(x, 4)), x)


# -- losses -------------------------------------------------------------------------------------


@fast
@given(seeds, dim, dim, st.integers(2, 7), st.floats(0, 0.7))
def test_cross_entropy_gradient_matches_finite_differences(seed, B, T, V, p_ignore):
    rng = np.random.default_rng(seed)
    logits = 2 * randn(rng, B, T, V)
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < p_ignore] = -100
    targets[0, 0] = rng.integers(0, V)  # at least one kept target
    loss, dlogits = F.cross_entropy(logits, targets)
    numeric = numerical_gradient(lambda: F.cross_entropy(logits, targets)[0], logits)
    assert rel_error(dlogits, numeric) < TOL
    assert (dlogits[targets == -100] == 0).all()


def test_cross_entropy_is_mean_over_kept_tokens():
    rng = np.random.default_rng(3)
    logits = randn(rng, 2, 4, 5)
    targets = np.array([[1, -100, 3, 0], [-100, -100, 4, 2]])
    loss, _ = F.cross_entropy(logits, targets)
    kept = targets != -100
    z = logits[kept]
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    assert loss == pytest.approx(-logp[np.arange(len(z)), targets[kept]].mean(), rel=1e-14)


@fast
@given(seeds, dim, dim, st.integers(2, 7), st.floats(0, 0.7))
def test_cross_entropy_and_its_gradient_equal_a_loop_over_the_kept_tokens(seed, B, T, V, p_ignore):
    """loss = (1/N)·Σ_kept −log softmax(z)[y] and dz = (softmax(z) − onehot(y))/N on kept rows,
    N the number of KEPT tokens, written token by token with math.exp: the normaliser is N."""
    rng = np.random.default_rng(seed)
    logits = 2 * randn(rng, B, T, V)
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < p_ignore] = -100
    targets[-1, -1] = rng.integers(0, V)  # at least one kept target
    kept = [(b, t) for b in range(B) for t in range(T) if targets[b, t] != -100]
    N = len(kept)
    loss_loop, dz_loop = 0.0, np.zeros_like(logits)
    for b, t in kept:
        row = [float(v) for v in logits[b, t]]
        top = max(row)
        total = sum(math.exp(v - top) for v in row)
        loss_loop += (top + math.log(total) - row[targets[b, t]]) / N
        for v in range(V):
            onehot = 1.0 if v == targets[b, t] else 0.0
            dz_loop[b, t, v] = (math.exp(row[v] - top) / total - onehot) / N
    loss, dlogits = F.cross_entropy(logits, targets)
    assert loss == pytest.approx(loss_loop, rel=1e-12)
    np.testing.assert_allclose(dlogits, dz_loop, rtol=1e-10, atol=1e-15)


def test_cross_entropy_ignores_a_fully_ignored_sequence_entirely():
    """Appending a sequence whose targets are all ignore_index changes neither the loss nor the
    gradient of the other rows: the mean is over kept tokens, not over every position."""
    rng = np.random.default_rng(7)
    logits, targets = randn(rng, 2, 5, 6), rng.integers(0, 6, (2, 5))
    loss, dlogits = F.cross_entropy(logits, targets)
    padded_logits = np.concatenate([logits, randn(rng, 1, 5, 6)])
    padded_targets = np.concatenate([targets, np.full((1, 5), -100)])
    padded_loss, padded_dlogits = F.cross_entropy(padded_logits, padded_targets)
    assert padded_loss == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(padded_dlogits[:2], dlogits, rtol=1e-14)
    assert (padded_dlogits[2] == 0).all()


def test_cross_entropy_stable_for_logits_of_1e4():
    logits = np.array([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 1e4]]])
    loss, dlogits = F.cross_entropy(logits, np.array([[0], [0]]))
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert loss == pytest.approx((0.0 + 2e4 + np.log(2)) / 2)


@pytest.mark.reference
def test_cross_entropy_matches_torch_when_available():
    torch = require("torch", "reference")
    rng = np.random.default_rng(0)
    logits, targets = randn(rng, 3, 4, 7), rng.integers(0, 7, (3, 4))
    targets[0, 1] = -100
    loss, dlogits = F.cross_entropy(logits, targets)
    t = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(t.view(-1, 7), torch.tensor(targets).view(-1))
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(dlogits, t.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("logits", "targets", "exc", "match"),
    [
        (np.zeros((2, 3)), np.array([0, 3]), ValueError, "targets.*\\[0, 3\\).*got 3"),
        (np.zeros((2, 3)), np.array([0, -1]), ValueError, "targets.*got -1"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), ValueError, "targets: expected shape"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), TypeError, "targets: expected an integer"),
        (np.zeros((2, 3), int), np.array([0, 1]), TypeError, "logits: expected a floating"),
        (np.zeros((2, 3)), np.array([-100, -100]), ValueError, "every target equals ignore"),
    ],
)
def test_cross_entropy_rejects_bad_input(logits, targets, exc, match):
    with pytest.raises(exc, match=match):
        F.cross_entropy(logits, targets)


def test_float32_inputs_stay_float32():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 3, 8).astype(np.float32)
    assert F.gelu_forward(x)[0].dtype == np.float32
    assert F.gelu_erf_forward(x)[0].dtype == np.float32
    g = np.ones(8, np.float32)
    assert F.layer_norm_forward(x, g, 0 * g)[0].dtype == np.float32
    qkv = randn(rng, 2, 3, 24).astype(np.float32)
    y, cache = F.mha_forward(qkv, 2)
    assert y.dtype == np.float32
    assert F.mha_backward(y, cache)[0].dtype == np.float32
    _, dlogits = F.cross_entropy(x, np.zeros((2, 3), int))
    assert dlogits.dtype == np.float32


def test_reference_module_is_independent():
    """The tests' own naive reference (written without minift) agrees with minift's attention."""
    rng = np.random.default_rng(0)
    q, k, v = randn(rng, 2, 2, 4, 3), randn(rng, 2, 2, 6, 3), randn(rng, 2, 2, 6, 3)
    y, _ = F.attention_forward(q, k, v)
    np.testing.assert_allclose(y, ref.naive_causal_attention(q, k, v), rtol=1e-12)
