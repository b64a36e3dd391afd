r"""Prompt tuning and prefix tuning: train what the model READS, not what it computes with.

Neither method touches a weight matrix. Prompt tuning puts n trainable vectors in front of the
input; prefix tuning puts n trainable key/value rows in front of every attention layer. Both
are "soft prompts" (the article's §2.2 lists neither; they belong to the PEFT family as the
literature and Hugging Face PEFT know it), and neither can be merged into the weights.

Prompt tuning (Lester et al., 2021)
-----------------------------------
A prompt P ∈ ℝ^{n × C} of n "virtual tokens" is prepended to the token embeddings of EVERY
sequence of the batch; the frozen model runs on n + T positions and the caller sees only the T
real ones:

    x      = [P ; wte[idx]]             (B, n + T, C)   positions 0 … n+T−1, so T ≤ block_size − n
    h      = GPT body(x)                (B, n + T, C)
    logits = head(h[:, n:])             (B, T, V)       the LM head, or the classifier's pooling

so the caller's dlogits keep their shape [B, T, V]. A sequence classifier pools the last real
token, which now sits at position n + last (the slice h[:, n:] does the shift).

Backward: the virtual positions have no logits, so their rows of dh are zero; the body's
backward returns d(inputs_embeds) = dx [B, n + T, C], and because the SAME P is used by every
sequence of the batch (parameter sharing, the article's A3), its gradient is the sum of its uses:

    dP = Σ_b dx[b, :n]                  (n, C)

The rest, dx[:, n:], is the gradient of the token lookup; it is scatter-added into wte only if
wte trains (normally it is frozen, and only the n·C numbers of P train).

Initialisation, PEFT's ``prompt_tuning_init``:
- "RANDOM": P ~ N(0, 0.02²), drawn like minift's (GPT-2's) token embeddings so that virtual
  tokens start at the scale of real ones (PEFT draws torch.nn.Embedding's default N(0, 1)).
- "TEXT": P = wte[ids], the embeddings of a text's tokens, so that at step 0 the model computes
  EXACTLY what it computes on that text followed by the input (a test holds it to 1e-12: only
  the rounding of a differently shaped matmul differs).
  PEFT takes ``prompt_tuning_init_text`` and a tokenizer; minift has no tokenizer argument and
  takes the ids themselves, ``prompt_tuning_init_token_ids``: exactly n of them (PEFT cycles
  or cuts the text to n tokens; write ``(ids * n)[:n]`` to do the same).

Prefix tuning (Li & Liang, 2021)
--------------------------------
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
sequence; the prefix is shared by the batch (A3 again), so dK_ℓ = Σ_b dK_extra[b] and likewise
dV_ℓ, heads merged back to [n, C].

The file layout is PEFT's: one matrix P ∈ ℝ^{n × 2·L·C}, where layer ℓ's keys are the columns
[2ℓ·C, (2ℓ+1)·C) and its values the next C (PEFT reshapes its ``past_key_values`` exactly so).
The paper trains P through a reparametrisation, because training it directly was unstable for
them: ``prefix_projection=True`` makes P = MLP(E), E ∈ ℝ^{n × C}, a two-layer MLP

    P = tanh(E·W₁ + b₁)·W₂ + b₂,    W₁ [C, h], W₂ [h, 2LC]   (h = encoder_hidden_size)

Here each layer computes its own 2C columns of P (the trunk tanh(E·W₁ + b₁) is recomputed per
layer: n·h numbers, negligible), so every layer's forward and backward stand alone; E, W₁ and b₁
are then shared by the L layers and receive the sum of their gradients (A3).

Trainable counts, the closed forms the tests check:
- prompt tuning: n·C
- prefix tuning, direct: 2·L·n·C
- prefix tuning, projection: n·C + (C·h + h) + (h·2LC + 2LC)

Shape legend: B batch, T real tokens, n virtual tokens, C d_model, L layers, nh heads,
hs = C/nh head size, V vocab, h encoder_hidden_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from minift import functional as F
from minift.model import GPT, GPTForSequenceClassification, KVCache, generate_tokens
from minift.nn import Linear, Module, ModuleList
from minift.param import Param
from minift.peft.base import PeftConfig, PeftModel, register
from minift.peft.registry import Option, register_method

__all__ = [
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PrefixTuningModel",
    "PromptEmbedding",
    "PromptLearningConfig",
    "PromptTuningConfig",
    "PromptTuningModel",
    "prefix_mlp_backward",
    "prefix_mlp_forward",
    "prepend_prompt_backward",
    "prepend_prompt_forward",
]

PROMPT_STD = 0.02  # RANDOM prompt tuning init: GPT-2's token-embedding init

# ------------------------------------------------------------------------------------------------
# The math, as pure functions


def prepend_prompt_forward(P, tok):
    """x = [P ; tok], the same P in front of every sequence.  # [n, C], [B, T, C] -> [B, n+T, C]"""
    B = tok.shape[0]
    return np.concatenate([np.broadcast_to(P, (B, *P.shape)), tok], axis=1)


def prepend_prompt_backward(dx, n):
    """dP = Σ_b dx[b, :n] (P is shared by the batch); dtok = dx[:, n:].

    dx [B, n + T, C] -> (dP [n, C], dtok [B, T, C])
    """
    return dx[:, :n].sum(axis=0), dx[:, n:]


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
# Prompt tuning: the prompt, and the model that reads it


class PromptEmbedding(Module):
    """Holds the prompt P [n, C] (``embedding``); installed on the model as ``prompt_encoder``."""

    def __init__(self, P: np.ndarray):
        self.embedding = Param(P)


class PromptTuningModel(PeftModel):
    """The model's interface (forward, backward, generate) on [P ; tokens]; see the docstring.

    forward(idx [B, T], kv_cache=None) -> logits [B, T, V] for a GPT, [B, K] for a classifier.
    With a KV cache, the prompt goes in once, with the first call (while the cache is empty);
    later calls feed only new tokens, whose keys then see the prompt through the cache.
    """

    @property
    def prompt(self) -> Param:
        return self.base_model.prompt_encoder.embedding

    def forward(self, idx, kv_cache: KVCache | None = None):
        model = self.base_model
        classifier = isinstance(model, GPTForSequenceClassification)
        if classifier and kv_cache is not None:
            raise TypeError("kv_cache: a sequence classifier does not generate; pass no cache")
        n = self.prompt.shape[0]
        n_cached = 0 if kv_cache is None else kv_cache.length
        n_virtual = n if n_cached == 0 else 0  # the prompt goes in once, before anything else
        idx = _check_idx(idx, model.config, n, n_cached)
        tok, tok_cache = F.embedding_forward(idx, model.wte.weight.value)  # (B, T, C)
        x = prepend_prompt_forward(self.prompt.value, tok) if n_virtual else tok
        h = model.forward_hidden(inputs_embeds=x, kv_cache=kv_cache)[:, n_virtual:]  # (B, T, C)
        if classifier:
            last = model.pooled_positions(idx)  # among the real tokens: position n + last of x
            logits = model.score.forward(h[np.arange(h.shape[0]), last])  # (B, K)
        else:
            last = None
            logits = h @ model.wte.weight.value.T  # (B, T, V), the tied LM head
        self._cache = (h, tok_cache, n_virtual, last, logits.shape)
        return logits

    def backward(self, dlogits):
        """dlogits (the shape forward returned) -> fills P's grad (and wte's, if it trains)."""
        if getattr(self, "_cache", None) is None:
            raise ValueError("dlogits: backward called before forward")
        h, tok_cache, n_virtual, last, shape = self._cache
        _check_upstream(dlogits, shape)
        model = self.base_model
        wte = model.wte.weight
        if last is not None:
            dpooled = model.score.backward(dlogits)  # (B, C)
            dh = np.zeros_like(h)
            dh[np.arange(h.shape[0]), last] = dpooled
        else:
            if wte.trainable:
                # forward was logits = h·wteᵀ, so dwte = dlogitsᵀ·h over every real position
                V, C = dlogits.shape[-1], h.shape[-1]
                wte.accumulate_grad(dlogits.reshape(-1, V).T @ h.reshape(-1, C))
            dh = dlogits @ wte.value  # (B, T, C)
        # the virtual positions produced no logits: their rows of dh are zero
        B, _, C = dh.shape
        dh = np.concatenate([np.zeros((B, n_virtual, C), dh.dtype), dh], axis=1)
        dx = model.backward_hidden(dh)  # d inputs_embeds, (B, n_virtual + T, C)
        dP, dtok = prepend_prompt_backward(dx, n_virtual)
        if n_virtual:
            self.prompt.accumulate_grad(dP)
        if wte.trainable:
            wte.accumulate_grad(F.embedding_backward(dtok, tok_cache))

    def generate(
        self, idx, max_new_tokens, temperature=1.0, top_k=None, seed=None, use_cache=True,
        top_p=None, eos_id=None,
    ):  # fmt: skip
        """GPT.generate with the prompt in front; returns [B, T + n] REAL tokens (n as there).

        The context window is block_size − n real tokens (the prompt takes n positions); past
        it the oldest tokens are dropped and the prompt is put in front again. With the cache,
        the prompt is fed once per window; the tokens are the same as without (a test proves it).
        """
        model = self.base_model
        if isinstance(model, GPTForSequenceClassification):
            raise TypeError("generate: a sequence classifier does not generate text; use a GPT")
        window = model.config.block_size - self.prompt.shape[0]
        _check_idx(np.asarray(idx)[:, -window:], model.config, self.prompt.shape[0], 0)
        return generate_tokens(
            model, self.forward, idx, max_new_tokens, window, temperature, top_k, seed, use_cache,
            top_p=top_p, eos_id=eos_id,
        )  # fmt: skip

    def unload(self) -> Module:
        """Remove the prompt and return the model as it was (all of it trainable)."""
        model = self.base_model
        del model.prompt_encoder
        for p in model.parameters():
            p.trainable = True
        return model


def _check_idx(idx, config, n, n_cached):
    """idx int [B, T] with ids in [0, V) and room for it: T ≤ block_size − (n or the cache)."""
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"idx: expected an integer array of token ids, got dtype {idx.dtype}")
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx: expected shape (B, T) with T >= 1, got {idx.shape}")
    V = config.vocab_size
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= V:
        raise ValueError(f"idx: token ids must lie in [0, {V}), got {lo if lo < 0 else hi}")
    T, block = idx.shape[1], config.block_size
    if n_cached == 0 and T > block - n:
        raise ValueError(
            f"idx: sequence length {T} exceeds block_size − num_virtual_tokens = {block} − {n} "
            f"= {block - n} (the virtual tokens take positions too)"
        )
    if n_cached and n_cached + T > block:
        raise ValueError(
            f"idx: sequence length {T} (+{n_cached} cached, prompt included) exceeds "
            f"block_size={block}"
        )
    return idx


def _check_upstream(dout, expected_shape):
    dout = np.asarray(dout)
    if dout.dtype.kind != "f":
        raise TypeError(f"dlogits: expected a floating-point array, got dtype {dout.dtype}")
    if dout.shape != tuple(expected_shape):
        raise ValueError(
            f"dlogits: expected shape {tuple(expected_shape)} (the last forward's output), "
            f"got {dout.shape}"
        )


# ------------------------------------------------------------------------------------------------
# Prefix tuning: the prefixes, and how each attention layer reads its own


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
        model = self.base_model
        for block in model.h:
            block.attn.prefix = None
        del model.prompt_encoder
        for p in model.parameters():
            p.trainable = True
        return model


# ------------------------------------------------------------------------------------------------
# The configs


def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


@dataclass
class PromptLearningConfig(PeftConfig):
    """Fields of PEFT's prompt-learning configs (prompt tuning, prefix tuning).

    ``token_dim``, ``num_layers``, ``num_attention_heads`` and ``task_type`` describe the model;
    left None they are filled in from it by get_peft_model (as PEFT does), and given, they must
    match it. ``inference_mode`` is PEFT's: its saved files say True, and an adapter loaded
    that way is built only to receive the saved tensors.
    """

    num_virtual_tokens: int | None = None  # n, required
    token_dim: int | None = None  # C (d_model)
    num_transformer_submodules: int = 1  # 1 for a decoder-only model
    num_attention_heads: int | None = None
    num_layers: int | None = None
    task_type: str | None = None  # "CAUSAL_LM" (GPT) or "SEQ_CLS" (GPTForSequenceClassification)
    inference_mode: bool = False

    mergeable = False  # nothing to fold into a weight: the prompt is an input
    default_target_modules = ()
    fields_peft_lacks = ("target_modules",)  # PEFT's prompt-learning configs have none
    peft_model_class: ClassVar[type[PeftModel]] = PeftModel

    def __post_init__(self):
        super().__post_init__()
        if not _positive_int(self.num_virtual_tokens):
            raise ValueError(
                f"num_virtual_tokens: expected a positive integer, got {self.num_virtual_tokens!r}"
            )
        if self.target_modules is not None:
            raise ValueError(
                f"target_modules: {type(self).__name__} changes no module, so it takes none; "
                f"got {self.target_modules!r}"
            )
        if self.num_transformer_submodules != 1:
            raise ValueError(
                "num_transformer_submodules: expected 1 (minift's GPT is decoder-only), "
                f"got {self.num_transformer_submodules!r}"
            )
        for name in ("token_dim", "num_attention_heads", "num_layers"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
        if self.task_type not in (None, "CAUSAL_LM", "SEQ_CLS"):
            raise ValueError(
                f"task_type: expected 'CAUSAL_LM', 'SEQ_CLS' or None, got {self.task_type!r}"
            )

    def _prepare(self, model) -> None:
        """Fill in (or check) the fields that describe the model: PEFT's preparation step."""
        if not isinstance(model, GPT):
            raise TypeError(f"model: expected a minift GPT, got {type(model).__name__}")
        if "prompt_encoder" in vars(model):
            raise ValueError("model: already has a prompt_encoder; unload() the first one")
        c = model.config
        task = "SEQ_CLS" if isinstance(model, GPTForSequenceClassification) else "CAUSAL_LM"
        for name, actual in (
            ("token_dim", c.d_model),
            ("num_layers", c.n_layer),
            ("num_attention_heads", c.n_head),
            ("task_type", task),
        ):
            given = getattr(self, name)
            if given is None:
                setattr(self, name, actual)
            elif given != actual:
                raise ValueError(f"{name}: the model has {actual!r}, the config says {given!r}")


@register
@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning with PEFT's field names. Trainable count: n·C (num_virtual_tokens·token_dim).

    ``prompt_tuning_init``: "RANDOM" (N(0, 0.02²)) or "TEXT" (P = wte[ids], with
    ``prompt_tuning_init_token_ids`` exactly num_virtual_tokens ids in [0, vocab_size)).
    ``prompt_tuning_init_text`` and ``tokenizer_name_or_path`` are PEFT's and only recorded.
    adapter_config.json leaves the token ids out (PEFT has no such field) and, without a
    tokenizer_name_or_path, says "RANDOM" for "TEXT" (PEFT refuses "TEXT" without one): the
    init does not matter to a saved adapter, whose P is loaded over it.
    """

    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_token_ids: list[int] | None = None
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None

    peft_type = "PROMPT_TUNING"
    peft_model_class = PromptTuningModel
    not_mergeable_reason = "the prompt is an input (virtual tokens), not a change of any weight"
    fields_peft_lacks = ("target_modules", "prompt_tuning_init_token_ids")

    def peft_fields(self, peft_model):
        # PEFT refuses "TEXT" without a tokenizer to encode the text with. A saved adapter is
        # its trained P, which replaces whatever the init drew, so such a file says "RANDOM"
        if self.prompt_tuning_init == "TEXT" and not self.tokenizer_name_or_path:
            return {"prompt_tuning_init": "RANDOM"}
        return {}

    def __post_init__(self):
        super().__post_init__()
        init, ids = self.prompt_tuning_init, self.prompt_tuning_init_token_ids
        if init not in ("RANDOM", "TEXT"):
            raise ValueError(f"prompt_tuning_init: expected 'RANDOM' or 'TEXT', got {init!r}")
        if init == "RANDOM" and ids is not None:
            raise ValueError(
                "prompt_tuning_init_token_ids: only used with prompt_tuning_init='TEXT', "
                f"got {len(ids)} ids with 'RANDOM'"
            )
        if init == "TEXT" and ids is None and not self.inference_mode:
            raise ValueError(
                "prompt_tuning_init_token_ids: prompt_tuning_init='TEXT' needs the token ids of "
                "the text (minift takes ids, not a tokenizer: tokenizer.encode(text)), got None"
            )
        if ids is not None:
            ids = list(ids)
            if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
                raise TypeError(f"prompt_tuning_init_token_ids: expected integers, got {ids!r}")
            if len(ids) != self.num_virtual_tokens:
                raise ValueError(
                    f"prompt_tuning_init_token_ids: expected num_virtual_tokens="
                    f"{self.num_virtual_tokens} ids, got {len(ids)} (to cycle a shorter text "
                    f"as PEFT does, pass (ids * n)[:n])"
                )
            self.prompt_tuning_init_token_ids = [int(i) for i in ids]

    def apply(self, model, rng):
        self._prepare(model)
        n, c = self.num_virtual_tokens, model.config
        if n >= c.block_size:
            raise ValueError(
                f"num_virtual_tokens: expected fewer than block_size={c.block_size} (the real "
                f"tokens need positions too), got {n}"
            )
        wte = model.wte.weight.value
        ids = self.prompt_tuning_init_token_ids
        if self.prompt_tuning_init == "TEXT" and ids is not None:
            bad = [i for i in ids if not 0 <= i < c.vocab_size]
            if bad:
                raise ValueError(
                    f"prompt_tuning_init_token_ids: ids must lie in [0, {c.vocab_size}), "
                    f"got {bad[0]}"
                )
            P = wte[ids].copy()
        elif self.prompt_tuning_init == "TEXT":  # inference mode: the saved P overwrites it
            P = np.zeros((n, c.d_model), dtype=wte.dtype)
        else:
            P = (rng.standard_normal((n, c.d_model)) * PROMPT_STD).astype(wte.dtype)
        model.prompt_encoder = PromptEmbedding(P)

    def peft_key(self, name):
        # PEFT saves a prompt-learning adapter as the single tensor "prompt_embeddings"
        return "prompt_embeddings" if name == "prompt_encoder.embedding" else super().peft_key(name)


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
        h = self.encoder_hidden_size
        if h is not None and not _positive_int(h):
            raise ValueError(f"encoder_hidden_size: expected a positive integer or None, got {h!r}")
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


VIRTUAL_TOKENS = Option("num_virtual_tokens", "virtual tokens n", low=1)

register_method(
    name="prompt",
    summary="prompt tuning, 8 virtual tokens (Lester et al. 2021)",
    config=PromptTuningConfig,
    lr=3e-2,  # set by hand; the classification lr is swept
    classification_lr=1e-1,
    defaults={"num_virtual_tokens": 8},
    options=[VIRTUAL_TOKENS],
    lr_grid=[1e-2, 3e-2, 1e-1],
)
register_method(
    name="prefix",
    summary="prefix tuning, 8 key/value rows per layer (Li & Liang 2021)",
    config=PrefixTuningConfig,
    lr=1e-2,  # set by hand; the classification lr is swept
    classification_lr=1e-2,
    defaults={"num_virtual_tokens": 8},
    options=[VIRTUAL_TOKENS],
    lr_grid=[1e-3, 3e-3, 1e-2],
)
