r"""Prefix tuning (Li & Liang, 2021): train what every attention layer READS, not a weight.

Prefix tuning puts n trainable key/value rows in front of every attention layer (prompt.py puts
n trainable vectors in front of the input instead). The article's §2.2 lists neither; both are
"soft prompts" of the PEFT family as the literature and Hugging Face PEFT know it, and neither
can be merged into the weights.

The method
----------
Every attention layer ℓ gets its own trainable keys and values K_ℓ, V_ℓ ∈ ℝ^{n × C} (split into
heads like the model's own), placed in front of the sequence's keys and values:

    K = [K_ℓ ; X·W_k],   V = [V_ℓ ; X·W_v]        (B, nh, n + T, hs)
    y_t = Σ_{p<n} a_tp · V_ℓ[p]  +  Σ_{j≤t} a_tj · v_j,   a_t = softmax over the n + t + 1 keys

Every query sees all n prefix rows (they have no causal restriction); among the sequence's own
keys attention stays causal. The prefix counts as n earlier tokens, as in PEFT, which hands it
to Hugging Face's GPT-2 as ``past_key_values``: the sequence takes positions n … n+T−1,

    x_t = wte[idx_t] + wpe[n + t],      t = 0 … T−1,    so n + T ≤ block_size

and a PEFT prefix adapter gives the same logits here as there (a reference test holds it to
1e-10). Prefix rows are exactly what a KV cache holds, so the model's ``Attention`` takes them
through the same door (its ``prefix`` hook); with a cache of P generated tokens the next token
sits at position n + P, and generation keeps a window of block_size − n real tokens.

What a prefix is NOT: a no-op when zero. With K_ℓ = 0 and V_ℓ = 0 each zero key scores 0, takes
the weight e⁰ = 1 in the softmax and contributes a zero value, so every head's output shrinks:

    y_t = Z_t / (Z_t + n) · y_t^base,    Z_t = Σ_{j≤t} exp(q_t·k_j / √hs)

(PEFT's help for ``init_weights="zero"`` says the activations "will be a no-op (zero)"; the
zero is in the prefix rows, not in their effect. A test checks the formula above.)

Gradients: ``mha_backward`` already returns the gradient of the extra key/value rows, per
sequence; the prefix is shared by the batch (parameter sharing, the article's A3), so
dK_ℓ = Σ_b dK_extra[b] and likewise dV_ℓ, heads merged back to [n, C].

The file layout is PEFT's: one matrix P ∈ ℝ^{n × 2·L·C}, where layer ℓ's keys are the columns
[2ℓ·C, (2ℓ+1)·C) and its values the next C (PEFT reshapes its ``past_key_values`` exactly so).
The paper trains P through a reparametrisation, because training it directly was unstable for
them: ``prefix_projection=True`` makes P = MLP(E), E ∈ ℝ^{n × C}, a two-layer MLP

    P = tanh(E·W₁ + b₁)·W₂ + b₂,    W₁ [C, h], W₂ [h, 2LC]   (h = encoder_hidden_size)

Here each layer computes its own 2C columns of P (the trunk tanh(E·W₁ + b₁) is recomputed per
layer: n·h numbers, negligible), so every layer's forward and backward stand alone; E, W₁ and b₁
are then shared by the L layers and receive the sum of their gradients (A3).

Trainable counts, the closed forms the tests check:
- direct: 2·L·n·C
- projection: n·C + (C·h + h) + (h·2LC + 2LC)

Shape legend: B batch, T real tokens, n virtual tokens, C d_model, L layers, nh heads,
hs = C/nh head size, h encoder_hidden_size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.errors import check_int
from minift.nn import Linear, Module, ModuleList
from minift.param import Param
from minift.peft.base import PeftModel, register
from minift.peft.prompt_learning import (
    VIRTUAL_TOKENS,
    PromptLearningConfig,
    remove_prompt_encoder,
)
from minift.peft.registry import register_method

__all__ = [
    "LayerPrefix",
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PrefixTuningModel",
    "prefix_mlp_backward",
    "prefix_mlp_forward",
]

# ------------------------------------------------------------------------------------------------
# The reparametrisation, as a pure pair


def prefix_mlp_forward(E, W1, b1, W2, b2):
    """Prefix tuning's reparametrisation: P = tanh(E·W₁ + b₁)·W₂ + b₂.

    E [n, C], W1 [C, h], b1 [h], W2 [h, m], b2 [m] -> P [n, m]
    """
    z, cache_1 = F.linear_forward(E, W1, b1)  # (n, h)
    a = np.tanh(z)
    P, cache_2 = F.linear_forward(a, W2, b2)  # (n, m)
    return P, (cache_1, a, cache_2)


def prefix_mlp_backward(dP, cache):
    """Forward was z = E·W₁ + b₁, a = tanh z, P = a·W₂ + b₂, so da = dP·W₂ᵀ, dz = da ⊙ (1 − a²).

    Returns (dE [n, C], dW1 [C, h], db1 [h], dW2 [h, m], db2 [m]).
    """
    cache_1, a, cache_2 = cache
    da, dW2, db2 = F.linear_backward(dP, cache_2)
    dz = da * (1.0 - a * a)  # tanh′ = 1 − tanh²
    dE, dW1, db1 = F.linear_backward(dz, cache_1)
    return dE, dW1, db1, dW2, db2


def _accumulate_columns(param: Param, cols: slice, g):
    """Add g into the columns ``cols`` of param's gradient (frozen params ignore it)."""
    if param.trainable:
        full = np.zeros_like(param.value)
        full[..., cols] = g
        param.accumulate_grad(full)


# ------------------------------------------------------------------------------------------------
# The prefixes, and how each attention layer reads its own


class PrefixEncoder(Module):
    """Produces P [n, 2·L·C]; layer ℓ's keys are columns [2ℓC, (2ℓ+1)C), its values the next C.

    Direct form: ``embedding`` IS P. With ``prefix_projection``: ``embedding`` is E [n, C] and
    ``transform`` holds the MLP's two Linears (W₁, b₁), (W₂, b₂), whose values
    ``prefix_mlp_forward`` reads (a Linear module remembers one forward, and every layer runs
    this MLP for its own columns, so each layer keeps its own cache instead).
    """

    def __init__(
        self,
        n: int,
        d_model: int,
        n_layer: int,
        prefix_projection: bool,
        encoder_hidden_size: int,
        zero_init: bool,
        *,
        rng: np.random.Generator,
        dtype,
    ):
        self.d_model = d_model
        self.prefix_projection = prefix_projection
        width = 2 * n_layer * d_model
        if prefix_projection:
            # E ~ N(0, 1) as PEFT's torch.nn.Embedding; the Linears keep minift's N(0, 0.02²) init
            self.embedding = Param(rng.standard_normal((n, d_model)).astype(dtype))
            h = encoder_hidden_size
            self.transform = ModuleList(
                [Linear(d_model, h, rng=rng, dtype=dtype), Linear(h, width, rng=rng, dtype=dtype)]
            )
            if zero_init:  # P = 0, yet W₂ still gets a gradient (dW₂ = aᵀ·dP), as LoRA's B = 0
                self.transform[1].weight.value[...] = 0.0
                self.transform[1].bias.value[...] = 0.0
        else:
            P = np.zeros((n, width)) if zero_init else rng.standard_normal((n, width))
            self.embedding = Param(P.astype(dtype))  # N(0, 1), PEFT's (torch's) default

    def _columns(self, layer):
        return slice(2 * layer * self.d_model, 2 * (layer + 1) * self.d_model)

    def layer_forward(self, layer: int):
        """Layer ℓ's [K_ℓ | V_ℓ] = its 2C columns of P.  # -> ([n, 2C], cache)"""
        cols = self._columns(layer)
        if not self.prefix_projection:
            return self.embedding.value[:, cols], None
        fc1, fc2 = self.transform
        return prefix_mlp_forward(
            self.embedding.value,
            fc1.weight.value,
            fc1.bias.value,
            fc2.weight.value[:, cols],
            fc2.bias.value[cols],
        )

    def layer_backward(self, layer: int, dkv, cache) -> None:
        """dkv [n, 2C] -> into P's columns, or through the MLP into E, W₁, b₁, W₂, b₂."""
        cols = self._columns(layer)
        if not self.prefix_projection:
            _accumulate_columns(self.embedding, cols, dkv)
            return
        dE, dW1, db1, dW2, db2 = prefix_mlp_backward(dkv, cache)
        fc1, fc2 = self.transform
        self.embedding.accumulate_grad(dE)  # shared by the L layers: their gradients add (A3)
        fc1.weight.accumulate_grad(dW1)
        fc1.bias.accumulate_grad(db1)
        _accumulate_columns(fc2.weight, cols, dW2)
        _accumulate_columns(fc2.bias, cols, db2)


class LayerPrefix:
    """What layer ℓ's ``Attention.prefix`` holds: forward(B) -> (k, v) [B, nh, n, hs].

    Not a Module on purpose: the Params live in the model's ``prompt_encoder`` and are named
    there once; this object only keeps layer ℓ's index and the cache of its last forward.
    """

    def __init__(self, encoder: PrefixEncoder, layer: int, n_head: int):
        self.encoder, self.layer, self.n_head = encoder, layer, n_head
        self.n_positions = encoder.embedding.shape[0]  # n: the sequence's positions start here
        self._cache = None

    def forward(self, B: int):
        kv, self._cache = self.encoder.layer_forward(self.layer)  # (n, 2C)
        n, C = kv.shape[0], kv.shape[1] // 2
        k = np.broadcast_to(kv[:, :C], (B, n, C))  # every sequence sees the same prefix
        v = np.broadcast_to(kv[:, C:], (B, n, C))
        return F.split_heads(k, self.n_head), F.split_heads(v, self.n_head)  # (B, nh, n, hs)

    def backward(self, dk, dv) -> None:
        # forward broadcast one prefix to the batch, so its gradient is the sum over the batch
        dkv = np.concatenate([F.merge_heads(dk).sum(axis=0), F.merge_heads(dv).sum(axis=0)], -1)
        self.encoder.layer_backward(self.layer, dkv, self._cache)


class PrefixTuningModel(PeftModel):
    """get_peft_model's result for prefix tuning: the model itself runs the prefixes (through
    each Attention's ``prefix``), so forward, backward and generate are the model's own."""

    def adapter_state_dict(self):
        """PEFT's file: the prefix P [n, 2LC] as "prompt_embeddings". Under the projection, P is
        the MLP's output as it stands; the MLP itself is not saved (nor by PEFT): the file is
        the prefix, not the way it was trained."""
        tensors = super().adapter_state_dict()
        encoder = self.base_model.prompt_encoder
        if encoder.prefix_projection:
            tensors = {k: v for k, v in tensors.items() if ".prompt_encoder." not in k}
            layers = range(len(self.base_model.h))
            columns = [encoder.layer_forward(layer)[0] for layer in layers]  # [n, 2C] each
            tensors["prompt_embeddings"] = np.ascontiguousarray(np.concatenate(columns, axis=1))
        return tensors

    def unload(self) -> Module:
        """Remove the prefixes and return the model as it was (all of it trainable)."""
        for block in self.base_model.h:
            block.attn.prefix = None
        return remove_prompt_encoder(self.base_model)


# ------------------------------------------------------------------------------------------------
# The config


@register
@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning with PEFT's field names. Trainable count, with n = num_virtual_tokens,
    C = token_dim, L = num_layers, h = encoder_hidden_size:

        direct (prefix_projection=False):  2·L·n·C
        prefix_projection=True:            n·C + (C·h + h) + (h·2LC + 2LC)

    ``encoder_hidden_size`` defaults to C. ``init_weights``: None (random: P ~ N(0, 1), as PEFT)
    or "zero" (P = 0 at step 0, which is NOT the base model: see the module docstring). As in
    PEFT, an adapter in ``inference_mode`` is built in the direct form even with
    ``prefix_projection`` (PEFT saves the projected P, never the MLP). Files are PEFT's: one
    tensor "prompt_embeddings" [n, 2LC], the projected P for a projection adapter, whose
    adapter_config.json then says ``inference_mode: true`` as PEFT's does; loaded (here or in
    PEFT), it is the direct prefix it computed, and with ``is_trainable`` it trains P directly.
    """

    encoder_hidden_size: int | None = None
    prefix_projection: bool = False
    init_weights: str | None = None

    peft_type = "PREFIX_TUNING"
    peft_model_class = PrefixTuningModel
    not_mergeable_reason = "prefixes are extra attention keys/values, not a change of any weight"

    def __post_init__(self):
        super().__post_init__()
        check_int("encoder_hidden_size", self.encoder_hidden_size, optional=True)
        if self.init_weights not in (None, "zero"):
            raise ValueError(f"init_weights: expected None or 'zero', got {self.init_weights!r}")

    def peft_fields(self, peft_model):
        # the file holds the projected P, which PEFT reads as a direct prefix in inference mode
        return {"inference_mode": True} if self.uses_projection else {}

    @property
    def uses_projection(self) -> bool:
        return bool(self.prefix_projection) and not self.inference_mode

    def apply(self, model, rng):
        self._prepare(model)
        if self.encoder_hidden_size is None:
            self.encoder_hidden_size = self.token_dim
        if any(block.attn.prefix is not None for block in model.h):
            raise ValueError("model: an attention layer already has a prefix; unload() it first")
        c = model.config
        if self.num_virtual_tokens >= c.block_size:
            raise ValueError(
                f"num_virtual_tokens: expected fewer than block_size={c.block_size} (the prefix "
                f"takes n positions before the real tokens), got {self.num_virtual_tokens}"
            )
        encoder = PrefixEncoder(
            self.num_virtual_tokens,
            c.d_model,
            c.n_layer,
            self.uses_projection,
            self.encoder_hidden_size,
            self.init_weights == "zero",
            rng=rng,
            dtype=model.wte.weight.dtype,
        )
        model.prompt_encoder = encoder
        for i, block in enumerate(model.h):
            block.attn.prefix = LayerPrefix(encoder, i, c.n_head)

    def peft_key(self, name):
        if name == "prompt_encoder.embedding" and not self.uses_projection:
            return "prompt_embeddings"
        return super().peft_key(name)


register_method("prefix", PrefixTuningConfig,
                "prefix tuning, 8 key/value rows per layer (Li & Liang 2021)",
                lr=3e-1, classification_lr=3e-2, lr_grid=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0],
                options=[VIRTUAL_TOKENS], defaults={"num_virtual_tokens": 8})  # fmt: skip
