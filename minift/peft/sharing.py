r"""Parameter sharing, the article's A3: W₂ = W₁ (§2.2 "参数共享", §3.2.2, §4.1.2).

What the article writes
-----------------------
"Share parameters between different parts of the model, to reduce the total number of
parameters":

    W₂ = W₁                                                                   (A3)

Two layers, one weight. Here that means one ``Param`` OBJECT held by two modules: after
``tie_parameters(model, ["h.0.mlp.c_fc.weight", "h.1.mlp.c_fc.weight"])`` the attribute
``model.h[1].mlp.c_fc.weight`` IS ``model.h[0].mlp.c_fc.weight``. The first name's values win;
the others' values are dropped (so tying a pretrained model changes the function it computes:
every block now uses block 0's weights).

The gradient A3 never states
----------------------------
The loss depends on the shared W through every use. Write the uses as if they were separate
weights, L(W₁, W₂), and set W₁ = W₂ = W; the chain rule of several variables gives

    dL/dW = ∂L/∂W₁ + ∂L/∂W₂

the SUM of the gradients of its uses. minift computes it with no code for sharing at all: each
layer's backward ADDS its dW into ``Param.grad`` (``accumulate_grad``: grad += dW, see param.py),
so when two layers hold the same Param, block 1's backward adds its dW, block 0's backward adds
its own on top, and ``grad`` ends as the sum. Copying values between two Params and averaging
their gradients would need all of that by hand, and would drift the moment one update differed.

The same mechanism already ties GPT-2's LM head to its token embedding (model.py): ``wte`` is
used by the lookup and by logits = h·wteᵀ, and receives both gradients.

What it saves and what it costs
-------------------------------
``named_parameters()`` lists a shared Param ONCE, under its first name, so the optimizer steps
it once (one set of AdamW moments) and ``count_parameters`` counts it once. Sharing a set S of
per-block parameters across all L blocks (``share_across_blocks``):

    trainable = total − (L − 1) · Σ_{p ∈ S} |p|

With the default S = the MLP (c_fc [C, 4C] + 4C, c_proj [4C, C] + C), |S| = 8C² + 5C per block.
The COMPUTE does not shrink: every block still multiplies by its (shared) weight. Sharing every
parameter of a block across all blocks is ALBERT's cross-layer sharing (Lan et al., 2020) and
the Universal Transformer's recurrence (Dehghani et al., 2019); both TRAIN that way from the
start. Imposed on a pretrained model, as the article suggests for fine-tuning, it throws away
what blocks 1 … L−1 learned, and fine-tuning has to win it back.

The config ``SharingConfig(patterns=[...])`` does this inside ``get_peft_model``: each regex
(``re.fullmatch`` on parameter names, as PEFT matches a string ``target_modules``) makes one
group tied to its first member; then every parameter that remains trains. There is nothing to
merge (``merge_and_unload`` returns the tied model) and nothing to undo: ``unload`` leaves the
ties in place.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from minift.nn import Module
from minift.param import Param
from minift.peft.base import PeftConfig, register
from minift.peft.registry import register_method

__all__ = [
    "MLP_SUFFIXES",
    "SharingConfig",
    "share_across_blocks",
    "tie_parameters",
]

# the parameters of one block's MLP, the default group shared across blocks
MLP_SUFFIXES = ("mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


def _param_slots(model: Module) -> dict[str, tuple[Module, str, Param]]:
    """Every place a Param sits: name -> (module, attribute, Param), a shared Param under EACH
    of its names (``named_parameters`` lists it once, under its first)."""
    slots = {}
    for mod_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, Param):
                slots[f"{mod_name}.{attr}" if mod_name else attr] = (module, attr, value)
    return slots


def tie_parameters(model: Module, names: list[str]) -> Module:
    """A3: make every named Param the SAME object as the first (W₂ = W₁). Returns the model.

    All must have one shape and dtype. After the call, the shared Param's gradient is the sum
    of the gradients of its uses (Param accumulation; see the module docstring), and
    ``named_parameters`` lists it once, under ``names[0]`` (or the model's first use of it).
    """
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(f"names: expected a list of parameter names, got {names!r}")
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"names: expected a list of parameter names, got {names!r}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"names: expected at least two distinct parameter names, got {names!r}")
    slots = _param_slots(model)
    for name in names:
        if name not in slots:
            close = difflib.get_close_matches(name, list(slots), n=5, cutoff=0.6)
            raise ValueError(
                f"names: the model has no parameter {name!r}; close matches: {close} "
                f"({len(slots)} parameters in all, e.g. {next(iter(slots))!r})"
            )
    first = slots[names[0]][2]
    for name in names[1:]:
        p = slots[name][2]
        if p.shape != first.shape or p.dtype != first.dtype:
            raise ValueError(
                f"names: cannot tie {name!r} {p.shape} {p.dtype} to {names[0]!r} "
                f"{first.shape} {first.dtype}: a shared weight has one shape and dtype"
            )
    for name in names[1:]:
        module, attr, _ = slots[name]
        setattr(module, attr, first)  # the same object: W₂ = W₁, and their grads add up
    return model


def share_across_blocks(model: Module, suffixes: tuple[str, ...] = MLP_SUFFIXES) -> Module:
    """Every block's ``h.{i}.<suffix>`` becomes block 0's, for each suffix. Returns the model.

    Trainable count afterwards: total − (L − 1) · Σ sizes of the suffixes' parameters.
    """
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    try:
        L = len(model.get_submodule("h"))
    except KeyError:
        raise TypeError(
            f"model: {type(model).__name__} has no transformer blocks 'h' to share across"
        ) from None
    if L < 2:
        raise ValueError(f"model: has {L} block; sharing across blocks needs at least 2")
    for suffix in suffixes:
        tie_parameters(model, [f"h.{i}.{suffix}" for i in range(L)])
    return model


# ------------------------------------------------------------------------------------------------


@register
@dataclass
class SharingConfig(PeftConfig):
    r"""A3 in get_peft_model: tie each pattern's parameters to its first, then train everything.

    ``patterns``: regular expressions matched against parameter names with ``re.fullmatch``; the
    parameters one pattern matches (at least two) form one group, tied to the first of them in
    the model's order. The default ties every block's MLP to block 0's. A parameter matched by
    two patterns is an error.

    Trainable count: total − Σ over groups of (group size − 1)·|p|; for the default,
    total − (L − 1)·(8C² + 5C).
    """

    patterns: list[str] = field(
        default_factory=lambda: [r"h\.\d+\." + re.escape(s) for s in MLP_SUFFIXES]
    )

    peft_type = "MINIFT_SHARING"
    mergeable = True  # nothing to merge: merge_and_unload returns the tied model

    def __post_init__(self):
        super().__post_init__()
        if self.target_modules is not None:
            raise ValueError(
                "target_modules: SharingConfig ties parameters named by `patterns`, it targets "
                f"no module; expected None, got {self.target_modules!r}"
            )
        p = self.patterns
        if isinstance(p, str) or not isinstance(p, (list, tuple)):
            raise TypeError(f"patterns: expected a list of regular expressions, got {p!r}")
        if not p or not all(isinstance(x, str) for x in p):
            raise TypeError(f"patterns: expected a non-empty list of regex strings, got {p!r}")
        for pattern in p:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(
                    f"patterns: {pattern!r} is not a regular expression ({err})"
                ) from None
        self.patterns = list(p)

    def groups(self, model: Module) -> list[list[str]]:
        """The names each pattern ties together, in the model's order."""
        names = list(_param_slots(model))
        groups, owner = [], {}
        for pattern in self.patterns:
            group = [n for n in names if re.fullmatch(pattern, n)]
            if len(group) < 2:
                raise ValueError(
                    f"patterns: {pattern!r} matches {group or 'no parameter'}; a shared group "
                    f"needs at least 2 parameters (names look like {names[len(names) // 2]!r})"
                )
            for n in group:
                if n in owner:
                    raise ValueError(
                        f"patterns: {n!r} is matched by both {owner[n]!r} and {pattern!r}"
                    )
                owner[n] = pattern
            groups.append(group)
        return groups

    def apply(self, model, rng):
        for group in self.groups(model):
            tie_parameters(model, group)
        for p in model.parameters():
            p.trainable = True


# not swept: full fine-tuning's learning rates, since every (tied) weight trains
register_method("sharing", SharingConfig,
                "the article's parameter sharing: every block's MLP tied to block 0's (A3)",
                lr=3e-3, classification_lr=3e-4, compare=False)  # fmt: skip
