r"""The article's literal equations that are not methods: each one as written, and as it should be.

The methods the article names live in minift/peft/ (A3 sharing.py, A4 sparse.py, A5/A6 lora.py).
What is left here are the article's worked equations, kept so a reader can run each one and see
where it goes wrong, with the correction beside it:

    label  what the article writes                   here
    A7     L = (y − f)², ∂L/∂θ = 2(y − f)·∂f/∂θ      ``squared_error``: the loss, and its gradient
                                                     with the sign the chain rule gives
    A8     f(x; θ) = f(x; W₁) ⊙ σ(W₁ ⊙ D)            ``gated_forward`` / ``gated_backward``
    A9     ∂f/∂W₁ = ∂f(x; W₁)/∂W₁ ⊙ ∂σ(W₁ ⊙ D)/∂W₁  ``article_a9_gradient``: as written, WRONG;
                                                     ``gated_backward``: the product rule

(A5's literal W = L·G, "L low-rank, G Gaussian", is a reading of LoRA, not code of its own:
lora.py's docstring maps it to W₀ + s·B·A.)

A7: the squared loss (§4.2.1)
-----------------------------
L = (1/N) Σ (y − f)² over the N entries of the prediction f. The article's gradient has the
wrong sign: ∂L/∂f = −2(y − f)/N = 2(f − y)/N, which moves f TOWARDS y under gradient descent;
the article's 2(y − f) moves it away (the tests take a step each way).

A8 and A9: the worked model and its gradient (§4.2.2)
-----------------------------------------------------
§4.2.2 combines A4's sparse weight with a layer of W₁ into one model and differentiates it:

    f(x; θ) = f(x; W₁) ⊙ σ(W₁ ⊙ D)                                            (A8)
    ∂f/∂W₁ = ∂f(x; W₁)/∂W₁ ⊙ ∂σ(W₁ ⊙ D)/∂W₁                                   (A9)

For ⊙ to make sense, f(x; W₁) must have W₁'s shape [in, out]. It does if f(x; W₁) is read
connection by connection: the message that connection i → j carries is xᵢ·W₁ᵢⱼ; A8 gates it by
σ(W₁ᵢⱼ·Dᵢⱼ); the output sums the gated messages over i, as a linear layer does:

    yⱼ = Σᵢ xᵢ · W₁ᵢⱼ · σ(W₁ᵢⱼ Dᵢⱼ),   i.e.   y = x · W_eff,   W_eff = W₁ ⊙ σ(W₁ ⊙ D)

This is the reading minift implements (``gated_forward`` / ``gated_backward``): the only one where
A8's ⊙ is a true elementwise product of two arrays of one shape, with f(x; W₁) linear in x.
(A quirk it exposes: with σ = identity, W_eff = W₁² ⊙ D ≥ 0, so the layer can only ever have
non-negative weights.) W_eff is a PRODUCT of two factors that both depend on W₁, so its
derivative needs the product rule, d(u·v) = u′·v + u·v′:

    ∂W_effᵢⱼ/∂W₁ᵢⱼ = σ(zᵢⱼ) + W₁ᵢⱼ · Dᵢⱼ · σ′(zᵢⱼ),      z = W₁ ⊙ D
    ∂L/∂W₁ = G ⊙ (σ(z) + W₁ ⊙ D ⊙ σ′(z)),                G = xᵀ·dy

A9 multiplies the two derivatives instead, u′·v′: per connection ∂(xᵢW₁ᵢⱼ)/∂W₁ᵢⱼ = xᵢ times
∂σ(W₁ᵢⱼDᵢⱼ)/∂W₁ᵢⱼ = Dᵢⱼ σ′(zᵢⱼ), which summed over the batch is

    ∂L/∂W₁ (A9) = G ⊙ D ⊙ σ′(z)                          (``article_a9_gradient``)

It drops σ(z) and the factor W₁; it is not even one of the product rule's two terms. The tests
hold a finite-difference gradient to the product rule (< 1e-7) and show A9 off by far more.

σ is A4's (sparse.py): identity or tanh.

Shape legend: N entries (any leading shape ...), d_in / d_out a layer's in / out. Weights are
[in, out], as everywhere in minift.
"""

from __future__ import annotations

import numpy as np

from minift import functional as F
from minift.peft.sparse import activation_backward, activation_forward

__all__ = ["article_a9_gradient", "gated_backward", "gated_forward", "squared_error"]

# ------------------------------------------------------------------------------------------------
# A7: the squared loss, with the sign the chain rule gives


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


# ------------------------------------------------------------------------------------------------
# A8: the gated model, and its gradient by the product rule; A9: the article's gradient


def gated_forward(x, W1, D, activation):
    """A8, read connection by connection: y = x·W_eff, W_eff = W₁ ⊙ σ(W₁ ⊙ D).

    x [..., in], W1 [in, out], D 0/1 [in, out] -> y [..., out]
    """
    gate, act_cache = activation_forward(W1 * D, activation)  # σ(W₁ ⊙ D) (in, out)
    W_eff = W1 * gate  # (in, out)
    y, linear_cache = F.linear_forward(x, W_eff, None)
    return y, (linear_cache, W1, D, gate, act_cache)


def gated_backward(dy, cache):
    """Returns (dx [..., in], dW1 [in, out]), with the PRODUCT RULE:

    G = xᵀ·dy;   ∂L/∂W₁ = G ⊙ σ(z)  +  G ⊙ W₁ ⊙ D ⊙ σ′(z),   z = W₁ ⊙ D
                          (u′·v)       (u·v′)
    """
    linear_cache, W1, D, gate, act_cache = cache
    dx, G, _ = F.linear_backward(dy, linear_cache)
    dgate = G * W1  # forward was W_eff = W₁ · gate: the gate's share …
    dW1 = G * gate + D * activation_backward(dgate, act_cache)  # … W₁'s own share, plus it via z
    return dx, dW1


def article_a9_gradient(x, W1, D, activation, dy):
    """∂L/∂W₁ as A9 writes it: the product of the two factors' derivatives, no product rule.

    Per connection ∂(xᵢW₁ᵢⱼ)/∂W₁ᵢⱼ = xᵢ and ∂σ(W₁ᵢⱼDᵢⱼ)/∂W₁ᵢⱼ = Dᵢⱼσ′(zᵢⱼ); their product,
    weighted by dy and summed over the batch: G ⊙ D ⊙ σ′(z). WRONG (tests show it).
    x [..., in], W1 [in, out], D [in, out], dy [..., out] -> [in, out]
    """
    G = x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])  # (in, out)
    _, act_cache = activation_forward(W1 * D, activation)
    return D * activation_backward(G, act_cache)
