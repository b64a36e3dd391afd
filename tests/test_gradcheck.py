"""The checker itself must catch a wrong gradient, and must pass a right one."""

import numpy as np
import pytest

from minift import nn
from minift.gradcheck import (
    GradcheckReport,
    check_gradients,
    check_module,
    check_pair,
    fixed_dropout_masks,
    numerical_gradient,
    numerical_gradient_array,
    randomize_params,
    rel_error,
)
from minift.param import Param


def test_rel_error_definition():
    a = np.array([3.0, 4.0])
    assert rel_error(a, a) == 0.0
    assert rel_error(a, np.zeros(2)) == 1.0
    assert rel_error(np.array([1.0]), np.array([1.0 + 2e-8])) == pytest.approx(1e-8, rel=1e-6)
    with pytest.raises(ValueError, match="numeric: expected shape"):
        rel_error(a, np.zeros(3))


def test_numerical_gradient_of_a_known_function():
    x = np.array([0.3, -1.2, 2.0])
    grad = numerical_gradient(lambda: float(np.sum(np.sin(x) * x)), x)
    np.testing.assert_allclose(grad, np.cos(x) * x + np.sin(x), rtol=1e-9)
    np.testing.assert_array_equal(x, [0.3, -1.2, 2.0])  # restored after probing


def test_numerical_gradient_array_checks_against_dout():
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    np.testing.assert_allclose(
        numerical_gradient_array(lambda: x**2, x, dout), 2 * x * dout, rtol=1e-9
    )


def test_float32_is_refused():
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda: 0.0, np.zeros(3, dtype=np.float32))


def quadratic_problem(bug=0.0):
    """L = Σ (A·w − y)² with the analytic gradient 2·Aᵀ(A·w − y), optionally wrong by `bug`."""
    rng = np.random.default_rng(1)
    A, y = rng.standard_normal((5, 4)), rng.standard_normal(5)
    w = Param(rng.standard_normal(4))
    frozen = Param(rng.standard_normal(2), trainable=False)

    def loss(run_backward):
        r = A @ w.value - y
        if run_backward:
            w.zero_grad()
            w.accumulate_grad(2 * A.T @ r * (1 + bug))
        return float(r @ r)

    return loss, {"w": w, "frozen": frozen}


def test_check_gradients_passes_a_right_gradient_and_skips_frozen():
    loss, params = quadratic_problem()
    report = check_gradients(loss, params)
    assert list(report.errors) == ["w"]
    assert report.ok(1e-7)


def test_check_gradients_catches_a_gradient_off_by_one_percent():
    loss, params = quadratic_problem(bug=0.01)
    report = check_gradients(loss, params)
    assert not report.ok(1e-7)
    assert report.worst[0] == "w" and report.worst[1] > 1e-3
    assert "w" in str(report)


def test_sampled_entries_are_checked_and_reported_by_index():
    loss, params = quadratic_problem(bug=0.5)
    report = check_gradients(loss, params, max_entries=2, seed=3)
    idx, analytic, numeric = report.worst_entry["w"]
    assert 0 <= idx[0] < 4
    assert analytic == pytest.approx(1.5 * numeric, rel=1e-6)


def test_randomize_params_sets_layer_norm_gains_near_one():
    params = {
        "ln_1.weight": Param(np.zeros(1000)),  # GPT-2's spelling
        "encoder.layer.0.output.LayerNorm.weight": Param(np.zeros(1000)),  # BERT's
        "c_fc.weight": Param(np.zeros(1000)),
    }
    randomize_params(params, seed=0, scale=0.3)
    assert abs(params["ln_1.weight"].value.mean() - 1) < 0.05
    assert abs(params["encoder.layer.0.output.LayerNorm.weight"].value.mean() - 1) < 0.05
    assert abs(params["c_fc.weight"].value.mean()) < 0.05
    assert 0.25 < params["c_fc.weight"].value.std() < 0.35


def test_a_report_that_checked_nothing_is_not_ok():
    assert not GradcheckReport().ok()
    assert "nothing was checked" in str(GradcheckReport())
    with pytest.raises(ValueError, match="worst: the report is empty"):
        _ = GradcheckReport().worst
    loss, params = quadratic_problem()
    params["w"].trainable = False  # every Param frozen: check_gradients has nothing to compare
    report = check_gradients(loss, params)
    assert report.errors == {}
    assert not report.ok()


def linear_pair():
    """y = x·W, with its right backward (dx, dW)."""

    def forward(x, W):
        return x @ W, (x, W)

    def backward(dy, cache):
        x, W = cache
        return dy @ W.T, x.T @ dy

    return forward, backward


def test_check_pair_passes_a_right_backward_and_names_each_input():
    forward, backward = linear_pair()
    rng = np.random.default_rng(0)
    report = check_pair(
        forward, backward, (rng.standard_normal((3, 4)), rng.standard_normal((4, 2)))
    )
    assert list(report.errors) == ["inputs[0]", "inputs[1]"]
    assert report.ok(1e-7), str(report)


def test_check_pair_catches_a_wrong_gradient_of_the_second_input():
    forward, backward = linear_pair()
    rng = np.random.default_rng(0)

    def backward_with_dW_doubled(dy, cache):
        dx, dW = backward(dy, cache)
        return dx, 2 * dW

    inputs = (rng.standard_normal((3, 4)), rng.standard_normal((4, 2)))
    report = check_pair(forward, backward_with_dW_doubled, inputs)
    assert report.errors["inputs[0]"] < 1e-7
    assert report.errors["inputs[1]"] == pytest.approx(1 / 3, rel=1e-6)  # ‖2g − g‖ / ‖3g‖
    assert not report.ok(1e-7)


@pytest.mark.parametrize("returned", [1, 3])
def test_check_pair_refuses_a_backward_with_the_wrong_number_of_gradients(returned):
    """Zipped against the inputs, a short backward would have had its first gradient checked only,
    and the check would pass with dW never compared."""
    forward, backward = linear_pair()
    rng = np.random.default_rng(0)

    def miscounted_backward(dy, cache):
        dx, dW = backward(dy, cache)
        return (dx, dW, dW)[:returned]

    inputs = (rng.standard_normal((3, 4)), rng.standard_normal((4, 2)))
    with pytest.raises(ValueError, match=rf"backward: expected 2 gradients.*got {returned}"):
        check_pair(forward, miscounted_backward, inputs)


def test_check_pair_takes_no_gradient_for_integer_or_none_inputs():
    def forward(ids, W, unused):
        return W[ids], (ids, W.shape)

    def backward(dout, cache):
        ids, shape = cache
        dW = np.zeros(shape)
        np.add.at(dW, ids, dout)
        return dW

    rng = np.random.default_rng(0)
    report = check_pair(forward, backward, (np.array([0, 2, 2]), rng.standard_normal((3, 2)), None))
    assert list(report.errors) == ["inputs[1]"] and report.ok(1e-7)


def test_check_pair_refuses_a_none_gradient_for_a_float_input():
    forward, backward = linear_pair()
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((3, 4)), rng.standard_normal((4, 2)))
    with pytest.raises(
        ValueError, match=r"backward: returned None for the gradient of inputs\[1\]"
    ):
        check_pair(forward, lambda dy, cache: (backward(dy, cache)[0], None), inputs)


def test_fixed_dropout_masks_draws_the_same_masks_at_every_call():
    rng = np.random.default_rng(0)
    mlp = nn.MLP(4, 0.5, rng=rng, dtype=np.float64, proj_std=0.02)
    x = rng.standard_normal((2, 3, 4))

    def loss(run_backward):
        return float(np.sum(mlp.forward(x)))

    assert loss(False) != loss(False)  # each forward draws a new mask
    fixed = fixed_dropout_masks(loss, mlp)
    assert fixed(False) == fixed(False) == fixed(True)


def test_fixed_dropout_masks_refuses_a_module_whose_dropout_is_off():
    rng = np.random.default_rng(0)
    no_dropout = nn.MLP(4, 0.0, rng=rng, dtype=np.float64, proj_std=0.02)
    in_eval = nn.MLP(4, 0.5, rng=rng, dtype=np.float64, proj_std=0.02).eval()
    for module in (no_dropout, in_eval):
        with pytest.raises(ValueError, match="module: expected at least one active Dropout"):
            fixed_dropout_masks(lambda run_backward: 0.0, module)


class MLPForgettingItsMask(nn.MLP):
    """The bug every check with dropout 0 missed: backward skips the mask forward applied."""

    def backward(self, dout):
        dh = self.c_proj.backward(dout)  # right: c_proj.backward(self.dropout.backward(dout))
        return self.c_fc.backward(self.act.backward(dh))


def test_check_module_with_dropout_on_catches_a_backward_that_forgets_the_mask():
    rng = np.random.default_rng(0)
    kw = {"rng": rng, "dtype": np.float64, "proj_std": 0.02}
    right, wrong = nn.MLP(4, 0.3, **kw), MLPForgettingItsMask(4, 0.3, **kw)
    randomize_params(right.named_parameters(), 1)
    randomize_params(wrong.named_parameters(), 1)
    x = rng.standard_normal((2, 3, 4))
    report = check_module(right, x, rng=2)
    assert set(report.errors) == {*right.named_parameters(), "input"}
    assert report.ok(1e-7), str(report)
    report = check_module(wrong, x, rng=2)
    assert report.errors["c_proj.weight"] > 1e-3
    assert report.errors["input"] > 1e-3
    # with dropout off, the same bug hides: the reason the checks must run with it on
    assert check_module(wrong.eval(), x, rng=2).ok(1e-7)
