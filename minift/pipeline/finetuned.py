"""A fine-tuned model on disk: its full state, and what is needed to rebuild it."""

from __future__ import annotations

import contextlib
from pathlib import Path

from minift.checkpoint import (
    CONFIG_DIGEST_KEY,
    atomic_write_json,
    check_config_digest,
    json_digest,
    load_tensors,
    read_json,
    save_tensors,
)
from minift.data import CharTokenizer, Task, standard_tokenizer
from minift.errors import FileFormatError
from minift.model import GPT, GPTConfig, GPTForSequenceClassification
from minift.nn import Module
from minift.peft import get_peft_model
from minift.peft.base import PEFT_TYPES

FINETUNED_JSON = "finetuned.json"  # what the model is: task, method, configs, tokenizer
FINETUNED_WEIGHTS = "model.safetensors"  # every parameter, the method's included


def save_finetuned(model: Module, out_dir, task: Task, method: str) -> None:
    """model.safetensors (every parameter, the method's included) + finetuned.json.

    The weights' metadata holds a SHA-256 of finetuned.json (``json_digest``), as adapters'
    files do of their config: a description that was edited or corrupted is refused at load
    time, never read as a different model.
    """
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
        raise FileFormatError(weights_path, str(e)) from None
    return model.eval()


@contextlib.contextmanager
def _field_errors(path, name: str):
    """A config the model cannot be built from: a ValueError naming the file and the field."""
    try:
        yield
    except FileFormatError:
        raise  # names the file and field already
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(path, f"{type(e).__name__}: {e}", field=name) from None
