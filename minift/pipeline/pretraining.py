"""The pretrained base every fine-tuning run starts from: pretrained once, cached, reused."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from minift.checkpoint import atomic_write_json, load_model, save_model
from minift.data import lm_sampler, load_corpus, standard_tokenizer
from minift.files import cache_dir
from minift.model import GPT, GPTConfig
from minift.pipeline.outputs import NO_CHECKPOINTS, Checkpoints
from minift.train import TrainConfig, Trainer


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
        """A short hash of everything the base depends on (the corpus varies with Python; the
        training threads change the order of the gradient's sums, hence its float32 rounding)."""
        threads = pretrain_config(self).threads
        text = json.dumps(
            [asdict(self), sys.version_info[:2], standard_tokenizer().to_dict(), threads]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]


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
    checkpoints: Checkpoints = NO_CHECKPOINTS,
) -> tuple[GPT, dict]:
    """Train the base on the corpus; save it (with tokenizer and losses) to out_dir if given.

    ``checkpoints``: what the run saves as it goes. A run stopped early (``stop_at``) saves
    nothing to ``out_dir``: only its checkpoint; info["step"] says where it stopped,
    info["losses"] are those of this call (after a resume: from the step it resumed at).
    """
    tok = standard_tokenizer()
    ids = tok.encode(load_corpus())
    model = GPT(spec.model_config(tok.vocab_size), seed=spec.seed)
    trainer = Trainer(
        model,
        pretrain_config(spec, checkpoint_every=checkpoints.checkpoint_every),
        lm_sampler(ids, spec.block_size),
        log_path=checkpoints.log_path,
        checkpoint_dir=checkpoints.checkpoint_dir,
        extra_state={"run": pretrain_description(spec, tok)},
        progress=progress,
        desc="pretraining",
    )
    result = trainer.train(resume=checkpoints.resume, stop_at=checkpoints.stop_at)
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


def pretrain_description(spec: BaseSpec, tok) -> dict:
    """``run_description`` of a pretraining run."""
    return {
        "task": "pretraining",
        "base": asdict(spec),
        "model_config": spec.model_config(tok.vocab_size).to_dict(),
        "tokenizer": tok.to_dict(),
    }
