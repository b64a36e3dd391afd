"""peft/adapted.py: a method that gives only its pure pair, its Params and ΔW gets a whole layer.

The method here is the simplest weight-level change there is, a dense ΔW (W = W₀ + Δ), written
the way a method file writes its math; everything else (merged check, dropout, frozen base,
accumulation, merge) must come from the template.
(That no module of minift imports itself back: tests/test_architecture.py.)
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minift import functional as F
from minift.gradcheck import numerical_gradient_array, rel_error
from minift.nn import Linear
from minift.param import Param
from minift.peft.adapted import AdaptedLinear

TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)


def dense_forward(x, W0, b, Delta, x_lora=None):
    """y = x·W₀ + b + x_lora·Δ.  # [..., in], [in, out], [out], [in, out] -> [..., out]"""
    x_lora = x if x_lora is None else x_lora
    y, base_cache = F.linear_forward(x, W0, b)
    y += (x_lora.reshape(-1, Delta.shape[0]) @ Delta).reshape(y.shape)
    return y, (base_cache, x_lora, Delta)


def dense_backward(dy, cache, need_base_grads=False):
    """Returns (dx, dx_lora, dDelta, dW0, db)."""
    base_cache, x_lora, Delta = cache
    dx, dW0, db = F.linear_backward(dy, base_cache, need_base_grads, need_base_grads)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
    dDelta = x_lora.reshape(-1, Delta.shape[0]).T @ dy2  # (in, out)
    return dx, (dy2 @ Delta.T).reshape(x_lora.shape), dDelta, dW0, db


class DenseDeltaLinear(AdaptedLinear):
    kind = "dense"
    delta_params = ("delta",)
    delta_forward = staticmethod(dense_forward)
    delta_backward = staticmethod(dense_backward)

    def __init__(self, base_layer, dropout, rng):
        super().__init__(base_layer, dropout, rng=rng)
        self.delta = Param(rng.standard_normal(base_layer.weight.shape))

    def delta_weight(self):
        return self.delta.value


def make_layer(seed, d_in, d_out, dropout=0.0, train_base=False):
    rng = np.random.default_rng(seed)
    base = Linear(d_in, d_out, rng=rng, dtype=np.float64)
    base.bias.value[...] = rng.standard_normal(d_out)
    base.weight.trainable = base.bias.trainable = train_base
    return DenseDeltaLinear(base, dropout, rng)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 5), st.integers(1, 5), st.sampled_from([0.0, 0.5]), st.booleans())
def test_the_template_gives_every_gradient_of_a_method_that_wrote_only_its_pair(
    seed, d_in, d_out, dropout, train_base
):
    layer = make_layer(seed, d_in, d_out, dropout, train_base)
    rng = np.random.default_rng(seed + 1)
    x, dy = rng.standard_normal((2, 3, d_in)), rng.standard_normal((2, 3, d_out))

    def forward():
        layer.lora_dropout.rng = np.random.default_rng(seed)  # the same dropout mask every time
        return layer.forward(x)

    forward()
    dx = layer.backward(dy)
    base = layer.base_layer
    assert rel_error(dx, numerical_gradient_array(forward, x, dy)) < TOL
    for p in [layer.delta, base.weight, base.bias] if train_base else [layer.delta]:
        assert rel_error(p.grad, numerical_gradient_array(forward, p.value, dy)) < TOL
    if not train_base:  # frozen: no dW, though dx above flowed through W₀
        assert base.weight.grad is None and base.bias.grad is None
    first = layer.delta.grad.copy()
    forward()
    layer.backward(dy)
    np.testing.assert_allclose(layer.delta.grad, 2 * first, rtol=1e-14)  # accumulated, not set


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(1, 5), st.integers(1, 5))
def test_merge_computes_the_same_layer_and_unmerge_restores_w0(seed, d_in, d_out):
    layer = make_layer(seed, d_in, d_out)
    x = np.random.default_rng(seed + 1).standard_normal((4, d_in))
    W0 = layer.base_layer.weight.value.copy()
    y = layer.forward(x)
    layer.merge()
    assert layer.merged
    np.testing.assert_allclose(layer.base_layer.weight.value, W0 + layer.delta.value, rtol=1e-15)
    np.testing.assert_allclose(layer.forward(x), y, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    np.testing.assert_allclose(layer.base_layer.weight.value, W0, rtol=1e-12, atol=1e-14)
    assert layer.merged_layer() is layer.base_layer
    np.testing.assert_allclose(layer.base_layer.forward(x), y, rtol=1e-12, atol=1e-12)


def test_merge_is_guarded_and_refuses_a_non_finite_result_leaving_w0_untouched():
    layer = make_layer(0, 3, 4)
    with pytest.raises(RuntimeError, match="unmerge: this dense layer is not merged"):
        layer.unmerge()
    W0 = layer.base_layer.weight.value.copy()
    layer.delta.value[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"merge: W₀ \+ ΔW has non-finite entries"):
        layer.merge()
    assert not layer.merged
    np.testing.assert_array_equal(layer.base_layer.weight.value, W0)
    layer.delta.value[1, 2] = 0.0
    layer.merge()
    with pytest.raises(RuntimeError, match="merge: this dense layer is already merged"):
        layer.merge()
