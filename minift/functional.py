"""The math of a GPT, as forward/backward pairs of pure functions.

Every op comes as a pair that sits side by side:

    out, cache = op_forward(inputs...)
    dinputs... = op_backward(dout, cache)

``cache`` holds exactly what the backward pass reads and nothing else. Losses return ``(loss, dx)``
directly. Nothing here keeps state or knows about modules; ``minift.nn`` wraps these pairs
into layers.

Shape legend
    B   batch size
    T   sequence length (queries)             Tk  keys = P + T (extra rows + this sequence)
    P   extra key/value rows (prefix or KV cache)
    C   channels (d_model)                    nh  attention heads, hs = C // nh head size
    V   vocabulary size                       ... any leading shape

All functions keep the dtype of their inputs (float32 to train, float64 to check gradients); the
constants below are Python floats so they never upcast a float32 array (NumPy's NEP 50).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

# ----------------------------------------------------------------------------------------------
# Linear: y = x W + b, with W stored [in, out] as GPT-2 stores it


def linear_forward(x, W, b=None):
    """y = x·W + b.  # [..., in], [in, out], [out] -> [..., out]"""
    # one [N, in]·[in, out] product: NumPy runs a 3-D ``@`` as B separate, smaller ones
    out = (x.reshape(-1, x.shape[-1]) @ W).reshape(*x.shape[:-1], W.shape[1])
    if b is not None:
        out += b
    return out, (x, W, b is not None)


def linear_backward(dout, cache, need_dW=True, need_db=True):
    """dx = dout·Wᵀ, dW = xᵀ·dout (summed over every leading position), db = Σ dout.

    ``need_dW=False`` skips the weight gradient (a frozen W): dx is still computed, because the
    gradient must flow through a frozen layer to the layers below it. ``need_db=False`` skips
    the bias gradient likewise.
    Returns (dx [..., in], dW [in, out] or None, db [out] or None).
    """
    x, W, has_bias = cache
    dout2 = dout.reshape(-1, dout.shape[-1])  # (N, out), every leading position a row
    dx = (dout2 @ W.T).reshape(*dout.shape[:-1], W.shape[0])
    dW = db = None
    if need_dW:
        dW = x.reshape(-1, x.shape[-1]).T @ dout2
    if has_bias and need_db:
        db = dout2.sum(axis=0)
    return dx, dW, db


# ----------------------------------------------------------------------------------------------
# Embedding: out[b, t] = W[ids[b, t]]


def embedding_forward(ids, W):
    """Row lookup.  # int [B, T], [V, C] -> [B, T, C]"""
    return W[ids], (ids, W.shape)


def embedding_backward(dout, cache):
    """dW[v] = Σ of dout over every position where ids == v (a scatter-ADD: repeats accumulate).

    Returns dW [V, C].
    """
    ids, W_shape = cache
    dW = np.zeros(W_shape, dtype=dout.dtype)
    np.add.at(dW, ids.reshape(-1), dout.reshape(-1, W_shape[1]))
    return dW


# ----------------------------------------------------------------------------------------------
# LayerNorm over the last axis: y = (x − μ) / √(σ² + eps) · γ + β


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """# [..., C], [C], [C] -> [..., C]"""
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = xc * rstd
    out = xhat * gamma + beta
    return out, (xhat, rstd, gamma)


def layer_norm_backward(dout, cache):
    """With x̂ = (x − μ)·rstd and g = dout·γ (both [..., C]):

        dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))      (means over the last axis)
        dγ = Σ dout · x̂,   dβ = Σ dout                    (sums over every leading position)

    Returns (dx [..., C], dgamma [C], dbeta [C]).
    """
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    dgamma = (dout * xhat).reshape(-1, C).sum(axis=0)
    dbeta = dout.reshape(-1, C).sum(axis=0)
    g = dout * gamma
    dx = rstd * (
        g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)
    )
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------------
# GELU, the tanh approximation GPT-2 uses, and the exact erf form BERT uses

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def gelu_forward(x):
    """gelu(x) = ½·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³).  # [...] -> [...]"""
    # x·x·x, not x**3: NumPy's power on negative floats is ~200× slower than two multiplies
    t = np.tanh(_GELU_C * (x + _GELU_A * (x * x * x)))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dout, cache):
    """gelu′(x) = ½·(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²),  t = tanh(u)."""
    x, t = cache
    dgelu = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * x * x)
    return dout * dgelu


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_erf_forward(x):
    """gelu(x) = x·Φ(x) = ½·x·(1 + erf(x/√2)), the exact form.  # [...] -> [...]"""
    # Φ by ndtr, not as ½·(1 + erf(x/√2)): for x < 0, erf(x/√2) is close to −1 and the sum keeps
    # few digits (at x = −5, Φ = 2.9e-7 and 1 + erf loses 7 of 16); ndtr takes that tail from
    # erfc, to full relative precision.
    cdf = ndtr(x)
    return x * cdf, (x, cdf)


def gelu_erf_backward(dout, cache):
    """gelu′(x) = Φ(x) + x·φ(x), with φ(x) = exp(−x²/2)/√(2π) the normal density."""
    x, cdf = cache
    return dout * (cdf + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x))


# ----------------------------------------------------------------------------------------------
# Softmax over the last axis


def softmax_forward(x):
    """p = exp(x − max x) / Σ exp(x − max x); subtracting the max changes nothing but overflow."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward(dout, cache):
    """dx = p ⊙ (dout − Σ dout ⊙ p): the Jacobian diag(p) − p·pᵀ applied to dout."""
    p = cache
    return p * (dout - (dout * p).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------------------------
# Dropout (inverted: scale the kept units at train time so evaluation needs nothing)


def dropout_forward(x, p, rng):
    """out = x ⊙ m / (1 − p), m ~ Bernoulli(1 − p). p = 0 (or evaluation) is the identity."""
    if p == 0.0:
        return x, None
    scaled_mask = (rng.random(x.shape) >= p).astype(x.dtype) / (1.0 - p)
    return x * scaled_mask, scaled_mask


def dropout_backward(dout, cache):
    """dx = dout ⊙ m / (1 − p)."""
    return dout if cache is None else dout * cache


# ----------------------------------------------------------------------------------------------
# Causal scaled dot-product attention on heads


def causal_mask(T, Tk, dtype=np.float64):
    """Additive mask [T, Tk]: 0 where query i may see key j, −inf where j is in its future.

    The queries are the LAST T positions of the Tk keys, so query i sits at key position
    i + (Tk − T) and sees every key j ≤ i + (Tk − T). With Tk = T this is the usual triangle; extra
    rows in front (a prefix, or a KV cache of earlier tokens) are visible to every query.
    """
    offset = Tk - T
    future = np.arange(Tk)[None, :] > (np.arange(T)[:, None] + offset)
    return np.where(future, -np.inf, 0.0).astype(dtype)


def attention_forward(q, k, v, mask=None, causal=True):
    """y = softmax(q·kᵀ/√hs + M)·v per head.

    q [B, nh, T, hs], k and v [B, nh, Tk, hs] -> y [B, nh, T, hs]. M is the causal mask above
    (when ``causal``) plus the optional additive ``mask`` (broadcastable to [B, nh, T, Tk]; use a
    large negative finite number, not −inf, where a whole row could be masked).
    """
    T, Tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(hs)
    scores = (q @ k.swapaxes(-1, -2)) * scale  # (B, nh, T, Tk)
    if causal:
        scores += causal_mask(T, Tk, scores.dtype)
    if mask is not None:
        scores += mask
    att, _ = softmax_forward(scores)  # (B, nh, T, Tk)
    y = att @ v  # (B, nh, T, hs)
    return y, (q, k, v, att, scale)


def attention_backward(dy, cache):
    """Forward was s = q·kᵀ·scale, a = softmax(s), y = a·v, so (all per head):

        dv = aᵀ·dy,   da = dy·vᵀ,   ds = softmax_backward(da),   dq = ds·k·scale,   dk = dsᵀ·q·scale

    Returns (dq [B, nh, T, hs], dk [B, nh, Tk, hs], dv [B, nh, Tk, hs]).
    """
    q, k, v, att, scale = cache
    dv = att.swapaxes(-1, -2) @ dy
    datt = dy @ v.swapaxes(-1, -2)
    dscores = softmax_backward(datt, att) * scale
    dq = dscores @ k
    dk = dscores.swapaxes(-1, -2) @ q
    return dq, dk, dv


def split_heads(x, n_head):
    """[B, T, C] -> [B, nh, T, hs]"""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """[B, nh, T, hs] -> [B, T, C]"""
    B, nh, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


def mha_forward(qkv, n_head, mask=None, extra_k=None, extra_v=None):
    """Causal multi-head self-attention on the fused projection qkv = x·W_attn + b_attn.

    qkv [B, T, 3C] holds q, k, v side by side (GPT-2's ``c_attn`` layout). ``extra_k``/``extra_v``
    [B, nh, P, hs] are key/value rows placed in front of this sequence's own keys: trainable
    prefixes (prefix tuning) or the cached keys of earlier tokens (generation). Every query sees
    all P of them. Returns y [B, T, C] (heads merged, before the output projection) and the cache.
    """
    C = qkv.shape[-1] // 3
    q, k, v = (split_heads(qkv[..., i * C : (i + 1) * C], n_head) for i in range(3))
    P = 0
    if extra_k is not None:
        P = extra_k.shape[2]
        k = np.concatenate([extra_k, k], axis=2)  # (B, nh, P + T, hs)
        v = np.concatenate([extra_v, v], axis=2)
    y, att_cache = attention_forward(q, k, v, mask=mask, causal=True)
    return merge_heads(y), (att_cache, P)


def mha_backward(dy, cache):
    """Returns (dqkv [B, T, 3C], dextra_k [B, nh, P, hs] or None, dextra_v or None)."""
    att_cache, P = cache
    n_head = att_cache[0].shape[1]
    dq, dk, dv = attention_backward(split_heads(dy, n_head), att_cache)
    dextra_k = dextra_v = None
    if P:
        dextra_k, dk = dk[:, :, :P], dk[:, :, P:]
        dextra_v, dv = dv[:, :, :P], dv[:, :, P:]
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
    return dqkv, dextra_k, dextra_v


# ----------------------------------------------------------------------------------------------
# Losses: each returns (loss, d loss / d input)


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy over the targets that are not ``ignore_index``.

        loss = (1/N) Σ_kept [ logsumexp(z) − z[y] ],   N = number of kept targets
        dz   = (softmax(z) − onehot(y)) / N  on kept rows, 0 on ignored rows

    logits [..., V] float, targets [...] int in [0, V) or == ignore_index (as PyTorch, −100 by
    default: the prompt tokens of an instruction example are ignored this way).
    The log-sum-exp subtracts the row maximum first, so logits of ±1e4 neither overflow nor
    underflow. Returns (loss: float, dlogits [..., V]).
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.dtype.kind != "f":
        raise TypeError(f"logits: expected a floating-point array, got dtype {logits.dtype}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets: expected an integer array, got dtype {targets.dtype}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets: expected shape {logits.shape[:-1]} (logits without the vocab axis), "
            f"got {targets.shape}"
        )
    V = logits.shape[-1]
    kept = targets != ignore_index
    bad = kept & ((targets < 0) | (targets >= V))
    if bad.any():
        raise ValueError(
            f"targets: expected ids in [0, {V}) or ignore_index={ignore_index}, "
            f"got {targets[bad].reshape(-1)[0]}"
        )
    n_kept = int(kept.sum())
    if n_kept == 0:
        raise ValueError(f"targets: every target equals ignore_index={ignore_index}; no loss")

    z = logits.reshape(-1, V)
    y = np.where(kept, targets, 0).reshape(-1)
    shifted = z - z.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    sumexp = exp.sum(axis=-1, keepdims=True)
    rows = np.arange(z.shape[0])
    log_prob_target = shifted[rows, y] - np.log(sumexp[:, 0])  # (N_all,)
    keep = kept.reshape(-1)
    loss = -float(log_prob_target[keep].sum()) / n_kept

    dz = exp / sumexp
    dz[rows, y] -= 1.0
    dz *= (keep / n_kept).astype(z.dtype)[:, None]
    return loss, dz.reshape(logits.shape)


def squared_error(f, y):
    """The article's squared loss (A7), averaged over the N entries: L = (1/N) Σ (y − f)².

    The article writes ∂L/∂θ = 2(y − f)·∂f/∂θ; the sign is wrong. The chain rule gives
        ∂L/∂f = −2(y − f)/N = 2(f − y)/N,
    so gradient descent moves f TOWARDS y. Returns (loss: float, df [same shape as f]).
    """
    f = np.asarray(f)
    y = np.asarray(y)
    if f.shape != y.shape:
        raise ValueError(f"y: expected the shape of the prediction {f.shape}, got {y.shape}")
    diff = f - y
    return float((diff * diff).mean()), (2.0 / diff.size) * diff
