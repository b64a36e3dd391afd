"""An independent reference for the BERT tests: its forward with plain loops, no minift.

One sequence, one query, one head at a time, from the BERT paper's equations and Hugging Face's
names alone, with weights in torch's [out, in] layout (y = W·x + b), as a checkpoint stores them;
so a test comparing minift with it also checks minift's transposition.
"""

import math

import numpy as np
from scipy.special import erf


def _layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _linear(state, name, x):  # torch layout: weight [out, in]
    return x @ state[name + ".weight"].T + state[name + ".bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def naive_bert_hidden(state, input_ids, attention_mask, token_type_ids, n_layer, n_head, eps):
    """Last hidden state [B, T, H] from a state dict of Hugging Face names, [out, in] weights."""
    out = []
    for ids, mask, types in zip(input_ids, attention_mask, token_type_ids, strict=True):
        x = np.stack(
            [
                state["embeddings.word_embeddings.weight"][t]
                + state["embeddings.token_type_embeddings.weight"][s]
                + state["embeddings.position_embeddings.weight"][i]
                for i, (t, s) in enumerate(zip(ids, types, strict=True))
            ]
        )
        x = _layer_norm(
            x, state["embeddings.LayerNorm.weight"], state["embeddings.LayerNorm.bias"], eps
        )
        T, H = x.shape
        hs = H // n_head
        visible = [j for j in range(T) if mask[j] == 1]
        for layer in range(n_layer):
            p = f"encoder.layer.{layer}."
            q = _linear(state, p + "attention.self.query", x)
            k = _linear(state, p + "attention.self.key", x)
            v = _linear(state, p + "attention.self.value", x)
            ctx = np.zeros_like(x)
            for h in range(n_head):
                sl = slice(h * hs, (h + 1) * hs)
                for i in range(T):  # every query, padding included; keys: the real tokens only
                    scores = [q[i, sl] @ k[j, sl] / math.sqrt(hs) for j in visible]
                    m = max(scores)
                    w = [math.exp(s - m) for s in scores]
                    ctx[i, sl] = sum(
                        wj / sum(w) * v[j, sl] for wj, j in zip(w, visible, strict=True)
                    )
            a = _layer_norm(
                x + _linear(state, p + "attention.output.dense", ctx),
                state[p + "attention.output.LayerNorm.weight"],
                state[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            m = _gelu(_linear(state, p + "intermediate.dense", a))
            x = _layer_norm(
                a + _linear(state, p + "output.dense", m),
                state[p + "output.LayerNorm.weight"],
                state[p + "output.LayerNorm.bias"],
                eps,
            )
        out.append(x)
    return np.stack(out)
