"""The metrics the tasks name: accuracy, exact match, chrF.

accuracy      fraction of predicted labels equal to the true ones        (classification)
exact_match   fraction of generated answers equal to the reference       (QA, translation)
chrf          character n-gram F-score, partial credit for a near miss   (translation)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["accuracy", "exact_match", "chrf", "mean_chrf"]


def _check_pair(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions: expected {len(references)} (one per reference), got {len(predictions)}"
        )
    if not references:
        raise ValueError("references: expected at least one example, got none")


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of ``predictions[i] == labels[i]``."""
    _check_pair(predictions, labels)
    return sum(int(p) == int(y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference, after stripping outer whitespace."""
    _check_pair(predictions, references)
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(
        references
    )


def _char_ngrams(text: str, n: int) -> Counter:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(hypothesis: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović, 2015, "chrF: character n-gram F-score for automatic MT evaluation").

    Spaces are removed first (chrF compares characters, not tokens). For each n = 1..max_n, with
    H_n and R_n the multisets of character n-grams of hypothesis and reference:

        P_n = |H_n ∩ R_n| / |H_n|          n-gram precision (the ∩ clips counts: min per n-gram)
        R_n = |H_n ∩ R_n| / |R_n|          n-gram recall
        chrP = mean_n P_n,  chrR = mean_n R_n
        chrF_β = (1 + β²) · chrP · chrR / (β² · chrP + chrR)

    β = 2 weighs recall twice as much as precision. An order n that neither string is long
    enough to have is left out of the means; when only one of them has it, its precision (or
    recall) counts as 0. Returns a value in [0, 1]: 1 for identical strings (two empty ones
    included), 0 when no character matches. sacrebleu reports 100× this and, following
    Popović's later chrF++ script, averages the per-order F-scores instead of P and R; the two
    agree when every order has the same P and R.
    """
    if max_n < 1:
        raise ValueError(f"max_n: expected >= 1, got {max_n}")
    if beta <= 0:
        raise ValueError(f"beta: expected > 0, got {beta}")
    hyp = "".join(hypothesis.split())
    ref = "".join(reference.split())
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        n_hyp, n_ref = sum(h.values()), sum(r.values())
        if n_hyp == 0 and n_ref == 0:
            continue
        matches = sum((h & r).values())
        precisions.append(matches / n_hyp if n_hyp else 0.0)
        recalls.append(matches / n_ref if n_ref else 0.0)
    if not precisions:  # both strings empty (or only spaces)
        return 1.0
    P = sum(precisions) / len(precisions)
    R = sum(recalls) / len(recalls)
    if P + R == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * P * R / (b2 * P + R)


def mean_chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """chrF of each (prediction, reference) pair, averaged over the examples."""
    _check_pair(predictions, references)
    return sum(chrf(p, r) for p, r in zip(predictions, references, strict=True)) / len(references)
