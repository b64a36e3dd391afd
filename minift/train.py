"""ONE training loop, for every method: full fine-tuning, head-only, sharing, sparse, LoRA, …

A method decides WHICH parameters train (their ``trainable`` flags, set by get_peft_model or an
SFT policy); the loop never asks which method it runs. Each step:

    for each of grad_accum micro-batches:            (gradient accumulation)
        loss, dlogits = cross_entropy(model.forward(idx), targets)
        model.backward(dlogits / grad_accum)          grads ADD up across micro-batches
    hooks' after_backward (e.g. AdaLoRA's orthogonality regulariser adds its gradient)
    clip the global gradient norm; set this step's learning rate (warm-up + cosine)
    optimizer.step(); hooks' after_step (e.g. AdaLoRA's rank allocator); zero the grads

A sampler may hand a batch over in groups of examples of similar length, each padded only to its
own longest (``example_sampler(groups=k)``, as fine-tuning does): the loop then runs the forward
and backward above once per group, each group's gradient weighted by its share of the batch's
targets, which is the gradient of the padded batch without the work on its padding.

A method that needs such hooks provides them itself (``peft_config.train_hooks(model, steps)``),
so the loop stays the same for every method.

Where two cores are free the loop runs each batch as two shares in two threads on replicas of the
model (``minift.parallel``; ``TrainConfig.threads`` defaults to ``default_threads()``): the same
gradient up to the order of summation, and faster (``python -m benchmarks.train_step`` measures
by how much). ``threads=1`` is the plain loop of the outline above, and is tested equal to it.

A non-finite loss or gradient norm stops training at once with a message, before the optimizer
can write NaN into the weights. Progress shows as a bar (loss, tokens/s, ETA); every step is also
a line of ``log.jsonl`` when a log path is given.

``checkpoint_dir`` keeps checkpoints that hold everything needed to continue EXACTLY (weights,
optimizer, schedule, every RNG, the hooks' state): ``train(resume=True)`` continues from the
latest, and N steps in one go equal N/2 + resume + N/2 bit for bit. How they are written so that
no kill loses one, and verified before a resume changes anything: minift/train_checkpoint.py.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from minift.data.formats import IGNORE_INDEX
from minift.errors import check_int
from minift.functional import cross_entropy
from minift.nn import Dropout, Module
from minift.optim import SGD, AdamW
from minift.parallel import DataParallel, default_threads
from minift.param_groups import layerwise_lr_groups, loraplus_param_groups
from minift.schedule import LRScheduler, clip_grad_norm, warmup_cosine
from minift.train_checkpoint import (  # noqa: F401 (importable from here, as before)
    CHECKPOINT_FILES,
    TRAINER_FIELDS,
    has_checkpoint,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainHook",
    "TrainingDivergedError",
    "TrainResult",
    "has_checkpoint",
    "read_checkpoint_state",
]

OPTIMIZERS = ("adamw", "sgd")


class TrainingDivergedError(FloatingPointError):
    """The loss or the gradient became NaN or infinite; the weights were left as they were."""


@dataclass
class TrainConfig:
    steps: int = 200  # optimizer steps
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-3  # peak learning rate
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # "adamw" or "sgd"
    momentum: float = 0.0  # SGD only
    trust_ratio: bool = False  # LAMB (AdamW) / LARS (SGD): the article's per-layer adaptive lr
    layerwise_lr_decay: float | None = None  # lr × decay^depth from the head down (ULMFiT)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # the cosine ends at lr × min_lr_ratio
    grad_clip: float | None = 1.0  # global-norm clipping; None turns it off
    eval_every: int = 0  # evaluate every N steps (0: only at the end)
    checkpoint_every: int = 0  # save every N steps (0: only at the end, if a directory is set)
    seed: int = 0  # the data sampler's RNG
    # > 1: minift.parallel.DataParallel, each thread a share of every batch; 1: the plain loop
    threads: int = field(default_factory=default_threads)

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "threads"):
            check_int(name, getattr(self, name))
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            check_int(name, getattr(self, name), minimum=0)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr: expected a finite learning rate >= 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: expected >= 0, got {self.weight_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip: expected > 0 or None, got {self.grad_clip!r}")
        if self.layerwise_lr_decay is not None and not 0 < self.layerwise_lr_decay <= 1:
            raise ValueError(
                f"layerwise_lr_decay: expected a factor in (0, 1], got {self.layerwise_lr_decay}"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio: expected a number in [0, 1], got {self.min_lr_ratio}")
        self.warmup_steps = min(self.warmup_steps, self.steps)


class TrainHook:
    """What a method may add to the loop. Both methods are optional no-ops here."""

    def after_backward(self, step: int, model: Module) -> float:
        """Add to the grads (a regulariser); return the loss term it added (for the log)."""
        return 0.0

    def after_step(self, step: int, model: Module) -> None:
        """Act on the weights after the optimizer step (e.g. prune ranks)."""

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What the hook carries from step to step, for an exact resume: (arrays, JSON)."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s output; a hook without state accepts only empty state.
        Raise ValueError, changing nothing, when the state does not fit this hook."""
        if tensors or meta:
            raise ValueError(
                f"{type(self).__name__} keeps no state, got arrays {sorted(tensors)[:3]} and "
                f"fields {sorted(meta)[:3]}"
            )


@dataclass
class TrainResult:
    step: int  # the last step done
    losses: list[float] = field(default_factory=list)  # training loss per step (this run)
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step": …, metric: value}
    seconds: float = 0.0
    tokens: int = 0


def build_optimizer(model: Module, config: TrainConfig):
    """AdamW or SGD over the trainable params, with layer-wise lr groups when asked, or LoRA+'s
    when the model's LoRA config sets ``loraplus_lr_ratio``."""
    named = {n: p for n, p in model.named_parameters().items() if p.trainable}
    if not named:
        raise ValueError("model: no trainable parameters; the method froze everything")
    params: Any = named
    ratio = getattr(getattr(model, "peft_config", None), "loraplus_lr_ratio", None)
    if ratio is not None and config.layerwise_lr_decay is not None:
        raise ValueError(
            "layerwise_lr_decay: cannot be combined with LoRA+ (loraplus_lr_ratio), which sets "
            "the learning rates by factor instead of by depth"
        )
    if ratio is not None:
        params = loraplus_param_groups(named, config.lr, ratio, weight_decay=config.weight_decay)
    if config.layerwise_lr_decay is not None:
        params = layerwise_lr_groups(
            named, config.lr, config.layerwise_lr_decay, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return AdamW(
            params, lr=config.lr, weight_decay=config.weight_decay, trust_ratio=config.trust_ratio
        )
    return SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        trust_ratio=config.trust_ratio,
    )


def _method_hooks(model: Module, steps: int) -> list[TrainHook]:
    """The hooks the model's fine-tuning method asks for (none for most methods)."""
    peft_config = getattr(model, "peft_config", None)
    train_hooks = getattr(peft_config, "train_hooks", None)
    return list(train_hooks(model, steps)) if train_hooks else []


def _generators(model: Module) -> list[np.random.Generator]:
    """Every distinct RNG the model's dropout layers draw from, in a fixed order."""
    seen, out = set(), []
    for _, module in model.named_modules():
        if isinstance(module, Dropout) and id(module.rng) not in seen:
            seen.add(id(module.rng))
            out.append(module.rng)
    return out


class Trainer:
    """Train ``model`` on batches drawn by ``sample_batch(rng, batch_size) -> (idx, targets)``.

    ``evaluate(model) -> {metric: value}`` runs every ``eval_every`` steps and at the end, in
    evaluation mode. ``extra_state`` (JSON-serialisable: the model's config, the tokenizer…) is
    written into every checkpoint so that a checkpoint describes itself.
    """

    def __init__(
        self,
        model: Module,
        config: TrainConfig,
        sample_batch: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]],
        evaluate: Callable[[Module], dict[str, float]] | None = None,
        hooks: Iterable[TrainHook] = (),
        log_path: str | os.PathLike | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        extra_state: dict[str, Any] | None = None,
        progress: bool = True,
        desc: str = "training",
    ):
        self.model = model
        self.config = config
        self.sample_batch = sample_batch
        self.evaluate = evaluate
        self.hooks = list(hooks) + _method_hooks(model, config.steps)
        self.log_path = Path(log_path) if log_path is not None else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.extra_state = dict(extra_state or {})
        clash = sorted(self.extra_state.keys() & set(TRAINER_FIELDS))
        if clash:
            raise ValueError(
                f"extra_state: the keys {clash} are trainer.json's own fields; choose other names"
            )
        self.progress = progress
        self.desc = desc
        self.optimizer = build_optimizer(model, config)
        self.scheduler = LRScheduler(
            self.optimizer,
            lambda t: warmup_cosine(
                t,
                warmup_steps=config.warmup_steps,
                total_steps=config.steps,
                min_ratio=config.min_lr_ratio,
            ),
        )
        self.data_rng = np.random.default_rng(config.seed)
        self.step = 0  # optimizer steps done
        self.saved_step = None  # the step whose checkpoint is on disk, as this Trainer left it
        self._parallel = None  # the DataParallel of config.threads > 1, made on first use

    def _data_parallel(self):
        if self._parallel is None and self.config.threads > 1:
            self._parallel = DataParallel(self.model, n_threads=self.config.threads)
        return self._parallel

    def dropout_generators(self) -> list[np.random.Generator]:
        """The model's dropout RNGs, then each thread's replica's (their masks are their own)."""
        dp = self._data_parallel()
        replicas = dp.replicas[1:] if dp is not None else []
        return [g for m in [self.model, *replicas] for g in _generators(m)]

    # -- one step ----------------------------------------------------------------------------

    def _train_step(self) -> tuple[float, int, float]:
        """One optimizer step; returns (loss, tokens, grad norm)."""
        dp = self._data_parallel()
        if dp is None:
            return self._one_step()
        # The threads are the parallelism: a BLAS call between them (the gradient norm, a hook)
        # on BLAS's own threads would leave those spinning, on the cores the next shares need.
        with dp.one_blas_thread():
            return self._one_step()

    def _one_step(self) -> tuple[float, int, float]:
        cfg = self.config
        self.model.train()
        self.model.zero_grad()
        loss_sum, tokens = 0.0, 0
        for _ in range(cfg.grad_accum):
            batch = self.sample_batch(self.data_rng, cfg.batch_size)
            groups = batch if isinstance(batch, list) else [batch]  # see example_sampler
            dp = self._data_parallel()
            if dp is not None and len(groups) == 1:  # the batch's rows shared out
                loss = dp.forward_backward(*groups[0], grad_scale=1.0 / cfg.grad_accum)
            elif dp is not None:  # the groups shared out, each thread its own
                loss = dp.forward_backward_groups(groups, grad_scale=1.0 / cfg.grad_accum)
            else:
                loss = self._forward_backward(groups)
            if not math.isfinite(loss):
                self._diverged(f"the loss became {loss}")
            loss_sum += loss
            tokens += sum(int(np.asarray(idx).size) for idx, _ in groups)
        loss = loss_sum / cfg.grad_accum
        for hook in self.hooks:
            loss += hook.after_backward(self.step, self.model)
        norm = clip_grad_norm(self.optimizer, cfg.grad_clip or math.inf)
        if not math.isfinite(norm):
            self._diverged(f"the gradient norm became {norm}")
        self.scheduler.step()
        dp = self._data_parallel()
        self.optimizer.step(dp.run_tasks if dp is not None else None)
        self.step += 1
        for hook in self.hooks:  # before zero_grad: AdaLoRA's importance reads the gradients
            hook.after_step(self.step, self.model)
        self.model.zero_grad()
        return loss, tokens, norm

    def _forward_backward(self, groups) -> float:
        """The plain loop's forward, loss and backward of one batch (a list of groups, see
        ``example_sampler``); the gradient ÷ grad_accum is ADDED into Param.grad.

        The batch's loss is the mean over all its targets, so a group's share of it, and of the
        gradient, is the fraction of the targets it holds. A non-finite loss returns before its
        backward (the caller stops training).
        """
        ga = self.config.grad_accum
        if len(groups) == 1:  # the outline in the module docstring, exactly
            idx, targets = groups[0]
            loss, dlogits = cross_entropy(self.model.forward(idx), targets)
            if math.isfinite(loss):
                self.model.backward(dlogits / ga)
            return loss
        kept = [int((np.asarray(t) != IGNORE_INDEX).sum()) for _, t in groups]
        total = sum(kept)
        loss = 0.0
        for (idx, targets), k in zip(groups, kept, strict=True):
            if k == 0:  # nothing of this group enters the loss
                continue
            group_loss, dlogits = cross_entropy(self.model.forward(idx), targets)
            if not math.isfinite(group_loss):
                return group_loss
            self.model.backward(dlogits * (k / total / ga))
            loss += group_loss * k / total
        return loss

    def _diverged(self, what: str):
        lr = self.optimizer.param_groups[0]["lr"]
        raise TrainingDivergedError(
            f"training stopped at step {self.step + 1}: {what} (lr {lr:.3g}). The weights are "
            "those before this step; try a lower learning rate or gradient clipping."
        )

    def _run_eval(self) -> dict[str, Any]:
        was_training = self.model.training
        self.model.eval()
        try:
            metrics = dict(self.evaluate(self.model)) if self.evaluate else {}
        finally:
            self.model.train(was_training)
        return {"step": self.step, **metrics}

    # -- the loop ----------------------------------------------------------------------------

    def train(self, resume: bool = False, stop_at: int | None = None) -> TrainResult:
        """Run until ``config.steps`` optimizer steps are done (from the checkpoint if resume).

        ``stop_at`` ends this call early at that step, as an interruption would (the schedule
        stays the one of ``config.steps``); with a checkpoint directory it saves there first.
        """
        cfg = self.config
        if resume:
            self.load_checkpoint()
        last = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        result = TrainResult(step=self.step)
        log = self.log_path.open("a") if self.log_path else None
        start = time.perf_counter()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=self.desc,
            unit="step",
            disable=not self.progress,
            mininterval=0.5,
        )
        try:
            while self.step < last:
                loss, tokens, norm = self._train_step()
                result.losses.append(loss)
                result.tokens += tokens
                elapsed = time.perf_counter() - start
                tokens_per_s = result.tokens / max(elapsed, 1e-9)
                # refresh=False: the bar redraws at most every mininterval, not at every step (a
                # notebook keeps every redraw in its saved output)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                bar.update(1)
                record = {
                    "step": self.step,
                    "loss": loss,
                    "lr": self.optimizer.param_groups[-1]["lr"],
                    "grad_norm": norm,
                    "tokens_per_s": tokens_per_s,
                }
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    result.evals.append(self._run_eval())
                    record["eval"] = result.evals[-1]
                if log:
                    log.write(json.dumps(record) + "\n")
                if (
                    self.checkpoint_dir
                    and cfg.checkpoint_every
                    and self.step % cfg.checkpoint_every == 0
                ):
                    self.save_checkpoint()
        finally:
            bar.close()
            if log:
                log.close()
        result.evals.append(self._run_eval())
        if self.checkpoint_dir and self.saved_step != self.step:  # not twice: see save_checkpoint
            self.save_checkpoint()
        result.step = self.step
        result.seconds = time.perf_counter() - start
        return result

    # -- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Save everything an exact resume needs as step-N/ in ``checkpoint_dir``, kill-safely
        (minift.train_checkpoint says how)."""
        return save_checkpoint(self)

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> None:
        """Restore weights, optimizer, scheduler, step and RNG states from ``path`` (a step
        directory; by default the latest); strict and all-or-nothing (minift.train_checkpoint)."""
        load_checkpoint(self, path)
