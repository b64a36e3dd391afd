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
- "TEXT": P = wte[ids], COPIES of the embeddings of a text's tokens, so that at step 0 the model
  computes EXACTLY what it computes on that text followed by the input (a test holds it to
  1e-12: only the rounding of a differently shaped matmul differs). As in PEFT, the ids are
  ``tokenizer.encode(prompt_tuning_init_text)`` with the tokenizer ``tokenizer_name_or_path``
  names (offline: minift.data.tokenizer_from_name), cycled or cut to exactly n
  (``text_init_ids``: ids[k mod len(ids)] for k < n). Or minift's shortcut: the ids themselves,
  ``prompt_tuning_init_token_ids``, exactly n of them. (PEFT casts the copied rows to float32;
  minift keeps the model's dtype.)
- "SAMPLE_VOCAB": P = wte[ids] for n ids drawn uniformly from the vocabulary (PEFT 0.21's third
  init): real tokens' embeddings, of no text in particular.

Trainable count, the closed form the tests check: n·C.

Shape legend: B batch, T real tokens, n virtual tokens, C d_model, V vocab, K labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from minift import functional as F
from minift.data.named_tokenizer import tokenizer_from_name
from minift.model import GPTForSequenceClassification, KVCache, generate_tokens
from minift.nn import Module
from minift.param import Param
from minift.peft.base import PeftModel, register
from minift.peft.prompt_learning import VIRTUAL_TOKENS, PromptLearningConfig, remove_prompt_encoder
from minift.peft.registry import Option, register_method

__all__ = [
    "PROMPT_TUNING_INITS",
    "PromptEmbedding",
    "PromptTuningConfig",
    "PromptTuningModel",
    "prepend_prompt_backward",
    "prepend_prompt_forward",
    "text_init_ids",
]

PROMPT_STD = 0.02  # RANDOM prompt tuning init: GPT-2's token-embedding init
PROMPT_TUNING_INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")  # PEFT 0.21's PromptTuningInit

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


def text_init_ids(ids: list[int], n: int) -> list[int]:
    """The text's ids cycled or cut to exactly n, PEFT's rule: ids[k mod len(ids)], k < n."""
    if not ids:
        raise ValueError("ids: the text encodes to no token; a prompt needs at least one")
    repeats = -(-n // len(ids))  # ⌈n / len(ids)⌉ copies cover n
    return (list(ids) * repeats)[:n]


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

    prompt_tuning_init            "RANDOM" (N(0, 0.02²)), "TEXT" or "SAMPLE_VOCAB" (docstring)
    prompt_tuning_init_text       with "TEXT": the text whose tokens' embeddings start P
    tokenizer_name_or_path        with "TEXT": the tokenizer that encodes it, by a name minift
                                  loads offline ("minift-char", or a folder: tokenizer_from_name)
    prompt_tuning_init_token_ids  minift's shortcut for "TEXT": the n ids themselves, no text

    adapter_config.json leaves the token ids out (PEFT has no such field) and, for "TEXT" without
    a text and a tokenizer, says "RANDOM" (PEFT refuses "TEXT" without them): the init does not
    matter to a saved adapter, whose P is loaded over it.
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
        # PEFT refuses "TEXT" without a text and a tokenizer to encode it with. A saved adapter
        # is its trained P, which replaces whatever the init drew, so such a file says "RANDOM"
        if self.prompt_tuning_init == "TEXT" and not self._from_text():
            return {"prompt_tuning_init": "RANDOM"}
        return {}

    def _from_text(self) -> bool:
        return self.prompt_tuning_init_text is not None and bool(self.tokenizer_name_or_path)

    def __post_init__(self):
        super().__post_init__()
        init, ids = self.prompt_tuning_init, self.prompt_tuning_init_token_ids
        if init not in PROMPT_TUNING_INITS:
            raise ValueError(
                f"prompt_tuning_init: expected one of {', '.join(map(repr, PROMPT_TUNING_INITS))}"
                f", got {init!r}"
            )
        for name in ("prompt_tuning_init_text", "tokenizer_name_or_path"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, value := os.fspath(value))
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name}: expected a string or None, got {value!r}")
        if init != "TEXT" and ids is not None:
            raise ValueError(
                "prompt_tuning_init_token_ids: only used with prompt_tuning_init='TEXT', "
                f"got {len(ids)} ids with {init!r}"
            )
        if init == "TEXT" and ids is not None and self.prompt_tuning_init_text is not None:
            raise ValueError(
                "prompt_tuning_init_token_ids: give the ids or prompt_tuning_init_text, not both"
            )
        if init == "TEXT" and ids is None and not self.inference_mode:
            for name in ("prompt_tuning_init_text", "tokenizer_name_or_path"):
                if getattr(self, name) is None:
                    raise ValueError(
                        f"{name}: prompt_tuning_init='TEXT' needs a text and the tokenizer that "
                        f"encodes it (or minift's prompt_tuning_init_token_ids), got None"
                    )
        if ids is not None:
            ids = list(ids)
            if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
                raise TypeError(f"prompt_tuning_init_token_ids: expected integers, got {ids!r}")
            if len(ids) != self.num_virtual_tokens:
                raise ValueError(
                    f"prompt_tuning_init_token_ids: expected num_virtual_tokens="
                    f"{self.num_virtual_tokens} ids, got {len(ids)} (to cycle a shorter text "
                    f"as PEFT does, pass text_init_ids(ids, n))"
                )
            self.prompt_tuning_init_token_ids = [int(i) for i in ids]

    def init_token_ids(self, vocab_size: int, rng: np.random.Generator) -> list[int] | None:
        """The n ids whose embeddings start P ("TEXT", "SAMPLE_VOCAB"); None: nothing to copy
        ("RANDOM", or "TEXT" in inference mode, whose P the saved one overwrites)."""
        n, ids, field = self.num_virtual_tokens, self.prompt_tuning_init_token_ids, ""
        if self.prompt_tuning_init == "SAMPLE_VOCAB" and not self.inference_mode:
            return [int(i) for i in rng.integers(0, vocab_size, n)]
        if self.prompt_tuning_init != "TEXT" or (ids is None and self.inference_mode):
            return None
        if ids is None:
            text, field = self.prompt_tuning_init_text, "tokenizer_name_or_path"
            tokenizer = tokenizer_from_name(self.tokenizer_name_or_path)
            try:
                encoded = tokenizer.encode(text)
            except ValueError as e:
                raise ValueError(f"prompt_tuning_init_text: {e}") from None
            if not encoded:
                raise ValueError(
                    f"prompt_tuning_init_text: {text!r} encodes to no token with "
                    f"{self.tokenizer_name_or_path!r}; a prompt needs at least one"
                )
            ids = text_init_ids(encoded, n)
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad and field:
            raise ValueError(
                f"{field}: {self.tokenizer_name_or_path!r} encodes prompt_tuning_init_text to "
                f"id {bad[0]}, outside the model's vocabulary [0, {vocab_size}); expected the "
                f"model's own tokenizer"
            )
        if bad:
            raise ValueError(
                f"prompt_tuning_init_token_ids: ids must lie in [0, {vocab_size}), got {bad[0]}"
            )
        return ids

    def apply(self, model, rng):
        self._prepare(model)
        n, c = self.num_virtual_tokens, model.config
        if n >= c.block_size:
            raise ValueError(
                f"num_virtual_tokens: expected fewer than block_size={c.block_size} (the real "
                f"tokens need positions too), got {n}"
            )
        wte = model.wte.weight.value
        ids = self.init_token_ids(c.vocab_size, rng)
        if ids is not None:
            P = wte[ids].copy()  # copies: training P never moves wte
        elif self.prompt_tuning_init == "RANDOM":
            P = (rng.standard_normal((n, c.d_model)) * PROMPT_STD).astype(wte.dtype)
        else:  # inference mode: the saved P overwrites it
            P = np.zeros((n, c.d_model), dtype=wte.dtype)
        model.prompt_encoder = PromptEmbedding(P)

    def peft_key(self, name):
        # PEFT saves a prompt-learning adapter as the single tensor "prompt_embeddings"
        return "prompt_embeddings" if name == "prompt_encoder.embedding" else super().peft_key(name)


# minift finetune --method prompt --prompt-tuning-init TEXT --prompt-tuning-init-text "…"
# --tokenizer-name-or-path minift-char: a prompt that starts as a text's embeddings
PROMPT_INIT_OPTIONS = [
    Option("prompt_tuning_init", "RANDOM, TEXT or SAMPLE_VOCAB (as PEFT)", type=str),
    Option("prompt_tuning_init_text", "with TEXT: the text the prompt starts as", type=str),
    Option("tokenizer_name_or_path", "with TEXT: minift-char, or a tokenizer folder", type=str),
]

register_method("prompt", PromptTuningConfig,
                "prompt tuning, 8 virtual tokens (Lester et al. 2021)",
                lr=1e-1, classification_lr=3e-1, lr_grid=[1e-2, 3e-2, 1e-1, 3e-1, 1.0],
                defaults={"num_virtual_tokens": 8},
                options=[VIRTUAL_TOKENS, *PROMPT_INIT_OPTIONS])  # fmt: skip
