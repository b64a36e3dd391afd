"""GPT: a GPT-2-shaped decoder, every backward written by hand, and a sequence-classification head.

    tok = wte[idx]                      (B, T, C)      token embeddings
    pos = wpe[P0 : P0 + T]              (T, C)         learned positions (P0 = tokens before these:
                                                       the cache's, plus a prefix's n virtual ones)
    x   = dropout(tok + pos)
    x   = Block(x)  × n_layer           pre-LayerNorm: x + attn(ln_1 x), then x + mlp(ln_2 x)
    h   = ln_f(x)                                      the head: head_forward / head_backward
    logits = h · wteᵀ                   (B, T, V)      the LM head is TIED to the token embedding

``forward`` is ``head_forward(forward_body(idx), idx)`` and ``backward`` the two backwards in
reverse, so a method that changes what the body reads (prompt tuning prepends rows to x) calls
the two halves and strips its rows between them. The classifier swaps the head: h = ln_f(x),
then logits = h[b, last_b]·score. As its head reads one position per sequence, its ``forward``
runs the last block at that position only (``Block.forward_at``): the same logits, about a fifth
less arithmetic at four blocks; prompt tuning's two halves take the full path.

Backward runs the same lines in reverse. The tied wte receives two gradients, one from the
embedding lookup and one from the LM head, and Param accumulation adds them.

Names and shapes are Hugging Face GPT-2's (without the ``transformer.`` prefix), Linear weights
[in, out], so a real GPT-2 checkpoint loads weight for weight.

Shape legend: B batch, T time, C d_model, V vocab, K number of labels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from minift import functional as F
from minift.errors import check_int
from minift.nn import (
    Block,
    Dropout,
    Embedding,
    LayerKVCache,
    LayerNorm,
    Linear,
    Module,
    ModuleList,
    add_fresh_grad,
    check_model_dtype,
)

__all__ = ["GPTConfig", "GPT", "GPTForSequenceClassification", "KVCache"]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 96  # tokens (characters, for minift's own corpus)
    block_size: int = 64  # longest sequence the position table covers
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads; must divide d_model
    d_model: int = 64  # channels (GPT-2's n_embd)
    dropout: float = 0.0  # on embeddings and residual branches, training mode only
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = None  # for classification: pool the last token that is not this

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            check_int(name, getattr(self, name))
        if self.d_model % self.n_head:
            raise ValueError(
                f"n_head: must divide d_model={self.d_model}, got n_head={self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps: expected > 0, got {self.layer_norm_eps!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id: expected an id in [0, {self.vocab_size}), got {self.pad_token_id}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """One LayerKVCache per block: the keys and values of every token generated so far."""

    def __init__(self, n_layer: int):
        self.layers = [LayerKVCache() for _ in range(n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0].length


class GPT(Module):
    """The decoder. ``GPT(config, seed=0, dtype=np.float32)``; float64 for gradient checks."""

    hf_fan_in_fan_out = True  # GPT-2's files store Linear weights [in, out], as minift does

    def __init__(self, config: GPTConfig, seed: int = 0, dtype=np.float32):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config: expected a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.dtype = check_model_dtype(dtype)
        rng = np.random.default_rng(seed)
        C = config.d_model
        # GPT-2 scales the init of the projections that write into the residual stream by
        # 1/√(2·n_layer), so the stream's variance does not grow with depth.
        proj_std = 0.02 / math.sqrt(2 * config.n_layer)
        self.wte = Embedding(config.vocab_size, C, rng=rng, dtype=self.dtype)
        self.wpe = Embedding(config.block_size, C, rng=rng, dtype=self.dtype)
        self.drop = Dropout(config.dropout, rng=rng)
        self.h = ModuleList(
            Block(
                C,
                config.n_head,
                config.dropout,
                rng=rng,
                dtype=self.dtype,
                proj_std=proj_std,
                eps=config.layer_norm_eps,
            )
            for _ in range(config.n_layer)
        )
        self.ln_f = LayerNorm(C, config.layer_norm_eps, dtype=self.dtype)
        self.rng = rng  # dropout draws from it; the training loop saves its state to resume

    # -- input checks ------------------------------------------------------------------------

    def check_idx(self, idx, n_cached=0, n_virtual=0):
        """idx int [B, T] with ids in [0, V) and room for it in the position table.

        Before the T tokens come ``n_cached`` cached ones and ``n_virtual`` virtual tokens of a
        prompt (prompt tuning); a prefix's n virtual tokens are counted here without being named.
        """
        if not isinstance(idx, np.ndarray):
            idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"idx: expected an integer array of token ids, got dtype {idx.dtype}")
        if idx.ndim != 2 or idx.shape[1] == 0:
            raise ValueError(f"idx: expected shape (B, T) with T >= 1, got {idx.shape}")
        V = self.config.vocab_size
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"idx: token ids must lie in [0, {V}), got {lo if lo < 0 else hi}")
        self._check_length(idx.shape[1], n_cached, "idx", n_virtual)
        return idx

    def _check_length(self, T, n_cached, name, n_virtual=0):
        n_prefix = self._prefix_positions()
        if n_virtual + n_prefix + n_cached + T > self.config.block_size:
            extra = f" (+{n_cached} cached)" if n_cached else ""
            if n_virtual:
                extra += f" (+{n_virtual} virtual tokens of the prompt, which take positions)"
            if n_prefix:
                extra += f" (+{n_prefix} virtual tokens of the prefix, which take positions)"
            raise ValueError(
                f"{name}: sequence length {T}{extra} exceeds block_size={self.config.block_size}"
            )

    def _prefix_positions(self) -> int:
        """How many positions a prefix takes before the sequence (prefix tuning: its n virtual
        tokens, as Hugging Face's GPT-2 counts them), 0 without one."""
        prefix = self.h._items[0].attn.prefix if self.h._items else None
        return 0 if prefix is None else prefix.n_positions

    # -- forward / backward: the body, then the head -----------------------------------------

    def forward_body(self, idx=None, inputs_embeds=None, mask=None, kv_cache=None, n_blocks=None):
        """Embeddings and blocks: tokens (or given embeddings) → the last block's output x [B,T,C].

        ``inputs_embeds`` [B, T, C] replaces the token lookup (how prompt tuning prepends its
        virtual tokens); ``mask`` is an additive attention mask broadcastable to [B, nh, T, Tk].
        ``n_blocks``: run only the first n blocks (the classifier runs its last one itself).
        """
        n_cached = 0 if kv_cache is None else kv_cache.length
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("idx / inputs_embeds: pass exactly one of them")
        if idx is not None:
            idx = self.check_idx(idx, n_cached)
            tok = self.wte.forward(idx)  # (B, T, C)
        else:
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.config.d_model:
                raise ValueError(
                    f"inputs_embeds: expected shape (B, T, {self.config.d_model}), "
                    f"got {inputs_embeds.shape}"
                )
            self._check_length(inputs_embeds.shape[1], n_cached, "inputs_embeds")
            tok = inputs_embeds.astype(self.dtype, copy=False)
        T = tok.shape[1]
        P0 = self._prefix_positions() + n_cached
        pos = self.wpe.forward(np.arange(P0, P0 + T))  # (T, C)
        x = self.drop.forward(tok + pos)
        for i, block in enumerate(self.h._items[:n_blocks]):
            x = block.forward(x, mask, None if kv_cache is None else kv_cache.layers[i])
        self._from_embeds = inputs_embeds is not None
        return x

    def backward_body(self, dx, n_blocks=None):
        """dx [B, T, C] → fills every Param.grad below the head; returns d inputs_embeds when
        those were given. ``n_blocks``: dx is the output of the first n blocks (forward_body's).

        Stops below the lowest block that has something to train (a trainable Param, or a prefix
        whose Params live elsewhere): under head-only or last-k fine-tuning the frozen blocks
        below would only carry a gradient that nothing keeps.
        """
        first = self._first_block_to_backprop()
        for block in reversed(self.h._items[first:n_blocks]):
            dx = block.backward(dx)
        if first > 0:
            return None
        dx = self.drop.backward(dx)
        self.wpe.backward(dx.sum(axis=0))  # positions are shared by every sequence of the batch
        if self._from_embeds:
            return dx
        self.wte.backward(dx)
        return None

    def _first_block_to_backprop(self) -> int:
        """The lowest block whose backward feeds a gradient someone keeps; 0 when the embeddings
        train or the caller wants d inputs_embeds (prompt tuning), len(h) when no block trains."""
        if self._from_embeds or self.wte.weight.trainable or self.wpe.weight.trainable:
            return 0
        for i, block in enumerate(self.h._items):
            if block.attn.prefix is not None or any(p.trainable for p in block.parameters()):
                return i
        return len(self.h._items)

    def head_forward(self, x, idx=None):
        """The LM head: h = ln_f(x), logits = h·wteᵀ, tied.  # [B, T, C] -> [B, T, V]

        ``idx`` is not read here; the classifier's head pools by it (same signature).
        """
        h = self.ln_f.forward(x)  # (B, T, C)
        logits, _ = F.linear_forward(h, self.wte.weight.value.T)  # (B, T, V)
        self._head_cache = (h, logits.shape)
        return logits

    def head_backward(self, dlogits):
        """dlogits [B, T, V] (what cross_entropy returns) → dx [B, T, C]; adds the head's share
        of wte's gradient."""
        cache = getattr(self, "_head_cache", None)
        _check_upstream(dlogits, None if cache is None else cache[1], "dlogits")
        h, _ = cache
        C = h.shape[-1]
        dlogits2 = dlogits.reshape(-1, dlogits.shape[-1])  # (B·T, V)
        if self.wte.weight.trainable:
            # forward was logits = h·wteᵀ, so dwte = dlogitsᵀ·h, summed over every position
            add_fresh_grad(self.wte.weight, dlogits2.T @ h.reshape(-1, C))
        dh = (dlogits2 @ self.wte.weight.value).reshape(h.shape)  # (B, T, C)
        return self.ln_f.backward(dh)

    def forward(self, idx=None, inputs_embeds=None, mask=None, kv_cache=None):
        """idx int [B, T] → logits [B, T, V] (a classifier: [B, K]): the body, then the head."""
        return self.head_forward(self.forward_body(idx, inputs_embeds, mask, kv_cache), idx)

    def backward(self, dlogits):
        """dlogits (the shape forward returned) → fills every Param.grad; returns d inputs_embeds
        when forward was given those."""
        return self.backward_body(self.head_backward(dlogits))

    # -- generation --------------------------------------------------------------------------

    def generate(
        self, idx, max_new_tokens, temperature=1.0, top_k=None, seed=None, use_cache=True,
        top_p=None, eos_id=None,
    ):  # fmt: skip
        """Append up to ``max_new_tokens`` tokens to idx [B, T] and return [B, T + n].

        temperature 0 is greedy (argmax); otherwise sample from softmax(logits / temperature),
        restricted to the ``top_k`` most likely tokens when given, then to the nucleus of mass
        ``top_p`` when given (``nucleus_mask``). With ``eos_id``, a row that writes it is done
        (its later positions repeat ``eos_id``) and generation stops when every row is done, so
        n <= max_new_tokens. With ``use_cache`` the keys and
        values of earlier tokens are kept, so each new token costs one position instead of the
        whole sequence; the output is the same (a test proves it). Past ``block_size`` the context
        is cropped to the last block_size tokens (block_size − n under an n-token prefix), as
        without the cache. Runs in evaluation mode (no dropout) and restores the mode it found.
        """
        block = self.config.block_size - self._prefix_positions()
        self.check_idx(np.asarray(idx)[:, -block:])
        return generate_tokens(
            self, self.forward, idx, max_new_tokens, block, temperature, top_k, seed, use_cache,
            top_p=top_p, eos_id=eos_id,
        )  # fmt: skip


def generate_tokens(
    model, forward, idx, max_new_tokens, window, temperature=1.0, top_k=None, seed=None,
    use_cache=True, top_p=None, eos_id=None,
):  # fmt: skip
    """The sampling loop behind every ``generate``: ``forward(idx, kv_cache=...) -> logits``.

    ``window`` is how many real tokens the forward takes; older ones are dropped. With the cache,
    the window is fed once, then one token per step until the cache would pass the window, when
    it is refilled from the cropped window (which is what the uncached path feeds every step).
    """
    config = model.config
    if not temperature >= 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= config.vocab_size:
        raise ValueError(f"top_k: expected in [1, {config.vocab_size}], got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected >= 0, got {max_new_tokens}")
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    out = np.asarray(idx)
    done = np.zeros(out.shape[0], dtype=bool)  # rows that wrote eos_id
    try:
        cache, fed = None, 0
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = forward(out[:, -window:])
            elif cache is None or fed + 1 > window:
                cache = KVCache(config.n_layer)  # (re)fill with the cropped window
                fed = min(out.shape[1], window)
                logits = forward(out[:, -window:], kv_cache=cache)
            else:
                fed += 1
                logits = forward(out[:, -1:], kv_cache=cache)
            next_id = _sample(logits[:, -1, :], temperature, top_k, top_p, rng)
            if eos_id is not None:
                next_id = np.where(done, eos_id, next_id)
                done |= next_id == eos_id
            out = np.concatenate([out, next_id[:, None]], axis=1)
            if done.all():
                break
    finally:
        model.train(was_training)
    return out


def _sample(logits, temperature, top_k, top_p, rng):  # [B, V] -> int [B]
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature
    if top_k is not None:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p, _ = F.softmax_forward(z)
    if top_p is not None:
        p = np.where(nucleus_mask(p, top_p), p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])


def nucleus_mask(p, top_p):  # [B, V] probabilities, p in (0, 1] -> bool [B, V]
    """The nucleus of nucleus (top-p) sampling (Holtzman et al. 2020): for each row, the
    smallest set of most likely tokens whose probability mass is at least ``top_p``.

    With the row sorted in decreasing order, p₍₁₎ >= p₍₂₎ >= …, the nucleus is its first k
    tokens, k = min{k : p₍₁₎ + … + p₍ₖ₎ >= top_p}. Always at least the most likely token, so a
    tiny top_p is greedy decoding. Ties at the edge go to the lower token id (a stable sort).
    """
    order = np.argsort(-p, axis=-1, kind="stable")  # [B, V] most likely first
    mass = np.cumsum(np.take_along_axis(p, order, axis=-1), axis=-1)  # [B, V] p₍₁₎ + … + p₍ₖ₎
    # k − 1 = how many prefixes fall short of top_p; the mass of all V reaches it up to rounding
    k = np.minimum((mass < top_p).sum(axis=-1) + 1, p.shape[-1])  # [B]
    kept_sorted = np.arange(p.shape[-1]) < k[:, None]  # [B, V]
    mask = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(mask, order, kept_sorted, axis=-1)
    return mask


def _check_upstream(dout, expected_shape, name):
    if expected_shape is None:
        raise ValueError(f"{name}: backward called before forward")
    dout = np.asarray(dout)
    if dout.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {dout.dtype}")
    if dout.shape != tuple(expected_shape):
        raise ValueError(
            f"{name}: expected shape {tuple(expected_shape)} (the last forward's output), "
            f"got {dout.shape}"
        )


class GPTForSequenceClassification(GPT):
    """The GPT body and a new head: logits = h[b, last_b] · score, score [C, K] (no bias, as HF).

    ``last_b`` is the last position of sequence b whose token is not ``config.pad_token_id``
    (the last position when there is no pad id). Attention is causal, so that position has seen
    the whole sequence and none of the padding after it. Parameter names: the GPT's, plus
    ``score.weight``.
    """

    def __init__(self, config: GPTConfig, num_labels: int, seed: int = 0, dtype=np.float32):
        super().__init__(config, seed, dtype)
        self._add_head(num_labels, seed)

    def _add_head(self, num_labels, seed):
        self.num_labels = check_int("num_labels", num_labels)
        head_rng = np.random.default_rng([seed, 1])
        self.score = Linear(
            self.config.d_model, num_labels, bias=False, rng=head_rng, dtype=self.dtype
        )

    @classmethod
    def from_lm(
        cls, lm: GPT, num_labels: int, seed: int = 0, pad_token_id: int | None = None
    ) -> GPTForSequenceClassification:
        """A classifier on top of a pretrained GPT: SHARES its modules (and so its Params).

        ``pad_token_id`` sets the classifier's own pad id (the LM's config is not changed).
        """
        model = cls.__new__(cls)
        model.__dict__.update(lm.__dict__)
        if pad_token_id is not None:
            model.config = replace(lm.config, pad_token_id=pad_token_id)
        model._add_head(num_labels, seed)
        return model

    def pooled_positions(self, idx) -> np.ndarray:  # int [B, T] -> int [B]
        idx = np.asarray(idx)
        pad = self.config.pad_token_id
        if pad is None:
            return np.full(idx.shape[0], idx.shape[1] - 1)
        not_pad = idx != pad
        if not not_pad.any(axis=1).all():
            row = int(np.flatnonzero(~not_pad.any(axis=1))[0])
            raise ValueError(f"idx: row {row} holds only pad tokens (pad_token_id={pad})")
        return idx.shape[1] - 1 - np.argmax(not_pad[:, ::-1], axis=1)

    def head_forward(self, x, idx=None):
        """The classifier's head: h = ln_f(x), logits = h[b, last_b]·score.  # [B, T, C] -> [B, K]

        ``idx`` int [B, T] gives last_b (``pooled_positions``); it must be the ids of x's T rows.
        """
        if idx is None:
            raise ValueError("idx: the classifier pools the last real token, so it needs the ids")
        h = self.ln_f.forward(x)  # (B, T, C)
        last = self.pooled_positions(idx)  # (B,)
        logits = self.score.forward(h[np.arange(h.shape[0]), last])  # (B, K)
        self._head_cache = (last, h.shape, logits.shape)
        self._pooled_logits_shape = None  # backward takes this path, not forward's
        return logits

    def head_backward(self, dlogits):
        """dlogits [B, K] → dx [B, T, C]; only the pooled rows receive a gradient."""
        cache = getattr(self, "_head_cache", None)
        _check_upstream(dlogits, None if cache is None else cache[2], "dlogits")
        last, h_shape, _ = cache
        dpooled = self.score.backward(dlogits)  # (B, C)
        dh = np.zeros(h_shape, dtype=dpooled.dtype)  # forward read one row per sequence
        dh[np.arange(h_shape[0]), last] = dpooled
        return self.ln_f.backward(dh)

    def forward(self, idx, mask=None):  # int [B, T] -> [B, K]
        """logits = ln_f(x_L[b, last_b])·score, where x_L is the last block's output.

        The head reads one position per sequence, and so the last block runs there only
        (``Block.forward_at``): its attention still reads every earlier position, but its
        output projection and MLP take B rows instead of B·T. The logits are those of
        ``head_forward(forward_body(idx), idx)`` (the path prompt tuning takes; tested equal),
        for about a fifth less of the model's arithmetic at four blocks.
        """
        n = len(self.h._items)
        x = self.forward_body(idx, mask=mask, n_blocks=n - 1)  # (B, T, C), checks idx
        last = self.pooled_positions(idx)  # (B,)
        x_last = self.h._items[-1].forward_at(x, last, mask)[:, 0]  # (B, C)
        logits = self.score.forward(self.ln_f.forward(x_last))  # (B, K)
        self._pooled_logits_shape = logits.shape
        return logits

    def backward(self, dlogits):
        """dlogits [B, K] → every Param.grad; after ``head_forward``, GPT's backward."""
        shape = getattr(self, "_pooled_logits_shape", None)
        if shape is None:
            return super().backward(dlogits)
        _check_upstream(dlogits, shape, "dlogits")
        dx_last = self.ln_f.backward(self.score.backward(dlogits))  # (B, C)
        n = len(self.h._items)
        if self._first_block_to_backprop() == n:
            return None  # no block trains (head only): nothing below needs a gradient
        dx = self.h._items[-1].backward_at(dx_last[:, None])  # (B, T, C)
        return self.backward_body(dx, n_blocks=n - 1)

    def generate(self, *args, **kwargs):
        raise TypeError("generate: a sequence classifier does not generate text; use a GPT")
