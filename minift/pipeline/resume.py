"""Checkpoints of a run: what it is, and refusing to continue another run's."""

from __future__ import annotations

import json
from dataclasses import asdict

from minift.data import Task
from minift.nn import Module
from minift.pipeline.pretraining import BaseSpec
from minift.train import TrainConfig, read_checkpoint_state


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
