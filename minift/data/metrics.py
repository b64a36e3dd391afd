"""The metrics the tasks name: accuracy, exact match, chrF.

accuracy      fraction of predicted labels equal to the true ones        (classification)
exact_match   fraction of generated answers equal to the reference       (QA, translation)
corpus_chrf   character n-gram F-score over a test set, partial credit   (translation)
chrf          the same score for one (hypothesis, reference) pair

chrF is the standard one, as papers report it: ``corpus_chrf`` equals sacrebleu's
``CHRF().corpus_score(hypotheses, [references]).score / 100`` and ``chrf`` its
``CHRF().sentence_score(hypothesis, [reference]).score / 100``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from minift.errors import check_int

__all__ = ["accuracy", "exact_match", "chrf", "corpus_chrf"]


def _check_pair(
    predictions: Sequence, references: Sequence, names=("predictions", "references")
) -> None:
    for values, name in zip((predictions, references), names, strict=True):
        if isinstance(values, str):
            raise TypeError(f"{name}: expected a sequence, one entry per example, got a str")
    if len(predictions) != len(references):
        raise ValueError(
            f"{names[0]}: expected {len(references)} (one per entry of {names[1]}), "
            f"got {len(predictions)}"
        )
    if not references:
        raise ValueError(f"{names[1]}: expected at least one example, got none")


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of ``predictions[i] == labels[i]``."""
    _check_pair(predictions, labels, ("predictions", "labels"))
    return sum(int(p) == int(y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference, after stripping outer whitespace."""
    _check_pair(predictions, references)
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(
        references
    )


# ------------------------------------------------------------------------------------------------
# chrF


def _check_text(text, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected a str, got {type(text).__name__}")


def _check_chrf_options(char_order: int, beta: float) -> None:
    check_int("char_order", char_order)
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 < beta < math.inf:
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")


def _char_ngrams(text: str, char_order: int) -> list[Counter]:
    """[G_1, ..., G_N]: the multiset of character n-grams of each order n, whitespace removed."""
    # str.split() splits on every Unicode whitespace character (tab, newline, no-break space,
    # ideographic space...), so all of them go, as in sacrebleu: chrF scores characters, not words
    chars = "".join(text.split())
    return [
        Counter(chars[i : i + n] for i in range(len(chars) - n + 1))
        for n in range(1, char_order + 1)
    ]


def _segment_statistics(hypothesis: str, reference: str, char_order: int) -> list[list[int]]:
    """[h_n, r_n, m_n] for n = 1..char_order: the counts one segment adds (see ``chrf``)."""
    statistics = []
    for hyp_n, ref_n in zip(
        _char_ngrams(hypothesis, char_order), _char_ngrams(reference, char_order), strict=True
    ):
        r = ref_n.total()
        h = hyp_n.total() if r else 0
        m = (hyp_n & ref_n).total()
        statistics.append([h, r, m])
    return statistics


def _f_score(statistics: list[list[int]], beta: float) -> float:
    """chrF_β from the summed counts [h_n, r_n, m_n] of each order (see ``chrf``)."""
    effective = [(m / h, m / r) for h, r, m in statistics if h > 0 and r > 0]
    if not effective:
        return 0.0
    chrP = sum(P_n for P_n, _ in effective) / len(effective)
    chrR = sum(R_n for _, R_n in effective) / len(effective)
    if chrP + chrR == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * chrP * chrR / (b2 * chrP + chrR)


def chrf(hypothesis: str, reference: str, char_order: int = 6, beta: float = 2.0) -> float:
    """chrF of one hypothesis against one reference (Popović, 2015, "chrF: character n-gram
    F-score for automatic MT evaluation"): ``corpus_chrf([hypothesis], [reference])``.

    Whitespace is removed first (every Unicode whitespace character: chrF compares characters,
    not words). For each order n = 1..N (N = ``char_order``), with hyp_n and ref_n the
    multisets of character n-grams of hypothesis and reference:

        m_n = |hyp_n ∩ ref_n|                matches (the ∩ clips counts: min per n-gram)
        h_n = |hyp_n|  if ref_n is not empty, else 0
        r_n = |ref_n|
        P_n = m_n / h_n,   R_n = m_n / r_n   n-gram precision and recall

    chrP and chrR are the arithmetic means of P_n and R_n (Popović's equal weights for every
    order) over the effective orders, those with h_n > 0 and r_n > 0: an order that either
    string is too short to have is left out of both means, not counted as 0 (sacrebleu's
    "effective order"). Then

        chrF_β = (1 + β²) · chrP · chrR / (β² · chrP + chrR)

    β = 2 weighs recall twice as much as precision. Returns a value in [0, 1]: 1 for identical
    strings with at least one non-space character, 0 when no character matches, and 0 when
    there is no effective order: when either string is empty or only whitespace, so two empty
    strings score 0, not 1.

    Equal to sacrebleu's ``CHRF(char_order=N, beta=β).sentence_score(hypothesis,
    [reference]).score / 100`` to rounding (tested against sacrebleu 2.6 on arbitrary Unicode
    text), with sacrebleu's other defaults: word_order 0 (chrF, not chrF++), no lowercasing,
    whitespace removed, eps_smoothing False (the effective-order means above). sacrebleu reports
    100× this value. With ``eps_smoothing=True`` it instead averages the per-order F-scores over
    all N orders, as Popović's later chrF++ script does: a different number whenever P_n and R_n
    vary with n.
    """
    _check_text(hypothesis, "hypothesis")
    _check_text(reference, "reference")
    _check_chrf_options(char_order, beta)
    return _f_score(_segment_statistics(hypothesis, reference, char_order), beta)


def corpus_chrf(
    hypotheses: Sequence[str], references: Sequence[str], char_order: int = 6, beta: float = 2.0
) -> float:
    """chrF of a test set (Popović, 2015), as sacrebleu reports it and papers cite it.

    The counts of ``chrf`` are summed over the segments s = 1..S before any division:

        m_n = Σ_s |hyp_{s,n} ∩ ref_{s,n}|,   h_n = Σ_s |hyp_{s,n}| · [ref_{s,n} not empty],
        r_n = Σ_s |ref_{s,n}|

    and chrP, chrR and chrF_β follow from these m_n, h_n, r_n exactly as in ``chrf``. So a
    long segment weighs more than a short one, and this is NOT the mean of the segments' chrF.
    The hypothesis n-grams of an order its reference lacks are not counted (the [·] above): a
    segment with an empty reference adds nothing at all.

    Equal to sacrebleu's ``CHRF(char_order=N, beta=β).corpus_score(hypotheses,
    [references]).score / 100`` to rounding, with one reference per segment and sacrebleu's
    other defaults as in ``chrf``.
    """
    _check_pair(hypotheses, references, ("hypotheses", "references"))
    _check_chrf_options(char_order, beta)
    totals = [[0, 0, 0] for _ in range(char_order)]
    for i, (hypothesis, reference) in enumerate(zip(hypotheses, references, strict=True)):
        _check_text(hypothesis, f"hypotheses[{i}]")
        _check_text(reference, f"references[{i}]")
        for total, counts in zip(
            totals, _segment_statistics(hypothesis, reference, char_order), strict=True
        ):
            for k in range(3):
                total[k] += counts[k]
    return _f_score(totals, beta)
