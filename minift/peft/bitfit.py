r"""BitFit: fine-tune only the bias terms (Ben Zaken, Ravfogel & Goldberg, 2022).

"BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models"
freezes every weight matrix and trains every BIAS vector, and nothing else. No layer is added,
no layer is wrapped: a bias is already a learned shift of a layer's output,

    y = x·W₀ + b        W₀ frozen, b trained:   ∂L/∂b = Σ_N ∂L/∂y

so the method is a choice of which Params are trainable (the article's §3.2.1 "adjust some
layers", taken to its smallest useful form). At step 0 the model is the base model exactly.

Which biases. The paper trains "all the bias terms", the LayerNorm ones included (β in
y = γ ⊙ x̂ + β is a bias like any other), so minift does too by default; ``include_layer_norm``
turns them off to train the Linear biases alone. ``target_modules`` restricts training to the
biases of the named modules (matched as every method matches them), e.g. ``["mlp.c_fc"]``: the
paper finds that the query biases and those of the MLP's expanding layer (C → 4C) change
the most (GPT-2 fuses the query bias into c_attn's, so it cannot be picked alone here).

Where BitFit's savings come from. A frozen Linear skips its weight gradient dW = xᵀ·dy (an
N·d_in·d_out matmul) but still computes db = Σ dy (N·d_out additions) and dx; the optimizer keeps
state for the biases alone.

Merging: nothing to merge (the trained biases ARE the model's biases), so ``merge_and_unload``
just hands the model back, unchanged, with every Param trainable again.

Trainable parameters (closed form), for a GPT of L blocks and C channels:

    Linear biases       L·(3C + C + 4C + C)     c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    LayerNorm biases    (2·L + 1)·C             ln_1 and ln_2 per block, and ln_f
    total               (11·L + 1)·C            9·L·C without the LayerNorms

102,144 for GPT-2 small (C = 768, L = 12), about 0.08 % of its 124 M. (The token and position
embeddings have no bias; neither has a ``score`` head, as in Hugging Face.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minift.nn import LayerNorm, Module
from minift.peft.base import PeftConfig, register
from minift.peft.registry import TARGET_MODULES, register_method
from minift.peft.targets import match_target_modules


@register
@dataclass
class BitFitConfig(PeftConfig):
    """Train only the biases (every Param whose name ends in ``.bias``).

    include_layer_norm   train the LayerNorms' β too (True, as the paper) or only the Linears'
    target_modules       None: every module; otherwise only these modules' biases

    Trainable count: (11·L + 1)·C for a GPT (9·L·C with ``include_layer_norm=False``).
    """

    include_layer_norm: bool = True

    peft_type = "MINIFT_BITFIT"
    default_target_modules = ()  # no target: every module's bias

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.include_layer_norm, bool):
            raise TypeError(
                f"include_layer_norm: expected True or False, got {self.include_layer_norm!r}"
            )

    def apply(self, model: Module, rng: np.random.Generator) -> None:
        """Unfreeze the biases (the model arrives frozen); no layer is added or replaced."""
        if self.target_modules is None:
            owners = None
        else:
            owners = set(match_target_modules(model, self.target_modules, kind=Module))
        unfrozen = []
        for name, p in model.named_parameters().items():
            owner = name.rpartition(".")[0]
            if not name.endswith(".bias") or (owners is not None and owner not in owners):
                continue
            if not self.include_layer_norm and isinstance(model.get_submodule(owner), LayerNorm):
                continue
            p.trainable = True
            unfrozen.append(name)
        if not unfrozen:
            raise ValueError(
                f"target_modules: BitFit found no bias to train in the modules matched by "
                f"{self.target_modules!r} (include_layer_norm={self.include_layer_norm})"
            )


register_method("bitfit", BitFitConfig, "biases only (Ben Zaken et al. 2022)",
                lr=1e-1, classification_lr=3e-2, lr_grid=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
                options=[TARGET_MODULES])  # fmt: skip
