"""Sentence classification with a pretrained BERT: batches, predictions, and the linear probe.

Two ways to turn a frozen sentence encoder into a classifier, compared in notebook 05:

    linear probe    e = pool(bert(x)) computed ONCE with the encoder frozen; only a Linear
                    [H, K] on top learns (a convex problem: logistic regression)
    fine-tuning     the same head, and the encoder adapted too (LoRA, BitFit, IA3 …), so that
                    e itself moves towards what separates the labels

Both read the same vector (BertSentenceClassifier.embed: mean pooling over the real tokens), so
the difference between them is what adapting the encoder adds.

    sample = wordpiece_sampler(tok, task.train, max_length=64)   # for minift.train.Trainer
    sample = wordpiece_sampler(tok, task.train, 64, groups=4)    # the same, less padding
    logits = predict(classifier, tok, texts, max_length=64)      # [N, K], in the texts' order
    feats = embed(classifier, tok, texts, max_length=64)         # [N, H], the frozen features
    head = fit_linear_probe(feats, labels, num_labels=K, seed=0)  # a trained minift Linear

Shape legend: N texts, B batch, T tokens, H hidden size, K labels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from minift.bert import BertSentenceClassifier
from minift.data.formats import SampleBatch, check_groups, length_groups
from minift.data.tasks import Example
from minift.data.wordpiece import WordPieceTokenizer
from minift.errors import check_int
from minift.nn import Linear, Module
from minift.parallel import default_threads, replicate
from minift.train import TrainConfig, Trainer

__all__ = ["wordpiece_sampler", "predict", "embed", "fit_linear_probe", "accuracy"]


def wordpiece_sampler(
    tokenizer: WordPieceTokenizer,
    examples: Sequence[Example],
    max_length: int,
    groups: int = 1,
) -> SampleBatch:
    """``sample_batch(rng, B) -> (input_ids int64 [B, T], labels int64 [B])`` for the Trainer.

    B distinct examples drawn at random, [CLS] text [SEP] cut to ``max_length``, right-padded
    with [PAD] (id 0) to the longest of the batch; the classifier masks the padding itself.
    Every text is tokenized once, here.

    ``groups`` > 1: the same examples as a list of that many (input_ids, labels) batches,
    sorted by length, each padded to its own longest, as ``minift.data.example_sampler`` does.
    Padding is masked out of attention and pooling, so it changes no logit, only the work: one
    long text pads the whole batch to its length, and most texts are far shorter (notebook 05
    prints the task's lengths). The Trainer weights each group by its share of the labels, so
    the loss and gradient are the padded batch's.
    """
    if not examples:
        raise ValueError("examples: expected at least one example, got none")
    check_groups(groups)
    rows = [tokenizer.encode(e.prompt, max_length) for e in examples]
    lengths = [len(row) for row in rows]
    labels = np.array([e.target for e in examples], dtype=np.int64)

    # a partial, not a closure: it pickles, so a run can go to another process (side_by_side)
    return functools.partial(_sample_wordpieces, rows, lengths, labels, tokenizer.pad_id, groups)


def _sample_wordpieces(rows, lengths, labels, pad_id, groups, rng, batch_size):
    """wordpiece_sampler's sample_batch(rng, batch_size), its other arguments bound."""
    chosen = rng.choice(len(rows), size=min(batch_size, len(rows)), replace=False)
    if groups == 1:
        return _pad([rows[i] for i in chosen], pad_id), labels[chosen]
    return [
        (_pad([rows[i] for i in group], pad_id), labels[group])
        for group in length_groups(chosen, lengths, groups)
    ]


def _pad(rows, pad_id) -> np.ndarray:
    ids = np.full((len(rows), max(map(len, rows))), pad_id, dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
    return ids


def _batched(
    model, method, tokenizer, texts, max_length, batch_size, progress=False, desc="", threads=1
) -> np.ndarray:
    """model.<method>(ids [B, T]) -> [B, D] over every text, in evaluation mode, batches of similar
    length (sorted, so that little time goes into padding), returned in the texts' order; with
    ``progress``, a bar over the texts.

    ``threads`` > 1: the batches are dealt out in turn to that many threads, each running its own
    replica of the model (``minift.parallel.replicate``: the same weights, its own caches) on one
    BLAS thread. Each batch is computed as one thread would compute it, so the values are the same
    bit for bit; the two cores just share the batches.
    """
    rows = [tokenizer.encode(t, max_length) for t in texts]
    order = np.argsort([len(r) for r in rows], kind="stable")
    chunks = [order[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    threads = min(threads, len(chunks)) or 1
    replicas = [model] + [replicate(model) for _ in range(threads - 1)]
    out = [None] * len(rows)
    with tqdm(total=len(rows), desc=desc, unit="text", disable=not progress) as bar:

        def run(k):  # thread k: batches k, k + threads, k + 2·threads, … on replica k
            fn = getattr(replicas[k], method)
            for chunk in chunks[k::threads]:
                values = fn(_pad([rows[i] for i in chunk], tokenizer.pad_id))
                for i, v in zip(chunk, values, strict=True):
                    out[i] = v
                bar.update(len(chunk))

        if threads == 1:
            run(0)
        else:
            with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
                list(pool.map(run, range(threads)))  # list(): a thread's error is raised here
    return np.stack(out)


def _check_threads(threads):
    if threads is None:
        return default_threads()
    return check_int("threads", threads)


def _eval_mode(model: Module, fn):
    was_training = model.training
    model.eval()
    try:
        return fn()
    finally:
        model.train(was_training)


def predict(
    model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64, progress=False,
    threads: int | None = None,
):  # fmt: skip
    """The classifier's logits [N, K] for ``texts`` (evaluation mode: no dropout); with
    ``progress``, a bar over the texts. ``threads``: the batches shared out between that many
    threads (None: 2 where two cores are there, ``default_threads``); the same logits."""
    threads = _check_threads(threads)
    return _eval_mode(
        model,
        lambda: _batched(
            model, "forward", tokenizer, texts, max_length, batch_size, progress, "predict", threads
        ),
    )


def embed(
    model: BertSentenceClassifier, tokenizer, texts: Sequence[str], max_length: int, batch_size=64,
    progress=False, threads: int | None = None,
):  # fmt: skip
    """The pooled sentence vectors [N, H] the classifier's head reads (evaluation mode); with
    ``progress``, a bar over the texts. ``threads``: as ``predict``'s."""
    threads = _check_threads(threads)
    return _eval_mode(
        model,
        lambda: _batched(
            model, "embed", tokenizer, texts, max_length, batch_size, progress, "embed", threads
        ),
    )


def accuracy(logits, labels) -> float:
    """Fraction of rows whose largest logit is the label."""
    return float(np.mean(np.asarray(logits).argmax(axis=-1) == np.asarray(labels)))


def fit_linear_probe(
    features, labels, num_labels: int, steps: int = 300, lr: float = 1e-2, weight_decay=0.0,
    seed: int = 0, init_std: float = 0.02,
) -> Linear:  # fmt: skip
    """Logistic regression on fixed features: a Linear [H, K] trained by minift's ONE loop.

    Full batch (every training row each step), AdamW with warm-up and cosine, cross-entropy;
    ``seed`` draws the head's initial weights. Returns the trained Linear (``forward(x)`` gives
    the logits).
    """
    x = np.asarray(features)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features / labels: expected [N, H] and [N], got {x.shape} and {y.shape}")
    head = Linear(
        x.shape[1], num_labels, rng=np.random.default_rng([seed, 1]), dtype=x.dtype, std=init_std
    )

    def full_batch(rng, batch_size):
        order = rng.permutation(len(x))  # the order does not matter to the loss; kept honest
        return x[order], y[order]

    config = TrainConfig(
        steps=steps, batch_size=len(x), lr=lr, weight_decay=weight_decay,
        warmup_steps=max(1, steps // 10), grad_clip=None, seed=seed,
    )  # fmt: skip
    Trainer(head, config, full_batch, progress=False).train()
    return head
