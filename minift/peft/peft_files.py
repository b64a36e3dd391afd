"""Adapter files in PEFT's format: adapter_config.json and adapter_model.safetensors.

``PeftModel.save_pretrained`` writes, ``PeftModel.from_pretrained`` reads, what PEFT reads and
writes, so that an adapter trained by minift loads into PEFT and back. adapter_config.json
holds the config's fields that PEFT knows, the ``task_type`` of the model (``peft_task_type``),
``base_model_name_or_path`` (None: minift does not know where the weights came from) and the
target modules in a form that PEFT, matching Hugging Face's names, resolves to exactly the
layers minift wrapped (minift/peft/targets.py). adapter_model.safetensors holds every trainable
Param under PEFT's key, in Hugging Face's layout (``hf_layout``).

Reading is strict, and nothing is changed until both files are read and checked: each refusal
is a FileFormatError naming the file, and the field or tensor.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from minift.errors import FileFormatError, MissingFileError
from minift.files import (
    CONFIG_DIGEST_KEY,
    DIGEST_KEY,
    atomic_write_json,
    check_config_digest,
    json_digest,
    json_str,
    load_tensors,
    read_json,
    save_tensors,
)
from minift.nn import Linear, Module
from minift.peft.targets import HF_TRANSFORMER_MODULES, peft_target_modules

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
MINIFT_ONLY = "MINIFT_"  # the peft_type of a method PEFT does not have: its files are minift's
DEFAULT_ADAPTER = "default"  # with several adapters, the one saved at the folder's root
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a sub-folder's name on any system


def hf_layout(name: str, value: np.ndarray) -> np.ndarray:
    """A tensor in Hugging Face's layout (and back: it is its own inverse).

    GPT-2's own Linears are Conv1D, [in, out] like minift's; a head outside ``transformer``
    (``score``) is a torch nn.Linear, [out, in]: its weight is transposed, as is every Linear
    weight of a BERT. An embedding table ([vocab, hidden] in both) is never transposed.
    """
    outside = name.split(".", 1)[0] not in HF_TRANSFORMER_MODULES
    embedding = "embeddings." in name  # BERT's word/position/token_type tables
    if outside and not embedding and name.endswith(".weight") and value.ndim == 2:
        return value.T
    return value


def peft_task_type(model: Module) -> str | None:
    """PEFT's ``task_type`` for the Hugging Face class a minift model is saved as.

    GPT -> GPT2LMHeadModel: "CAUSAL_LM"; GPTForSequenceClassification ->
    GPT2ForSequenceClassification: "SEQ_CLS"; BertModel -> BertModel: "FEATURE_EXTRACTION";
    anything else None (PEFT's plain PeftModel).
    """
    from minift.bert import BertModel
    from minift.model import GPT, GPTForSequenceClassification

    if isinstance(model, GPTForSequenceClassification):
        return "SEQ_CLS"
    if isinstance(model, GPT):
        return "CAUSAL_LM"
    if isinstance(model, BertModel):
        return "FEATURE_EXTRACTION"
    return None


# the heads PEFT's PeftModelForSequenceClassification adds to modules_to_save, whichever exists
_PEFT_SEQ_CLS_HEADS = ("classifier", "score")


# ------------------------------------------------------------------------------------------------


def hf_fan_in_fan_out(model: Module) -> bool:
    """How the Hugging Face model that an adapter file is for stores its linear weights.

    True: [in, out], GPT-2's Conv1D; False: [out, in], torch's nn.Linear (BERT). PEFT writes it
    to adapter_config.json as ``fan_in_fan_out``. It changes nothing in minift, whose layers are
    [in, out] whatever the file says, and nothing in LoRA's A [r, in] and B [out, r]; it only
    says what the file is for. Found on the first module of the tree that declares it (GPT,
    BertModel); minift's own layout where none does.
    """
    for _, module in model.named_modules():
        layout = getattr(type(module), "hf_fan_in_fan_out", None)
        if layout is not None:
            return bool(layout)
    return True


def resolve_fan_in_fan_out(peft_config, model: Module) -> None:
    """Fill in ``fan_in_fan_out`` from the model, or correct it with a warning as PEFT does."""
    if not hasattr(peft_config, "fan_in_fan_out"):
        return
    layout = hf_fan_in_fan_out(model)
    if peft_config.fan_in_fan_out is not None and peft_config.fan_in_fan_out != layout:
        warnings.warn(
            f"fan_in_fan_out is set to {peft_config.fan_in_fan_out}, but this model's Hugging "
            f"Face layers store their weights {'[in, out]' if layout else '[out, in]'}; "
            f"setting it to {layout} (PEFT corrects it the same way)",
            stacklevel=3,
        )
    peft_config.fan_in_fan_out = layout


def write_adapter(
    directory, config: dict[str, Any], tensors: dict[str, np.ndarray], extra_metadata=None
) -> None:
    """adapter_model.safetensors, then adapter_config.json (each atomically); the weights'
    header records the config's checksum, so that a config changed alone is caught on reading,
    and ``extra_metadata``, what the method records there (VeRA: how it drew its projections)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {**(extra_metadata or {}), "format": "pt", CONFIG_DIGEST_KEY: json_digest(config)}
    save_tensors(directory / ADAPTER_WEIGHTS_NAME, tensors, metadata)
    atomic_write_json(directory / ADAPTER_CONFIG_NAME, config)


def read_adapter(directory, peft_types) -> tuple[dict, dict[str, np.ndarray], dict, Path, Path]:
    """(adapter_config.json's dict, the tensors, the weights' header metadata, the config's
    path, the weights' path), both files checked: the config's ``peft_type`` is one of
    ``peft_types``, and the weights are the ones saved with this config (where minift wrote
    them: its checksums say so)."""
    config_path, weights_path = adapter_files(directory)
    raw = read_json(config_path, "adapter config")
    tensors, metadata = load_tensors(weights_path)
    peft_type = json_str(raw, "peft_type", config_path, choices=sorted(peft_types))
    check_minift_digest(metadata, weights_path, minift_only=peft_type.startswith(MINIFT_ONLY))
    check_config_digest(metadata, raw, config_path, weights_path)
    return raw, tensors, metadata, config_path, weights_path


def adapter_config_json(peft_model, wrapped: list[str]) -> dict[str, Any]:
    """What adapter_config.json holds for ``peft_model``, whose method wrapped the layers
    ``wrapped``: the config as PEFT reads it (module docstring), or for a method of minift's own
    (``MINIFT_…``), which PEFT cannot load, minift's dict."""
    cfg = peft_model.peft_config
    if cfg.peft_type.startswith(MINIFT_ONLY):
        return cfg.to_dict()
    config = {
        "peft_type": cfg.peft_type,
        "task_type": getattr(cfg, "task_type", None) or peft_task_type(peft_model.base_model),
        "base_model_name_or_path": None,
        **cfg.to_dict(),
    }
    for name in cfg.fields_peft_lacks:
        config.pop(name, None)
    if "target_modules" in config and wrapped:
        candidates = targetable_modules(peft_model, wrapped)
        config["target_modules"] = peft_target_modules(cfg.target_modules, wrapped, candidates)
    config.update(cfg.peft_fields(peft_model))
    return config


def targetable_modules(model: Module, wrapped: list[str]) -> list[str]:
    """The Linear layers of ``model`` as they were before the method wrapped ``wrapped``: a
    wrapped layer under its own name, its base_layer not counted again."""
    inside = tuple(name + "." for name in wrapped)
    plain = [
        n
        for n, m in model.named_modules()
        if n and isinstance(m, Linear) and not n.startswith(inside)
    ]
    return wrapped + plain


def present_heads(modules_to_save: list[str], model: Module) -> list[str]:
    """A classifier's ``modules_to_save`` as PEFT trains them: PEFT adds the names of both its
    usual heads and trains whichever the model has; the other one names nothing, here as there."""
    present = {name for name, _ in model._children()}
    return [m for m in modules_to_save if m in present or m not in _PEFT_SEQ_CLS_HEADS]


def adapter_files(directory) -> tuple[Path, Path]:
    """(adapter_config.json, adapter_model.safetensors) of an adapter folder."""
    directory = Path(directory)
    if not directory.exists():
        raise MissingFileError(directory, "no such folder (an adapter folder was expected)")
    if not directory.is_dir():
        raise FileFormatError(
            directory,
            f"a file, expected a folder holding {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME}",
        )
    return directory / ADAPTER_CONFIG_NAME, directory / ADAPTER_WEIGHTS_NAME


def check_adapter_name(name) -> str:
    """``name`` if it can name an adapter's sub-folder (``ADAPTER_NAME``), else a ValueError."""
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        raise ValueError(
            f"adapter_name: expected letters, digits, '_', '.' or '-' (a folder's name), "
            f"got {name!r}"
        )
    return name


def adapter_folder(directory, adapter_name: str) -> Path:
    """Where PEFT saves adapter ``adapter_name`` of several: "default" at the root of
    ``directory``, every other in the sub-folder named for it."""
    directory = Path(directory)
    return directory if adapter_name == DEFAULT_ADAPTER else directory / adapter_name


def adapter_folders(directory) -> dict[str, Path]:
    """{adapter name: folder} of every adapter saved in ``directory`` (``adapter_folder``'s
    layout), "default" first. Strict: every sub-folder holds both files under a name PEFT could
    have written (not "default"), and there is at least one adapter; else the error names the
    folder or the file. (A file beside them, PEFT's README.md, is not read.)"""
    directory = Path(directory)
    if not directory.is_dir():
        adapter_files(directory)  # the error: no folder, or a file
    root = any((directory / n).exists() for n in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME))
    found = {DEFAULT_ADAPTER: directory} if root else {}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        if sub.name == DEFAULT_ADAPTER or not ADAPTER_NAME.fullmatch(sub.name):
            raise FileFormatError(sub, "a sub-folder whose name is no adapter PEFT would write")
        for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
            if not (sub / name).is_file():
                raise MissingFileError(sub / name, "missing: every sub-folder is an adapter")
        found[sub.name] = sub
    if not found:
        raise MissingFileError(directory / ADAPTER_CONFIG_NAME, "no adapter in this folder")
    return found


def check_minift_digest(metadata: dict[str, str], path, minift_only: bool) -> None:
    """A file minift wrote keeps minift's checksum: one flipped bit in the key's name must not
    switch it off. Its config checksum (or a method only minift has) says minift wrote it."""
    if DIGEST_KEY not in metadata and (CONFIG_DIGEST_KEY in metadata or minift_only):
        raise FileFormatError(
            path,
            f"no {DIGEST_KEY} in its header, though minift wrote it (its "
            + ("config checksum" if CONFIG_DIGEST_KEY in metadata else "method, minift's own,")
            + " says so)",
        )


def adapter_values(cfg, params: dict, tensors: dict[str, np.ndarray], path, config_path=None):
    """{name: value} for ``params`` ({file key: (name, Param)}) from the file's ``tensors``.

    Strict: every Param's key is in the file, no key is left over, every tensor floating-point
    and, once the config has put it in minift's layout (``cfg.from_peft_value``), of exactly the
    Param's shape; else a FileFormatError naming the file (the config's, where a field of the
    config is what does not fit) and the tensor.
    """
    config_fields = {f.name for f in dataclasses.fields(cfg)}
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    problems = [f"missing keys {missing}"] if missing else []
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if problems:
        raise FileFormatError(path, "adapter does not match the model: " + " | ".join(problems))
    values = {}
    for key, (name, p) in params.items():
        stored = tensors[key]
        if stored.dtype.kind != "f":
            # an integer tensor copied into a float Param would load as other numbers
            raise FileFormatError(
                path, f"expected floating-point values, got {stored.dtype}", field=key
            )
        try:
            value = cfg.from_peft_value(name, stored)
        except ValueError as e:  # a layout the config does not expect (IA3's ia3_l)
            message = str(e).removeprefix(f"{key}: ")
            field, _, rest = message.partition(": ")
            if config_path is not None and field in config_fields:
                # the config's field is what does not fit (AdaLoRA's rank_pattern)
                raise FileFormatError(config_path, f"{key}: {rest}", field=field) from None
            raise FileFormatError(path, message, field=key) from None
        if value.shape != p.shape:
            raise FileFormatError(path, f"expected shape {p.shape}, got {value.shape}", field=key)
        values[name] = value
    return values
