"""ONE training loop, for every method: full fine-tuning, head-only, sharing, sparse, LoRA, …

A method decides WHICH parameters train (their ``trainable`` flags, set by get_peft_model or an
SFT policy); the loop never asks which method it runs. Each step:

    for each of grad_accum micro-batches:            (gradient accumulation)
        loss, dlogits = cross_entropy(model.forward(idx), targets)
        model.backward(dlogits / grad_accum)          grads ADD up across micro-batches
    hooks' after_backward (e.g. AdaLoRA's orthogonality regulariser adds its gradient)
    clip the global gradient norm; set this step's learning rate (warm-up + cosine)
    optimizer.step(); hooks' after_step (e.g. AdaLoRA's rank allocator); zero the grads

A method that needs such hooks provides them itself (``peft_config.train_hooks(model, steps)``),
so the loop stays the same for every method.

``TrainConfig(threads=2)`` runs each batch as two shares in two threads on replicas of the model
(``minift.parallel``): the same gradient up to the order of summation, and faster on two cores
(``python -m benchmarks.train_step`` measures by how much). One thread is the default.

A non-finite loss or gradient norm stops training at once with a message, before the optimizer
can write NaN into the weights. Progress shows as a bar (loss, tokens/s, ETA); every step is also
a line of ``log.jsonl`` when a log path is given.

Checkpoints (``checkpoint_dir``) hold everything needed to continue EXACTLY:

    step-0000042/model.safetensors       every weight (minift.checkpoint's format)
    step-0000042/optimizer.safetensors   the optimizer's state arrays ("exp_avg/<param>" …)
    step-0000042/hooks.safetensors       the hooks' state arrays ("<hook index>/<name>": AdaLoRA's
                                         importance averages …; empty for most methods)
    step-0000042/trainer.json            step, train_config, optimizer (hyper-parameters, step
                                         counts), scheduler, data_rng, dropout_rngs, trainable,
                                         hooks (each hook's JSON state), and the caller's
                                         extra_state
    step-0000042/manifest.json           {"sha256": {file: SHA-256 of its bytes}} for the 4 above
    latest.json                          {"checkpoint": "step-0000042",
                                          "manifest_sha256": SHA-256 of that manifest's bytes}

Each step directory is written under a temporary name and renamed into place only when complete
(the manifest last), then ``latest.json`` is replaced atomically; a crash at any moment leaves the
previous checkpoint intact. Loading checks the chain latest.json → manifest.json → every file's
bytes BEFORE it parses anything, so a truncated or bit-flipped file, or a latest.json pointing to
another or a missing checkpoint, is a ValueError naming the file: never a crash, never a resume
that silently differs. A field of the wrong type (a hand-edited file) is a ValueError naming the
file and the field. A failed load changes nothing. ``train(resume=True)`` continues from the
latest checkpoint, and N steps in one go equal N/2 + resume + N/2 bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from minift.checkpoint import atomic_write_json, load_tensors, read_json, save_tensors
from minift.functional import cross_entropy
from minift.nn import Dropout, Module
from minift.optim import SGD, AdamW, LRScheduler, clip_grad_norm, layerwise_lr_groups, warmup_cosine

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

# A training checkpoint: a step directory holding these files, each verified by MANIFEST, which
# latest.json verifies in turn.
CHECKPOINT_FILES = (
    "model.safetensors",
    "optimizer.safetensors",
    "hooks.safetensors",
    "trainer.json",
)
MANIFEST = "manifest.json"
LATEST = "latest.json"
_STEP_DIR = re.compile(r"step-[0-9]{7}")
_SET_ASIDE = ".set-aside"  # prefix of a step directory that a newer save of its step replaces
_SHA256 = re.compile(r"[0-9a-f]{64}")
# trainer.json's own fields; extra_state may not reuse them
_TRAINER_FIELDS = (
    "step",
    "train_config",
    "optimizer",
    "scheduler",
    "data_rng",
    "dropout_rngs",
    "trainable",
    "hooks",
)


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
    threads: int = 1  # > 1: minift.parallel.DataParallel, each thread a share of every batch

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
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
    """AdamW or SGD over the trainable params, with layer-wise lr groups when asked."""
    named = {n: p for n, p in model.named_parameters().items() if p.trainable}
    if not named:
        raise ValueError("model: no trainable parameters; the method froze everything")
    params: Any = named
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
        clash = sorted(self.extra_state.keys() & set(_TRAINER_FIELDS))
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
        self._saved_step = None  # the step whose checkpoint is on disk, as this Trainer left it
        self._parallel = None  # the DataParallel of config.threads > 1, made on first use

    def _data_parallel(self):
        if self._parallel is None and self.config.threads > 1:
            from minift.parallel import DataParallel

            self._parallel = DataParallel(self.model, n_threads=self.config.threads)
        return self._parallel

    def _generators(self) -> list[np.random.Generator]:
        """The model's dropout RNGs, then each thread's replica's (their masks are their own)."""
        dp = self._data_parallel()
        replicas = dp.replicas[1:] if dp is not None else []
        return [g for m in [self.model, *replicas] for g in _generators(m)]

    # -- one step ----------------------------------------------------------------------------

    def _train_step(self) -> tuple[float, int, float]:
        """One optimizer step; returns (loss, tokens, grad norm)."""
        cfg = self.config
        self.model.train()
        self.model.zero_grad()
        loss_sum, tokens = 0.0, 0
        for _ in range(cfg.grad_accum):
            idx, targets = self.sample_batch(self.data_rng, cfg.batch_size)
            dp = self._data_parallel()
            if dp is not None:  # forward, loss and backward of each share in its own thread
                loss = dp.forward_backward(idx, targets, grad_scale=1.0 / cfg.grad_accum)
            else:
                loss, dlogits = cross_entropy(self.model.forward(idx), targets)
            if not math.isfinite(loss):
                self._diverged(f"the loss became {loss}")
            if dp is None:
                self.model.backward(dlogits / cfg.grad_accum)
            loss_sum += loss
            tokens += int(np.asarray(idx).size)
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
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
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
        if self.checkpoint_dir and self._saved_step != self.step:  # not twice: see save_checkpoint
            self.save_checkpoint()
        result.step = self.step
        result.seconds = time.perf_counter() - start
        return result

    # -- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write step-N/ in a temporary directory, rename it, then point latest.json at it.

        The order keeps a complete, verified checkpoint on disk at every instant, whatever
        moment a kill strikes: the new step directory is complete before it gets its name; a
        step directory of the same name from before is set aside, not deleted, until latest.json
        names its replacement; older steps go last. What a killed save leaves behind (a
        temporary directory or file, a set-aside step) is removed by the next save.
        """
        if self.checkpoint_dir is None:
            raise ValueError("checkpoint_dir: not set for this Trainer")
        root = self.checkpoint_dir
        root.mkdir(parents=True, exist_ok=True)
        _remove_litter(root)
        name = f"step-{self.step:07d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            save_tensors(tmp / "model.safetensors", self.model.state_dict())
            opt_tensors, opt_meta = self.optimizer.state_dict()
            save_tensors(tmp / "optimizer.safetensors", opt_tensors)
            hook_states = [hook.state_dict() for hook in self.hooks]
            save_tensors(
                tmp / "hooks.safetensors",
                {
                    f"{i}/{k}": v
                    for i, (arrays, _) in enumerate(hook_states)
                    for k, v in arrays.items()
                },
            )
            atomic_write_json(
                tmp / "trainer.json",
                {
                    "step": self.step,
                    "train_config": asdict(self.config),
                    "optimizer": opt_meta,
                    "scheduler": self.scheduler.state_dict(),
                    "data_rng": self.data_rng.bit_generator.state,
                    "dropout_rngs": [g.bit_generator.state for g in self._generators()],
                    "trainable": sorted(
                        n for n, p in self.model.named_parameters().items() if p.trainable
                    ),
                    "hooks": [meta for _, meta in hook_states],
                    **self.extra_state,
                },
            )
            # Last, and of the bytes as they landed on the disk: the manifest vouches for them.
            digests = {f: _sha256(tmp / f) for f in CHECKPOINT_FILES}
            atomic_write_json(tmp / MANIFEST, {"sha256": digests})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = root / name
        set_aside = None
        if final.exists():  # this step saved before (a resumed run passing it again)
            set_aside = root / f"{_SET_ASIDE}{tmp.name}"
            os.rename(final, set_aside)
        os.rename(tmp, final)
        manifest_sha256 = _sha256(final / MANIFEST)
        atomic_write_json(root / LATEST, {"checkpoint": name, "manifest_sha256": manifest_sha256})
        self._saved_step = self.step
        if set_aside is not None:
            shutil.rmtree(set_aside, ignore_errors=True)
        for old in sorted(root.glob("step-*"))[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> None:
        """Restore weights, optimizer, scheduler, step and RNG states; strict, all-or-nothing.

        ``path`` is a step directory; by default the one latest.json names. Everything is checked
        before the first change: the checksums (latest.json → manifest.json → each file's bytes),
        the type of every field of trainer.json, and that the checkpoint fits this Trainer (the
        same trainable parameters, thread count and dropout RNGs). Any failure is a ValueError
        naming the file (and the field), and leaves the model, optimizer and Trainer as they were.
        """
        manifest_sha256 = None
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("checkpoint_dir: not set, and no checkpoint path given")
            path, manifest_sha256 = _latest_checkpoint(self.checkpoint_dir)
        path = Path(path)
        trainer_json = path / "trainer.json"
        state = _trainer_state(_verified_trainer_json(path, manifest_sha256), trainer_json)

        trainable = sorted(n for n, p in self.model.named_parameters().items() if p.trainable)
        if state["trainable"] != trainable:
            raise ValueError(
                f"{path}: the checkpoint trains other parameters than this model "
                f"(checkpoint {len(state['trainable'])}, model {len(trainable)}): "
                "was it made with another method or options?"
            )
        saved_threads = state["train_config"]["threads"]
        if saved_threads != self.config.threads:
            raise ValueError(
                f"{path}: saved with threads={saved_threads}, resumed with threads="
                f"{self.config.threads}; each thread's dropout draws its own masks, so an exact "
                "resume needs the same number"
            )
        generators = self._generators()
        if len(state["dropout_rngs"]) != len(generators):
            raise ValueError(
                f'{trainer_json}: "dropout_rngs": expected {len(generators)} states (one per '
                f"dropout RNG of this model), got {len(state['dropout_rngs'])}"
            )
        data_rng = _checked_rng_state(
            self.data_rng, state["data_rng"], f'{trainer_json}: "data_rng"'
        )
        dropout_rngs = [
            _checked_rng_state(g, saved, f'{trainer_json}: "dropout_rngs"[{i}]')
            for i, (g, saved) in enumerate(zip(generators, state["dropout_rngs"], strict=True))
        ]
        if len(state["hooks"]) != len(self.hooks):
            raise ValueError(
                f'{trainer_json}: "hooks": expected the state of {len(self.hooks)} hooks '
                f"({[type(h).__name__ for h in self.hooks]}), got {len(state['hooks'])}"
            )
        weights, _ = load_tensors(path / "model.safetensors")
        opt_tensors, _ = load_tensors(path / "optimizer.safetensors")
        hook_tensors = _split_hook_tensors(
            load_tensors(path / "hooks.safetensors")[0], len(self.hooks), path
        )

        model_before = self.model.state_dict()
        opt_before = self.optimizer.state_dict()
        scheduler_before = self.scheduler.state_dict()
        hooks_before = [hook.state_dict() for hook in self.hooks]
        where = path / "model.safetensors"
        try:
            self.model.load_state_dict(weights)
            where = f'{path / "optimizer.safetensors"} with {trainer_json}\'s "optimizer"'
            self.optimizer.load_state_dict(opt_tensors, state["optimizer"])
            where = f'{trainer_json}: "scheduler"'
            self.scheduler.load_state_dict(state["scheduler"])
            for i, hook in enumerate(self.hooks):
                where = f'{path / "hooks.safetensors"} with {trainer_json}\'s "hooks"[{i}]'
                hook.load_state_dict(hook_tensors[i], state["hooks"][i])
        except (ValueError, KeyError, TypeError) as e:
            self.model.load_state_dict(model_before)  # all or nothing
            self.optimizer.load_state_dict(*opt_before)
            self.scheduler.load_state_dict(scheduler_before)
            for hook, before in zip(self.hooks, hooks_before, strict=True):
                hook.load_state_dict(*before)
            raise ValueError(f"{where}: {e}") from None
        # checked on scratch generators above, so these cannot fail half-way
        self.data_rng.bit_generator.state = data_rng
        for g, saved in zip(generators, dropout_rngs, strict=True):
            g.bit_generator.state = saved
        self.step = state["step"]
        if (
            self.checkpoint_dir is not None
            and path.parent.resolve() == self.checkpoint_dir.resolve()
        ):
            self._saved_step = self.step


# -- reading a checkpoint: every check before the first change ---------------------------------


def has_checkpoint(checkpoint_dir: str | os.PathLike) -> bool:
    """Whether ``checkpoint_dir`` holds a checkpoint to resume (or the remains of one)."""
    root = Path(checkpoint_dir)
    return (root / LATEST).exists() or any(_STEP_DIR.fullmatch(p.name) for p in root.glob("step-*"))


def read_checkpoint_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The trainer.json of the latest checkpoint in ``checkpoint_dir``, verified as
    ``Trainer.load_checkpoint`` verifies it (latest.json → manifest.json → every file's bytes →
    every field's type), without building a model: what a caller checks before it loads one.
    FileNotFoundError when there is no checkpoint yet; ValueError, naming the file, when one is
    damaged."""
    path, manifest_sha256 = _latest_checkpoint(Path(checkpoint_dir))
    return _trainer_state(_verified_trainer_json(path, manifest_sha256), path / "trainer.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _latest_checkpoint(root: Path) -> tuple[Path, str | None]:
    """The step directory latest.json names, and the SHA-256 it records of that manifest.

    Where latest.json is missing (a run killed before its first latest.json), the newest step
    directory that verifies completely is taken instead, with a warning saying so; its manifest is
    then checked against the files alone (None). Where it names a step that a killed save set
    aside, the set-aside copy is taken, checked against latest.json's digest. A latest.json that
    is damaged is refused, never bypassed.
    """
    latest_path = root / LATEST
    if not latest_path.exists() and not latest_path.is_symlink():
        return _newest_complete_step(root, f"{latest_path} is missing")
    latest = read_json(latest_path, "latest checkpoint")
    name = latest.get("checkpoint")
    if not (isinstance(name, str) and _STEP_DIR.fullmatch(name)):
        raise ValueError(
            f'{latest_path}: "checkpoint": expected a step directory such as "step-0000042", '
            f"got {_got(latest, 'checkpoint')}"
        )
    digest = latest.get("manifest_sha256")
    if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise ValueError(
            f'{latest_path}: "manifest_sha256": expected 64 lowercase hex digits, got '
            f"{_got(latest, 'manifest_sha256')} (checkpoints saved before minift verified them "
            "have none: train again without resume)"
        )
    path = root / name
    if not path.exists():
        # Only a save killed between setting the old step aside and renaming its replacement in
        # leaves latest.json naming a missing step; the set-aside copy is then the very
        # checkpoint latest.json vouches for. Without one, latest.json was changed or damaged.
        for set_aside in sorted(root.glob(f"{_SET_ASIDE}.{name}-*")):
            warnings.warn(
                f"{latest_path} names {name}, which a killed save set aside: resuming from "
                f"{set_aside.name}",
                stacklevel=3,
            )
            return set_aside, digest
        raise ValueError(
            f'{latest_path}: "checkpoint": names {name}, which is not in {root} (changed or '
            "damaged?); delete latest.json to resume from the newest complete step"
        )
    if not path.is_dir():
        raise ValueError(f"{latest_path}: points to {name}, which is not a directory in {root}")
    return path, digest


def _newest_complete_step(root: Path, why: str) -> tuple[Path, None]:
    """The newest step directory of ``root`` whose manifest and files verify (see above)."""
    steps = sorted((p for p in root.glob("step-*") if _STEP_DIR.fullmatch(p.name)), reverse=True)
    if not steps:
        raise FileNotFoundError(
            2, "no training checkpoint (no latest.json, no step directory)", str(root)
        )
    problems = []
    for path in steps:
        try:
            _trainer_state(_verified_trainer_json(path, None), path / "trainer.json")
        except (ValueError, OSError) as e:
            problems.append(f"{path.name}: {e}")
            continue
        warnings.warn(
            f"{why}: resuming from {path.name}, the newest complete checkpoint", stacklevel=3
        )
        return path, None
    raise ValueError(
        f"{why}, and no step directory verifies ({'; '.join(problems)}): no checkpoint to resume "
        f"from; delete {root} (or choose another checkpoint directory) to train from the start"
    )


def _remove_litter(root: Path) -> None:
    """What a killed save leaves: temporary step directories and files, set-aside steps."""
    for entry in root.iterdir():
        litter = entry.name.startswith((".step-", _SET_ASIDE + ".step-")) or (
            entry.name.startswith(f".{LATEST}.") and entry.name.endswith(".tmp")
        )
        if not litter:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _verified_trainer_json(path: Path, manifest_sha256: str | None) -> bytes:
    """Check manifest.json (against ``manifest_sha256`` when given) and every file it lists;
    return trainer.json's bytes, the very bytes whose digest was checked."""
    if not path.is_dir():
        raise FileNotFoundError(2, "training checkpoint: no such directory", str(path))
    manifest_path = path / MANIFEST
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise ValueError(
            f"{manifest_path}: missing; not a complete training checkpoint (or one saved before "
            "minift verified them: train again without resume)"
        ) from None
    if manifest_sha256 is not None and hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise ValueError(
            f"{manifest_path}: its SHA-256 differs from the one {path.parent / LATEST} records: "
            "one of the two was changed or corrupted"
        )
    manifest = _json_object(raw, manifest_path, "checkpoint manifest")
    digests = manifest.get("sha256")
    if not (
        isinstance(digests, dict)
        and sorted(digests) == sorted(CHECKPOINT_FILES)
        and all(isinstance(d, str) and _SHA256.fullmatch(d) for d in digests.values())
    ):
        raise ValueError(
            f'{manifest_path}: "sha256": expected {{file: 64 lowercase hex digits}} for exactly '
            f"{list(CHECKPOINT_FILES)}, got {_got(manifest, 'sha256')}"
        )
    trainer_bytes = b""
    for name in CHECKPOINT_FILES:
        file = path / name
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"{file}: missing, though {MANIFEST} lists it") from None
        if hashlib.sha256(data).hexdigest() != digests[name]:
            raise ValueError(
                f"{file}: its SHA-256 differs from the one in {MANIFEST}: the file was changed "
                "or corrupted"
            )
        if name == "trainer.json":
            trainer_bytes = data
    return trainer_bytes


def _json_object(data: bytes, path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError both are
        raise ValueError(f"{path}: {what} is not UTF-8 JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _trainer_state(data: bytes, path: Path) -> dict[str, Any]:
    """trainer.json's object, every field the loader reads checked for its type and range."""
    state = _json_object(data, path, "trainer state")

    def check(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise ValueError(f'{path}: "{field}": expected {expected}, got {_got(state, field)}')

    step = state.get("step")
    check(_is_count(step), "step", "an integer >= 0")
    train_config = state.get("train_config")
    check(
        isinstance(train_config, dict) and _is_count(train_config.get("threads"), minimum=1),
        "train_config",
        'an object whose "threads" is a positive integer',
    )
    optimizer = state.get("optimizer")
    groups = optimizer.get("groups") if isinstance(optimizer, dict) else None
    check(
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("type"), str)
        and isinstance(groups, list)
        and all(isinstance(g, dict) and _is_list_of(g.get("params"), str) for g in groups)
        and isinstance(optimizer.get("step_counts"), dict),
        "optimizer",
        'an object with "type", "groups" (objects with a "params" list) and "step_counts"',
    )
    scheduler = state.get("scheduler")
    check(
        isinstance(scheduler, dict)
        and _is_count(scheduler.get("t"))
        and scheduler.get("t") == step
        and _is_list_of(scheduler.get("base_lrs"), (int, float)),
        "scheduler",
        f'{{"t": {step} (the step), "base_lrs": [a number per param group]}}',
    )
    check(isinstance(state.get("data_rng"), dict), "data_rng", "a random generator's state")
    check(
        _is_list_of(state.get("dropout_rngs"), dict),
        "dropout_rngs",
        "a list of random generators' states",
    )
    check(_is_list_of(state.get("trainable"), str), "trainable", "a list of parameter names")
    check(_is_list_of(state.get("hooks"), dict), "hooks", "a list of the hooks' states (objects)")
    return state


def _split_hook_tensors(tensors: dict[str, np.ndarray], n_hooks: int, path: Path) -> list[dict]:
    """hooks.safetensors' "<i>/<name>" arrays, as one {name: array} per hook."""
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n_hooks)]
    for key, value in tensors.items():
        index, _, name = key.partition("/")
        if not (index.isdigit() and int(index) < n_hooks and name):
            raise ValueError(
                f'{path / "hooks.safetensors"}: {key!r} is not "<hook index>/<name>" for one '
                f"of this Trainer's {n_hooks} hooks"
            )
        out[int(index)][name] = value
    return out


def _checked_rng_state(generator: np.random.Generator, saved: Any, where: str) -> dict:
    """``saved``, once it has proved a valid state for ``generator``'s kind: set on a scratch
    generator of that kind and read back unchanged (NumPy's setter coerces some values)."""
    current = generator.bit_generator.state
    kind = current.get("bit_generator")
    if _structure(saved) != _structure(current):
        raise ValueError(
            f"{where}: expected a {kind} state like {_short(current)}, got {_short(saved)}"
        )
    scratch = type(generator.bit_generator)()
    try:
        scratch.state = saved
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise ValueError(f"{where}: not a valid {kind} state ({e})") from None
    if scratch.state != saved:
        raise ValueError(f"{where}: not a valid {kind} state (it reads back otherwise)")
    return saved


def _structure(obj: Any) -> Any:
    """The keys and leaf types of a JSON-like value: what two RNG states of one kind share."""
    if isinstance(obj, dict):
        return {k: _structure(v) for k, v in obj.items()}
    return type(obj).__name__


def _is_count(x: Any, minimum: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


def _is_list_of(x: Any, types: type | tuple[type, ...]) -> bool:
    return isinstance(x, list) and all(isinstance(v, types) and not isinstance(v, bool) for v in x)


def _got(obj: dict, field: str) -> str:
    return _short(obj[field]) if field in obj else "nothing (no such field)"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
