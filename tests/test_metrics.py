"""The metrics of the generative tasks: exact match and chrF, checked by hand-computed cases."""

import pytest

from minift.data import (
    chrf,
    exact_match,
    mean_chrf,
)


def test_chrf_matches_a_hand_computed_case():
    # hyp "ab", ref "abc":   n=1: P=2/2, R=2/3;  n=2: P=1/1, R=1/2;  n=3: P=0 (hyp has none), R=0/1
    # chrP = (1 + 1 + 0)/3 = 2/3,  chrR = (2/3 + 1/2 + 0)/3 = 7/18
    # chrF2 = 5·(2/3)(7/18) / (4·(2/3) + 7/18) = 14/33
    assert chrf("ab", "abc") == pytest.approx(14 / 33, rel=1e-12)


def test_chrf_clips_repeated_ngrams():
    # hyp "aaa", ref "a":  n=1: P=1/3, R=1;  n=2: P=0, R=0;  n=3: P=0, R=0
    # chrP = 1/9, chrR = 1/3, chrF2 = 5·(1/27) / (4/9 + 1/3) = 5/21
    assert chrf("aaa", "a") == pytest.approx(5 / 21, rel=1e-12)


def test_chrf_ignores_spaces_and_bounds():
    assert chrf("quatre vingt", "quatrevingt") == 1.0
    assert chrf("", "") == 1.0
    assert chrf("xyz", "abc") == 0.0
    assert 0 < chrf("quatre-vingt-un", "quatre-vingt-onze") < 1


def test_exact_match_and_mean_chrf_average_over_examples():
    assert exact_match(["cent", " six "], ["cent", "sept"]) == 0.5
    assert mean_chrf(["ab", "x"], ["abc", "x"]) == pytest.approx((14 / 33 + 1) / 2)
    with pytest.raises(ValueError, match="predictions"):
        exact_match(["a"], ["a", "b"])
