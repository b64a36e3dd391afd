"""Sampling: nucleus (top-p) sampling and stopping at end-of-sequence in ``GPT.generate``."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.model import nucleus_mask


def tiny_gpt(seed, vocab_size=16):
    config = minift.GPTConfig(vocab_size=vocab_size, block_size=24, n_layer=1, n_head=2, d_model=8)
    return minift.GPT(config, seed=seed, dtype=np.float64)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), temperature=st.floats(0.1, 3.0))
def test_top_p_near_zero_is_greedy_decoding(seed, temperature):
    model = tiny_gpt(seed)
    idx = np.random.default_rng(seed).integers(0, 16, size=(3, 4))
    greedy = model.generate(idx, 8, temperature=0)
    sampled = model.generate(idx, 8, temperature=temperature, top_p=1e-9, seed=seed)
    np.testing.assert_array_equal(sampled, greedy)


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 64), min_size=1, max_size=12).filter(lambda c: sum(c) > 0),
    top_p=st.floats(1e-6, 1.0),
)
def test_the_nucleus_is_the_smallest_most_likely_set_of_mass_at_least_p(counts, top_p):
    """Probabilities of the form count / 2^k add up exactly in float64, so "mass >= p" is decided
    without rounding: the kept set reaches p, is the most likely tokens, and one token fewer
    would not reach p."""
    scale = 2.0 ** int(np.ceil(np.log2(sum(counts))))
    p = np.array(counts, dtype=np.float64) / scale
    p[np.argmax(p)] += (scale - sum(counts)) / scale  # a distribution: the rest on the top token
    kept = nucleus_mask(p[None, :], top_p)[0]
    assert kept.any()
    assert p[kept].sum() >= top_p
    if (~kept).any():
        assert p[kept].min() >= p[~kept].max()  # the most likely tokens
    assert p[kept].sum() - p[kept].min() < top_p  # and no smaller such set


def test_top_p_must_be_a_probability():
    with pytest.raises(ValueError, match=r"top_p: expected in \(0, 1\], got 0"):
        tiny_gpt(0).generate(np.array([[1, 2]]), 3, top_p=0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), at=st.integers(0, 5))
def test_generation_stops_at_the_first_end_of_sequence(seed, at):
    """The token greedy decoding writes at step ``at`` is declared the end-of-sequence: with it,
    generation ends there (or earlier, if that token came before)."""
    model = tiny_gpt(seed)
    idx = np.random.default_rng(seed).integers(0, 16, size=(1, 3))
    free = model.generate(idx, 6, temperature=0)[0, 3:]
    eos = int(free[at])
    first = int(np.flatnonzero(free == eos)[0])
    stopped = model.generate(idx, 6, temperature=0, eos_id=eos)
    np.testing.assert_array_equal(stopped[0, 3:], free[: first + 1])


def test_a_row_that_has_ended_repeats_end_of_sequence_while_others_go_on():
    model = tiny_gpt(3)
    idx = np.array([[1, 2, 3], [4, 5, 6]])
    free = model.generate(idx, 8, temperature=0)
    eos = int(free[0, 3])  # row 0 ends at once
    out = model.generate(idx, 8, temperature=0, eos_id=eos)
    row1 = free[1, 3:]
    ends = np.flatnonzero(row1 == eos)
    n = int(ends[0]) + 1 if ends.size else 8
    assert out.shape == (2, 3 + n)
    assert (out[0, 3:] == eos).all()
    np.testing.assert_array_equal(out[1, 3:], row1[:n])
