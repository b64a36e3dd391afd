r"""IA3: rescale inner activations by learned vectors (Liu et al., 2022), PEFT's layout.

"Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning"
introduces (IA)³, "Infused Adapter by Inhibiting and Amplifying Inner activations": instead of
adding to a weight (LoRA) it MULTIPLIES three activations of every block by learned vectors,

    attention   softmax(Q·(l_k ⊙ K)ᵀ / √d_k) · (l_v ⊙ V)        l_k, l_v ∈ ℝ^{d_k} per head
    MLP         (l_ff ⊙ γ(x·W₁)) · W₂                           l_ff ∈ ℝ^{d_ff}

with every l initialised to ONES, so that at step 0 the adapted model computes exactly what the
base model does (x·1 = x, bit for bit). Only the vectors train: a handful of numbers per block.

How PEFT applies it, and so how minift does
-------------------------------------------
PEFT does not reach inside the attention; it wraps whole Linear layers and scales either
their OUTPUT or their INPUT:

    not feed-forward    y = (x·W + b) ⊙ l          l ∈ ℝ^{d_out}   scales the layer's output
    feed-forward        y = (x ⊙ l)·W + b          l ∈ ℝ^{d_in}    scales the layer's input

For GPT-2 its defaults (``TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING["gpt2"]`` and
``..._FEEDFORWARD_MODULES_MAPPING["gpt2"]``) are

    target_modules      = ["c_attn", "mlp.c_proj"]
    feedforward_modules = ["mlp.c_proj"]

- ``mlp.c_proj`` is W₂, and its input is γ(x·W₁), the MLP's hidden activation: scaling that
  input by l ∈ ℝ^{4C} is the paper's l_ff exactly.
- ``c_attn`` is GPT-2's FUSED projection x ↦ [q | k | v] ∈ ℝ^{3C}. Scaling its output scales k
  and v as the paper does (k·l_k and then Q·Kᵀ gives the paper's Q·(l_k ⊙ K)ᵀ), but it scales
  q too, and the biases of all three. THIS DIFFERS FROM THE PAPER, which has no l_q: C extra
  numbers per block, and one more way to change the attention's logits. minift follows PEFT,
  so that an adapter trained here loads in PEFT on the same GPT-2 weights and computes the
  same thing (the file's keys and shapes are PEFT's, below). The paper's k, v-only version is
  this one with the first C entries of each c_attn vector held at 1.

Gradients
---------
Scaling is elementwise, so its derivative is the other factor, summed over every position N
(an l is shared by all of them):

    not feed-forward    y = y₀ ⊙ l, y₀ = x·W + b:    ∂L/∂l = Σ_N dy ⊙ y₀     dy₀ = dy ⊙ l
    feed-forward        y = x̃·W + b, x̃ = x ⊙ l:      ∂L/∂l = Σ_N dx̃ ⊙ x      dx = dx̃ ⊙ l

where dx̃ = dy·Wᵀ. W stays frozen (no dW), but dx flows through it to the layers below.

Merging
-------
A scale is a diagonal matrix, so it folds into W (minift's [in, out] layout, y = x·W + b):

    scale the output    (x·W + b) ⊙ l = x·(W·diag l) + b ⊙ l      W's COLUMNS (and b) times l
    scale the input     (x ⊙ l)·W + b = x·(diag l·W) + b           W's ROWS times l

and unmerging divides by l again, exact up to rounding. A zero entry of l cannot be undone (it
wiped a column or row of W₀), so unmerge refuses it with an error rather than dividing by zero
(PEFT divides by l + 1e-8 instead: zeros where l was 0, a 1e-8 relative error elsewhere).

Trainable parameters (closed form)
----------------------------------
Σ over non-feed-forward targets of d_out + Σ over feed-forward targets of d_in. With PEFT's
GPT-2 defaults that is L·(3C + 4C) = 7·L·C: 64,512 for GPT-2 small (C = 768, L = 12), about
0.05 % of its 124 M.

The file (PEFT's)
-----------------
``adapter_model.safetensors`` holds one tensor per target,
``base_model.model.transformer.h.{i}.attn.c_attn.ia3_l`` of shape [d_out, 1] and
``base_model.model.transformer.h.{i}.mlp.c_proj.ia3_l`` of shape [1, d_in] (PEFT keeps the
vectors 2-D, the way they broadcast against a torch [out, in] weight). minift holds them as
plain vectors and reshapes on the way in and out.

Shape legend: N positions (any leading shape ...), d_in / d_out the wrapped layer's in / out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.nn import Linear
from minift.param import Param
from minift.peft.adapted import AdaptedLinear
from minift.peft.base import PeftConfig, register
from minift.peft.peft_files import hf_layout
from minift.peft.registry import TARGET_MODULES, register_method
from minift.peft.targets import check_peft_only_fields, checked_targets, hf_gpt2_name

# ------------------------------------------------------------------------------------------------
# The math, as pure functions


def ia3_forward(x, W, b, l, is_feedforward):
    """Scale the output, y = (x·W + b) ⊙ l, or the input, y = (x ⊙ l)·W + b.

    x [..., in], W [in, out], b [out] or None, l [out] (or [in] when feed-forward) -> y [..., out]
    """
    if is_feedforward:
        x_scaled = x * l  # (..., in)
        y, linear_cache = F.linear_forward(x_scaled, W, b)
        return y, (linear_cache, x, l, True)
    y0, linear_cache = F.linear_forward(x, W, b)  # (..., out)
    return y0 * l, (linear_cache, y0, l, False)


def ia3_backward(dy, cache, need_dW=False):
    """Returns (dx, dl, dW, db); see the module docstring. dW only when ``need_dW``."""
    linear_cache, other_factor, l, is_feedforward = cache
    if is_feedforward:
        # forward was y = x̃·W + b with x̃ = x ⊙ l, so dx̃ = dy·Wᵀ, dl = Σ dx̃ ⊙ x, dx = dx̃ ⊙ l
        dx_scaled, dW, db = F.linear_backward(dy, linear_cache, need_dW)
        dl = (dx_scaled * other_factor).reshape(-1, l.size).sum(axis=0)  # (in,)
        return dx_scaled * l, dl, dW, db
    # forward was y = y₀ ⊙ l, so dl = Σ dy ⊙ y₀ and dy₀ = dy ⊙ l
    dl = (dy * other_factor).reshape(-1, l.size).sum(axis=0)  # (out,)
    dx, dW, db = F.linear_backward(dy * l, linear_cache, need_dW)
    return dx, dl, dW, db


def ia3_merged_weights(W, b, l, is_feedforward):
    """The plain Linear that computes the same thing: (W·diag l, b ⊙ l) or (diag l·W, b).

    W [in, out], b [out] or None, l [out] or [in] -> W' [in, out], b' [out] or None
    """
    if is_feedforward:
        return W * l[:, None], b  # rows of W: one per input feature
    return W * l[None, :], (None if b is None else b * l)  # columns of W: one per output


# ------------------------------------------------------------------------------------------------
# The layer


class IA3Linear(AdaptedLinear):
    """A frozen Linear whose output (or, feed-forward, input) is scaled by ``ia3_l``.

    ``base_layer`` keeps the original weights; ``ia3_l`` is a vector, [out] or [in] when
    ``is_feedforward``, of ones at init (random normal with ``init_ia3_weights=False``, as PEFT,
    only to test that a method really moved the output). Its pair is ``ia3_forward`` /
    ``ia3_backward``; ``merge()`` folds the scale into the base weights and ``unmerge()``
    divides it out again, guarded by the ``merged`` flag.
    """

    kind = "IA3"
    merge_formula = "the scaled W₀"
    delta_params = ("ia3_l",)
    delta_forward = staticmethod(ia3_forward)
    delta_backward = staticmethod(ia3_backward)

    def __init__(self, base_layer: Linear, is_feedforward: bool, init_ia3_weights=True, *, rng):
        super().__init__(base_layer)
        n = base_layer.in_features if is_feedforward else base_layer.out_features
        self.is_feedforward = bool(is_feedforward)
        init = np.ones(n) if init_ia3_weights else rng.standard_normal(n)
        self.ia3_l = Param(init.astype(base_layer.weight.dtype))

    def delta_constants(self):
        return (self.is_feedforward,)

    def merged_weights(self):
        """W₀ scaled by l (columns and bias, or rows)."""
        base = self.base_layer
        b = None if base.bias is None else base.bias.value
        W, b = ia3_merged_weights(base.weight.value, b, self.ia3_l.value, self.is_feedforward)
        return W, b, None

    def unmerged_weights(self, W, b, undo):
        """W₀ = W divided by l again; refused if an entry of l is 0 (W₀ is then lost)."""
        l = self.ia3_l.value
        zeros = np.flatnonzero(l == 0)
        if zeros.size:
            what = "rows" if self.is_feedforward else "columns"
            raise ValueError(
                f"unmerge: ia3_l has {zeros.size} zero entries (first at index {zeros[0]}); "
                f"merging multiplied those {what} of W₀ by 0, so W₀ cannot be recovered"
            )
        if self.is_feedforward:
            return W / l[:, None], None
        return W / l[None, :], (None if b is None else b / l)


# ------------------------------------------------------------------------------------------------
# The config


@register
@dataclass
class IA3Config(PeftConfig):
    """(IA)³ with PEFT's field names and GPT-2 defaults.

    target_modules       the Linears to wrap; default PEFT's ["c_attn", "mlp.c_proj"]
    feedforward_modules  those whose INPUT is scaled; default PEFT's ["mlp.c_proj"]. Must be a
                         subset of target_modules when both are lists (PEFT's rule). Matched
                         as PEFT matches them: a string is a regex for the whole name, a list
                         entry matches a name that ENDS WITH it (a plain suffix, unlike
                         target_modules' dotted one)
    init_ia3_weights     ones (True; the adapted model starts as the base) or random normal
    fan_in_fan_out       the file's layout: True for GPT-2's [in, out], False for BERT's [out, in];
                         None (the default): the model's, see peft_files.hf_fan_in_fan_out

    Trainable count: Σ over non-feed-forward targets of d_out + Σ over feed-forward targets of
    d_in; 7·L·C with the defaults (3C per c_attn, 4C per mlp.c_proj).
    """

    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: bool | None = None  # the file's layout; None: the model's (hf_fan_in_fan_out)
    init_ia3_weights: bool = True

    peft_type = "IA3"
    default_target_modules = ("c_attn", "mlp.c_proj")  # PEFT's mapping for "gpt2"
    default_feedforward_modules = ("mlp.c_proj",)

    def __post_init__(self):
        super().__post_init__()
        ff = checked_targets(self.feedforward_modules, "feedforward_modules")
        self.feedforward_modules = ff
        ff, targets = self.feedforward_modules, self.target_modules
        if isinstance(ff, list) and isinstance(targets, list) and not set(ff) <= set(targets):
            raise ValueError(
                f"feedforward_modules: expected a subset of target_modules {targets}, got {ff} "
                f"({sorted(set(ff) - set(targets))} not in target_modules)"
            )
        if not isinstance(self.init_ia3_weights, bool):
            raise TypeError(
                f"init_ia3_weights: expected True or False, got {self.init_ia3_weights!r}"
            )
        check_peft_only_fields(self, "IA3")

    def is_feedforward(self, module_name: str) -> bool:
        """Is this target's INPUT scaled? PEFT's ``_check_target_module_feedforward`` rule."""
        ff = self.feedforward_modules
        if ff is None:
            ff = list(self.default_feedforward_modules)
        names = {module_name, hf_gpt2_name(module_name)}  # as target_modules, either name
        if isinstance(ff, str):
            return any(re.fullmatch(ff, n) is not None for n in names)
        return any(n.endswith(entry) for n in names for entry in ff)

    def peft_fields(self, peft_model):
        # PEFT wants feedforward_modules ⊆ target_modules, which the file lists as the wrapped
        # layers' names: so the feed-forward ones, by the same names
        wrapped = peft_model._tuner_layers()
        return {"feedforward_modules": [hf_gpt2_name(n) for n in wrapped if self.is_feedforward(n)]}

    def wrap(self, name, layer, rng):
        return IA3Linear(layer, self.is_feedforward(name), self.init_ia3_weights, rng=rng)

    # -- PEFT's file layout -------------------------------------------------------------------

    def peft_value(self, name, value):
        if name.endswith(".ia3_l"):
            # PEFT's ia3_l is [1, in] (feed-forward) or [out, 1]
            return value.reshape(1, -1) if self._ia3_feedforward(name) else value.reshape(-1, 1)
        return hf_layout(name, value)

    def from_peft_value(self, name, value):
        if name.endswith(".ia3_l"):
            ff = self._ia3_feedforward(name)
            if value.ndim != 2 or value.shape[0 if ff else 1] != 1:
                layout = "[1, in] (feed-forward)" if ff else "[out, 1] (not feed-forward)"
                raise ValueError(
                    f"{self.peft_key(name)}: expected PEFT's {layout} layout for this config, "
                    f"got shape {value.shape}"
                )
            return value.reshape(-1)
        return hf_layout(name, value)

    def _ia3_feedforward(self, param_name):
        return self.is_feedforward(param_name[: -len(".ia3_l")])


register_method("ia3", IA3Config, "IA3: learned rescaling of k, v and the MLP (Liu et al. 2022)",
                lr=3e-1, classification_lr=3e-2, lr_grid=[1e-2, 3e-2, 1e-1, 3e-1, 1.0],
                options=[TARGET_MODULES])  # fmt: skip
