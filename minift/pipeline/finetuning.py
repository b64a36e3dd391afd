"""One method on one task: a fresh copy of the base, the method applied, trained, evaluated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minift.data import (
    CharTokenizer,
    Task,
    decode_answer,
    encode_classification_batch,
    encode_prompt,
    example_sampler,
)
from minift.data import metrics as task_metrics
from minift.model import GPT, GPTForSequenceClassification
from minift.nn import Module
from minift.parallel import default_threads
from minift.peft import get_peft_model
from minift.peft.registry import get_method, method_config
from minift.pipeline.outputs import NO_CHECKPOINTS, Checkpoints
from minift.train import TrainConfig, Trainer


@dataclass
class RunSettings:
    steps: int = 200
    batch_size: int = 16
    lr: float | None = None  # None: the method's own
    eval_examples: int | None = None  # None: the whole split
    eval_split: str = "test"  # "val" to choose settings (benchmarks/lr_sweep.py), never "test"
    # TrainConfig.threads (> 1: each batch in shares, in parallel threads; 1: the plain loop);
    # None: 2 where two cores are free (minift.parallel.default_threads), 1 in compare's workers
    threads: int | None = None
    eval_every: int = 0  # evaluate on the validation split every N steps (0: never during training)

    def __post_init__(self):
        if self.eval_split not in ("val", "test"):
            raise ValueError(f"eval_split: expected 'val' or 'test', got {self.eval_split!r}")


def _copy_of(base: GPT) -> GPT:
    model = GPT(base.config, seed=0, dtype=base.dtype)
    model.load_state_dict(base.state_dict())
    return model


def prepare_model(
    base: GPT,
    task: Task,
    method: str,
    seed: int,
    tok: CharTokenizer,
    steps: int = 200,
    config=None,
) -> Module:
    """A fresh copy of the base (with a new head for a classifier), the method applied.

    ``config``: the method's config from ``method_config`` (with options); None: its defaults.
    """
    get_method(method)
    model: Module = _copy_of(base)
    if task.kind == "classification":
        model = GPTForSequenceClassification.from_lm(
            model, task.num_labels, seed=seed, pad_token_id=tok.pad_id
        )
    if config is None:
        config = method_config(method, task.kind, steps)
    if config is None:
        return model
    return get_peft_model(model, config, seed=seed)


def train_config(kind: str, method: str, seed: int, settings: RunSettings, **kw) -> TrainConfig:
    """The training loop's config for a fine-tuning run (``kw``: checkpoint_every …)."""
    return TrainConfig(
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr if settings.lr is not None else get_method(method).lr_for(kind),
        warmup_steps=max(1, settings.steps // 10),
        seed=seed,
        threads=settings.threads if settings.threads is not None else default_threads(),
        eval_every=settings.eval_every,
        **kw,
    )


def finetune(
    model: Module,
    task: Task,
    method: str,
    seed: int,
    tok,
    settings: RunSettings,
    progress=True,
    *,
    checkpoints: Checkpoints = NO_CHECKPOINTS,
    extra_state: dict | None = None,
    on_validation=None,
):
    """Train ``model`` (from prepare_model) on the task's training split; (TrainResult, Trainer).

    ``checkpoints``: what the run saves as it goes (a checkpoint every ``checkpoint_every`` steps
    and at the end, ``extra_state`` (``run_description``) inside each) and whether it resumes
    from the latest, bit for bit. ``settings.eval_every`` scores the validation split during
    training (never the test split); ``on_validation({"step": n, metric: value, …})`` is called
    with each score as soon as it is made (the command line prints it).
    """
    config = train_config(
        task.kind, method, seed, settings, checkpoint_every=checkpoints.checkpoint_every
    )
    sampler = example_sampler(tok, task.train, max_sequence(model), task.kind, groups=LENGTH_GROUPS)

    def validate(m):
        scores = evaluate(m, task, tok, "val", settings.eval_examples)
        if on_validation is not None:
            on_validation({"step": trainer.step, **scores})
        return scores

    trainer = Trainer(
        model,
        config,
        sampler,
        evaluate=validate if settings.eval_every else None,
        log_path=checkpoints.log_path,
        checkpoint_dir=checkpoints.checkpoint_dir,
        extra_state=extra_state,
        progress=progress,
        desc=f"{task.name}/{method}/seed {seed}",
    )
    return trainer.train(resume=checkpoints.resume, stop_at=checkpoints.stop_at), trainer


# Each batch in four groups of similar length, each padded to its own longest: the same gradient,
# with little of the work spent on padding (minift.data.formats; tested in test_finetuning)
LENGTH_GROUPS = 4


def max_sequence(model) -> int:
    """The longest input the model takes: block_size, less the positions that prompt and prefix
    tuning's virtual tokens take before it."""
    cfg = getattr(model, "peft_config", None)
    virtual = cfg is not None and cfg.peft_type in ("PROMPT_TUNING", "PREFIX_TUNING")
    used = cfg.num_virtual_tokens if virtual else 0
    return model.config.block_size - used


def _answers(model, tok, prompts: list[str], max_new: int) -> list[str]:
    """Greedy answers, prompts grouped by length so each group generates as one batch, which
    stops once every row has written <eos> (the answer ends there: ``decode_answer``)."""
    by_length: dict[int, list[int]] = {}
    encoded = [encode_prompt(tok, p) for p in prompts]
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    answers = [""] * len(prompts)
    for length, members in by_length.items():
        room = max_sequence(model) - length
        idx = np.array([encoded[i] for i in members], dtype=np.int64)
        out = model.generate(idx, max(1, min(max_new, room)), temperature=0, eos_id=tok.eos_id)
        for row, i in enumerate(members):
            answers[i] = decode_answer(tok, out[row, length:])
    return answers


EVAL_CHUNK = 32  # classification examples a forward pass scores at a time


def evaluate(model, task: Task, tok, split="test", limit: int | None = None) -> dict[str, float]:
    """The task's metrics on a split (classification: accuracy; generation: exact match, chrF)."""
    examples = getattr(task, split)[:limit]
    was_training = model.training
    model.eval()
    try:
        if task.kind == "classification":
            # in order of length, so that each chunk is padded little; then put back. Chunks of
            # 32, not more: their activations stay in the caches (64 rows took 10-40 % longer
            # here, 128 twice as long)
            by_length = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
            preds = [0] * len(examples)
            for start in range(0, len(examples), EVAL_CHUNK):
                chunk = by_length[start : start + EVAL_CHUNK]
                idx, _ = encode_classification_batch(
                    tok, [examples[i] for i in chunk], max_sequence(model)
                )
                for i, label in zip(chunk, model.forward(idx).argmax(axis=-1), strict=True):
                    preds[i] = int(label)
            return {"accuracy": task_metrics.accuracy(preds, [e.target for e in examples])}
        max_new = max(len(e.target) for e in task.train) + 2
        preds = _answers(model, tok, [e.prompt for e in examples], max_new)
    finally:
        model.train(was_training)
    refs = [e.target for e in examples]
    return {
        "exact_match": task_metrics.exact_match(preds, refs),
        "chrf": task_metrics.corpus_chrf(preds, refs),
    }


def baseline_metrics(task: Task, split="test", limit=None) -> dict[str, float]:
    """Majority class (classification) or copying the prompt (generation): the floor to beat."""
    examples = getattr(task, split)[:limit]
    refs = [e.target for e in examples]
    if task.kind == "classification":
        counts = np.bincount([e.target for e in task.train], minlength=task.num_labels)
        return {"accuracy": task_metrics.accuracy([int(counts.argmax())] * len(refs), refs)}
    preds = [e.prompt for e in examples]
    return {
        "exact_match": task_metrics.exact_match(preds, refs),
        "chrf": task_metrics.corpus_chrf(preds, refs),
    }
