"""How sure is a mean over a few seeds? The Student-t confidence interval.

A method's score is the mean of n runs that differ only in their seed. Those n numbers scatter,
so the mean scatters too; the interval says how far. With x₁ … xₙ the scores,

    x̄ = (1/n) Σ xᵢ                              the mean
    s = √( Σ (xᵢ − x̄)² / (n − 1) )              the sample standard deviation (ddof = 1)
    half width = t_{(1+c)/2, n−1} · s / √n       c the confidence, e.g. 0.95
    interval   = [x̄ − half width, x̄ + half width]

t_{q, n−1} is the q-quantile of Student's t distribution with n − 1 degrees of freedom
(``scipy.special.stdtrit``, which ``scipy.stats.t.ppf`` calls). For scores drawn from a normal
distribution, the interval holds the true mean in a fraction c of experiments. The t quantile,
not the normal one (1.96 for 95 %), because s is itself estimated from the n scores: with 3
seeds t_{0.975, 2} = 4.30, more than twice 1.96.
Two methods whose intervals overlap have not been told apart by these seeds.

One seed gives a mean but no interval (s needs n ≥ 2): its half width is nan, and ``format``
prints the mean alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MeanCI", "mean_ci"]


@dataclass(frozen=True)
class MeanCI:
    """A mean over n seeds and its confidence interval [low, high] = mean ∓ half_width."""

    mean: float
    half_width: float  # nan when n = 1: an interval needs at least 2 seeds
    low: float
    high: float
    n: int  # number of values (seeds)

    def format(self, digits: int = 3) -> str:
        """``"0.812 ± 0.034 (n=3)"``, or ``"0.812 (n=1)"`` when there is no interval."""
        if math.isnan(self.half_width):
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} (n={self.n})"


def mean_ci(values, confidence: float = 0.95) -> MeanCI:
    """Mean of ``values`` (one score per seed) and its Student-t confidence interval.

    values: 1-D sequence of n ≥ 1 finite numbers. confidence: c in (0, 1).
    Returns MeanCI(mean, half_width, low, high, n), half_width = t_{(1+c)/2, n−1} · s/√n with s the
    sample standard deviation (ddof=1); for n = 1 the half width, low and high are nan.
    """
    if not 0.0 < confidence < 1.0:  # also catches nan
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"values must be a 1-D sequence of numbers, got {values!r}") from e
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D (one number per seed), got shape {x.shape}")
    n = x.size
    if n == 0:
        raise ValueError("values is empty: a mean needs at least one number")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(
            f"values must be finite, got {x[bad[0]]} at index {bad[0]} "
            f"({bad.size} of {n} values non-finite)"
        )

    mean = float(x.mean())
    if n == 1:
        nan = float("nan")
        return MeanCI(mean=mean, half_width=nan, low=nan, high=nan, n=1)

    s = float(x.std(ddof=1))  # sample std: divide by n − 1, as the t distribution assumes
    # scipy.special, not scipy.stats (whose t.ppf calls the same stdtrit): ½ s less to import
    from scipy.special import stdtrit

    t = float(stdtrit(n - 1, (1.0 + confidence) / 2.0))  # two-sided: (1+c)/2
    half_width = t * s / math.sqrt(n)
    return MeanCI(
        mean=mean, half_width=half_width, low=mean - half_width, high=mean + half_width, n=n
    )
