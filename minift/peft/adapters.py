"""Several adapters on one base model, with PEFT's methods: add_adapter, set_adapter, ….

PEFT keeps every adapter inside every adapted layer (``lora_A["default"]``, ``lora_A["other"]``)
and routes each forward through the active one. minift keeps each layer ONE adapter's, so that
lora.py reads as if there were only one, and does the bookkeeping here, by swapping layers:

- an adapter is its config and its layers, {module name: the layer that wraps it}; all the
  adapters' layers at one name wrap the SAME base Linear (W₀ and b exist once);
- at each adapted name the model holds the ACTIVE adapter's layer (or the plain base Linear,
  where the active adapter adapts nothing); ``set_adapter`` swaps the layers, copying nothing;
- so the model's Params are the base's and the active adapter's, under the names a single
  adapter has (``h.0.attn.c_attn.lora_A``): forward, backward, the optimizer and the gradient
  check see one adapter, and an inactive adapter's gradient is exactly zero, since no layer of
  the model reaches it;
- ``disable_adapter()`` puts the plain base Linears in, for the length of a ``with`` block.

PEFT's semantics: a new adapter is inactive and frozen; ``set_adapter`` makes one active and
trainable (frozen with ``inference_mode=True``), freezes the others, and unmerges a merged model
first, with a warning; deleting the active adapter activates the first remaining one by name; one
``peft_type`` per model; "default" saved at the folder's root, every other in a sub-folder named
for it. Where PEFT carries on, minift refuses, naming the argument: a name that exists, deleting
the only adapter, adding while merged or disabled, a method other than LoRA (DoRA) or IA3,
``modules_to_save`` or a PiSSA/OLoRA init (each would change what every adapter shares).
"""

from __future__ import annotations

import contextlib
import re
import warnings
import zlib

import numpy as np

from minift.peft.config_json import field_error
from minift.peft.lora_init import SVD_INITS
from minift.peft.peft_files import (
    adapter_folder,
    adapter_folders,
    adapter_values,
    check_adapter_name,
    read_adapter,
    resolve_fan_in_fan_out,
    write_adapter,
)
from minift.peft.weighted_adapter import add_weighted_adapter

SEVERAL_ADAPTERS = {"LORA": "LoRA (and DoRA)", "IA3": "IA3"}  # peft_type -> the methods


class SeveralAdapters:
    """PeftModel's methods for several adapters (base.py mixes them into PeftModel)."""

    def _init_adapters(self, adapter_name: str) -> None:
        self._configs = {check_adapter_name(adapter_name): self.peft_config}
        self._layers = {adapter_name: self._installed_layers()}
        self._active = adapter_name
        self._disabled = False

    # -- what there is -------------------------------------------------------------------------

    @property
    def active_adapter(self) -> str:
        return self._active

    @property
    def peft_configs(self) -> dict:
        """{adapter name: its config} (PEFT's ``peft_config`` dict; ``peft_config`` here is
        the active adapter's)."""
        return dict(self._configs)

    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in self._layers[self._active].values())

    def adapter_parameters(self, adapter_name: str) -> dict:
        """{name: Param} of one adapter, active or not, under the names the model gives them
        when it is active (``h.0.attn.c_attn.lora_A``)."""
        self._check_known(adapter_name, "adapter_name")
        return {
            f"{module}.{name}": p
            for module, layer in self._layers[adapter_name].items()
            for name, p in layer.named_parameters().items()
            if not name.startswith("base_layer.")
        }

    # -- adding, switching, deleting -------------------------------------------------------------

    def add_adapter(self, adapter_name: str, peft_config, seed: int | None = None) -> None:
        """Add an adapter made from ``peft_config``, inactive and frozen (PEFT's add_adapter);
        ``set_adapter(adapter_name)`` to use or train it. ``seed`` draws its initial values
        (None: a seed made from its name, so that two adapters never start equal). Its targets
        are matched on the model without adapters; one that does not fit leaves the model as is.
        """
        self._check_can_add(adapter_name, peft_config)
        resolve_fan_in_fan_out(peft_config, self.base_model)
        rng = np.random.default_rng(zlib.crc32(adapter_name.encode()) if seed is None else seed)
        self._install(None)
        try:
            peft_config.apply(self.base_model, rng)
            layers = self._installed_layers()
        finally:
            for name, layer in self._installed_layers().items():
                self.base_model.set_submodule(name, layer.base_layer)
            self._install(self._layers[self._active])
        self._configs[adapter_name] = peft_config
        self._layers[adapter_name] = layers
        for p in self.adapter_parameters(adapter_name).values():
            p.trainable = False

    def load_adapter(self, folder, adapter_name: str, is_trainable: bool = False) -> None:
        """Add the adapter saved in ``folder`` under ``adapter_name``, inactive (PEFT's
        load_adapter). Frozen, and the model put in eval mode, unless ``is_trainable``.

        Strict as ``PeftModel.from_pretrained``: the files checked, every tensor of the right
        key and shape, of this model's ``peft_type``; else a FileFormatError naming the file and
        the field or tensor, and no adapter added.
        """
        cfg = self.peft_config
        raw, tensors, _, config_path, weights_path = read_adapter(
            folder, {cfg.peft_type: type(cfg)}
        )
        config = type(cfg).from_dict(raw, config_path)
        try:
            self.add_adapter(adapter_name, config)
        except (TypeError, ValueError, re.error) as e:
            field = str(e).partition(": ")[0]
            if field not in raw:
                raise
            raise field_error(config_path, e, {field}) from None  # a field that does not fit
        params = {
            config.peft_key(n): (n, p) for n, p in self.adapter_parameters(adapter_name).items()
        }
        try:
            values = adapter_values(config, params, tensors, weights_path, config_path)
        except BaseException:
            del self._configs[adapter_name], self._layers[adapter_name]
            raise
        for name, p in params.values():
            np.copyto(p.value, values[name], casting="same_kind")
            p.trainable = bool(is_trainable)
        if not is_trainable:
            self.eval()  # PEFT's: dropout off for inference

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Make ``adapter_name`` the one the model runs: its layers in, trainable unless
        ``inference_mode``; every other adapter frozen. A merged model is unmerged first."""
        self._check_known(adapter_name, "adapter_name")
        self._check_enabled("set_adapter")
        if self.merged:
            warnings.warn("set_adapter: the model is merged; unmerging it first", stacklevel=2)
            self.unmerge_adapter()
        self._active = adapter_name
        self.peft_config = self._configs[adapter_name]
        self._install(self._layers[adapter_name])
        for name in self._configs:
            for p in self.adapter_parameters(name).values():
                p.trainable = name == adapter_name and not inference_mode

    def delete_adapter(self, adapter_name: str) -> None:
        """Drop an adapter; if it was the active one, the first remaining by name takes over."""
        self._check_known(adapter_name, "adapter_name")
        self._check_enabled("delete_adapter")
        if len(self._configs) == 1:
            raise ValueError(f"adapter_name: {adapter_name!r} is the only adapter; try unload()")
        if adapter_name == self._active:
            if self.merged:
                raise ValueError(f"adapter_name: {adapter_name!r} is merged; unmerge_adapter()")
            successor = sorted(n for n in self._configs if n != adapter_name)[0]
            warnings.warn(
                f"delete_adapter: {adapter_name!r} was active; {successor!r} is now", stacklevel=2
            )
            self.set_adapter(successor)
        del self._configs[adapter_name], self._layers[adapter_name]

    @contextlib.contextmanager
    def disable_adapter(self):
        """``with peft_model.disable_adapter():`` the base model's output inside; the active
        adapter back after, even on an exception. A merged model is unmerged (as PEFT's layers
        do on a disabled forward) and stays so."""
        if self._configs[self._active].peft_type not in SEVERAL_ADAPTERS or self._saves_modules():
            raise TypeError(
                f"disable_adapter: {type(self.peft_config).__name__} changes more than its "
                "layers; supported for LoRA (and DoRA) and IA3 without modules_to_save"
            )
        if self._disabled:
            yield
            return
        if self.merged:
            self.unmerge_adapter()
        self._disabled = True
        self._install(None)
        try:
            yield
        finally:
            self._disabled = False
            self._install(self._layers[self._active])

    # -- merging the active adapter ------------------------------------------------------------

    def merge_adapter(self) -> None:
        """Fold the active adapter into the base weights, keeping it (PEFT's merge_adapter):
        forward is then the base layers' alone; ``unmerge_adapter()`` takes it out again."""
        self._check_enabled("merge_adapter")
        if not self.peft_config.mergeable:
            raise TypeError(f"merge_adapter: {self.peft_config.not_mergeable_reason}")
        if self.merged:
            warnings.warn("merge_adapter: already merged; nothing to do", stacklevel=2)
            return
        merged = []
        try:
            for layer in self._layers[self._active].values():
                layer.merge()  # refuses a non-finite result
                merged.append(layer)
        except BaseException:
            for layer in merged:
                layer.unmerge()
            raise

    def unmerge_adapter(self) -> None:
        """Take the merged adapter out of the base weights again."""
        if not self.merged:
            warnings.warn("unmerge_adapter: not merged; nothing to do", stacklevel=2)
        for layer in self._layers[self._active].values():
            if layer.merged:
                layer.unmerge()

    # -- LoRA adapters combined ----------------------------------------------------------------

    def add_weighted_adapter(
        self,
        adapters: list[str],
        weights: list[float],
        adapter_name: str,
        combination_type: str = "svd",
        svd_rank: int | None = None,
        svd_clamp: float | None = None,
    ) -> None:
        """A new LoRA adapter, ``adapters`` combined with ``weights`` ("linear", "cat" or "svd"),
        inactive and frozen: PEFT's add_weighted_adapter, whose formulas weighted_adapter.py has."""
        add_weighted_adapter(
            self, adapters, weights, adapter_name, combination_type, svd_rank, svd_clamp
        )

    def adapter_layers(self, adapter_name: str) -> dict:
        """{module name: the layer adapter ``adapter_name`` puts there}."""
        self._check_known(adapter_name, "adapter_name")
        return dict(self._layers[adapter_name])

    # -- files ---------------------------------------------------------------------------------

    def save_adapters(self, directory) -> None:
        """Every adapter, in PEFT's layout: "default" at the root of ``directory``, every other
        in ``directory/<its name>`` (what save_pretrained writes with several adapters)."""
        for name, cfg in self._configs.items():
            tensors = {
                cfg.peft_key(n): np.ascontiguousarray(cfg.peft_value(n, p.value))
                for n, p in self.adapter_parameters(name).items()
            }
            with self._installed(name):
                config = self.adapter_config()
            write_adapter(adapter_folder(directory, name), config, tensors)

    @classmethod
    def from_pretrained_all(cls, model, directory, is_trainable: bool = False):
        """Every adapter ``save_pretrained`` wrote into ``directory``, read strictly
        (``peft_files.adapter_folders``): "default" (the root's) or else the first by name
        active; a failure leaves ``model`` as it was."""
        found = adapter_folders(directory)
        saved = [
            (m, dict(vars(m)), [(p, p.trainable) for p in m.parameters()])
            for _, m in model.named_modules()
        ]
        (first, folder), *rest = found.items()
        peft_model = cls.from_pretrained(model, folder, is_trainable, adapter_name=first)
        try:
            for name, folder in rest:
                peft_model.load_adapter(folder, name, is_trainable)
        except BaseException:
            for module, attributes, flags in saved:  # put the model back as it was
                vars(module).clear()
                vars(module).update(attributes)
                for p, flag in flags:
                    p.trainable = flag
            raise
        return peft_model

    # -- the bookkeeping -----------------------------------------------------------------------

    def _installed_layers(self) -> dict:
        return {name: self.get_submodule(name) for name in self._tuner_layers()}

    def _install(self, layers: dict | None) -> None:
        """``layers`` (one adapter's) into the model; every other adapted name its base Linear."""
        bases = {
            n: lay.base_layer for adapter in self._layers.values() for n, lay in adapter.items()
        }
        for name, base in bases.items():
            module = (layers or {}).get(name, base)
            module.train(self.training)  # an adapter set aside kept the mode it had then
            self.base_model.set_submodule(name, module)

    @contextlib.contextmanager
    def _installed(self, adapter_name: str):
        """Adapter ``adapter_name``'s layers and config in the model, for a while."""
        self._install(self._layers[adapter_name])
        self.peft_config = self._configs[adapter_name]
        try:
            yield
        finally:
            self.peft_config = self._configs[self._active]
            self._install(None if self._disabled else self._layers[self._active])

    def _saves_modules(self) -> bool:
        return any(cfg.modules_to_save for cfg in self._configs.values())

    def _check_known(self, name, argument: str) -> None:
        if not isinstance(name, str) or name not in self._configs:
            raise ValueError(
                f"{argument}: no adapter {name!r}; the model has {list(self._configs)}"
            )

    def _check_enabled(self, operation: str) -> None:
        if self._disabled:
            raise RuntimeError(f"{operation}: not inside disable_adapter(); leave the block first")

    def _check_can_add(self, adapter_name, peft_config) -> None:
        self._check_enabled("add_adapter")
        if check_adapter_name(adapter_name) in self._configs:
            raise ValueError(f"adapter_name: an adapter {adapter_name!r} exists already")
        for cfg in (peft_config, self.peft_config):  # the new adapter's, and the model's
            if getattr(cfg, "peft_type", None) not in SEVERAL_ADAPTERS:
                raise TypeError(
                    f"peft_config: one model holds several adapters of "
                    f"{' or '.join(SEVERAL_ADAPTERS.values())}; got {type(cfg).__name__}"
                )
        if (peft_type := peft_config.peft_type) != self.peft_config.peft_type:
            raise ValueError(
                f"peft_config: the adapters of one model are of one peft_type (PEFT's rule); this "
                f"model's are {self.peft_config.peft_type}, got {peft_type}"
            )
        if self.merged:
            raise RuntimeError("add_adapter: the model is merged; unmerge_adapter() first")
        if peft_config.modules_to_save or self._saves_modules():
            raise ValueError("modules_to_save: one copy per adapter is not in minift; leave it out")
        if getattr(peft_config, "init_lora_weights", True) in SVD_INITS:
            raise ValueError(
                f"init_lora_weights: {peft_config.init_lora_weights!r} rewrites the base "
                "weights that every adapter of the model shares; use True or 'gaussian'"
            )
