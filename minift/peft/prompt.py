r"""Prompt tuning (Lester et al., 2021): train what the model READS, not what it computes with.

Prompt tuning touches no weight matrix: it puts n trainable vectors in front of the input
(prefix.py, its sibling, puts n trainable key/value rows in front of every attention layer).
The article's §2.2 lists neither; both are "soft prompts" of the PEFT family as the literature
and Hugging Face PEFT know it, and neither can be merged into the weights.

The method
----------
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

Trainable count, the closed form the tests check: n·C.

Shape legend: B batch, T real tokens, n virtual tokens, C d_model, V vocab, K labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.model import GPTForSequenceClassification, KVCache, generate_tokens
from minift.nn import Module
from minift.param import Param
from minift.peft.base import PeftModel, register
from minift.peft.prompt_learning import VIRTUAL_TOKENS, PromptLearningConfig, remove_prompt_encoder
from minift.peft.registry import register_method

__all__ = [
    "PromptEmbedding",
    "PromptTuningConfig",
    "PromptTuningModel",
    "prepend_prompt_backward",
    "prepend_prompt_forward",
]

PROMPT_STD = 0.02  # RANDOM prompt tuning init: GPT-2's token-embedding init

# ------------------------------------------------------------------------------------------------
# The math, as a pure pair


def prepend_prompt_forward(P, tok):
    """x = [P ; tok], the same P in front of every sequence.  # [n, C], [B, T, C] -> [B, n+T, C]"""
    B = tok.shape[0]
    return np.concatenate([np.broadcast_to(P, (B, *P.shape)), tok], axis=1)


def prepend_prompt_backward(dx, n):
    """dP = Σ_b dx[b, :n] (P is shared by the batch); dtok = dx[:, n:].

    dx [B, n + T, C] -> (dP [n, C], dtok [B, T, C])
    """
    return dx[:, :n].sum(axis=0), dx[:, n:]


# ------------------------------------------------------------------------------------------------
# The prompt, and the model that reads it


class PromptEmbedding(Module):
    """Holds the prompt P [n, C] (``embedding``); installed on the model as ``prompt_encoder``."""

    def __init__(self, P: np.ndarray):
        self.embedding = Param(P)


class PromptTuningModel(PeftModel):
    """The model's interface (forward, backward, generate) on [P ; tokens]; see the docstring.

    forward(idx [B, T], kv_cache=None) -> logits [B, T, V] for a GPT, [B, K] for a classifier:
    the model's body on [P ; wte[idx]], its rows of P stripped, then the model's own head.
    With a KV cache, the prompt goes in once, with the first call (while the cache is empty);
    later calls feed only new tokens, whose keys then see the prompt through the cache.
    """

    @property
    def prompt(self) -> Param:
        return self.base_model.prompt_encoder.embedding

    def forward(self, idx, kv_cache: KVCache | None = None):
        model = self.base_model
        if isinstance(model, GPTForSequenceClassification) and kv_cache is not None:
            raise TypeError("kv_cache: a sequence classifier does not generate; pass no cache")
        n_cached = 0 if kv_cache is None else kv_cache.length
        n_virtual = self.prompt.shape[0] if n_cached == 0 else 0  # the prompt goes in once
        idx = model.check_idx(idx, n_cached, n_virtual)
        tok, tok_cache = F.embedding_forward(idx, model.wte.weight.value)  # (B, T, C)
        x = prepend_prompt_forward(self.prompt.value, tok) if n_virtual else tok
        x = model.forward_body(inputs_embeds=x, kv_cache=kv_cache)  # (B, n_virtual + T, C)
        self._cache = (tok_cache, n_virtual)
        return model.head_forward(x[:, n_virtual:], idx)  # the head sees the T real rows

    def backward(self, dlogits):
        """dlogits (the shape forward returned) -> fills P's grad (and wte's, if it trains)."""
        if getattr(self, "_cache", None) is None:
            raise ValueError("dlogits: backward called before forward")
        tok_cache, n_virtual = self._cache
        model = self.base_model
        dx = model.head_backward(dlogits)  # (B, T, C)
        # the virtual positions produced no logits: their rows of the gradient are zero
        B, _, C = dx.shape
        dx = np.concatenate([np.zeros((B, n_virtual, C), dx.dtype), dx], axis=1)
        dembeds = model.backward_body(dx)  # d inputs_embeds, (B, n_virtual + T, C)
        dP, dtok = prepend_prompt_backward(dembeds, n_virtual)
        if n_virtual:
            self.prompt.accumulate_grad(dP)
        if model.wte.weight.trainable:
            model.wte.weight.accumulate_grad(F.embedding_backward(dtok, tok_cache))

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
        n = self.prompt.shape[0]
        window = model.config.block_size - n
        model.check_idx(np.asarray(idx)[:, -window:], n_virtual=n)
        return generate_tokens(
            model, self.forward, idx, max_new_tokens, window, temperature, top_k, seed, use_cache,
            top_p=top_p, eos_id=eos_id,
        )  # fmt: skip

    def unload(self) -> Module:
        """Remove the prompt and return the model as it was (all of it trainable)."""
        return remove_prompt_encoder(self.base_model)


# ------------------------------------------------------------------------------------------------
# The config


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


# lr set by hand; the classification lr is swept
register_method("prompt", PromptTuningConfig,
                "prompt tuning, 8 virtual tokens (Lester et al. 2021)",
                lr=3e-2, classification_lr=1e-1, lr_grid=[1e-2, 3e-2, 1e-1],
                defaults={"num_virtual_tokens": 8}, options=[VIRTUAL_TOKENS])  # fmt: skip
