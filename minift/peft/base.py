"""What every fine-tuning method shares: its config, get_peft_model, PeftModel, merge, unload.

A method is a config (a dataclass with PEFT's field names) that knows how to change a model:

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"]))

does three things, in this order:

1. freezes every parameter of the model (``trainable = False``: no dW, but dx still flows);
2. ``config.apply(model, rng)``: the method adds its own trainable parameters. Most methods wrap
   each TARGET MODULE (a Linear layer matched by name: targets.py) in a layer of their own, whose
   forward is the frozen base layer's plus the method's change (LoRA: + s·x·Aᵀ·Bᵀ). Others act
   on the whole model (prompt tuning prepends virtual tokens; BitFit unfreezes biases);
3. unfreezes ``modules_to_save`` (e.g. a new classification head ``score``), which train fully.

The returned ``PeftModel`` keeps the model's interface (forward, backward, generate,
named_parameters) and adds PEFT's: ``print_trainable_parameters``, ``merge_and_unload``,
``save_pretrained`` and ``PeftModel.from_pretrained``. Parameter names are the model's own, with
a wrapped layer's frozen weights under ``base_layer`` as in PEFT: ``h.0.attn.c_attn.lora_A``
beside ``h.0.attn.c_attn.base_layer.weight``.

In minift/peft/: which layers are targets, targets.py; PEFT's adapter files, peft_files.py and
config_json.py (a config read back, every field checked); counting, counting.py.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from minift.errors import MiniftError
from minift.files import load_tensors
from minift.nn import Linear, Module
from minift.peft.adapters import SeveralAdapters
from minift.peft.config_json import config_from_json, field_error
from minift.peft.counting import count_parameters, peft_line
from minift.peft.lora_init import as_plain_lora
from minift.peft.peft_files import (
    MINIFT_ONLY,
    adapter_config_json,
    adapter_values,
    check_adapter_name,
    check_minift_digest,
    hf_layout,
    present_heads,
    read_adapter,
    resolve_fan_in_fan_out,
    write_adapter,
)
from minift.peft.targets import checked_targets, hf_gpt2_name, match_target_modules

PEFT_TYPES: dict[str, type[PeftConfig]] = {}  # "LORA" -> LoraConfig, filled by each method


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
    # get_peft_model's class (prompt tuning brings its own, changing the whole forward)
    peft_model_class: ClassVar[type | None] = None

    def __post_init__(self):
        self.target_modules = checked_targets(self.target_modules, "target_modules")
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
        """Build from a dict read from file ``where``, every field checked for its JSON type
        and its value; a field minift does not implement is refused unless neutral (PEFT's
        ``task_type`` …). Each refusal names the file and the field: see config_json.py."""
        return config_from_json(cls, d, where)

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


class PeftModel(SeveralAdapters, Module):
    """A model with a method applied; its parameter names are the model's own. Several
    adapters on one model (``add_adapter``, ``set_adapter`` …): adapters.py."""

    def __init__(self, model: Module, peft_config: PeftConfig, adapter_name: str = "default"):
        self.base_model = model
        self.peft_config = peft_config  # the active adapter's
        self._init_adapters(adapter_name)

    def __getattr__(self, name):
        # called only when normal lookup fails: reach the model's own attributes (peft.h[0]…)
        if (base := self.__dict__.get("base_model")) is None:
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
        return (count := count_parameters(self)).trainable, count.total

    def print_trainable_parameters(self) -> None:
        print(peft_line(count_parameters(self)))

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

    def adapter_config(self) -> dict[str, Any]:
        """What adapter_config.json holds (see ``peft_files.adapter_config_json``)."""
        return adapter_config_json(self, self._tuner_layers())

    def adapter_metadata(self) -> dict[str, str]:  # for the weights file's header (VeRA's)
        return {}

    def save_pretrained(self, directory, path_initial_model_for_weight_conversion=None) -> None:
        """Write adapter_model.safetensors, then adapter_config.json (each atomically); with
        several adapters (or one not named "default"), PEFT's layout: ``save_adapters``. Given
        the folder of this LoRA saved at init (PiSSA, OLoRA), the plain LoRA: as_plain_lora."""
        if (initial := path_initial_model_for_weight_conversion) is not None:
            return write_adapter(directory, *as_plain_lora(self, initial), self.adapter_metadata())
        if list(self.peft_configs) != ["default"]:
            return self.save_adapters(directory)
        config, tensors = self.adapter_config(), self.adapter_state_dict()
        write_adapter(directory, config, tensors, self.adapter_metadata())

    @classmethod
    def from_pretrained(
        cls, model, directory, is_trainable=False, seed: int = 0, adapter_name: str = "default"
    ):
        """Apply a saved adapter to ``model``, named ``adapter_name``; frozen and in eval mode
        unless ``is_trainable`` (all of a folder's: ``from_pretrained_all``). Both files are read
        and checked first; an adapter that does not fit is a FileFormatError (naming the file,
        and the field or tensor) that leaves ``model`` as it was."""
        raw, tensors, metadata, config_path, weights_path = read_adapter(directory, PEFT_TYPES)
        config = PEFT_TYPES[raw["peft_type"]].from_dict(raw, config_path)
        if raw.get("task_type") == "SEQ_CLS" and config.modules_to_save:
            config.modules_to_save = present_heads(config.modules_to_save, model)
        saved = _module_state(model)
        try:
            try:
                peft_model = get_peft_model(model, config, seed, adapter_name)
            except (TypeError, ValueError, re.error) as e:
                field = str(e).partition(": ")[0]
                if isinstance(e, MiniftError) or field not in raw:
                    raise
                # a field valid on its own that does not fit this model (a target it lacks)
                raise field_error(config_path, e, {field}) from None
            peft_model._load_adapter_tensors(tensors, weights_path, config_path, metadata)
        except BaseException:
            _restore_module_state(saved)
            raise
        if not is_trainable:
            for p in peft_model.parameters():
                p.trainable = False
            peft_model.eval()  # PEFT's: every dropout off for inference
        return peft_model

    def load_adapter_weights(self, path) -> None:
        """Strict: every trainable Param's key is in the file, no key is left over, every tensor
        floating-point, finite and of exactly the Param's shape; else a FileFormatError naming
        the file and the tensor, and no Param changed."""
        tensors, metadata = load_tensors(path)
        check_minift_digest(
            metadata, path, minift_only=self.peft_config.peft_type.startswith(MINIFT_ONLY)
        )
        self._load_adapter_tensors(tensors, path, metadata=metadata)

    def _load_adapter_tensors(self, tensors, path, config_path=None, metadata=None):
        """Copy ``tensors`` into the Params (strictly: ``adapter_values``); ``metadata``, the
        file's header, is for a method that records something there (VeRA)."""
        cfg = self.peft_config
        params = {
            cfg.peft_key(n): (n, p) for n, p in self.named_parameters().items() if p.trainable
        }
        values = adapter_values(cfg, params, tensors, path, config_path)
        for name, p in params.values():
            np.copyto(p.value, values[name], casting="same_kind")


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


def get_peft_model(
    model: Module, peft_config: PeftConfig, seed: int = 0, adapter_name: str = "default"
) -> PeftModel:
    """Freeze ``model``, apply the method, unfreeze ``modules_to_save``; see the module docstring.

    The model is changed in place (its target layers are wrapped) and returned inside a
    PeftModel. ``seed`` draws the method's initial values (LoRA's A, prompt embeddings …).
    """
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"peft_config: expected a PeftConfig, got {type(peft_config).__name__}")
    if isinstance(model, PeftModel):
        raise TypeError("model: already a PeftModel; merge_and_unload() it first")
    check_adapter_name(adapter_name)
    resolve_fan_in_fan_out(peft_config, model)
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
    return (peft_config.peft_model_class or PeftModel)(model, peft_config, adapter_name)
