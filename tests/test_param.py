"""Param: accumulation, freezing, and the errors it raises."""

import numpy as np
import pytest

from minift.param import Param


def test_grad_is_none_until_accumulated_then_sums():
    p = Param(np.zeros((2, 2)))
    assert p.grad is None
    g = np.ones((2, 2))
    p.accumulate_grad(g)
    p.accumulate_grad(2 * g)
    np.testing.assert_array_equal(p.grad, 3 * g)
    assert p.grad is not g and g[0, 0] == 1  # the caller's array is never aliased or changed
    p.zero_grad()
    assert p.grad is None


def test_frozen_param_never_gets_a_grad():
    p = Param(np.zeros(3), trainable=False)
    p.accumulate_grad(np.ones(3))
    assert p.grad is None


def test_grad_keeps_the_param_dtype():
    p = Param(np.zeros(3, dtype=np.float32))
    p.accumulate_grad(np.ones(3))
    assert p.grad.dtype == np.float32


def test_bad_values_and_grads_are_named():
    with pytest.raises(
        TypeError, match="Param value: expected a floating-point array, got dtype int64"
    ):
        Param(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"gradient shape \(4,\) does not match .* \(3,\)"):
        Param(np.zeros(3)).accumulate_grad(np.ones(4))
