r"""Supervised fine-tuning: choosing which parameters train (the article's §2.1, §3.2.1, A1, A2).

What the article says
---------------------
SFT is: prepare labelled data → load a pretrained model → "add extra layers, or adjust the
parameters of some layers" and train → evaluate and tune. The training itself is A1 and A2,

    min_θ L(θ, x, y)                    (A1)
    θ ← θ − α · ∂L/∂θ                   (A2)

Every policy in this file answers one question: WHICH parameters does A2 update? Call that set
𝒯 ⊆ θ. Then A2 runs only over 𝒯,

    θᵢ ← θᵢ − α · ∂L/∂θᵢ      for θᵢ ∈ 𝒯;      θᵢ stays pretrained for θᵢ ∉ 𝒯

and in minift "θᵢ ∉ 𝒯" is one flag, ``Param.trainable = False``. A frozen Param gets no dW (its
layer skips the weight gradient, the optimizer skips the Param and keeps no state for it), but
the gradient still flows THROUGH it: a frozen block passes dx down to a trainable block below.
(A frozen bottom of the network still costs its dx here; a faster engine would stop the
backward pass at the lowest trainable layer.)

The policies, "adjust some layers"
----------------------------------
- ``full_finetune``: 𝒯 = everything.
- ``head_only``: 𝒯 = the head. For a classifier that is ``score`` [C, K]. For a language model
  the head is the TIED token embedding: logits = h·wteᵀ (model.py), so there is no separate head
  to train. minift's choice: ``head_only`` on a GPT trains ``wte`` alone (and so also moves the
  input embeddings, the honest consequence of tying); ``ln_f`` belongs to ``last_k_blocks``.
  A model with neither ``score`` nor ``wte`` is a TypeError.
- ``last_k_blocks(k)``: 𝒯 = blocks h.{L−k} … h.{L−1}, the final LayerNorm ``ln_f`` and the head.
  k = 0 is the head and ln_f; k = L is everything but the embeddings (wpe, and wte for a
  classifier).
- ``freeze_by_pattern``: set the flag of every parameter whose name a regular expression finds
  (``re.search``), e.g. ``freeze_by_pattern(model, [r"\.ln_"], trainable=True)`` after
  ``head_only`` also trains every LayerNorm.
- ``GradualUnfreezing`` (gradual.py): ULMFiT's schedule of these policies, one stage an epoch.

Which modules are the head, the blocks and ``ln_f`` is read from the model's class, as
``hf_fan_in_fan_out`` is (class attributes ``sft_head``, ``sft_blocks``, ``sft_final_norm``);
a class that declares none is read as a GPT, with the names above. ``BertSentenceClassifier``
declares ``classifier``, ``bert.encoder.layer`` and no final norm: BERT is post-LN, every block
ends in its own LayerNorm, so there is no ``ln_f`` outside the blocks. On it ``last_k_blocks``
trains the top k encoder layers and the classifier; k = L is everything but the embeddings (and
the pooler, which the classifier does not read).

"Add extra layers"
------------------
``add_classification_head(lm, num_labels)`` puts a new head ``score`` [C, K] on a pretrained
GPT: logits = h[b, last non-pad position] · score. The new model SHARES the body's Params with
``lm`` (the same objects, so freezing one freezes the other) and the head starts at random, so
the classifier's first predictions are noise. That is why head-only training, then unfreezing,
is the classic order.

Every policy sets flags and returns the model, so they chain::

    clf = head_only(add_classification_head(lm, num_labels=2, seed=0))

and each has a PeftConfig (``FullFinetuneConfig``, ``HeadOnlyConfig``, ``LastKBlocksConfig``),
so one training loop treats SFT like every other method: ``get_peft_model(model, config)``
freezes everything, then ``apply`` unfreezes 𝒯. These configs wrap no layer, so
``merge_and_unload()`` has nothing to fold and returns the model itself; the "adapter" that
``save_pretrained`` writes is every trainable parameter.

Trainable counts, in closed form
--------------------------------
With C = d_model, V = vocab_size, P = block_size (positions), L = n_layer, K = num_labels:

    one block      12C² + 13C      (ln_1 2C, c_attn 3C² + 3C, c_proj C² + C, ln_2 2C,
                                    c_fc 4C² + 4C, mlp.c_proj 4C² + C)
    ln_f           2C
    head           C·K for a classifier (``score``, no bias), V·C for a GPT (the tied wte)

    full           V·C + P·C + L·(12C² + 13C) + 2C  (+ C·K for a classifier)
    head_only      head
    last_k_blocks  k·(12C² + 13C) + 2C + head

For BertSentenceClassifier, with H = hidden_size, I = intermediate_size:

    one block      4H² + 2H·I + 9H + I   (query, key, value, attention.output.dense 4H² + 4H,
                                          two LayerNorms 4H, intermediate H·I + I, output I·H + H;
                                          12H² + 13H when I = 4H, as in all-MiniLM-L6-v2)
    head           H·K + K              (``classifier``, with a bias)
    last_k_blocks  k·(4H² + 2H·I + 9H + I) + H·K + K
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from minift.model import GPT, GPTForSequenceClassification
from minift.nn import Module
from minift.peft.base import PeftConfig, register
from minift.peft.registry import Option, register_method

__all__ = [
    "blocks_of",
    "check_k",
    "head_name",
    "full_finetune",
    "head_only",
    "last_k_blocks",
    "freeze_by_pattern",
    "add_classification_head",
    "FullFinetuneConfig",
    "HeadOnlyConfig",
    "LastKBlocksConfig",
]


# ------------------------------------------------------------------------------------------------
# Finding the parts of a model


def _set_trainable(module: Module, trainable: bool) -> None:
    for p in module.parameters():
        p.trainable = trainable


def _top_level(model: Module) -> list[str]:
    return [name for name, _ in model._children()]


def _declared(model: Module, attribute: str, default):
    """A part's name as the model's class declares it (``sft_head``, ``sft_blocks``,
    ``sft_final_norm``), or GPT-2's when it declares none."""
    return getattr(type(model), attribute, default)


def head_name(model: Module) -> str:
    """``score`` for a classifier, ``wte`` (the tied LM head) for a GPT, or the declared one."""
    declared = _declared(model, "sft_head", None)
    for name in (declared,) if declared else ("score", "wte"):
        try:
            model.get_submodule(name)
            return name
        except KeyError:
            continue
    expected = (
        f"its declared sft_head {declared!r}"
        if declared
        else "a task head 'score' (GPTForSequenceClassification) or the tied LM head 'wte' (GPT), "
        "or a class attribute sft_head naming it (BertSentenceClassifier's 'classifier')"
    )
    raise TypeError(
        f"model: {type(model).__name__} has no head to train: expected {expected}; its top-level "
        f"modules are {_top_level(model)}"
    )


def blocks_of(model: Module):
    name = _declared(model, "sft_blocks", "h")
    try:
        return model.get_submodule(name)
    except KeyError:
        raise TypeError(
            f"model: {type(model).__name__} has no transformer blocks {name!r}; its top-level "
            f"modules are {_top_level(model)}"
        ) from None


def check_k(k, n_blocks: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer number of blocks, got {k!r}")
    if not 0 <= k <= n_blocks:
        raise ValueError(
            f"{name}: expected a number of blocks in [0, n_layer] = [0, {n_blocks}], got {k}"
        )
    return int(k)


# ------------------------------------------------------------------------------------------------
# The policies


def full_finetune(model: Module) -> Module:
    """𝒯 = every parameter. Nothing stays frozen."""
    _set_trainable(model, True)
    return model


def head_only(model: Module) -> Module:
    """𝒯 = the head: ``score`` for a classifier, the tied ``wte`` for a GPT, or the class's
    ``sft_head`` (``classifier`` for BertSentenceClassifier). The rest is frozen.

    On a GPT, training wte also changes the input embeddings: the LM head IS the embedding
    table (logits = h·wteᵀ). ``ln_f`` stays frozen (it trains with ``last_k_blocks``).
    """
    head = head_name(model)
    _set_trainable(model, False)
    _set_trainable(model.get_submodule(head), True)
    return model


def last_k_blocks(model: Module, k: int) -> Module:
    """𝒯 = blocks h.{L−k} … h.{L−1}, ``ln_f`` and the head; frozen: the embeddings and the
    L − k blocks below. k must lie in [0, L]. (A class may name its own blocks, final norm and
    head: the module docstring.)"""
    blocks = blocks_of(model)
    L = len(blocks)
    k = check_k(k, L)
    head = head_name(model)
    _set_trainable(model, False)
    for i in range(L - k, L):
        _set_trainable(blocks[i], True)
    final_norm = _declared(model, "sft_final_norm", "ln_f")
    if final_norm is not None:
        _set_trainable(model.get_submodule(final_norm), True)
    _set_trainable(model.get_submodule(head), True)
    return model


def freeze_by_pattern(model: Module, patterns: list[str] | str, trainable: bool = False) -> Module:
    r"""Set ``trainable`` on every parameter whose name one of the regexes finds (``re.search``).

    ``trainable=False`` (the default) freezes them, ``trainable=True`` unfreezes them; every
    other parameter keeps its flag. ``r"^h\.0\."`` is block 0, ``r"\.ln_"`` every LayerNorm,
    ``r"bias$"`` every bias. A pattern that matches no parameter is an error that lists the
    names that exist (a Param shared by several modules has one name, its first use's).
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"patterns: expected a regex string or a list of them, got {patterns!r}")
    if not patterns:
        raise ValueError("patterns: expected at least one regular expression, got []")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"patterns: {pattern!r} is not a regular expression ({err})") from None
    params = model.named_parameters()
    unmatched = [p.pattern for p in compiled if not any(p.search(n) for n in params)]
    if unmatched:
        raise ValueError(
            f"patterns: {unmatched} matched no parameter; the parameters are {list(params)}"
        )
    for name, p in params.items():
        if any(rx.search(name) for rx in compiled):
            p.trainable = bool(trainable)
    return model


# ------------------------------------------------------------------------------------------------
# "Add extra layers"


def add_classification_head(
    lm: GPT, num_labels: int, seed: int = 0, pad_token_id: int | None = None
) -> GPTForSequenceClassification:
    """A classifier on a pretrained GPT: the same body (SHARED Params) and a new head ``score``.

    score [C, K] is drawn N(0, 0.02²) from ``seed`` and trainable; the body's Params keep their
    flags (choose them next: ``head_only``, ``last_k_blocks`` …). ``pad_token_id`` tells the
    classifier which token is padding, so it pools the last real token of each sequence.
    """
    if not isinstance(lm, GPT) or isinstance(lm, GPTForSequenceClassification):
        raise TypeError(f"lm: expected a GPT language model, got {type(lm).__name__}")
    return GPTForSequenceClassification.from_lm(lm, num_labels, seed, pad_token_id)


# ------------------------------------------------------------------------------------------------
# The same policies as configs, for get_peft_model and the training loop


@dataclass
class _SftConfig(PeftConfig):
    """A policy as a config: no layer is wrapped, so merge_and_unload returns the model as is.
    ``policy(model)`` sets the flags; ``apply`` runs it on the model get_peft_model froze."""

    mergeable = True
    policy = staticmethod(full_finetune)

    def __post_init__(self):
        super().__post_init__()
        if self.target_modules is not None:
            raise ValueError(
                f"target_modules: {type(self).__name__} chooses whole layers, not target modules; "
                f"expected None, got {self.target_modules!r}"
            )

    def apply(self, model, rng):
        self.policy(model)


@register
@dataclass
class FullFinetuneConfig(_SftConfig):
    """Full fine-tuning. Trainable count: every parameter of the model (closed form above)."""

    peft_type = "MINIFT_FULL"


@register
@dataclass
class HeadOnlyConfig(_SftConfig):
    """The head alone. Trainable count: C·K for a classifier, V·C for a GPT (the tied wte),
    H·K + K for BertSentenceClassifier."""

    peft_type = "MINIFT_HEAD_ONLY"
    policy = staticmethod(head_only)


@register
@dataclass
class LastKBlocksConfig(_SftConfig):
    """The top k blocks, ln_f and the head. Trainable count: k·(12C² + 13C) + 2C + head (a GPT);
    k·(4H² + 2H·I + 9H + I) + H·K + K (BertSentenceClassifier, which has no ln_f)."""

    k: int = 1

    peft_type = "MINIFT_LAST_K_BLOCKS"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)):
            raise TypeError(f"k: expected an integer number of blocks, got {self.k!r}")
        if self.k < 0:
            raise ValueError(f"k: expected a number of blocks >= 0, got {self.k}")

    def policy(self, model):
        last_k_blocks(model, self.k)


# The command line's names for these policies (minift/peft/registry.py)
register_method("full", FullFinetuneConfig, "full fine-tuning: every weight trains (§2.1)",
                lr=3e-3, classification_lr=3e-4,
                lr_grid=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])  # fmt: skip
register_method("head", HeadOnlyConfig, "only the task head trains; the body is frozen (§3.2.1)",
                lr=3e-2, classification_lr=3e-2, lr_grid=[3e-3, 1e-2, 3e-2, 1e-1])  # fmt: skip
# not swept: full fine-tuning's learning rates, since what trains, trains fully
register_method("last-k", LastKBlocksConfig,
                "the top k blocks, ln_f and the head train; the blocks below are frozen",
                lr=3e-3, classification_lr=3e-4, compare=False, defaults={"k": 1},
                options=[Option("k", "blocks from the top that train", low=0)])  # fmt: skip
