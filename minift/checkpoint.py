"""Models on disk: a folder of safetensors weights and a JSON config, loaded strictly.

A model folder is laid out as Hugging Face lays out a GPT-2 model, so its loader can read ours:

    model.safetensors   every Param's value under GPT-2's names (``h.0.attn.c_attn.weight`` …)
    config.json         Hugging Face GPT-2's keys (model_type, n_embd, n_layer …) and, under
                        "minift", the GPTConfig plus "class", "num_labels" and "dtype"

The files are written and read by ``minift.files`` (atomic writes, the safetensors layout
checked byte by byte, minift's checksums). Loading is strict: a config that differs from the
model's; a missing or unexpected tensor, or one of another shape (one that would broadcast
included) or dtype, or holding NaN or ±inf; a weights file without the checksum minift writes
into every file it saves; a truncated or corrupted file; a folder where a file should be or a
file where the folder should be: each is a ``minift.errors.FileFormatError`` that names the file
(and the field or tensor), and the model is left unchanged.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from minift.errors import FileFormatError

# the floor's names, importable from here as they always were
from minift.files import (  # noqa: F401
    CONFIG_DIGEST_KEY,
    DIGEST_KEY,
    atomic_write_bytes,
    atomic_write_json,
    check_config_digest,
    check_tensor,
    json_digest,
    load_tensors,
    read_json,
    save_tensors,
    tensors_digest,
)
from minift.model import GPT, GPTConfig, GPTForSequenceClassification

__all__ = [
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "atomic_write_bytes",
    "atomic_write_json",
    "save_tensors",
    "load_tensors",
    "read_json",
    "save_model",
    "load_model",
    "load_weights",
]

WEIGHTS_NAME = "model.safetensors"  # the file names Hugging Face uses
CONFIG_NAME = "config.json"

# -- models: a directory of weights + config -------------------------------------------------


def _class_name(model) -> str:
    # The subclass first: a classifier is also a GPT.
    if isinstance(model, GPTForSequenceClassification):
        return "GPTForSequenceClassification"
    if isinstance(model, GPT):
        return "GPT"
    raise TypeError(
        f"model: expected a GPT or GPTForSequenceClassification (this format is GPT-2's), got "
        f"{type(model).__name__}. A BERT is saved by minift.hub.save_pretrained(bert, folder), "
        "the encoder as a Hugging Face folder, and a fine-tuned BertSentenceClassifier as that "
        "folder plus its PeftModel's save_pretrained (modules_to_save=['classifier'] for the head)"
    )


def _minift_section(model) -> dict:
    """The "minift" part of config.json: GPTConfig, class, num_labels (classifier), dtype."""
    section = {
        k: v.item() if isinstance(v, np.generic) else v for k, v in model.config.to_dict().items()
    }
    section["class"] = _class_name(model)
    if section["class"] == "GPTForSequenceClassification":
        section["num_labels"] = model.num_labels
    section["dtype"] = model.dtype.name
    return section


def _config_json(model) -> dict:
    """config.json: Hugging Face GPT-2's keys, which its loader reads, then minift's own section."""
    c = model.config
    classifier = isinstance(model, GPTForSequenceClassification)
    hf = {
        "model_type": "gpt2",
        "architectures": ["GPT2ForSequenceClassification" if classifier else "GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "n_embd": c.d_model,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,  # Hugging Face reads null as 4·n_embd, minift's MLP width
        "layer_norm_epsilon": c.layer_norm_eps,
        "activation_function": "gelu_new",  # GELU, tanh approximation
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": 0.0,  # minift has no dropout on the attention probabilities
        "tie_word_embeddings": True,  # the LM head is wte
        "pad_token_id": c.pad_token_id,
        "torch_dtype": model.dtype.name,
    }
    if classifier:
        hf["num_labels"] = model.num_labels
    hf = {k: v.item() if isinstance(v, np.generic) else v for k, v in hf.items()}
    return {**hf, "minift": _minift_section(model)}


def save_model(model: GPT, directory) -> None:
    """Save ``model`` to ``directory`` (created if needed): model.safetensors and config.json.

    ``model``: a GPT or a GPTForSequenceClassification; anything else (a BERT: see
    minift.hub.save_pretrained) is a TypeError that writes nothing.

    The weights are ``model.state_dict()``, under GPT-2's names, the tied LM head stored once as
    ``wte.weight`` (a Param shared between modules is stored once, under its first name). What is
    NOT saved: the dropout generator ``model.rng`` (the training loop saves RNG state itself), the
    train/eval mode, gradients, and which Params are trainable (that belongs to the fine-tuning
    method, not to the weights).

    Hugging Face's loader can read the directory as a GPT-2: config.json carries its keys, and the
    file's metadata says {"format": "pt"} (the tag its loader requires, meaning "PyTorch's layout
    and names", which GPT-2's [in, out] Conv1D weights are). For the classifier only the config is
    Hugging Face's: minift's ``score.weight`` is [C, K], Hugging Face's is [K, C].
    """
    _class_name(model)  # a model this format cannot describe is refused, and nothing is written
    config = _config_json(model)  # built first: a model that cannot be described writes nothing
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Weights first, config last, each atomically: config.json appears only once the weights it
    # describes are complete, so a directory with a config is always a whole checkpoint.
    metadata = {"format": "pt", CONFIG_DIGEST_KEY: json_digest(config)}
    save_tensors(directory / WEIGHTS_NAME, model.state_dict(), metadata=metadata)
    atomic_write_json(directory / CONFIG_NAME, config)


def load_model(directory, dtype=None) -> GPT | GPTForSequenceClassification:
    """Build the model that config.json's "minift" section describes and load its weights.

    ``dtype`` (np.float32 / np.float64) overrides the saved one; weights are cast to it.
    """
    config_path = _model_folder(directory) / CONFIG_NAME
    section = read_json(config_path, "checkpoint config").get("minift")
    if not isinstance(section, dict):
        raise FileFormatError(config_path, 'no "minift" section; not a minift checkpoint')
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(section.keys() - known - {"class", "num_labels", "dtype"})
    if unknown:
        raise FileFormatError(config_path, f'unknown fields in the "minift" section: {unknown}')
    saved_dtype = _saved_dtype(section, config_path)
    dtype = saved_dtype if dtype is None else dtype
    class_name = section.get("class")
    try:
        config = GPTConfig(**{k: v for k, v in section.items() if k in known})
        if class_name == "GPT":
            model = GPT(config, dtype=dtype)
        elif class_name == "GPTForSequenceClassification":
            model = GPTForSequenceClassification(config, section.get("num_labels"), dtype=dtype)
        else:
            raise ValueError(
                f"class: expected GPT or GPTForSequenceClassification, got {class_name!r}"
            )
    except (TypeError, ValueError) as e:
        raise FileFormatError(config_path, str(e), field="minift") from None
    load_weights(model, directory)
    return model


def load_weights(model: GPT, directory) -> None:
    """Load ``directory``'s weights into ``model``, strictly; the model is unchanged on any error.

    1. If config.json has a "minift" section, minift wrote the folder: the weights file must
       carry minift's checksum, each tensor must have the dtype the section names, and every
       field of it that shapes the weights or their meaning (GPTConfig's architecture, class,
       num_labels) must equal the model's; the error names each that differs. The
       training-time choices may differ: ``dropout``, ``pad_token_id`` (a classifier fine-tuned
       from a pretrained LM picks its own) and the dtype (values are cast to the model's). A
       config.json without the section, such as Hugging Face's, is not compared.
    2. Every tensor must be finite and have exactly its Param's shape (``ln_f.weight`` of shape
       (1,) would broadcast, and is refused).
    3. ``model.load_state_dict`` checks every key before it copies anything, and copies INTO the
       existing arrays, so Params shared between modules stay shared.
    """
    directory = _model_folder(directory)
    config_path = directory / CONFIG_NAME
    weights_path = directory / WEIGHTS_NAME
    raw = None
    if config_path.exists() or config_path.is_symlink():  # a dangling link is refused, not absent
        raw = read_json(config_path, "checkpoint config")
    section = raw.get("minift") if raw is not None else None
    tensors, metadata = load_tensors(weights_path, require_digest=section is not None)
    if raw is not None:
        check_config_digest(metadata, raw, config_path, weights_path)
    if section is not None:
        differences = _config_differences(section, model)
        if differences:
            raise FileFormatError(
                config_path, "config differs from the model's: " + "; ".join(differences)
            )
        saved_dtype = _saved_dtype(section, config_path)
        for name, array in tensors.items():
            if array.dtype != np.dtype(saved_dtype):
                raise FileFormatError(
                    weights_path,
                    f"expected dtype {saved_dtype} ({CONFIG_NAME} says so), got {array.dtype}",
                    field=name,
                )
    params = model.named_parameters()
    for name, array in tensors.items():
        if name in params:
            check_tensor(weights_path, name, array, params[name].shape)
    try:
        model.load_state_dict(tensors)
    except ValueError as e:
        raise FileFormatError(weights_path, str(e)) from None


def _model_folder(directory) -> Path:
    """``directory`` as a Path, refused when it is a file (or a link to one)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileFormatError(directory, "a file, expected a model folder")
    return directory


def _saved_dtype(section: dict, config_path) -> str:
    """The dtype the "minift" section says the weights were saved in."""
    dtype = section.get("dtype")
    if dtype not in ("float32", "float64"):
        raise FileFormatError(
            config_path, f"expected float32 or float64, got {dtype!r}", field="minift.dtype"
        )
    return dtype


_ABSENT = object()  # a field one side does not have
_MAY_DIFFER = {"dtype", "dropout", "pad_token_id"}  # training choices, not the weights' meaning


def _config_differences(section, model) -> list[str]:
    """["n_layer: checkpoint 4, model 2", …] for every field where the two configs disagree."""
    if not isinstance(section, dict):
        return [f"minift: checkpoint {section!r} is not an object"]
    ours = {k: v for k, v in _minift_section(model).items() if k not in _MAY_DIFFER}
    theirs = {k: v for k, v in section.items() if k not in _MAY_DIFFER}
    differences = []
    for key in [*ours, *(k for k in theirs if k not in ours)]:
        saved, current = theirs.get(key, _ABSENT), ours.get(key, _ABSENT)
        if saved != current:
            differences.append(f"{key}: checkpoint {_show(saved)}, model {_show(current)}")
    return differences


def _show(value) -> str:
    return "(absent)" if value is _ABSENT else str(value)
