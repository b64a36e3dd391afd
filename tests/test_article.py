"""The article's literal equations (minift/article.py): A7's sign, A8's gated model, A9's error."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.article import article_a9_gradient, gated_backward, gated_forward, squared_error
from minift.gradcheck import numerical_gradient, numerical_gradient_array, rel_error
from minift.peft.sparse import ACTIVATIONS, sparse_weight_forward

TOL = 1e-7
fast = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**31 - 1)
dims = st.integers(1, 6)
activations = st.sampled_from(ACTIVATIONS)


def random_mask(rng, shape, density=0.5):
    D = rng.random(shape) < density
    D.flat[0] = True  # at least one kept connection
    return D


# -- A7: the squared loss, with the sign the chain rule gives ------------------------------------


@fast
@given(seeds, dims, dims)
def test_squared_error_gradient_has_the_right_sign(seed, a, b):
    """A7 done right: ∂L/∂f = −2(y − f)/N, so a small step against it lowers the loss."""
    rng = np.random.default_rng(seed)
    f, y = rng.standard_normal((a, b)), rng.standard_normal((a, b))
    loss, df = squared_error(f, y)
    numeric = numerical_gradient(lambda: squared_error(f, y)[0], f)
    assert rel_error(df, numeric) < TOL
    np.testing.assert_allclose(df, -2 * (y - f) / f.size)
    article_a7 = 2 * (y - f) / f.size  # the article's sign
    assert squared_error(f - 0.01 * df, y)[0] < loss
    assert squared_error(f - 0.01 * article_a7, y)[0] > loss


def test_squared_error_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="y: expected the shape"):
        squared_error(np.zeros(3), np.zeros(4))


def test_squared_error_is_the_one_minift_exports():
    assert minift.squared_error is squared_error


# -- A8: the gated model, by the product rule; A9, the article's gradient, against it ------------


@settings(max_examples=15, deadline=None)
@given(seeds, dims, dims, activations)
def test_gated_pair_matches_finite_differences(seed, d_in, d_out, activation):
    rng = np.random.default_rng(seed)
    x, W1, D = (
        rng.standard_normal((5, d_in)),
        rng.standard_normal((d_in, d_out)),
        random_mask(rng, (d_in, d_out)),
    )
    y, cache = gated_forward(x, W1, D, activation)
    np.testing.assert_allclose(
        y, x @ (W1 * sparse_weight_forward(W1, D, activation)[0]), rtol=1e-12
    )
    dy = rng.standard_normal(y.shape)
    dx, dW1 = gated_backward(dy, cache)

    def fwd():
        return gated_forward(x, W1, D, activation)[0]

    assert rel_error(dx, numerical_gradient_array(fwd, x, dy)) < TOL
    assert rel_error(dW1, numerical_gradient_array(fwd, W1, dy)) < TOL


@settings(max_examples=10, deadline=None)
@given(seeds, activations)
def test_a9_is_wrong_and_the_product_rule_is_right(seed, activation):
    """A squared loss on A8's output: finite differences agree with the product rule, not A9."""
    rng = np.random.default_rng(seed)
    x, y_true = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    W1, D = rng.standard_normal((4, 3)), random_mask(rng, (4, 3), 0.7)

    def loss():
        return float(np.sum((gated_forward(x, W1, D, activation)[0] - y_true) ** 2))

    y, cache = gated_forward(x, W1, D, activation)
    dy = 2 * (y - y_true)  # ∂L/∂y (A7 with the sign right)
    _, product_rule = gated_backward(dy, cache)
    a9 = article_a9_gradient(x, W1, D, activation, dy)
    numeric = numerical_gradient(loss, W1)
    assert rel_error(product_rule, numeric) < TOL
    assert rel_error(a9, numeric) > 1e-2
