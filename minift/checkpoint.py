"""Checkpoints: safetensors weights and a JSON config, written atomically, loaded strictly.

A checkpoint is a directory laid out as Hugging Face lays out a GPT-2 model, so its loader can
read ours:

    model.safetensors   every Param's value under GPT-2's names (``h.0.attn.c_attn.weight`` …)
    config.json         Hugging Face GPT-2's keys (model_type, n_embd, n_layer …) and, under
                        "minift", the GPTConfig plus "class", "num_labels" and "dtype"

The safetensors format, the whole of it (``load_tensors`` checks all of this before it lets the
library parse a byte):

    bytes [0, 8)         N, the header's length, a little-endian u64
    bytes [8, 8 + N)     JSON header: {name: {"dtype": "F32", "shape": [d0, d1],
                                              "data_offsets": [begin, end]}, …,
                                       "__metadata__": {str: str}}       (metadata optional)
    bytes [8 + N, end)   the data: tensor ``name`` is data[begin:end], raw little-endian values,
                         end − begin = itemsize(dtype) · d0 · d1 · …, the tensors tiling the data
                         exactly (no gap, no overlap, nothing after the last)

Never pickle: a pickle file is a program that runs when loaded; a safetensors file is a table of
numbers. Every file minift writes also carries, in its metadata, a SHA-256 of its tensors
("minift_sha256") and, beside a JSON config, of that config ("minift_config_sha256"): a flipped
bit anywhere (in a number, or in the config) is then an error at load time, never a model that
silently computes something else. Files without these keys (Hugging Face's, PEFT's) are read
without that check. Every write is atomic (a temporary file in the same directory, fsync, then
rename), so a crash or a full disk leaves the previous file or none, never half of one. Loading is
strict: a config that differs from the model's, a missing, unexpected or mis-shaped tensor, and
a truncated or corrupted file are each an error that names what is wrong, and the model is left
unchanged.

``atomic_write_bytes``, ``atomic_write_json``, ``save_tensors``, ``load_tensors`` and
``read_json`` are the building blocks the rest of minift saves with (optimizer state in the
training loop, adapters in ``peft``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy

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

# safetensors' dtype codes and the NumPy types they hold; the codes NumPy cannot represent
# (BF16, the F8 family) are refused with a message rather than guessed at.
_NUMPY_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


# -- atomic writes ---------------------------------------------------------------------------


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``.

    The bytes go to a temporary file in the SAME directory (a rename is atomic only within one
    filesystem), are flushed and fsync'ed to the disk, and only then renamed onto ``path``. On any
    failure the temporary file is removed and the error re-raised. The parent directory must
    exist. An OSError (PermissionError, FileNotFoundError, a full disk …) is re-raised as the same
    OSError type with a message naming ``path``.
    """
    path = Path(path)
    directory = path.parent
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on the disk BEFORE the name points at them
        # mkstemp makes the file private (0600); give it what open() gives under the usual umask
        # 022 (reading the real umask means setting it, which races with other threads).
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
        tmp_name = None  # renamed: nothing left to clean up
    except BaseException as e:  # KeyboardInterrupt too: never leave a temporary file behind
        if tmp_name is not None:
            try:
                os.remove(tmp_name)
            except OSError:
                pass
        if isinstance(e, OSError):
            message = f"cannot write {path}: {e.strerror or e}"
            # OSError(errno, message) builds the matching subclass (PermissionError, …).
            raise (OSError(message) if e.errno is None else OSError(e.errno, message)) from e
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable on POSIX; a no-op where a directory cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Windows: directories cannot be opened, and NTFS journals the rename anyway
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the file's bytes are already synced
    finally:
        os.close(fd)


def atomic_write_json(path, obj) -> None:
    """Write ``obj`` as JSON (indent 2, keys in the order given, trailing newline), atomically.

    The text is built before the file is touched, so an object JSON cannot encode (a NumPy
    scalar, NaN) raises TypeError / ValueError and leaves ``path`` as it was.
    """
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path, what: str) -> dict:
    """Read a JSON object from ``path``; ``what`` names the file in errors ("config", …).

    FileNotFoundError when the file is missing; ValueError when it is not UTF-8 JSON or not an
    object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise FileNotFoundError(e.errno, f"{what}: no such file", str(path)) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {what} is not UTF-8 text ({e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {type(obj).__name__}")
    return obj


# -- tensors: safetensors files --------------------------------------------------------------


def save_tensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Write ``tensors`` (name -> array) and optional text ``metadata`` as one safetensors file.

    Arrays are stored C-contiguous and little-endian, whatever their layout in memory; the write
    is atomic (``atomic_write_bytes``).
    """
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(
                f"tensor name: expected a non-empty string but __metadata__, got {name!r}"
            )
        array = np.asarray(value, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
        if array.dtype.newbyteorder("=") not in _NUMPY_DTYPES.values():
            raise TypeError(f"{name}: safetensors cannot store dtype {array.dtype}")
        arrays[name] = array
    if metadata is not None:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(
                    f"metadata: keys and values must be strings, got {key!r}: {value!r}"
                )
    metadata = {**(metadata or {}), DIGEST_KEY: tensors_digest(arrays)}
    atomic_write_bytes(path, safetensors.numpy.save(arrays, metadata=metadata))


DIGEST_KEY = "minift_sha256"
CONFIG_DIGEST_KEY = "minift_config_sha256"


def tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and little-endian bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}|{little.dtype.str}|{array.shape}|".encode())
        h.update(np.ascontiguousarray(little).tobytes())
    return h.hexdigest()


def json_digest(obj) -> str:
    """SHA-256 of a JSON object's canonical text (sorted keys), as it reads back from disk."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def check_config_digest(metadata: dict[str, str], config: dict, config_path, weights_path) -> None:
    """The config must be the one the weights were saved with, when the weights say which. The
    checksum lives in the weights' header, so either file may be the damaged one: both named."""
    expected = metadata.get(CONFIG_DIGEST_KEY)
    if expected is not None and json_digest(config) != expected:
        raise ValueError(
            f"{config_path}: not the config {Path(weights_path).name} was saved with (the "
            f"checksum {weights_path} records differs): one of the two files was changed or "
            "corrupted"
        )


def load_tensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: (name -> writable array, metadata). Never executes anything.

    FileNotFoundError names a missing file. A file that is truncated, corrupted or not safetensors
    at all raises ValueError("<path>: not a readable safetensors file (<why>)"): the layout in
    this module's docstring is checked first, and whatever the safetensors library still raises is
    turned into that ValueError too.
    """
    path = Path(path)
    blob = path.read_bytes()  # its FileNotFoundError already names the path
    metadata = _check_layout(blob, path)
    try:
        tensors = safetensors.numpy.load(blob)
    except BaseException as e:
        # The library raises SafetensorError, and on some garbage other exceptions; a Rust panic
        # surfaces as pyo3's PanicException, which derives from BaseException, not Exception.
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise _unreadable(path, f"{type(e).__name__}: {e}") from None
    tensors = {k: v if v.flags.writeable else v.copy() for k, v in tensors.items()}
    expected = metadata.get(DIGEST_KEY)
    if expected is not None and tensors_digest(tensors) != expected:
        raise _unreadable(path, "checksum mismatch: the numbers were changed or corrupted")
    return tensors, metadata


def _unreadable(path, why: str) -> ValueError:
    return ValueError(f"{path}: not a readable safetensors file ({why})")


def _check_layout(blob: bytes, path) -> dict[str, str]:
    """Check ``blob`` against the safetensors layout; return the header's metadata."""
    if len(blob) < 8:
        raise _unreadable(path, f"{len(blob)} bytes, fewer than the 8 of the header length")
    (header_len,) = struct.unpack("<Q", blob[:8])
    data_len = len(blob) - 8 - header_len
    if data_len < 0:
        raise _unreadable(path, f"header length {header_len} exceeds the {len(blob) - 8} bytes")
    try:
        header = json.loads(
            blob[8 : 8 + header_len].decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys
        )
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise _unreadable(path, f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _unreadable(path, "__metadata__ is not a map of strings to strings")

    spans = []  # (begin, end, name) of every tensor's bytes within the data
    for name, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise _unreadable(path, f"{name}: entry lacks dtype, shape or data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _NUMPY_DTYPES:
            raise _unreadable(path, f"{name}: dtype {dtype!r} is not one NumPy can hold")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _unreadable(path, f"{name}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise _unreadable(path, f"{name}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if not begin <= end <= data_len:
            raise _unreadable(path, f"{name}: data_offsets {offsets} outside the {data_len} bytes")
        expected = _NUMPY_DTYPES[dtype].itemsize * math.prod(shape)
        if end - begin != expected:
            raise _unreadable(
                path, f"{name}: {end - begin} data bytes, but {dtype} × {shape} needs {expected}"
            )
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise _unreadable(path, f"{name}: data starts at byte {begin}, expected {position}")
        position = end
    if position != data_len:
        raise _unreadable(path, f"the tensors cover {position} of the {data_len} data bytes")
    return metadata


def _refuse_duplicate_keys(pairs):
    # json.loads keeps the last of two equal keys; a header naming a tensor twice is corrupt.
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {duplicate!r} appears twice")
    return dict(pairs)


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


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
    config_path = Path(directory) / CONFIG_NAME
    section = read_json(config_path, "checkpoint config").get("minift")
    if not isinstance(section, dict):
        raise ValueError(f'{config_path}: no "minift" section; not a minift checkpoint')
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(section.keys() - known - {"class", "num_labels", "dtype"})
    if unknown:
        raise ValueError(f'{config_path}: unknown fields in the "minift" section: {unknown}')
    if section.get("dtype") not in ("float32", "float64"):
        raise ValueError(
            f"{config_path}: dtype: expected float32 or float64, got {section.get('dtype')!r}"
        )
    dtype = section["dtype"] if dtype is None else dtype
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
        raise ValueError(f"{config_path}: {e}") from None
    load_weights(model, directory)
    return model


def load_weights(model: GPT, directory) -> None:
    """Load ``directory``'s weights into ``model``, strictly; the model is unchanged on any error.

    1. If config.json has a "minift" section, every field of it that shapes the weights or their
       meaning (GPTConfig's architecture, class, num_labels) must equal the model's; ValueError
       names each that differs. The training-time choices may differ: ``dropout``,
       ``pad_token_id`` (a classifier fine-tuned from a pretrained LM picks its own) and the
       dtype (values are cast to the model's). A config.json without the section, such as
       Hugging Face's, is not compared.
    2. ``model.load_state_dict`` checks every key and shape before it copies anything, and copies
       INTO the existing arrays, so Params shared between modules stay shared.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    weights_path = directory / WEIGHTS_NAME
    tensors, metadata = load_tensors(weights_path)
    if config_path.exists():
        raw = read_json(config_path, "checkpoint config")
        check_config_digest(metadata, raw, config_path, weights_path)
        section = raw.get("minift")
        if section is not None:
            differences = _config_differences(section, model)
            if differences:
                raise ValueError(
                    "checkpoint: config differs from the model's: "
                    + "; ".join(differences)
                    + f" ({config_path})"
                )
    try:
        model.load_state_dict(tensors)
    except ValueError as e:
        raise ValueError(f"{weights_path}: {e}") from None


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
