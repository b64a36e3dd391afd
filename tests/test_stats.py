"""mean_ci against a hand-computed case, against scipy.stats.t.interval, and by its coverage."""

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.stats import MeanCI, mean_ci


def test_hand_computed_three_values():
    # values 1, 2, 3: mean 2, s = √((1 + 0 + 1) / 2) = 1. With 2 degrees of freedom the t CDF is
    # F(t) = 1/2 + t / (2√(2 + t²)), whose inverse is t_p = (2p − 1) / √(2p(1 − p)), so
    # t_{0.975, 2} = 0.95 / √0.04875 = 4.30265272974946 (to 15 digits).
    ci = mean_ci([1.0, 2.0, 3.0])
    t = 0.95 / math.sqrt(0.04875)
    assert t == pytest.approx(4.30265272974946, rel=1e-14)
    half = t * 1.0 / math.sqrt(3)
    assert ci.n == 3
    assert ci.mean == 2.0
    assert ci.half_width == pytest.approx(half, rel=1e-12)
    assert ci.low == pytest.approx(2.0 - half, rel=1e-12)
    assert ci.high == pytest.approx(2.0 + half, rel=1e-12)
    assert ci.format() == "2.000 ± 2.484 (n=3)"
    assert ci.format(digits=1) == "2.0 ± 2.5 (n=3)"


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_matches_scipy_t_interval(n, confidence):
    x = np.random.default_rng(n).normal(0.7, 0.1, size=n)
    ci = mean_ci(x, confidence)
    low, high = scipy.stats.t.interval(confidence, df=n - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    assert ci.low == pytest.approx(low, rel=1e-12)
    assert ci.high == pytest.approx(high, rel=1e-12)
    assert ci.half_width == pytest.approx((high - low) / 2, rel=1e-10)


def test_coverage_of_95_percent_interval():
    # 4000 experiments of 5 normal scores each: the 95 % interval should hold the true mean in
    # about 95 % of them (binomial std √(0.95·0.05/4000) ≈ 0.35 %, so 93–97 % is ±5.8 std).
    rng = np.random.default_rng(0)
    true_mean = 0.8
    samples = rng.normal(true_mean, 0.05, size=(4000, 5))
    covered = [ci.low <= true_mean <= ci.high for ci in map(mean_ci, samples)]
    assert 0.93 <= np.mean(covered) <= 0.97


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=20),
    st.floats(0.01, 100.0),
    st.floats(-1e3, 1e3),
)
def test_shift_and_scale(values, a, b):
    # An affine change of units a·x + b moves the mean the same way and scales the half width by a.
    ci = mean_ci(values)
    ci2 = mean_ci([a * v + b for v in values])
    assert ci2.mean == pytest.approx(a * ci.mean + b, rel=1e-9, abs=1e-9)
    assert ci2.half_width == pytest.approx(a * ci.half_width, rel=1e-7, abs=1e-9)
    assert ci.low <= ci.mean <= ci.high


def test_wider_with_more_confidence_and_narrower_with_more_seeds():
    x = np.random.default_rng(1).normal(size=30)
    assert mean_ci(x, 0.99).half_width > mean_ci(x, 0.95).half_width > mean_ci(x, 0.5).half_width
    assert mean_ci(x[:3]).half_width > mean_ci(x).half_width


def test_one_value_has_no_interval():
    ci = mean_ci([0.812])
    assert ci.mean == 0.812 and ci.n == 1
    assert math.isnan(ci.half_width) and math.isnan(ci.low) and math.isnan(ci.high)
    assert ci.format() == "0.812 (n=1)"


def test_identical_values_have_zero_width():
    ci = mean_ci([0.5, 0.5, 0.5])
    assert (ci.mean, ci.half_width, ci.low, ci.high) == (0.5, 0.0, 0.5, 0.5)


def test_format():
    assert MeanCI(0.8123, 0.0341, 0.7782, 0.8464, 3).format() == "0.812 ± 0.034 (n=3)"


def test_frozen():
    ci = mean_ci([1.0, 2.0])
    with pytest.raises(AttributeError):
        ci.mean = 0.0


@pytest.mark.parametrize(
    "values, match",
    [
        ([], "values is empty"),
        ([1.0, float("nan")], "values must be finite.*index 1"),
        ([float("inf"), 1.0], "values must be finite.*index 0"),
        ([[1.0, 2.0], [3.0, 4.0]], "values must be 1-D"),
        (["a", "b"], "values must be a 1-D sequence of numbers"),
    ],
)
def test_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        mean_ci(values)


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 95.0, float("nan")])
def test_bad_confidence(confidence):
    with pytest.raises(ValueError, match="confidence must be in"):
        mean_ci([1.0, 2.0, 3.0], confidence)
