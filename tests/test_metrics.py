"""The metrics of the generative tasks: exact match and chrF.

chrF is checked twice: on small cases computed by hand from the definition in chrf's docstring,
and against sacrebleu (the implementation papers report) on arbitrary Unicode text.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.data import chrf, corpus_chrf, exact_match
from minift.data.metrics import accuracy

# ------------------------------------------------------------------------------------------------
# chrF by hand


def test_chrf_matches_a_hand_computed_case():
    # hyp "ab", ref "abc":  n=1: P=2/2, R=2/3;  n=2: P=1/1, R=1/2;  n=3: the hypothesis has no
    # 3-gram, so the order is not effective and drops out of both means
    # chrP = (1 + 1)/2 = 1,  chrR = (2/3 + 1/2)/2 = 7/12
    # chrF2 = 5·1·(7/12) / (4·1 + 7/12) = 7/11
    assert chrf("ab", "abc") == pytest.approx(7 / 11, rel=1e-12)


def test_chrf_clips_repeated_ngrams_and_skips_orders_the_reference_lacks():
    # hyp "aaa", ref "a":  n=1: m = min(3, 1) = 1, P=1/3, R=1;  n=2, 3: the reference has none
    # chrP = 1/3, chrR = 1, chrF2 = 5·(1/3) / (4/3 + 1) = 5/7
    assert chrf("aaa", "a") == pytest.approx(5 / 7, rel=1e-12)


def test_chrf_gives_a_short_near_miss_the_standard_score():
    # hyp "six", ref "soixante":  n=1: P=3/3, R=3/8;  n=2: "ix" matches, P=1/2, R=1/7;
    # n=3: P=0, R=0;  n=4..6: the hypothesis has none
    # chrP = (1 + 1/2 + 0)/3 = 1/2,  chrR = (3/8 + 1/7 + 0)/3 = 29/168
    # chrF2 = 5·(1/2)(29/168) / (4·(1/2) + 29/168) = 29/146 ≈ 0.199
    assert chrf("six", "soixante") == pytest.approx(29 / 146, rel=1e-12)


def test_chrf_ignores_every_kind_of_whitespace():
    assert chrf("quatre vingt", "quatrevingt") == 1.0
    assert chrf("quatre\u00a0vingt\n", "\tquatre\u3000vingt") == 1.0
    assert chrf("quatre-vingt-un", "quatre vingt un") < 1


def test_chrf_is_zero_without_an_effective_order_or_a_match():
    assert chrf("", "") == 0.0
    assert chrf(" \t", "\n") == 0.0
    assert chrf("", "abc") == 0.0
    assert chrf("abc", "") == 0.0
    assert chrf("xyz", "abc") == 0.0
    assert 0 < chrf("quatre-vingt-un", "quatre-vingt-onze") < 1


def test_chrf_options_change_the_orders_and_the_weight_of_recall():
    # char_order=1: only n=1 of "ab" vs "abc": P=1, R=2/3; beta=1: F1 = 2·(2/3) / (1 + 2/3) = 4/5
    assert chrf("ab", "abc", char_order=1, beta=1) == pytest.approx(4 / 5, rel=1e-12)


def test_corpus_chrf_sums_counts_over_segments_not_scores():
    hyps, refs = ["same", "one"], ["same", "un"]
    # n=1: h = 4+3, r = 4+2, m = 4+1  -> P=5/7, R=5/6
    # n=2: h = 3+2, r = 3+1, m = 3+0  -> P=3/5, R=3/4
    # n=3: h = 2+0 ("un" has no 3-gram, so "one"'s is not counted), r = 2, m = 2  -> 1, 1
    # n=4: h = r = m = 1  -> 1, 1;  n=5, 6: no reference has any
    # chrP = (5/7 + 3/5 + 2)/4 = 29/35,  chrR = (5/6 + 3/4 + 2)/4 = 43/48
    # chrF2 = 5·(29/35)(43/48) / (4·29/35 + 43/48) = 6235/7073
    assert corpus_chrf(hyps, refs) == pytest.approx(6235 / 7073, rel=1e-12)
    # chrf("one", "un") = 5/22 (n=1: P=1/3, R=1/2; n=2: P=R=0), so the mean of the segments'
    # chrF is (1 + 5/22)/2 = 27/44: a different number
    assert chrf("one", "un") == pytest.approx(5 / 22, rel=1e-12)
    assert abs(corpus_chrf(hyps, refs) - 27 / 44) > 0.2


def test_corpus_chrf_counts_no_hypothesis_ngram_of_an_order_its_own_reference_lacks():
    # n=1: h = 3+2, r = 1+2, m = 1+2  -> P=3/5, R=1
    # n=2: "aaa"'s two 2-grams are not counted ("a" has none); "bc": h = r = m = 1  -> 1, 1
    # chrP = (3/5 + 1)/2 = 4/5, chrR = 1, chrF2 = 5·(4/5) / (16/5 + 1) = 20/21
    assert corpus_chrf(["aaa", "bc"], ["a", "bc"]) == pytest.approx(20 / 21, rel=1e-12)
    # a segment whose reference is empty adds nothing at all
    assert corpus_chrf(["abc", "xyz"], ["abc", ""]) == 1.0


def test_exact_match_averages_over_examples():
    assert exact_match(["cent", " six "], ["cent", "sept"]) == 0.5


def test_metrics_refuse_bad_input_naming_the_argument():
    with pytest.raises(ValueError, match="predictions: expected 2"):
        exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="labels: expected at least one example"):
        accuracy([], [])
    with pytest.raises(ValueError, match="hypotheses: expected 1"):
        corpus_chrf(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="references: expected at least one example"):
        corpus_chrf([], [])
    with pytest.raises(TypeError, match="hypotheses: expected a sequence.*got a str"):
        corpus_chrf("ab", ["a", "b"])
    with pytest.raises(TypeError, match=r"references\[1\]: expected a str, got NoneType"):
        corpus_chrf(["a", "b"], ["a", None])
    with pytest.raises(TypeError, match="hypothesis: expected a str, got list"):
        chrf(["a"], "a")
    with pytest.raises(ValueError, match="char_order: expected a positive integer, got 0"):
        chrf("a", "a", char_order=0)
    with pytest.raises(ValueError, match="beta: expected a finite number > 0, got 0"):
        corpus_chrf(["a"], ["a"], beta=0)
    with pytest.raises(ValueError, match="beta: expected a finite number > 0, got nan"):
        chrf("a", "a", beta=float("nan"))


# ------------------------------------------------------------------------------------------------
# chrF against sacrebleu


@pytest.fixture(scope="module")
def CHRF():
    pytest.importorskip("sacrebleu", reason='pip install -e ".[dev]"')
    from sacrebleu.metrics import CHRF

    return CHRF


# Characters chosen to hit chrF's edge cases: Unicode whitespace of several kinds (all removed),
# combining accents and zero-width joiners (not whitespace: kept, one character each), emoji and
# skin-tone modifiers (outside the BMP), and a few letters so that n-grams repeat and match.
EDGE_CHARACTERS = (
    " \t\n\r\x0b\x0c\x1c\x85\u00a0\u2003\u2028\u3000"
    "\u0301\u0308\u200d\u200b"
    "\U0001f44d\U0001f3fd\U0001f468\U0001f469"
    "abeé"
)
texts = st.one_of(
    st.text(st.sampled_from("ab "), max_size=12),  # repeated characters, many matches
    st.text(st.one_of(st.sampled_from(EDGE_CHARACTERS), st.characters()), max_size=24),
)
char_orders = st.integers(1, 8)
betas = st.sampled_from([0.5, 1, 2, 3])


@settings(max_examples=300, deadline=None)
@given(hypothesis=texts, reference=texts)
def test_chrf_equals_sacrebleu_sentence_score(CHRF, hypothesis, reference):
    expected = CHRF().sentence_score(hypothesis, [reference]).score / 100
    assert chrf(hypothesis, reference) == pytest.approx(expected, rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(texts, texts), min_size=1, max_size=6))
def test_corpus_chrf_equals_sacrebleu_corpus_score(CHRF, pairs):
    hypotheses, references = [h for h, _ in pairs], [r for _, r in pairs]
    expected = CHRF().corpus_score(hypotheses, [references]).score / 100
    assert corpus_chrf(hypotheses, references) == pytest.approx(expected, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(st.tuples(texts, texts), min_size=1, max_size=4),
    char_order=char_orders,
    beta=betas,
)
def test_chrf_options_equal_sacrebleus_char_order_and_beta(CHRF, pairs, char_order, beta):
    hypotheses, references = [h for h, _ in pairs], [r for _, r in pairs]
    metric = CHRF(char_order=char_order, beta=beta)
    expected = metric.corpus_score(hypotheses, [references]).score / 100
    got = corpus_chrf(hypotheses, references, char_order=char_order, beta=beta)
    assert got == pytest.approx(expected, rel=1e-9)
    expected = metric.sentence_score(hypotheses[0], [references[0]]).score / 100
    got = chrf(hypotheses[0], references[0], char_order=char_order, beta=beta)
    assert got == pytest.approx(expected, rel=1e-9)
