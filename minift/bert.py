"""BERT: the encoder next to the GPT, built from the same pairs and layers, every backward by hand.

    x   = LayerNorm(word[ids] + token_type[tt] + position[0:T])       embeddings (B, T, H)
    x   = BertLayer(x, mask)  × num_hidden_layers                      POST-LayerNorm blocks:
          a = LayerNorm(x + attention(x))                                  the residual add comes
          x = LayerNorm(a + W₂·gelu_erf(W₁·a))                             BEFORE the LayerNorm
    h   = x                                                            last hidden state (B, T, H)

What differs from minift's GPT (model.py), and nothing else does:

- attention is BIDIRECTIONAL: every token sees every other; only padding is hidden, by the
  additive mask M[b, j] = 0 where attention_mask[b, j] = 1 and the most negative float where it
  is 0 (as Hugging Face), broadcast over heads and queries;
- LayerNorm AFTER each residual add (post-LN), with BERT's eps from the config (1e-12);
- GELU in its exact erf form; query, key and value are three Linears, not one fused c_attn;
- a third embedding table, token types (segment A / B), and no LM head: the output is h.

The pieces are minift's own: ``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding``,
``nn.GELU(exact=True)``, ``nn.Dropout`` and ``functional``'s split_heads / attention_forward /
merge_heads. Only the wiring is new, and the few pairs below that a GPT never needed.

Names are Hugging Face's (``encoder.layer.0.attention.self.query.weight``), so a real checkpoint
loads name for name and PEFT's target modules ("query", "value") mean what they mean in PEFT.
The LAYOUT is minift's: every Linear weight is [in, out] (y = x·W), while a BERT file stores
torch's [out, in]; ``minift.hub`` transposes on load and on save, in one place. Why not keep
[out, in]: every fine-tuning method of ``minift.peft`` (LoRA, DoRA, IA3, adapters, BitFit,
sparse, AdaLoRA) wraps ``nn.Linear`` and reads its weight as [in, out]; a second Linear layout
would need a second version of each, or a flag in each, and the reader of peft/lora.py would
meet ``.T`` where the equations have none. One layout inside, the file's layout at the border.
(A square weight, like query's [384, 384], cannot reveal a missing transpose by its shape;
the comparison with sentence-transformers' embeddings, tests/test_hub.py, does.)

Sentence embeddings as sentence-transformers makes them (all-MiniLM-L6-v2's modules.json:
Transformer → Pooling(mean) → Normalize):

    e = Σ_t m_t·h_t / max(Σ_t m_t, 1e-9)       mean over the real tokens (m the attention mask)
    ê = e / max(‖e‖₂, 1e-12)                  unit length, so a dot product is a cosine

each a forward/backward pair below.

Shape legend: B batch, T tokens, H hidden size, nh heads, hs = H/nh head size, I intermediate
size, K labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from minift import functional as F
from minift.errors import check_int
from minift.nn import (
    GELU,
    Dropout,
    Embedding,
    LayerNorm,
    Linear,
    Module,
    ModuleList,
    check_model_dtype,
)

__all__ = [
    "BertConfig",
    "BertModel",
    "BertSentenceClassifier",
    "SentenceEncoder",
    "padding_mask",
    "self_attention_forward",
    "self_attention_backward",
    "mean_pooling_forward",
    "mean_pooling_backward",
    "l2_normalize_forward",
    "l2_normalize_backward",
    "tanh_forward",
    "tanh_backward",
]

# ------------------------------------------------------------------------------------------------
# The pairs a GPT never needed


def padding_mask(attention_mask, dtype):
    """attention_mask int [B, T] (1 real token, 0 padding) -> additive mask [B, 1, 1, T].

    0 where a key is a real token, the most negative finite number of ``dtype`` where it is
    padding (Hugging Face's choice): exp of it is exactly 0, so padding gets no weight, and a
    row with no real key at all averages uniformly instead of turning into NaN as −inf would.
    """
    m = np.asarray(attention_mask)
    return np.where(m[:, None, None, :] == 0, np.finfo(dtype).min, 0.0).astype(dtype)


def self_attention_forward(q, k, v, n_head, mask=None):
    """Bidirectional multi-head attention on projected q, k, v: y = softmax(q·kᵀ/√hs + M)·v.

    q, k, v [B, T, H]; mask additive, broadcastable to [B, nh, T, T] -> y [B, T, H] (heads
    merged, before the output projection). The GPT's mha_forward is this with causal=True and a
    fused qkv.
    """
    qh, kh, vh = (F.split_heads(t, n_head) for t in (q, k, v))  # (B, nh, T, hs)
    y, cache = F.attention_forward(qh, kh, vh, mask=mask, causal=False)
    return F.merge_heads(y), cache


def self_attention_backward(dy, cache):
    """dy [B, T, H] -> (dq, dk, dv), each [B, T, H]; the per-head math is attention_backward's."""
    n_head = cache[0].shape[1]
    dq, dk, dv = F.attention_backward(F.split_heads(dy, n_head), cache)
    return F.merge_heads(dq), F.merge_heads(dk), F.merge_heads(dv)


def mean_pooling_forward(h, attention_mask):
    """e = Σ_t m_t·h_t / max(Σ_t m_t, 1e-9).  # [B, T, H], int [B, T] -> [B, H]

    Computed as sentence-transformers computes it (sum, then divide), so the two agree to the
    last bits, not just to rounding.
    """
    m = np.asarray(attention_mask).astype(h.dtype)[:, :, None]  # (B, T, 1)
    count = np.maximum(m.sum(axis=1), 1e-9)  # (B, 1)
    return (h * m).sum(axis=1) / count, (m, count)


def mean_pooling_backward(de, cache):
    """dh_t = m_t·de / max(Σ m, 1e-9): each real token gets an equal share, padding none."""
    m, count = cache
    return m * (de / count)[:, None, :]  # (B, T, H)


def l2_normalize_forward(x, eps=1e-12):
    """ê = x / max(‖x‖₂, eps) over the last axis (torch.nn.functional.normalize).  # [.., H]"""
    raw = np.linalg.norm(x, axis=-1, keepdims=True)
    norm = np.maximum(raw, eps)
    y = x / norm
    return y, (y, norm, raw < eps)


def l2_normalize_backward(dy, cache):
    """dx = (dy − ê·(ê·dy)) / ‖x‖: the part of dy along ê is lost, since ê's length is fixed.

    Where ‖x‖ < eps the forward divided by the constant eps, so there dx = dy / eps.
    """
    y, norm, clamped = cache
    dx = (dy - y * (y * dy).sum(axis=-1, keepdims=True)) / norm
    return np.where(clamped, dy / norm, dx)


def tanh_forward(x):
    """y = tanh(x)  (BERT's pooler).  # [...] -> [...]"""
    y = np.tanh(x)
    return y, y


def tanh_backward(dy, cache):
    """tanh′(x) = 1 − tanh(x)²."""
    y = cache
    return dy * (1.0 - y * y)


# ------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class BertConfig:
    """Hugging Face's BertConfig field names; the defaults are all-MiniLM-L6-v2's."""

    vocab_size: int = 30522  # WordPiece vocabulary
    hidden_size: int = 384  # H
    num_hidden_layers: int = 6
    num_attention_heads: int = 12  # must divide hidden_size
    intermediate_size: int = 1536  # I, the MLP's width (4·H)
    max_position_embeddings: int = 512  # longest sequence, [CLS] and [SEP] included
    type_vocab_size: int = 2  # token types (segments A and B)
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.0  # after the embeddings and each sublayer; training only
    initializer_range: float = 0.02  # std of the random init (a checkpoint overwrites it)
    pad_token_id: int = 0  # [PAD]; the classifier hides it from attention when given no mask

    def __post_init__(self):
        for name in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "type_vocab_size",
        ):  # fmt: skip
            check_int(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads: must divide hidden_size={self.hidden_size}, "
                f"got {self.num_attention_heads}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps: expected > 0, got {self.layer_norm_eps!r}")
        if not 0.0 <= self.hidden_dropout_prob < 1.0:
            raise ValueError(
                f"hidden_dropout_prob: expected a probability in [0, 1), "
                f"got {self.hidden_dropout_prob!r}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id: expected an id in [0, {self.vocab_size}), got {self.pad_token_id}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# Modules, named as Hugging Face names them


class BertEmbeddings(Module):
    """x = LayerNorm(word[ids] + token_type[tt] + position[0:T]), then dropout."""

    def __init__(self, c: BertConfig, *, rng, dtype):
        std = c.initializer_range
        H = c.hidden_size
        self.word_embeddings = Embedding(c.vocab_size, H, rng=rng, dtype=dtype, std=std)
        self.position_embeddings = Embedding(
            c.max_position_embeddings, H, rng=rng, dtype=dtype, std=std
        )
        self.token_type_embeddings = Embedding(c.type_vocab_size, H, rng=rng, dtype=dtype, std=std)
        self.LayerNorm = LayerNorm(H, c.layer_norm_eps, dtype=dtype)
        self.dropout = Dropout(c.hidden_dropout_prob, rng=rng)

    def forward(self, input_ids, token_type_ids):  # int [B, T], int [B, T] -> [B, T, H]
        T = input_ids.shape[1]
        # Hugging Face's order of the two adds, so float32 rounds the same way
        x = self.word_embeddings.forward(input_ids)
        x = x + self.token_type_embeddings.forward(token_type_ids)
        x = x + self.position_embeddings.forward(np.arange(T))  # (T, H), the same for every row
        return self.dropout.forward(self.LayerNorm.forward(x))

    def backward(self, dout):  # -> None (the ids have no gradient)
        dx = self.LayerNorm.backward(self.dropout.backward(dout))
        self.word_embeddings.backward(dx)
        self.token_type_embeddings.backward(dx)
        self.position_embeddings.backward(dx.sum(axis=0))  # shared by every sequence


class BertSelfAttention(Module):
    """attention.self: query, key, value (H → H each), then bidirectional attention."""

    def __init__(self, c: BertConfig, *, rng, dtype):
        H, std = c.hidden_size, c.initializer_range
        self.num_attention_heads = c.num_attention_heads
        self.query = Linear(H, H, rng=rng, dtype=dtype, std=std)
        self.key = Linear(H, H, rng=rng, dtype=dtype, std=std)
        self.value = Linear(H, H, rng=rng, dtype=dtype, std=std)
        self._cache = None

    def forward(self, x, mask=None):  # [B, T, H] -> [B, T, H]
        q, k, v = self.query.forward(x), self.key.forward(x), self.value.forward(x)
        y, self._cache = self_attention_forward(q, k, v, self.num_attention_heads, mask)
        return y

    def backward(self, dy):
        dq, dk, dv = self_attention_backward(dy, self._cache)
        # x fed three Linears, so its gradient is the sum of the three
        return self.query.backward(dq) + self.key.backward(dk) + self.value.backward(dv)


class BertResidualOutput(Module):
    """out = LayerNorm(dropout(dense(h)) + x): a projection, the residual add, then LayerNorm.

    Hugging Face has two of these with one shape: ``attention.output`` (BertSelfOutput, H → H)
    and ``output`` (BertOutput, I → H).
    """

    def __init__(self, d_in, c: BertConfig, *, rng, dtype):
        self.dense = Linear(d_in, c.hidden_size, rng=rng, dtype=dtype, std=c.initializer_range)
        self.dropout = Dropout(c.hidden_dropout_prob, rng=rng)
        self.LayerNorm = LayerNorm(c.hidden_size, c.layer_norm_eps, dtype=dtype)

    def forward(self, h, x):  # [B, T, d_in], [B, T, H] -> [B, T, H]
        return self.LayerNorm.forward(self.dropout.forward(self.dense.forward(h)) + x)

    def backward(self, dout):
        """-> (dh, dx): forward was LN(s), s = dense(h) + x, so ds = LNᵀ(dout) reaches both."""
        ds = self.LayerNorm.backward(dout)
        return self.dense.backward(self.dropout.backward(ds)), ds


class BertAttention(Module):
    """a = LayerNorm(x + dense(attention(x))): ``attention.self`` then ``attention.output``."""

    def __init__(self, c: BertConfig, *, rng, dtype):
        # "self" is Hugging Face's name for this submodule (attention.self.query …), kept so
        # that names match; in Python it reads self.self.
        self.self = BertSelfAttention(c, rng=rng, dtype=dtype)
        self.output = BertResidualOutput(c.hidden_size, c, rng=rng, dtype=dtype)

    def forward(self, x, mask=None):
        return self.output.forward(self.self.forward(x, mask), x)

    def backward(self, dout):
        dh, dx = self.output.backward(dout)
        return dx + self.self.backward(dh)


class BertIntermediate(Module):
    """intermediate: gelu_erf(dense(a)), H → I."""

    def __init__(self, c: BertConfig, *, rng, dtype):
        self.dense = Linear(
            c.hidden_size, c.intermediate_size, rng=rng, dtype=dtype, std=c.initializer_range
        )
        self.intermediate_act_fn = GELU(exact=True)

    def forward(self, a):  # [B, T, H] -> [B, T, I]
        return self.intermediate_act_fn.forward(self.dense.forward(a))

    def backward(self, dout):
        return self.dense.backward(self.intermediate_act_fn.backward(dout))


class BertLayer(Module):
    """One post-LN block: a = LN(x + attn(x)); out = LN(a + W₂·gelu(W₁·a))."""

    def __init__(self, c: BertConfig, *, rng, dtype):
        self.attention = BertAttention(c, rng=rng, dtype=dtype)
        self.intermediate = BertIntermediate(c, rng=rng, dtype=dtype)
        self.output = BertResidualOutput(c.intermediate_size, c, rng=rng, dtype=dtype)

    def forward(self, x, mask=None):  # [B, T, H] -> [B, T, H]
        a = self.attention.forward(x, mask)
        return self.output.forward(self.intermediate.forward(a), a)

    def backward(self, dout):
        # forward was out = output(intermediate(a), a): a reaches out along two paths
        dh, da = self.output.backward(dout)
        da = da + self.intermediate.backward(dh)
        return self.attention.backward(da)


class BertEncoder(Module):
    def __init__(self, c: BertConfig, *, rng, dtype):
        self.layer = ModuleList(
            BertLayer(c, rng=rng, dtype=dtype) for _ in range(c.num_hidden_layers)
        )

    def forward(self, x, mask=None):
        for layer in self.layer:
            x = layer.forward(x, mask)
        return x

    def backward(self, dout, first: int = 0):
        """Back through the layers from the top down to layer ``first``; dx of layer ``first``."""
        for layer in reversed(self.layer._items[first:]):
            dout = layer.backward(dout)
        return dout


class BertPooler(Module):
    """pooler: tanh(dense(h[:, 0])), the [CLS] vector through H → H (next-sentence pretraining).

    Loaded when a checkpoint has it, so no tensor of the file goes unused; sentence-transformers
    does not use it (mean pooling instead), and neither does BertSentenceClassifier.
    """

    def __init__(self, c: BertConfig, *, rng, dtype):
        self.dense = Linear(
            c.hidden_size, c.hidden_size, rng=rng, dtype=dtype, std=c.initializer_range
        )
        self._cache = None

    def forward(self, h):  # [B, T, H] -> [B, H]
        y, tanh_cache = tanh_forward(self.dense.forward(h[:, 0]))
        self._cache = (tanh_cache, h.shape)
        return y

    def backward(self, dy):  # [B, H] -> [B, T, H]
        tanh_cache, h_shape = self._cache
        dh = np.zeros(h_shape, dtype=dy.dtype)
        dh[:, 0] = self.dense.backward(tanh_backward(dy, tanh_cache))
        return dh


class BertModel(Module):
    """The encoder. ``BertModel(config, seed=0, dtype=np.float32, add_pooling_layer=False)``.

    ``forward(input_ids, attention_mask=None, token_type_ids=None)`` returns the last hidden
    state [B, T, H]; ``backward(dh)`` fills every Param.grad. As in Hugging Face, a missing
    attention_mask means every position is a real token, and missing token_type_ids are 0.
    """

    hf_fan_in_fan_out = False  # BERT's files store Linear weights [out, in] (torch nn.Linear)

    def __init__(
        self, config: BertConfig, seed: int = 0, dtype=np.float32, add_pooling_layer=False
    ):
        if not isinstance(config, BertConfig):
            raise TypeError(f"config: expected a BertConfig, got {type(config).__name__}")
        self.config = config
        self.dtype = check_model_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.embeddings = BertEmbeddings(config, rng=rng, dtype=self.dtype)
        self.encoder = BertEncoder(config, rng=rng, dtype=self.dtype)
        self.pooler = BertPooler(config, rng=rng, dtype=self.dtype) if add_pooling_layer else None
        self.rng = rng  # the dropout layers draw from it
        self._shape = None  # the last forward's output shape

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None):
        """Validate the three inputs; returns them as arrays (the defaults filled in)."""
        c = self.config
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"input_ids: expected integer token ids, got dtype {ids.dtype}")
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids: expected shape (B, T) with T >= 1, got {ids.shape}")
        if ids.shape[1] > c.max_position_embeddings:
            raise ValueError(
                f"input_ids: sequence length {ids.shape[1]} exceeds max_position_embeddings="
                f"{c.max_position_embeddings}; truncate it (the tokenizer's max_length)"
            )
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= c.vocab_size:
            raise ValueError(
                f"input_ids: token ids must lie in [0, {c.vocab_size}), got {lo if lo < 0 else hi}"
            )
        mask = (
            np.ones(ids.shape, np.int64) if attention_mask is None else np.asarray(attention_mask)
        )
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask: expected shape {ids.shape}, got {mask.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask: expected 1 for a real token and 0 for padding only")
        types = (
            np.zeros(ids.shape, np.int64) if token_type_ids is None else np.asarray(token_type_ids)
        )
        if types.shape != ids.shape or types.dtype.kind not in "iu":
            raise ValueError(
                f"token_type_ids: expected integers of shape {ids.shape}, got {types.dtype} "
                f"{types.shape}"
            )
        if types.min() < 0 or types.max() >= c.type_vocab_size:
            raise ValueError(
                f"token_type_ids: expected types in [0, {c.type_vocab_size}), got "
                f"{int(types.min()) if types.min() < 0 else int(types.max())}"
            )
        return ids, mask, types

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """int [B, T] (+ mask, types [B, T]) -> last hidden state [B, T, H]."""
        ids, mask, types = self.check_inputs(input_ids, attention_mask, token_type_ids)
        x = self.embeddings.forward(ids, types)  # (B, T, H)
        self._shape = x.shape
        return self.encoder.forward(x, padding_mask(mask, self.dtype))

    def backward(self, dh):
        """dh [B, T, H] -> fills every Param.grad (the ids have no gradient)."""
        dh = np.asarray(dh)
        if self._shape is None:
            raise ValueError("dh: backward called before forward")
        if dh.shape != self._shape:
            raise ValueError(
                f"dh: expected shape {self._shape} (the last forward's output), got {dh.shape}"
            )
        first = self._first_layer_to_backprop()
        dx = self.encoder.backward(dh, first)
        if first == 0:
            self.embeddings.backward(dx)

    def _first_layer_to_backprop(self) -> int:
        """The lowest layer whose backward feeds a gradient someone keeps: 0 when an embedding
        trains, len(layers) when no layer does. Under LoRA on the top layers, or a head alone,
        the frozen layers below would only carry a gradient that nothing keeps (the GPT stops
        the same way: GPT.backward_body)."""
        if any(p.trainable for p in self.embeddings.parameters()):
            return 0
        for i, layer in enumerate(self.encoder.layer._items):
            if any(p.trainable for p in layer.parameters()):
                return i
        return len(self.encoder.layer._items)


# ------------------------------------------------------------------------------------------------
# A task head and sentence embeddings


class BertSentenceClassifier(Module):
    """logits = classifier(pool(bert(ids))): mean pooling (then optionally L2 normalisation) of the
    last hidden state, and a new Linear head [H, K].

    Not Hugging Face's BertForSequenceClassification, which reads the pooler's tanh([CLS]): a
    sentence-transformers model was trained to put the sentence's meaning in the MEAN of its
    tokens, so that is what the head reads here (and what the linear probe on the frozen model,
    ``minift.classify.fit_linear_probe``, reads: ``embed`` gives that vector). Parameter names:
    ``bert.…`` and ``classifier.weight`` / ``.bias``, Hugging Face's for the two parts.

    ``forward(input_ids, attention_mask=None, token_type_ids=None)``: with no attention_mask,
    the mask is ``input_ids != config.pad_token_id`` (not all ones as BertModel's): the training
    loop passes padded ids alone, and the WordPiece tokenizer never puts [PAD] inside a text.
    """

    # where minift.peft.sft's head_only / last_k_blocks find the parts they train (a GPT's are
    # score or wte, h and ln_f); post-LN, every block ends in its own LayerNorm: no final norm
    sft_head = "classifier"
    sft_blocks = "bert.encoder.layer"
    sft_final_norm = None

    def __init__(self, bert: BertModel, num_labels: int, seed: int = 0, normalize: bool = False):
        if not isinstance(bert, BertModel):
            raise TypeError(f"bert: expected a BertModel, got {type(bert).__name__}")
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)):
            raise TypeError(f"num_labels: expected an integer, got {num_labels!r}")
        if num_labels < 2:
            raise ValueError(f"num_labels: a classifier needs >= 2 labels, got {num_labels}")
        self.bert = bert  # shared, not copied: its Params are the classifier's
        self.num_labels = int(num_labels)
        self.normalize = bool(normalize)
        head_rng = np.random.default_rng([seed, 1])
        self.classifier = Linear(
            bert.config.hidden_size, num_labels, rng=head_rng, dtype=bert.dtype,
            std=bert.config.initializer_range,
        )  # fmt: skip
        self._cache = None

    @property
    def config(self) -> BertConfig:
        return self.bert.config

    @property
    def dtype(self):
        return self.bert.dtype

    def embed(self, input_ids, attention_mask=None, token_type_ids=None):
        """The pooled (and, with ``normalize``, unit-length) sentence vector [B, H]."""
        if attention_mask is None:
            attention_mask = (np.asarray(input_ids) != self.config.pad_token_id).astype(np.int64)
        h = self.bert.forward(input_ids, attention_mask, token_type_ids)
        e, pool_cache = mean_pooling_forward(h, attention_mask)
        norm_cache = None
        if self.normalize:
            e, norm_cache = l2_normalize_forward(e)
        self._cache = (pool_cache, norm_cache)
        return e

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):  # -> [B, K]
        return self.classifier.forward(self.embed(input_ids, attention_mask, token_type_ids))

    def backward(self, dlogits):
        if self._cache is None:
            raise ValueError("dlogits: backward called before forward")
        pool_cache, norm_cache = self._cache
        de = self.classifier.backward(np.asarray(dlogits))
        if norm_cache is not None:
            de = l2_normalize_backward(de, norm_cache)
        self.bert.backward(mean_pooling_backward(de, pool_cache))


class SentenceEncoder:
    """sentence-transformers' pipeline: tokenize, BertModel, mean pooling, L2 normalisation.

    ``encode(sentences) -> [N, H]``, float, in evaluation mode, in batches of ``batch_size``
    padded to their longest sentence; texts longer than ``max_seq_length`` wordpieces are cut
    (the [SEP] kept), as sentence-transformers cuts them.
    ``minift.hub.load_sentence_encoder(folder)`` builds one from a sentence-transformers folder.
    """

    def __init__(self, model: BertModel, tokenizer, max_seq_length: int = 256, normalize=True):
        # checked here, not at the first encode(): 2 is room for [CLS] and [SEP]
        check_int("max_seq_length", max_seq_length, minimum=2)
        if max_seq_length > model.config.max_position_embeddings:
            raise ValueError(
                f"max_seq_length: {max_seq_length} exceeds the model's max_position_embeddings="
                f"{model.config.max_position_embeddings}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)
        self.normalize = bool(normalize)

    def encode(self, sentences, batch_size: int = 32) -> np.ndarray:
        if isinstance(sentences, str):
            raise TypeError("sentences: expected a list of strings, got one string")
        sentences = list(sentences)
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            for start in range(0, len(sentences), batch_size):
                ids, mask = self.tokenizer.encode_batch(
                    sentences[start : start + batch_size], max_length=self.max_seq_length
                )
                e, _ = mean_pooling_forward(self.model.forward(ids, mask), mask)
                out.append(l2_normalize_forward(e)[0] if self.normalize else e)
        finally:
            self.model.train(was_training)
        H = self.model.config.hidden_size
        return np.concatenate(out) if out else np.zeros((0, H), self.model.dtype)
