"""An independent reference for the tests: the GPT forward written with plain loops, no minift.

Slow and obvious on purpose (one query, one head at a time), from the GPT-2 equations alone, so
that a test comparing minift with it compares two separate derivations of the same math.
"""

import math

import numpy as np


def naive_causal_attention(q, k, v):
    """q [B, nh, T, hs], k/v [B, nh, Tk, hs]; query i is key position i + Tk − T."""
    B, nh, T, hs = q.shape
    Tk = k.shape[2]
    y = np.zeros_like(q)
    for b in range(B):
        for h in range(nh):
            for i in range(T):
                visible = i + (Tk - T) + 1
                scores = [q[b, h, i] @ k[b, h, j] / math.sqrt(hs) for j in range(visible)]
                m = max(scores)
                w = [math.exp(s - m) for s in scores]
                total = sum(w)
                y[b, h, i] = sum(w[j] / total * v[b, h, j] for j in range(visible))
    return y


def _layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def naive_gpt_logits(state, idx, n_layer, n_head):
    """GPT-2 logits from a state dict of GPT-2 names, one sequence at a time."""
    out = []
    for seq in idx:
        T = len(seq)
        x = np.stack([state["wte.weight"][t] + state["wpe.weight"][i] for i, t in enumerate(seq)])
        C = x.shape[1]
        hs = C // n_head
        for layer in range(n_layer):
            p = f"h.{layer}."
            a = _layer_norm(x, state[p + "ln_1.weight"], state[p + "ln_1.bias"])
            qkv = a @ state[p + "attn.c_attn.weight"] + state[p + "attn.c_attn.bias"]
            q, k, v = qkv[:, :C], qkv[:, C : 2 * C], qkv[:, 2 * C :]
            heads = []
            for h in range(n_head):
                sl = slice(h * hs, (h + 1) * hs)
                heads.append(
                    naive_causal_attention(
                        q[None, None, :, sl], k[None, None, :, sl], v[None, None, :, sl]
                    )[0, 0]
                )
            y = np.concatenate(heads, axis=1)
            x = x + y @ state[p + "attn.c_proj.weight"] + state[p + "attn.c_proj.bias"]
            m = _layer_norm(x, state[p + "ln_2.weight"], state[p + "ln_2.bias"])
            m = _gelu(m @ state[p + "mlp.c_fc.weight"] + state[p + "mlp.c_fc.bias"])
            x = x + m @ state[p + "mlp.c_proj.weight"] + state[p + "mlp.c_proj.bias"]
        x = _layer_norm(x, state["ln_f.weight"], state["ln_f.bias"])
        out.append(x @ state["wte.weight"].T)
        assert out[-1].shape[0] == T
    return np.stack(out)
