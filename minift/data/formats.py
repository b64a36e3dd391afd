"""Prompt formats: how an Example becomes the token arrays a model trains on.

Generation (QA, translation) — the model reads the prompt and learns to write the answer:

    sequence  = <bos> p₁ … p_k <sep> a₁ … a_m <eos>          k prompt chars, m answer chars
    idx       = sequence[:-1]                                 what the model reads   [B, T]
    targets   = sequence[1:], with every position whose target is a prompt token (p₁ … p_k,
                <sep>) or padding set to −100                 what it must predict   [B, T]

    position t:   0     1    …  k−1   k     k+1  …  k+m
    idx[t]:       <bos> p₁   …  p_{k−1} p_k  <sep> …  a_m
    targets[t]:   −100  −100 …  −100  −100  a₁   …  <eos>

so the loss (``minift.cross_entropy``, ignore_index=−100) is the mean over the m answer
characters and the <eos> only: the prompt is given, not learned (the SFT convention, §3.2.1).

Classification — the model reads the text and a head reads one position:

    sequence = <bos> x₁ … x_n <eos>                             label y   (an int)

``GPTForSequenceClassification`` (with ``pad_token_id=0``) pools the last token that is not
<pad>, which is always the <eos>. A text too long for block_size is TRUNCATED ON THE RIGHT: the
beginning is kept (a verse's subject, a docstring's summary line) and <eos> still closes it.
A generation example is never truncated — cutting its answer would teach a wrong answer — so
an over-long one is an error.

Batches are right-padded with <pad> (id 0) to their longest sequence, not to block_size. Padding
is work thrown away (a batch of 16 docstrings, lengths 30 to 128, is padded to ~125 on average,
twice its mean), so ``example_sampler(..., groups=k)`` hands each batch over as k groups of
examples of similar length, each padded to its own longest only; the loss of the groups together
is the batch's mean, so the gradient is the same (the Trainer weights each group by the targets
it holds), and most of the work on padding is not done.

Pretraining needs no format: ``lm_sampler`` cuts random windows out of the encoded corpus, and
every position predicts the next character. ``lm_sampler`` and ``example_sampler`` return the
``sample_batch(rng, batch_size) -> (idx, targets)`` that ``minift.train.Trainer`` calls, so the
Trainer's RNG alone decides which examples a step sees (and a resumed run sees the same ones).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from minift.data.tasks import Example
from minift.data.tokenizer import CharTokenizer
from minift.errors import check_int

__all__ = [
    "IGNORE_INDEX",
    "encode_prompt",
    "decode_answer",
    "encode_generation_batch",
    "encode_classification_batch",
    "batches",
    "lm_sampler",
    "example_sampler",
    "check_groups",
    "length_groups",
]

Batch = tuple[np.ndarray, np.ndarray]  # (idx, targets)
# A batch, or a batch in groups (a list of batches): what the Trainer takes from a sampler
SampleBatch = Callable[[np.random.Generator, int], Batch | list[Batch]]

IGNORE_INDEX = -100  # minift.cross_entropy's default ignore_index, as PyTorch's


def _check_block_size(block_size, minimum: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"block_size: expected an integer, got {type(block_size).__name__}")
    if block_size < minimum:
        raise ValueError(f"block_size: expected >= {minimum}, got {block_size}")


def encode_prompt(tokenizer: CharTokenizer, prompt: str) -> list[int]:
    """<bos> prompt <sep>: what a model is given at inference, before it writes the answer."""
    return [tokenizer.bos_id, *tokenizer.encode(prompt), tokenizer.sep_id]


def decode_answer(tokenizer: CharTokenizer, ids: Sequence[int]) -> str:
    """The text of generated ids up to the first <eos> (specials skipped)."""
    ids = [int(i) for i in ids]
    if tokenizer.eos_id in ids:
        ids = ids[: ids.index(tokenizer.eos_id)]
    return tokenizer.decode(ids)


def encode_generation_batch(
    tokenizer: CharTokenizer, examples: Sequence[Example], block_size: int
) -> tuple[np.ndarray, np.ndarray]:  # -> idx int64 [B, T], targets int64 [B, T]
    """Examples -> (idx, targets) with the prompt and the padding masked to −100 (see above)."""
    _check_block_size(block_size, 2)
    if not examples:
        raise ValueError("examples: expected at least one example, got none")
    rows, n_prompt = [], []
    for i, ex in enumerate(examples):
        if not isinstance(ex.target, str):
            raise TypeError(
                f"examples[{i}]: a generation target must be a str, got {type(ex.target).__name__}"
            )
        prompt = encode_prompt(tokenizer, ex.prompt)  # <bos> p₁ … p_k <sep>
        seq = prompt + tokenizer.encode(ex.target) + [tokenizer.eos_id]
        if len(seq) - 1 > block_size:
            raise ValueError(
                f"examples[{i}]: {len(seq)} tokens (<bos> prompt <sep> target <eos>) need "
                f"block_size >= {len(seq) - 1}, got block_size={block_size}"
            )
        rows.append(seq)
        n_prompt.append(len(prompt))
    B, T = len(rows), max(len(seq) for seq in rows) - 1
    idx = np.full((B, T), tokenizer.pad_id, dtype=np.int64)
    targets = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
    for b, (seq, P) in enumerate(zip(rows, n_prompt, strict=True)):
        L = len(seq) - 1
        idx[b, :L] = seq[:-1]
        # targets[t] = seq[t + 1] is an answer token (or <eos>) from t = P − 1 on, where
        # P = len(<bos> prompt <sep>): the position that reads <sep> predicts a₁.
        targets[b, P - 1 : L] = seq[P:]
    return idx, targets


def encode_classification_batch(
    tokenizer: CharTokenizer, examples: Sequence[Example], block_size: int
) -> tuple[np.ndarray, np.ndarray]:  # -> idx int64 [B, T], labels int64 [B]
    """Examples -> (idx, labels): <bos> text <eos>, truncated on the right, right-padded."""
    _check_block_size(block_size, 3)
    if not examples:
        raise ValueError("examples: expected at least one example, got none")
    rows, labels = [], []
    for i, ex in enumerate(examples):
        if isinstance(ex.target, bool) or not isinstance(ex.target, (int, np.integer)):
            raise TypeError(
                f"examples[{i}]: a classification target must be an int label, "
                f"got {type(ex.target).__name__}"
            )
        text_ids = tokenizer.encode(ex.prompt)[: block_size - 2]  # room for <bos> and <eos>
        rows.append([tokenizer.bos_id, *text_ids, tokenizer.eos_id])
        labels.append(int(ex.target))
    idx = np.full((len(rows), max(map(len, rows))), tokenizer.pad_id, dtype=np.int64)
    for b, seq in enumerate(rows):
        idx[b, : len(seq)] = seq
    return idx, np.asarray(labels, dtype=np.int64)


def batches(
    examples: Sequence[Example],
    batch_size: int,
    rng: np.random.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[list[Example]]:
    """One epoch of examples in batches: shuffled by ``rng`` (a fresh order per call), or in
    order when ``rng`` is None. The last, smaller batch is kept unless ``drop_last``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size: expected an integer, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    order = np.arange(len(examples)) if rng is None else rng.permutation(len(examples))
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield [examples[i] for i in order[start : start + batch_size]]


def lm_sampler(ids: Sequence[int], block_size: int) -> SampleBatch:
    """Language-model batches from one long token sequence (the encoded corpus).

    start_b ~ uniform{0, …, N − T − 1}
    idx[b]     = ids[start_b     : start_b + T]          [B, T]
    targets[b] = ids[start_b + 1 : start_b + T + 1]      [B, T]   the next token, everywhere
    """
    _check_block_size(block_size, 1)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) < block_size + 1:
        raise ValueError(
            f"ids: expected a 1-D sequence of at least block_size + 1 = {block_size + 1} tokens, "
            f"got shape {ids.shape}"
        )
    # a partial, not a closure, as the samplers below: it pickles (side_by_side)
    return functools.partial(_sample_windows, ids, block_size)


def _sample_windows(ids, block_size, rng, batch_size):
    """lm_sampler's sample_batch(rng, batch_size), its other arguments bound."""
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)
    window = starts[:, None] + np.arange(block_size)  # [B, T]
    return ids[window], ids[window + 1]


def check_groups(groups) -> None:
    """``groups`` of a sampler: a positive integer, else a ValueError naming it."""
    check_int("groups", groups)


def length_groups(chosen, lengths: Sequence[int], groups: int) -> list[np.ndarray]:
    """The drawn indices ``chosen`` in ``groups`` runs of similar length, shortest first (the
    sort is stable: ties keep the draw's order); empty runs dropped. Each run is then padded to
    its own longest (see the module docstring)."""
    by_length = sorted(np.asarray(chosen).tolist(), key=lengths.__getitem__)
    return [group for group in np.array_split(by_length, groups) if len(group)]


def example_sampler(
    tokenizer: CharTokenizer,
    examples: Sequence[Example],
    block_size: int,
    kind: str,
    groups: int = 1,
) -> SampleBatch:
    """Batches of ``batch_size`` distinct examples drawn at random, encoded for ``kind``
    ("generation": (idx, targets) as encode_generation_batch; "classification": (idx, labels)).
    Every example is encoded once here, so a bad one fails now, not at step 10,000.

    ``groups`` > 1: the same examples come as a list of that many (idx, targets) batches, sorted
    by length, shortest first, each padded to its own longest (see the module docstring).
    """
    if kind == "generation":
        encode = encode_generation_batch
    elif kind == "classification":
        encode = encode_classification_batch
    else:
        raise ValueError(f"kind: expected 'generation' or 'classification', got {kind!r}")
    check_groups(groups)
    encode(tokenizer, examples, block_size)  # validates every example (raises with its index)
    examples = list(examples)
    lengths = [encode(tokenizer, [ex], block_size)[0].shape[1] for ex in examples]

    # a partial, not a closure: it pickles, so a run can go to another process (side_by_side)
    return functools.partial(
        _sample_examples, encode, tokenizer, examples, lengths, block_size, groups
    )


def _sample_examples(encode, tokenizer, examples, lengths, block_size, groups, rng, batch_size):
    """example_sampler's sample_batch(rng, batch_size), its other arguments bound."""
    chosen = rng.choice(len(examples), size=min(batch_size, len(examples)), replace=False)
    if groups == 1:
        return encode(tokenizer, [examples[i] for i in chosen], block_size)
    return [
        encode(tokenizer, [examples[i] for i in group], block_size)
        for group in length_groups(chosen, lengths, groups)
    ]
