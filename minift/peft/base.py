"""What every fine-tuning method shares: get_peft_model, target modules, counting, merge, files.

A method is a config (a dataclass with PEFT's field names) that knows how to change a model:

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"]))

does three things, in this order:

1. freezes every parameter of the model (``trainable = False``: no dW, but dx still flows);
2. ``config.apply(model, rng)``: the method adds its own trainable parameters. Most methods wrap
   each TARGET MODULE (a Linear layer matched by name, below) in a layer of their own, whose
   forward is the frozen base layer's plus the method's change (LoRA: + s·x·Aᵀ·Bᵀ). Others act
   on the whole model (prompt tuning prepends virtual tokens; BitFit unfreezes biases);
3. unfreezes ``modules_to_save`` (e.g. a new classification head ``score``), which train fully.

The returned ``PeftModel`` keeps the model's interface (forward, backward, generate,
named_parameters) and adds PEFT's: ``print_trainable_parameters``, ``merge_and_unload``,
``save_pretrained`` and ``PeftModel.from_pretrained``. Parameter names are the model's own, with
a wrapped layer's frozen weights under ``base_layer`` as in PEFT: ``h.0.attn.c_attn.lora_A``
beside ``h.0.attn.c_attn.base_layer.weight``.

Target modules are matched as PEFT matches them: a string is a regular expression that must
match the WHOLE dotted name (``re.fullmatch``); a list matches a name equal to an entry or ending
in ``"." + entry`` (``"c_attn"`` matches ``h.0.attn.c_attn``; ``"attn.c_proj"`` matches only the
attention's output projection, not the MLP's). A target that matches nothing is an error that
lists the modules that exist. A module answers to two names, minift's (``h.0.attn.c_attn``) and
Hugging Face's (``transformer.h.0.attn.c_attn``, see ``hf_gpt2_name``), so that a target written
for either, by minift or by PEFT, selects the same modules.

Adapter files are PEFT's (``save_pretrained``): adapter_config.json holds the config's fields
that PEFT knows, the ``task_type`` of the model (``peft_task_type``), ``base_model_name_or_path``
(None: minift does not know where the weights came from) and the target modules in a form that
PEFT, matching Hugging Face's names, resolves to exactly the layers minift wrapped
(``peft_target_modules``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from minift.checkpoint import (
    CONFIG_DIGEST_KEY,
    DIGEST_KEY,
    atomic_write_json,
    check_config_digest,
    json_digest,
    load_tensors,
    read_json,
    save_tensors,
)
from minift.errors import FileFormatError, MiniftError, MissingFileError
from minift.nn import Linear, Module
from minift.peft.adapted import AdaptedLinear  # noqa: F401  (importable from here, as before)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"

PEFT_TYPES: dict[str, type[PeftConfig]] = {}  # "LORA" -> LoraConfig, filled by each method
MINIFT_ONLY = "MINIFT_"  # the peft_type of a method PEFT does not have: its files are minift's


def register(config_cls):
    """Class decorator: make a config loadable from its adapter_config.json by ``peft_type``."""
    PEFT_TYPES[config_cls.peft_type] = config_cls
    return config_cls


# ------------------------------------------------------------------------------------------------
# Configs


@dataclass
class PeftConfig:
    """Fields every method has. Subclasses add theirs and implement ``apply`` or ``wrap``."""

    target_modules: list[str] | str | None = None  # None: the method's default
    modules_to_save: list[str] | None = None  # modules trained fully, e.g. ["score"]

    peft_type: ClassVar[str] = ""
    default_target_modules: ClassVar[tuple[str, ...]] = ("c_attn",)
    mergeable: ClassVar[bool] = True  # can its change be folded into the weights?
    not_mergeable_reason: ClassVar[str] = ""  # why not, for the error message
    # the PeftModel subclass get_peft_model returns (a method that changes the whole forward,
    # like prompt tuning, brings its own; None: PeftModel)
    peft_model_class: ClassVar[type | None] = None

    def __post_init__(self):
        t = self.target_modules
        if t is not None and not isinstance(t, str):
            if not isinstance(t, (list, tuple, set)) or not all(isinstance(x, str) for x in t):
                raise TypeError(
                    f"target_modules: expected a regex string or a list of names, got {t!r}"
                )
            self.target_modules = sorted(t) if isinstance(t, set) else list(t)
        m = self.modules_to_save
        if m is not None:
            if not isinstance(m, (list, tuple)) or not all(isinstance(x, str) for x in m):
                raise TypeError(f"modules_to_save: expected a list of names, got {m!r}")
            self.modules_to_save = list(m)

    # -- how a method changes the model -------------------------------------------------------

    def apply(self, model: Module, rng: np.random.Generator) -> None:
        """Add the method to ``model`` (frozen already). Default: wrap every target Linear."""
        targets = self.target_modules or list(self.default_target_modules)
        for name in match_target_modules(model, targets):
            model.set_submodule(name, self.wrap(name, model.get_submodule(name), rng))

    def wrap(self, name: str, layer: Linear, rng: np.random.Generator) -> Module:
        raise NotImplementedError(f"{type(self).__name__} must implement wrap() or apply()")

    # -- adapter files ------------------------------------------------------------------------

    # fields minift keeps that PEFT's config class for this method does not have: left out of
    # adapter_config.json, since PEFT warns about ("Unexpected keyword arguments") and drops them
    fields_peft_lacks: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every field, as a run records it (the file's version: ``PeftModel.adapter_config``)."""
        return {"peft_type": self.peft_type, **dataclasses.asdict(self)}

    def peft_fields(self, peft_model: PeftModel) -> dict[str, Any]:
        """Fields whose value in adapter_config.json depends on the model (default: none)."""
        return {}

    # fields that must be > 0 in a file (a negative or zero LoRA α flips or erases the update)
    positive_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any], where="adapter config") -> PeftConfig:
        """Build from a dict read from file ``where``, every field checked for its JSON type.

        Each field must hold what its annotation says, as JSON spells it (``lora_dropout:
        float`` a number, never "0.1"; ``use_rslora: bool`` true or false, never "no" or 1), a
        regex in ``target_modules`` must compile, and whatever the config's own checks refuse is
        refused too: each a FileFormatError naming ``where`` and the field. A field we do not
        implement, set to a non-default value, is an error: PEFT writes many fields
        (``task_type``, ``inference_mode``, ``layers_to_transform`` …); those left at their
        neutral values are ignored, anything that would change the method is refused rather
        than silently dropped.
        """
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs, refused = {}, []
        for key, value in d.items():
            if key in names:
                kwargs[key] = _checked_field(cls, key, value, hints[key], where)
            elif key in _NEUTRAL_FIELDS or _is_neutral(value):
                continue
            else:
                refused.append(f"{key}={value!r}")
        if refused:
            raise FileFormatError(where, f"fields minift does not implement: {', '.join(refused)}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError, re.error) as e:
            raise _field_error(where, e, names) from None

    def peft_key(self, name: str) -> str:
        """The key of a trainable parameter in adapter_model.safetensors: PEFT's, on Hugging
        Face's GPT-2 (``h.0.attn.c_attn.x`` -> ``base_model.model.transformer.h.0.attn.c_attn.x``).
        """
        return "base_model.model." + hf_gpt2_name(name)

    def peft_value(self, name: str, value: np.ndarray) -> np.ndarray:
        """The value as stored in the file (Hugging Face's layout; see ``hf_layout``)."""
        return hf_layout(name, value)

    def from_peft_value(self, name: str, value: np.ndarray) -> np.ndarray:
        return hf_layout(name, value)


# -- reading a config's fields from a file ---------------------------------------------------


def _is_neutral(value) -> bool:
    """A field PEFT writes at its "off" value (0 too: it equals False)."""
    return value in (None, False, {}, [], "")


def _json_kinds(hint) -> list[tuple[str, Callable[[Any], bool]]] | None:
    """What JSON may hold for a field annotated ``hint``: (name, test) pairs; None: anything."""
    parts = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = []
    for part in parts:
        origin, args = typing.get_origin(part), typing.get_args(part)
        if part is bool:
            kinds.append(("true or false", lambda v: isinstance(v, bool)))
        elif part is int:
            kinds.append(("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)))
        elif part is float:
            kinds.append(("a finite number", _is_finite_number))
        elif part is str:
            kinds.append(("a string", lambda v: isinstance(v, str)))
        elif part is type(None):
            kinds.append(("null", lambda v: v is None))
        elif part is dict or origin is dict:
            kinds.append(("an object", lambda v: isinstance(v, dict)))
        elif (part is list or origin is list) and args:
            inner = _json_kinds(args[0])
            if inner is None:
                return None
            kinds.append(
                (
                    f"a list of {inner[0][0].removeprefix('a ').removeprefix('an ')}s",
                    lambda v, test=inner[0][1]: isinstance(v, list) and all(map(test, v)),
                )
            )
        else:
            return None  # a type JSON has no word for: the config's own checks decide
    return kinds


def _is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _checked_field(cls, key: str, value, hint, where):
    """``value`` if JSON's type fits the annotation (and the field's range and regex rules)."""
    kinds = _json_kinds(hint)
    if kinds is not None and not any(test(value) for _, test in kinds):
        expected = " or ".join(name for name, _ in kinds)
        raise FileFormatError(where, f"expected {expected}, got {_json_text(value)}", field=key)
    if key in cls.positive_fields and not value > 0:
        raise FileFormatError(where, f"expected a number > 0, got {_json_text(value)}", field=key)
    if key in _REGEX_FIELDS and isinstance(value, str):
        try:
            re.compile(value)
        except re.error as e:
            message = f"not a valid regular expression ({e})"
            raise FileFormatError(where, message, field=key) from None
    return value


_REGEX_FIELDS = {"target_modules", "feedforward_modules"}  # a string is a regex (PEFT's rule)


def _json_text(value) -> str:
    text = json.dumps(value) if _is_json(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _is_json(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _field_error(where, error: Exception, names) -> FileFormatError:
    """A config's own check (``"r: expected …"``) as an error of the file, naming the field."""
    message = str(error)
    field, sep, rest = message.partition(": ")
    if sep and field in names:
        return FileFormatError(where, rest, field=field)
    return FileFormatError(where, message)


# GPT-2's top-level modules, which Hugging Face nests under "transformer." (a head such as
# GPT2ForSequenceClassification's "score" sits beside it, not inside).
_HF_TRANSFORMER_MODULES = {"wte", "wpe", "drop", "h", "ln_f"}


def hf_gpt2_name(name: str) -> str:
    """minift's parameter name -> Hugging Face GPT-2's (``h.0.ln_1.bias`` -> ``transformer.h…``)."""
    return f"transformer.{name}" if name.split(".", 1)[0] in _HF_TRANSFORMER_MODULES else name


def hf_layout(name: str, value: np.ndarray) -> np.ndarray:
    """A tensor in Hugging Face's layout (and back: it is its own inverse).

    GPT-2's own Linears are Conv1D, [in, out] like minift's; a head outside ``transformer``
    (``score``) is a torch nn.Linear, [out, in]: its weight is transposed, as is every Linear
    weight of a BERT. An embedding table ([vocab, hidden] in both) is never transposed.
    """
    outside = name.split(".", 1)[0] not in _HF_TRANSFORMER_MODULES
    embedding = "embeddings." in name  # BERT's word/position/token_type tables
    if outside and not embedding and name.endswith(".weight") and value.ndim == 2:
        return value.T
    return value


# fields PEFT writes whose value minift may ignore whatever it is
_NEUTRAL_FIELDS = {
    "peft_type",
    "task_type",
    "inference_mode",
    "base_model_name_or_path",
    "revision",
    "auto_mapping",
    "peft_version",
    # defaults of features that stay off unless another field turns them on
    "megatron_core",  # read only with megatron_config
    "qalora_group_size",  # read only with use_qalora
}


# ------------------------------------------------------------------------------------------------
# Target modules


def _matches(name: str, targets: list[str] | str) -> bool:
    names = {name, hf_gpt2_name(name)}  # minift's and Hugging Face's: a target may use either
    if isinstance(targets, str):
        return any(re.fullmatch(targets, n) is not None for n in names)
    return any(n == t or n.endswith("." + t) for n in names for t in targets)


def match_target_modules(model: Module, targets: list[str] | str, kind=Linear) -> list[str]:
    """Names of the ``kind`` modules that the targets match; an error names what did not match."""
    candidates = [name for name, m in model.named_modules() if isinstance(m, kind) and name]
    matched = [name for name in candidates if _matches(name, targets)]
    unmatched = (
        ([targets] if not matched else [])
        if isinstance(targets, str)
        else [t for t in targets if not any(_matches(n, [t]) for n in candidates)]
    )
    if unmatched:
        kinds = sorted({n.rsplit(".", 1)[-1] for n in candidates})
        example = next((n for n in candidates if n.count(".") >= 2), candidates[:1])
        raise ValueError(
            f"target_modules: {unmatched} matched no {kind.__name__} module; the model has "
            f"{kinds} (full names like {example!r})"
        )
    return matched


# PEFT matches a regex against Hugging Face's names; this optional head lets a regex written
# for minift's names (h.0.attn.c_attn) match them too, and nothing else
_HF_OPTIONAL_PREFIX = r"(?:transformer\.)?"


def peft_target_modules(
    targets: list[str] | str | None, wrapped: list[str], candidates: list[str]
) -> list[str] | str:
    r"""``target_modules`` as adapter_config.json writes it: what PEFT resolves to ``wrapped``.

    PEFT matches every entry against Hugging Face's names (``transformer.h.0.attn.c_attn``).
    A list (or None, the method's default) is written as the names of the ``wrapped`` layers,
    Hugging Face's, which PEFT matches exactly. A regex stays a regex: unchanged if on
    Hugging Face's names of the ``candidates`` (the model's Linear layers) it selects the same
    layers, else behind ``(?:transformer\.)?``, which makes it match a name with or without
    ``transformer.``, the rule minift applies (``_matches``).
    """
    chosen = [hf_gpt2_name(n) for n in wrapped]
    if not isinstance(targets, str):
        return chosen
    hf_names = [hf_gpt2_name(n) for n in candidates]
    for pattern in (targets, f"{_HF_OPTIONAL_PREFIX}(?:{targets})"):
        if {n for n in hf_names if re.fullmatch(pattern, n)} == set(chosen):
            return pattern
    return chosen  # the method wrapped fewer layers than the regex selects: the exact list


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
# Counting


@dataclass
class ParameterCount:
    """Trainable and frozen element counts, in total and per module (the Param's owner)."""

    trainable: int = 0
    frozen: int = 0
    by_module: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def count_parameters(model: Module) -> ParameterCount:
    """Count every Param once (a shared Param counts once: A3's saving shows here)."""
    count = ParameterCount()
    for name, p in model.named_parameters().items():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        row = count.by_module.setdefault(owner, {"trainable": 0, "frozen": 0})
        kind = "trainable" if p.trainable else "frozen"
        row[kind] += p.size
        setattr(count, kind, getattr(count, kind) + p.size)
    return count


# ------------------------------------------------------------------------------------------------
# The model a method returns


class PeftModel(Module):
    """A model with a method applied; its parameter names are the model's own."""

    def __init__(self, model: Module, peft_config: PeftConfig):
        self.base_model = model
        self.peft_config = peft_config

    def __getattr__(self, name):
        # called only when normal lookup fails: reach the model's own attributes (peft.h[0]…)
        base = self.__dict__.get("base_model")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)

    # the wrapped model's modules are ours, under their own names (no "base_model." prefix)
    def named_modules(self, prefix: str = ""):
        return self.base_model.named_modules(prefix)

    def _children(self):
        return self.base_model._children()

    def _child(self, name):
        return self.base_model._child(name)

    def _set_child(self, name, module):
        self.base_model._set_child(name, module)

    def train(self, mode: bool = True) -> PeftModel:
        self.training = bool(mode)
        self.base_model.train(mode)
        return self

    @property
    def config(self):
        return self.base_model.config

    def forward(self, *args, **kwargs):
        return self.base_model.forward(*args, **kwargs)

    def backward(self, dout):
        return self.base_model.backward(dout)

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)

    # -- PEFT's conveniences -------------------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        count = count_parameters(self)
        return count.trainable, count.total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    def _tuner_layers(self) -> list[str]:
        """The names of the layers a method wrapped (each keeps the original as base_layer)."""
        return [n for n, m in self.named_modules() if n and hasattr(m, "base_layer")]

    def merge_and_unload(self) -> Module:
        """Fold every change into the weights and return the plain model, all of it trainable.

        Exact: the merged model computes what the adapted one did (a test holds it to 1e-12 in
        float64), at the base model's size and speed. The PeftModel is used up by this (as in
        PEFT: the merge happens in place).
        """
        if not self.peft_config.mergeable:
            raise TypeError(
                f"merge_and_unload: {type(self.peft_config).__name__} cannot be merged: "
                f"{self.peft_config.not_mergeable_reason}; keep using the PeftModel"
            )
        for name in self._tuner_layers():
            self.base_model.set_submodule(name, self.get_submodule(name).merged_layer())
        for p in self.base_model.parameters():
            p.trainable = True
        return self.base_model

    def unload(self) -> Module:
        """Drop the method's layers and return the model as it was (all of it trainable)."""
        for name in self._tuner_layers():
            self.base_model.set_submodule(name, self.get_submodule(name).base_layer)
        for p in self.base_model.parameters():
            p.trainable = True
        return self.base_model

    # -- adapter files ------------------------------------------------------------------------

    def adapter_state_dict(self) -> dict[str, np.ndarray]:
        """What save_pretrained writes: every trainable Param, under the method's file keys."""
        cfg = self.peft_config
        return {
            cfg.peft_key(name): np.ascontiguousarray(cfg.peft_value(name, p.value))
            for name, p in self.named_parameters().items()
            if p.trainable
        }

    def _targetable_modules(self) -> list[str]:
        """The model's Linear layers as they were before the method (a wrapped layer under its
        own name, its base_layer not counted again)."""
        wrapped = self._tuner_layers()
        inside = tuple(name + "." for name in wrapped)
        plain = [
            n
            for n, m in self.named_modules()
            if n and isinstance(m, Linear) and not n.startswith(inside)
        ]
        return wrapped + plain

    def adapter_config(self) -> dict[str, Any]:
        """What adapter_config.json holds: the config as PEFT reads it (module docstring), or
        for a method of minift's own (``MINIFT_…``), which PEFT cannot load, minift's dict."""
        cfg = self.peft_config
        if cfg.peft_type.startswith(MINIFT_ONLY):
            return cfg.to_dict()
        config = {
            "peft_type": cfg.peft_type,
            "task_type": getattr(cfg, "task_type", None) or peft_task_type(self.base_model),
            "base_model_name_or_path": None,
            **cfg.to_dict(),
        }
        for name in cfg.fields_peft_lacks:
            config.pop(name, None)
        wrapped = self._tuner_layers()
        if "target_modules" in config and wrapped:
            candidates = self._targetable_modules()
            config["target_modules"] = peft_target_modules(cfg.target_modules, wrapped, candidates)
        config.update(cfg.peft_fields(self))
        return config

    def save_pretrained(self, directory) -> None:
        """Write adapter_model.safetensors, then adapter_config.json (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.adapter_config()
        metadata = {"format": "pt", CONFIG_DIGEST_KEY: json_digest(config)}
        save_tensors(directory / ADAPTER_WEIGHTS_NAME, self.adapter_state_dict(), metadata)
        atomic_write_json(directory / ADAPTER_CONFIG_NAME, config)

    @classmethod
    def from_pretrained(cls, model: Module, directory, is_trainable: bool = False, seed: int = 0):
        """Apply a saved adapter to ``model``; frozen for inference unless ``is_trainable``.

        Both files are read and checked before the model is touched, and if the adapter still
        does not fit the model, the model is put back as it was: a FileFormatError (naming the
        file, and the field or tensor) leaves ``model`` unchanged.
        """
        config_path, weights_path = _adapter_files(directory)
        raw = read_json(config_path, "adapter config")
        tensors, metadata = load_tensors(weights_path)
        peft_type = raw.get("peft_type")
        if not isinstance(peft_type, str) or peft_type not in PEFT_TYPES:
            raise FileFormatError(
                config_path,
                f"{_json_text(peft_type)} is not one minift knows: {sorted(PEFT_TYPES)}",
                field="peft_type",
            )
        _check_minift_digest(metadata, weights_path, minift_only=peft_type.startswith(MINIFT_ONLY))
        check_config_digest(metadata, raw, config_path, weights_path)
        config = PEFT_TYPES[peft_type].from_dict(raw, config_path)
        if raw.get("task_type") == "SEQ_CLS" and config.modules_to_save:
            # PEFT adds the names of both its usual heads to a classifier's modules_to_save and
            # trains whichever the model has: the other one names nothing, here as there
            present = {name for name, _ in model._children()}
            config.modules_to_save = [
                m for m in config.modules_to_save if m in present or m not in _PEFT_SEQ_CLS_HEADS
            ]
        saved = _module_state(model)
        try:
            try:
                peft_model = get_peft_model(model, config, seed=seed)
            except (TypeError, ValueError, re.error) as e:
                field = str(e).partition(": ")[0]
                if isinstance(e, MiniftError) or field not in raw:
                    raise
                # a field valid on its own that does not fit this model (a target it lacks)
                raise _field_error(config_path, e, {field}) from None
            peft_model._load_adapter_tensors(tensors, weights_path, config_path)
        except BaseException:
            _restore_module_state(saved)
            raise
        if not is_trainable:
            for p in peft_model.parameters():
                p.trainable = False
        return peft_model

    def load_adapter_weights(self, path) -> None:
        """Strict: every trainable Param's key is in the file, no key is left over, every tensor
        floating-point, finite and of exactly the Param's shape; else a FileFormatError naming
        the file and the tensor, and no Param changed."""
        tensors, metadata = load_tensors(path)
        _check_minift_digest(
            metadata, path, minift_only=self.peft_config.peft_type.startswith(MINIFT_ONLY)
        )
        self._load_adapter_tensors(tensors, path)

    def _load_adapter_tensors(self, tensors: dict[str, np.ndarray], path, config_path=None):
        cfg = self.peft_config
        config_fields = {f.name for f in dataclasses.fields(cfg)}
        params = {
            cfg.peft_key(n): (n, p) for n, p in self.named_parameters().items() if p.trainable
        }
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
                raise FileFormatError(
                    path, f"expected shape {p.shape}, got {value.shape}", field=key
                )
            values[name] = value
        for name, p in params.values():
            np.copyto(p.value, values[name], casting="same_kind")


def _adapter_files(directory) -> tuple[Path, Path]:
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


def _check_minift_digest(metadata: dict[str, str], path, minift_only: bool) -> None:
    """A file minift wrote keeps minift's checksum: one flipped bit in the key's name must not
    switch it off. Its config checksum (or a method only minift has) says minift wrote it."""
    if DIGEST_KEY not in metadata and (CONFIG_DIGEST_KEY in metadata or minift_only):
        raise FileFormatError(
            path,
            f"no {DIGEST_KEY} in its header, though minift wrote it (its "
            + ("config checksum" if CONFIG_DIGEST_KEY in metadata else "method, minift's own,")
            + " says so)",
        )


def _module_state(model: Module) -> list[tuple[Module, dict, list]]:
    """Every module's attributes and every Param's trainable flag: what a method changes."""
    return [
        (module, dict(vars(module)), [(p, p.trainable) for p in module.parameters()])
        for _, module in model.named_modules()
    ]


def _restore_module_state(saved) -> None:
    for module, attributes, trainable in saved:
        vars(module).clear()
        vars(module).update(attributes)
        for p, flag in trainable:
            p.trainable = flag


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


def _resolve_fan_in_fan_out(peft_config: PeftConfig, model: Module) -> None:
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


def get_peft_model(model: Module, peft_config: PeftConfig, seed: int = 0) -> PeftModel:
    """Freeze ``model``, apply the method, unfreeze ``modules_to_save``; see the module docstring.

    The model is changed in place (its target layers are wrapped) and returned inside a
    PeftModel. ``seed`` draws the method's initial values (LoRA's A, prompt embeddings …).
    """
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"peft_config: expected a PeftConfig, got {type(peft_config).__name__}")
    if isinstance(model, PeftModel):
        raise TypeError("model: already a PeftModel; merge_and_unload() it first")
    _resolve_fan_in_fan_out(peft_config, model)
    for p in model.parameters():
        p.trainable = False
    peft_config.apply(model, np.random.default_rng(seed))
    for name in peft_config.modules_to_save or []:
        try:
            module = model.get_submodule(name)
        except KeyError:
            children = [n for n, _ in model._children()]
            raise ValueError(
                f"modules_to_save: no module {name!r}; the model's top-level modules are {children}"
            ) from None
        for p in module.parameters():
            p.trainable = True
    return (peft_config.peft_model_class or PeftModel)(model, peft_config)
