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

Fused variants. Beneath some clear pairs sits a variant written for speed, named for what it does
differently (``_fused``, ``_inplace``, ``_sorted``, ``_cached``) and reading the same cache. NumPy
allocates a new array for every ``a * b``, so a chain of n operations on an [N, C] activation
walks n arrays of that size; writing into an array the function itself owns (``out=``, ``*=``)
walks memory fewer times. An input array is never modified. The order of float operations
changes in places, so results may differ in the last bits: tests/test_functional_fused.py proves
each variant equal to its clear pair (1e-12 relative in float64). The layers of ``minift.nn``
run the fused variants; ``minift.nn.clear_ops()`` makes them run the clear pairs.
"""

from __future__ import annotations

import functools
import math

import numpy as np

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


def embedding_backward_sorted(dout, cache):
    """Same dW as ``embedding_backward``, summed by sorting instead of ``np.add.at``.

    Sort the ids, then sum each run of equal ids with one ``np.add.reduceat``: several times
    faster, the sums taken in another order. Returns dW [V, C].
    """
    ids, W_shape = cache
    ids = ids.reshape(-1)
    dout = dout.reshape(-1, W_shape[1])
    dW = np.zeros(W_shape, dtype=dout.dtype)
    if ids.size == 0:
        return dW
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # first of each run
    dW[sorted_ids[starts]] = np.add.reduceat(dout[order], starts, axis=0)
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


def layer_norm_forward_fused(x, gamma, beta, eps=1e-5):
    """Same as ``layer_norm_forward``, bit for bit, with three temporaries instead of five.

    x − μ is normalised in place; the operations and their order are the clear pair's.
    # [..., C], [C], [C] -> [..., C]
    """
    xhat = x - x.mean(axis=-1, keepdims=True)  # x − μ, ours to overwrite
    out = np.square(xhat)  # (x − μ)², a buffer that becomes the output
    var = out.mean(axis=-1, keepdims=True)
    var += eps
    rstd = np.sqrt(var, out=var)
    np.divide(1.0, rstd, out=rstd)
    xhat *= rstd
    np.multiply(xhat, gamma, out=out)
    out += beta
    return out, (xhat, rstd, gamma)


def layer_norm_backward_fused(dout, cache, need_dparams=True):
    """Same as ``layer_norm_backward``, with g = dout·γ turned into dx in place.

    The row means are taken by einsum, so dx can differ from the clear pair's in the last bits.
    ``need_dparams=False`` (a frozen γ and β, as under LoRA) skips dγ and dβ and returns None
    for them. Returns (dx [..., C], dgamma [C] or None, dbeta [C] or None).
    """
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    dgamma = dbeta = None
    if need_dparams:
        dgamma = np.einsum("nc,nc->c", dout.reshape(-1, C), xhat.reshape(-1, C))
        dbeta = dout.reshape(-1, C).sum(axis=0)
    g = dout * gamma  # becomes dx
    mean_g = np.einsum("...i->...", g)[..., None]  # row sums: einsum is faster than .mean here
    mean_g /= C
    mean_gx = np.einsum("...i,...i->...", g, xhat)[..., None]
    mean_gx /= C
    g -= mean_g
    g -= xhat * mean_gx
    g *= rstd
    return g, dgamma, dbeta


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


def gelu_forward_fused(x):
    """Same as ``gelu_forward``, in two buffers: t = tanh(u) and the output.  # [...] -> [...]

    The clear pair allocates an array per operation; here u is built in t's buffer, as
    √(2/π)·x·(1 + 0.044715·x²): the same value, grouped otherwise. And tanh(u) is taken as
    2/(1 + e^(−2u)) − 1, the same value again: NumPy's exp is vectorised and its tanh is not,
    and tanh was the costliest operation of the whole MLP but its matmuls. Where u → −∞,
    e^(−2u) overflows to inf (not an error here) and t becomes −1, as tanh does.
    """
    t = x * x
    t *= _GELU_A
    t += 1.0
    t *= x  # x + 0.044715·x³, written x·(1 + 0.044715·x²)
    t *= -2.0 * _GELU_C  # −2u
    with np.errstate(over="ignore"):
        np.exp(t, out=t)
    t += 1.0
    np.divide(2.0, t, out=t)
    t -= 1.0  # tanh(u)
    out = t + 1.0
    out *= x
    out *= 0.5
    return out, (x, t)


def gelu_backward_fused(dout, cache):
    """Same as ``gelu_backward``, with gelu′ built in one buffer (plus one for 1 − t²)."""
    x, t = cache
    d = x * x
    d *= 3.0 * _GELU_A * _GELU_C
    d += _GELU_C  # √(2/π)·(1 + 3·0.044715·x²)
    d *= x
    one_minus_t2 = t * t
    np.subtract(1.0, one_minus_t2, out=one_minus_t2)
    d *= one_minus_t2  # x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)
    d += t
    d += 1.0
    d *= 0.5
    d *= dout
    return d


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_erf_forward(x):
    """gelu(x) = x·Φ(x) = ½·x·(1 + erf(x/√2)), the exact form.  # [...] -> [...]"""
    # Φ by ndtr, not as ½·(1 + erf(x/√2)): for x < 0, erf(x/√2) is close to −1 and the sum keeps
    # few digits (at x = −5, Φ = 2.9e-7 and 1 + erf loses 7 of 16); ndtr takes that tail from
    # erfc, to full relative precision.
    from scipy.special import ndtr  # here: only BERT needs it, and scipy takes ½ s to import

    cdf = ndtr(x)
    return x * cdf, (x, cdf)


def gelu_erf_backward(dout, cache):
    """gelu′(x) = Φ(x) + x·φ(x), with φ(x) = exp(−x²/2)/√(2π) the normal density."""
    x, cdf = cache
    return dout * (cdf + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x))


# p(t) of normal_cdf_float32, lowest degree first: the degree-9 least-squares fit (Chebyshev
# basis, in float64, on 400,001 points of z ∈ [0, 12]) of log(erfc(z)/t) + z², t = 1/(1 + z/2);
# in float64 the fit is within 3.1e-7 of erfc (tests/test_functional.py refits it).
_ERFC_POLY = np.array(
    [-1.26550417, 0.99988837, 0.37480153, 0.09648511, -0.19680063,
     0.32350827, -1.22231164, 1.580516, -0.87300915, 0.18242662],
    dtype=np.float32,
)  # fmt: skip


def normal_cdf_float32(x):
    """Φ(x) for float32 x, as ½·erfc(|x|/√2) (x < 0) or 1 − ½·erfc(|x|/√2), with

        erfc(z) = t·exp(p(t) − z²),   t = 1/(1 + z/2),   p the polynomial above

    one exp and a Horner loop over whole arrays, where scipy's ndtr takes each float32 element
    through double precision alone (2.5× slower here, and the largest cost of a MiniLM step but
    its matmuls). Relative error against float64's Φ, as the tests hold it: below 1e-6 for
    x ≥ −2, below 2e-5 down to x = −12 (there Φ = 2e-33 and z² = 72 holds few float32 digits);
    never the 1 + erf(x/√2) cancellation of the erf form.
    """
    z = np.abs(x)
    z *= np.float32(1.0 / math.sqrt(2.0))
    t = z * np.float32(0.5)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    p = np.full_like(x, _ERFC_POLY[-1])
    for c in _ERFC_POLY[-2::-1]:
        p *= t
        p += c
    with np.errstate(over="ignore"):  # |x| > 1e19: z² is inf, erfc 0, as it should be
        z *= z
    p -= z
    np.exp(p, out=p)
    p *= t
    p *= np.float32(0.5)  # ½·erfc(|x|/√2) = Φ(−|x|)
    return np.where(x < 0, p, np.float32(1.0) - p)


def gelu_erf_forward_fused(x):
    """Same as ``gelu_erf_forward``; for float32 x with Φ from ``normal_cdf_float32`` (float64
    keeps scipy's ndtr: a float32 fit cannot match it there). The cache is the clear pair's, so
    ``gelu_erf_backward`` is the backward of both."""
    if x.dtype != np.float32:
        return gelu_erf_forward(x)
    cdf = normal_cdf_float32(x)
    return x * cdf, (x, cdf)


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


def softmax_inplace(x):
    """Same p as ``softmax_forward``, written over x [..., n] and returned: no temporaries.

    For an array the caller owns and no longer needs, such as attention scores; p is the cache.
    """
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= np.einsum("...i->...", x)[..., None]  # row sums: einsum is ~4× faster than .sum here
    return x


def softmax_backward_inplace(dout, p):
    """Same dx as ``softmax_backward``, written over dout (the caller owns it) and returned."""
    s = np.einsum("...i,...i->...", dout, p)[..., None]  # Σ dout ⊙ p without a full temporary
    dout -= s
    dout *= p
    return dout


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


def causal_mask_cached(T, Tk, dtype=np.float64):
    """Same mask as ``causal_mask``, built once per (T, Tk, dtype) and shared: read-only."""
    return _causal_mask_by_dtype_str(int(T), int(Tk), np.dtype(dtype).str)


@functools.lru_cache(maxsize=64)
def _causal_mask_by_dtype_str(T: int, Tk: int, dtype_str: str) -> np.ndarray:
    mask = causal_mask(T, Tk, np.dtype(dtype_str))
    mask.flags.writeable = False  # every caller gets this one array: nobody may edit it
    return mask


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


def mha_forward_fused(qkv, n_head, mask=None):
    """Same as ``mha_forward`` (no extra key rows), with one [B, nh, T, T] array, not five.

    q is scaled before q·kᵀ (a [T, hs] array, not a [T, T] one), the scores become the softmax
    in place, and a·v is written straight into the [B, T, C] output through a (B, nh, T, hs)
    view of it. The cache is ``mha_forward``'s. qkv [B, T, 3C] -> y [B, T, C].
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = (split_heads(qkv[..., i * C : (i + 1) * C], n_head) for i in range(3))
    scale = 1.0 / math.sqrt(hs)
    att = (q * scale) @ k.swapaxes(-1, -2)  # (B, nh, T, T)
    att += causal_mask_cached(T, T, att.dtype)
    if mask is not None:
        att += mask
    softmax_inplace(att)
    y = np.empty((B, T, n_head, hs), dtype=att.dtype)
    np.matmul(att, v, out=y.transpose(0, 2, 1, 3))  # (B, nh, T, hs), written as (B, T, nh, hs)
    return y.reshape(B, T, C), ((q, k, v, att, scale), 0)


def mha_backward_fused(dy, cache):
    """Same as ``mha_backward``, writing dq, dk, dv into one [B, T, 3C] buffer: no concatenate.

    dq, dk, dv go through (B, nh, T, hs) views of the buffer's three blocks instead of three
    merged copies; ds is made from da in place, so one [B, nh, T, T] array, not five; the scale
    multiplies dq and dk ([T, hs] each) rather than ds ([T, Tk]). With extra key rows (P > 0)
    this is ``mha_backward``.
    """
    (q, k, v, att, scale), P = cache
    if P:
        return mha_backward(dy, cache)
    B, nh, T, hs = q.shape
    dqkv = np.empty((B, T, 3, nh, hs), dtype=dy.dtype)
    dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, nh, T, hs)
    dy = split_heads(dy, nh)  # (B, nh, T, hs)
    np.matmul(att.swapaxes(-1, -2), dy, out=dv)
    dscores = dy @ v.swapaxes(-1, -2)  # da, (B, nh, T, T)
    softmax_backward_inplace(dscores, att)  # ds, before the scale
    np.matmul(dscores, k, out=dq)
    dq *= scale
    np.matmul(dscores.swapaxes(-1, -2), q, out=dk)
    dk *= scale
    return dqkv.reshape(B, T, 3 * nh * hs), None, None


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
