"""Fast paths: the ops of ``minift.functional`` again, written for speed. Same math, same caches.

``functional.py`` is the textbook: each op as its formula reads. This file holds the versions the
layers of ``minift.nn`` actually run in training. Each one computes exactly what the clear version
of the same name computes (``tests/test_fast.py`` proves it, op by op, in float64), and its name
says what it does differently:

    causal_mask_cached        the [T, Tk] mask built once per (T, Tk, dtype), read-only, reused
    embedding_backward_sorted the scatter-add as a sort and one np.add.reduceat
    softmax_inplace           softmax overwriting an array the caller owns (no temporaries)
    layer_norm_forward_fused  fewer temporaries (x − μ normalised in place), bit-identical
    layer_norm_backward_fused fewer temporaries; skips dγ, dβ when the caller does not need them
    gelu_forward_fused        the tanh argument built in one buffer, the output in another
    gelu_backward_fused       gelu′ built in one buffer, reusing t = tanh(u) from the forward
    mha_forward_fused         q scaled before q·kᵀ; the scores become the softmax in place; a·v
                              written straight into the [B, T, C] output (no merge copy)
    mha_backward_into_qkv     dq, dk, dv written straight into one [B, T, 3C] buffer (no concat)

The tricks, once: NumPy allocates a new array for every ``a * b``; a chain of n such operations
on an [N, C] activation allocates and walks n arrays of that size. Writing into an array this
function owns (``out=``, ``*=``) walks memory fewer times and keeps the caches small. An input
array is never modified. Results can differ from the clear versions in the last bits (the order
of float operations changes in places); the tests state the tolerance.

Shape legend: as in functional.py (B batch, T queries, Tk keys, C channels, nh heads, hs head
size, P extra key rows, ... any leading shape).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from minift.functional import _GELU_A, _GELU_C, causal_mask, split_heads

# ----------------------------------------------------------------------------------------------
# The causal mask, built once


@functools.lru_cache(maxsize=64)
def _causal_mask_by_dtype_str(T: int, Tk: int, dtype_str: str) -> np.ndarray:
    mask = causal_mask(T, Tk, np.dtype(dtype_str))
    mask.flags.writeable = False  # shared by every call: nobody may edit it
    return mask


def causal_mask_cached(T, Tk, dtype=np.float64):
    """``functional.causal_mask(T, Tk, dtype)``, built once per (T, Tk, dtype), read-only."""
    return _causal_mask_by_dtype_str(int(T), int(Tk), np.dtype(dtype).str)


# ----------------------------------------------------------------------------------------------
# Softmax


def softmax_inplace(x):
    """Overwrites x [..., n] with softmax(x) over the last axis and returns it (x is the cache).

    For an array the caller owns and no longer needs, such as attention scores.
    """
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= np.einsum("...i->...", x)[..., None]  # row sums: einsum is ~4× faster than .sum here
    return x


def softmax_backward_inplace(dout, p):
    """Overwrites dout with p ⊙ (dout − Σ dout ⊙ p) and returns it (the caller owns dout)."""
    s = np.einsum("...i,...i->...", dout, p)[..., None]  # Σ dout ⊙ p without a full temporary
    dout -= s
    dout *= p
    return dout


# ----------------------------------------------------------------------------------------------
# Embedding backward


def embedding_backward_sorted(dout, cache):
    """``functional.embedding_backward`` without ``np.add.at``: sort the ids, then sum each run
    of equal ids with one ``np.add.reduceat`` (several times faster; sums in another order).

    Returns dW [V, C].
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
# LayerNorm


def layer_norm_forward_fused(x, gamma, beta, eps=1e-5):
    """``functional.layer_norm_forward`` with three temporaries, not five, and bit for bit the
    same result: the same operations in the same order.  # [..., C] -> [..., C]"""
    xhat = x - x.mean(axis=-1, keepdims=True)  # x − μ, ours to overwrite
    out = np.square(xhat)  # (x − μ)², a buffer that becomes the output
    var = out.mean(axis=-1, keepdims=True)
    var += eps
    rstd = np.sqrt(var, out=var)
    np.divide(1.0, rstd, out=rstd)  # 1/√(σ² + eps)
    xhat *= rstd
    np.multiply(xhat, gamma, out=out)
    out += beta
    return out, (xhat, rstd, gamma)


def layer_norm_backward_fused(dout, cache, need_dparams=True):
    """``functional.layer_norm_backward`` with fewer temporaries:

        dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)),   g = dout · γ

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
    mean_g = np.einsum("...i->...", g)[..., None]  # row sums by einsum, faster than .mean
    mean_g /= C
    mean_gx = np.einsum("...i,...i->...", g, xhat)[..., None]
    mean_gx /= C
    g -= mean_g
    g -= xhat * mean_gx
    g *= rstd
    return g, dgamma, dbeta


# ----------------------------------------------------------------------------------------------
# GELU (tanh approximation)


def gelu_forward_fused(x):
    """``functional.gelu_forward`` in two buffers: t = tanh(u) and the output.  [...] -> [...]"""
    t = x * x
    t *= _GELU_A
    t += 1.0
    t *= x  # x + 0.044715·x³, written x·(1 + 0.044715·x²)
    t *= _GELU_C
    np.tanh(t, out=t)
    out = t + 1.0
    out *= x
    out *= 0.5
    return out, (x, t)


def gelu_backward_fused(dout, cache):
    """gelu′(x) = ½·(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²), in one buffer."""
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


# ----------------------------------------------------------------------------------------------
# Multi-head attention on the fused projection


def mha_forward_fused(qkv, n_head, mask=None):
    """``functional.mha_forward`` without extra key rows: q is scaled before q·kᵀ (a [T, hs]
    array, not a [T, T] one), the scores become the softmax in place, and a·v is written straight
    into the [B, T, C] output through a (B, nh, T, hs) view of it.

    qkv [B, T, 3C] -> y [B, T, C] and the cache ``functional.mha_backward`` reads.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = (split_heads(qkv[..., i * C : (i + 1) * C], n_head) for i in range(3))
    scale = 1.0 / math.sqrt(hs)
    att = (q * scale) @ k.swapaxes(-1, -2)  # (B, nh, T, T); scaling q is T/hs times cheaper
    att += causal_mask_cached(T, T, att.dtype)
    if mask is not None:
        att += mask
    softmax_inplace(att)
    y = np.empty((B, T, n_head, hs), dtype=att.dtype)
    np.matmul(att, v, out=y.transpose(0, 2, 1, 3))  # (B, nh, T, hs), written as (B, T, nh, hs)
    return y.reshape(B, T, C), ((q, k, v, att, scale), 0)


def mha_backward_into_qkv(dy, cache):
    """``functional.mha_backward`` writing dq, dk, dv into one [B, T, 3C] buffer, through
    (B, nh, T, hs) views of its three blocks, instead of concatenating three merged copies.

    Forward was s = q·kᵀ·scale, a = softmax(s), y = a·v, so (all per head):

        dv = aᵀ·dy,   da = dy·vᵀ,   ds = softmax_backward(da),   dq = ds·k·scale,   dk = dsᵀ·q·scale

    The scale is applied to dq and dk ([T, hs] each) rather than to ds ([T, Tk]).
    Falls back to the clear version when there are extra key rows (P > 0).
    """
    from minift.functional import mha_backward

    (q, k, v, att, scale), P = cache
    if P:
        return mha_backward(dy, cache)
    B, nh, T, hs = q.shape
    C = nh * hs
    dqkv = np.empty((B, T, 3, nh, hs), dtype=dy.dtype)
    dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, nh, T, hs)
    dy = split_heads(dy, nh)  # (B, nh, T, hs)
    np.matmul(att.swapaxes(-1, -2), dy, out=dv)
    dscores = dy @ v.swapaxes(-1, -2)  # da, (B, nh, T, T)
    softmax_backward_inplace(dscores, att)  # ds without the scale
    np.matmul(dscores, k, out=dq)
    dq *= scale
    np.matmul(dscores.swapaxes(-1, -2), q, out=dk)
    dk *= scale
    return dqkv.reshape(B, T, 3 * C), None, None
