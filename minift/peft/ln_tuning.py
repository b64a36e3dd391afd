r"""LN tuning: fine-tune only the LayerNorms' γ and β (Zhao et al., 2023), on copies, as PEFT does.

"Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning" (arXiv 2312.11420)
trains the gain and the shift of every LayerNorm and freezes everything else:

    y = γ ⊙ x̂ + β,     x̂ = (x − μ) / √(σ² + eps)        γ, β trained; every other weight frozen

so each LayerNorm re-scales and re-centres the channels it hands to attention, to the MLP or to
the head. No new math: the forward and backward are LayerNorm's own pair,
``functional.layer_norm_forward`` / ``layer_norm_backward`` (derivation 02), with

    ∂L/∂γ = Σ_N dy ⊙ x̂        ∂L/∂β = Σ_N dy        dx flows on through x̂ to the blocks below

What PEFT does, and minift with it. PEFT's ``LNTuningLayer`` does not unfreeze the LayerNorm; it
keeps it as ``base_layer`` (untouched) and trains a COPY, ``ln_tuning_layers``, which the forward
runs instead. Hence three things a reader can rely on:

- at step 0 the adapted model IS the base model (the copy equals the original, bit for bit);
- ``merge()`` swaps the two (the trained copy becomes ``base_layer``; ``unmerge()`` swaps them
  back), so ``merge_and_unload()`` returns the model with the trained LayerNorms in place;
- ``unload()`` returns the model with the ORIGINAL LayerNorms: training never wrote them.

The file holds the copies under PEFT's keys (its ModuleDict's adapter name dropped, as PEFT does):
``base_model.model.transformer.h.0.ln_1.ln_tuning_layers.weight`` and ``….bias``.

Which LayerNorms. ``target_modules`` defaults to PEFT's mapping for GPT-2, ``["ln_1", "ln_2",
"ln_f"]``: every LayerNorm of the model. A target is matched as every method matches it
(targets.py) but only among LayerNorm modules: PEFT would copy any module a regex names (a Linear
too), which is no longer LN tuning. ``exclude_modules`` takes out what it matches (PEFT's rule).

Trainable parameters (closed form), for a GPT of L blocks and C channels: 2C per LayerNorm,

    (2·L + 1)·2C          ln_1 and ln_2 in every block, and ln_f

and as many added (the originals stay, frozen). 38,400 for GPT-2 small (C = 768, L = 12), about
0.03 % of its 124 M: a third of BitFit's.

Shape legend: N positions (any leading shape ...), C the LayerNorm's width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minift.nn import LayerNorm, Module
from minift.param import Param
from minift.peft.base import PeftConfig, register
from minift.peft.registry import Option, register_method
from minift.peft.targets import checked_targets, match_target_modules, name_matches

__all__ = ["LNTuningConfig", "LNTuningLayer", "copy_layer_norm"]


def copy_layer_norm(layer: LayerNorm) -> LayerNorm:
    """A LayerNorm of its own Params, equal to ``layer``'s (new Params: a shared one would tie
    the copy to the original, A3)."""
    copy = LayerNorm(layer.weight.shape[0], layer.eps, dtype=layer.weight.dtype)
    copy.weight = Param(layer.weight.value.copy())
    copy.bias = Param(layer.bias.value.copy())
    return copy


class LNTuningLayer(Module):
    """A frozen LayerNorm (``base_layer``) and its trainable copy (``ln_tuning_layers``).

    forward(x [..., C]) -> [..., C]: the copy's LayerNorm; once merged, ``base_layer``'s, which
    then holds the copy (``merge`` swaps them, as PEFT's does). backward(dy) -> dx, and the
    copy's γ, β gradients accumulated (the frozen original gets none: the forward never read it).
    """

    def __init__(self, base_layer: LayerNorm):
        if not isinstance(base_layer, LayerNorm):
            raise TypeError(f"base_layer: expected a LayerNorm, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.ln_tuning_layers = copy_layer_norm(base_layer)
        self.merged = False

    def _active(self) -> LayerNorm:
        return self.base_layer if self.merged else self.ln_tuning_layers

    def forward(self, x):  # [..., C] -> [..., C]
        return self._active().forward(x)

    def backward(self, dy):  # [..., C] -> [..., C]
        return self._active().backward(dy)

    def merge(self) -> None:
        """Put the trained copy in the base's place (PEFT's merge: a swap, nothing is added)."""
        if self.merged:
            raise RuntimeError("merge: this LN-tuning layer is already merged")
        self.base_layer, self.ln_tuning_layers = self.ln_tuning_layers, self.base_layer
        self.merged = True

    def unmerge(self) -> None:
        """Swap back: ``base_layer`` is the original LayerNorm again, the same Params."""
        if not self.merged:
            raise RuntimeError("unmerge: this LN-tuning layer is not merged")
        self.base_layer, self.ln_tuning_layers = self.ln_tuning_layers, self.base_layer
        self.merged = False

    def merged_layer(self) -> LayerNorm:
        """The trained LayerNorm, what merge_and_unload puts in the layer's place."""
        if not self.merged:
            self.merge()
        return self.base_layer


@register
@dataclass
class LNTuningConfig(PeftConfig):
    """LN tuning with PEFT's field names: train a copy of each target LayerNorm's γ and β.

    target_modules    the LayerNorms; None: PEFT's GPT-2 mapping, ["ln_1", "ln_2", "ln_f"]
    exclude_modules   LayerNorms never tuned, matched as target_modules is (a string: a regex)
    modules_to_save   modules trained fully, e.g. a classifier's new head ["score"]

    Trainable count: 2C per target LayerNorm; (2·L + 1)·2C with the default targets.
    """

    exclude_modules: list[str] | str | None = None

    peft_type = "LN_TUNING"
    default_target_modules = ("ln_1", "ln_2", "ln_f")  # PEFT's mapping for "gpt2"

    def __post_init__(self):
        super().__post_init__()
        self.exclude_modules = checked_targets(self.exclude_modules, "exclude_modules")

    def apply(self, model: Module, rng: np.random.Generator) -> None:
        """Wrap every target LayerNorm in an LNTuningLayer (the model arrives frozen; the copies
        are born trainable)."""
        targets = self.target_modules or list(self.default_target_modules)
        names = match_target_modules(model, targets, kind=LayerNorm)
        if self.exclude_modules:
            names = [n for n in names if not name_matches(n, self.exclude_modules)]
        if not names:
            raise ValueError(
                f"exclude_modules: {self.exclude_modules!r} excludes every LayerNorm that "
                f"target_modules {targets!r} matched; nothing would train"
            )
        for name in names:
            model.set_submodule(name, LNTuningLayer(model.get_submodule(name)))


LN_TARGETS = Option("target_modules", "names or suffixes of the modules to adapt", type=str,
                    many=True)  # fmt: skip

register_method("ln-tuning", LNTuningConfig,
                "LayerNorm γ and β only, on copies (Zhao et al. 2023)",
                lr=1e-1, classification_lr=3e-2, lr_grid=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
                options=[LN_TARGETS])  # fmt: skip
