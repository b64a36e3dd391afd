"""What ``minift pretrain`` and ``minift finetune`` do, one function each: check, then work.

Every input is checked (and the method's config built) before the base is loaded (which may
pretrain it first) and before anything is written; an error names the argument it is about
(``save_adapter: …``), which the command line shows as the flag that was typed
(``--save-adapter: …``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from minift.data import standard_tokenizer
from minift.model import GPT
from minift.peft.base import MINIFT_ONLY
from minift.peft.registry import METHODS, get_method
from minift.pipeline import finetuning, pretraining
from minift.pipeline.finetuned import save_finetuned
from minift.pipeline.finetuning import RunSettings
from minift.pipeline.outputs import (
    NO_CHECKPOINTS,
    Checkpoints,
    removed_on_failure,
    writable_dir,
)
from minift.pipeline.pretraining import BaseSpec
from minift.pipeline.resume import check_resume, run_description
from minift.pipeline.tasks import data_task, get_task


def peft_format_methods() -> list[str]:
    """The methods whose adapter Hugging Face PEFT can read (peft_type is one of PEFT's)."""
    return [
        name
        for name, m in METHODS.items()
        if m.trains and not m.build("generation", 1).peft_type.startswith(MINIFT_ONLY)
    ]


def pretrain_job(
    spec: BaseSpec,
    *,
    out=None,
    checkpoints: Checkpoints = NO_CHECKPOINTS,
    report: Callable[[str], None] = print,
) -> None:
    """Pretrain the base of ``spec`` into ``out`` (default: the cache, unless it holds it).

    ``checkpoints``: what the run saves as it goes. ``report(line)`` is told what was done.
    """
    if checkpoints.resume:
        run = pretraining.pretrain_description(spec, standard_tokenizer())
        check_resume(checkpoints.checkpoint_dir, run, pretraining.pretrain_config(spec))
    if not out and pretraining.is_cached(spec):
        report(f"base model cached in {pretraining.base_path(spec)}")
        return
    out = writable_dir(out, "out") if out else pretraining.base_path(spec)
    with removed_on_failure(out):
        _, info = pretraining.pretrain(spec, out, checkpoints=checkpoints)
    if not _stopped_early(info["step"], spec.steps, checkpoints, report):
        final = f"; final loss {info['losses'][-1]:.3f}" if info["losses"] else ""
        report(f"saved to {out}{final} after {spec.steps} steps")


def finetune_job(
    method: str,
    settings: RunSettings,
    base: BaseSpec,
    *,
    task: str | None = None,
    data=None,
    split_seed: int = 0,
    seed: int = 0,
    options: dict | None = None,
    checkpoints: Checkpoints = NO_CHECKPOINTS,
    out=None,
    save_adapter=None,
    on_validation: Callable[[dict], None] | None = None,
    report: Callable[[str], None] = print,
) -> dict[str, float] | None:
    """Fine-tune the base on ``task`` (or the JSON Lines file ``data``) with ``method`` and its
    ``options``; evaluate on the test split; save the model to ``out`` and the adapter alone,
    in PEFT's format, to ``save_adapter``. The metrics, or None if training stopped early.

    ``checkpoints``: what the run saves as it goes. ``report(line)`` is told what was done, as it
    is done.
    """
    spec = get_method(method)
    loaded = data_task(data, base.block_size, split_seed) if data else get_task(task)
    config = spec.build(loaded.kind, settings.steps, **(options or {}))
    tok = standard_tokenizer()
    # the config must also fit the base's modules (target_modules): tried on an untrained model
    # of the base's shape, which takes milliseconds where loading the base may pretrain it
    untrained = GPT(base.model_config(tok.vocab_size))
    untrained = finetuning.prepare_model(
        untrained, loaded, method, 0, tok, settings.steps, copy.deepcopy(config)
    )
    room = finetuning.max_sequence(untrained)  # below block_size where a prompt takes positions
    if data and room < base.block_size:
        loaded = data_task(data, room, split_seed)
    busy = checkpoints.checkpoint_dir or checkpoints.log_path or settings.eval_every
    if not spec.trains and busy:
        raise ValueError(
            f"method: {method} does not train: no checkpoints, log or evaluations to make"
        )
    if save_adapter and (config is None or config.peft_type.startswith(MINIFT_ONLY)):
        raise ValueError(
            f"save_adapter: method {method} has no PEFT adapter format; the methods that "
            f"have one: {', '.join(peft_format_methods())} (--out saves any method's model)"
        )
    run = run_description(loaded, method, seed, untrained, base, tok)
    if checkpoints.resume:
        resumed = finetuning.train_config(loaded.kind, method, seed, settings)
        check_resume(checkpoints.checkpoint_dir, run, resumed)
    out = writable_dir(out, "out") if out else None
    adapter = writable_dir(save_adapter, "save_adapter") if save_adapter else None

    model = finetuning.prepare_model(
        pretraining.load_base(base), loaded, method, seed, tok, settings.steps, config
    )
    if spec.trains:
        result, _ = finetuning.finetune(
            model, loaded, method, seed, tok, settings, extra_state={"run": run},
            checkpoints=checkpoints, on_validation=on_validation,
        )  # fmt: skip
        if _stopped_early(result.step, settings.steps, checkpoints, report):
            return None
    metrics = finetuning.evaluate(model, loaded, tok, limit=settings.eval_examples)
    for name, value in metrics.items():
        report(f"{loaded.name} / {method}: {name} = {value:.4f}")
    if out:
        with removed_on_failure(out):
            save_finetuned(model, out, loaded, method)
        report(f"saved to {out}")
    if adapter:
        with removed_on_failure(adapter):
            model.save_pretrained(adapter)
        report(
            f"adapter saved to {adapter} (PEFT's adapter_config.json, adapter_model.safetensors)"
        )
    return metrics


def _stopped_early(step: int, steps: int, checkpoints: Checkpoints, report) -> bool:
    """Say so, if ``stop_at`` ended the run before its last step."""
    if step >= steps:
        return False
    report(
        f"stopped at step {step} of {steps}; the checkpoint is in {checkpoints.checkpoint_dir}:"
        " run the same command with --resume to continue (nothing is written to --out before)"
    )
    return True
