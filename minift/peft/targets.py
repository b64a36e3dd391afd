"""Which layers a method wraps: ``target_modules``, matched as PEFT matches them.

A string is a regular expression that must match the WHOLE dotted name (``re.fullmatch``); a
list matches a name equal to an entry or ending in ``"." + entry`` (``"c_attn"`` matches
``h.0.attn.c_attn``; ``"attn.c_proj"`` matches only the attention's output projection, not the
MLP's). A target that matches nothing is an error that lists the modules that exist. A module
answers to two names, minift's (``h.0.attn.c_attn``) and Hugging Face's
(``transformer.h.0.attn.c_attn``, see ``hf_gpt2_name``), so that a target written for either,
by minift or by PEFT, selects the same modules; ``peft_target_modules`` writes the targets into
adapter_config.json so that PEFT selects exactly the layers minift wrapped.
"""

from __future__ import annotations

import re

from minift.nn import Linear, Module

# GPT-2's top-level modules, which Hugging Face nests under "transformer." (a head such as
# GPT2ForSequenceClassification's "score" sits beside it, not inside).
HF_TRANSFORMER_MODULES = {"wte", "wpe", "drop", "h", "ln_f"}


def hf_gpt2_name(name: str) -> str:
    """minift's parameter name -> Hugging Face GPT-2's (``h.0.ln_1.bias`` -> ``transformer.h…``)."""
    return f"transformer.{name}" if name.split(".", 1)[0] in HF_TRANSFORMER_MODULES else name


def checked_targets(value, field: str) -> list[str] | str | None:
    """``value`` as a target field holds it (``target_modules``, IA3's ``feedforward_modules``):
    a regex string, or a list of names (a tuple or set becomes a list; a set's, sorted), or None.
    Anything else is a TypeError naming ``field``."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple, set)) or not all(isinstance(x, str) for x in value):
        raise TypeError(f"{field}: expected a regex string or a list of names, got {value!r}")
    return sorted(value) if isinstance(value, set) else list(value)


def _matches(name: str, targets: list[str] | str) -> bool:
    names = {name, hf_gpt2_name(name)}  # minift's and Hugging Face's: a target may use either
    if isinstance(targets, str):
        return any(re.fullmatch(targets, n) is not None for n in names)
    return any(n == t or n.endswith("." + t) for n in names for t in targets)


def match_target_modules(model: Module, targets: list[str] | str, kind=Linear) -> list[str]:
    """Names of the ``kind`` modules that the targets match; an error names what did not match."""
    candidates = [name for name, m in model.named_modules() if isinstance(m, kind) and name]
    matched = [name for name in candidates if _matches(name, targets)]
    unmatched = (
        ([targets] if not matched else [])
        if isinstance(targets, str)
        else [t for t in targets if not any(_matches(n, [t]) for n in candidates)]
    )
    if unmatched:
        kinds = sorted({n.rsplit(".", 1)[-1] for n in candidates})
        example = next((n for n in candidates if n.count(".") >= 2), candidates[:1])
        raise ValueError(
            f"target_modules: {unmatched} matched no {kind.__name__} module; the model has "
            f"{kinds} (full names like {example!r})"
        )
    return matched


# PEFT matches a regex against Hugging Face's names; this optional head lets a regex written
# for minift's names (h.0.attn.c_attn) match them too, and nothing else
_HF_OPTIONAL_PREFIX = r"(?:transformer\.)?"


def peft_target_modules(
    targets: list[str] | str | None, wrapped: list[str], candidates: list[str]
) -> list[str] | str:
    r"""``target_modules`` as adapter_config.json writes it: what PEFT resolves to ``wrapped``.

    PEFT matches every entry against Hugging Face's names (``transformer.h.0.attn.c_attn``).
    A list (or None, the method's default) is written as the names of the ``wrapped`` layers,
    Hugging Face's, which PEFT matches exactly. A regex stays a regex: unchanged if on
    Hugging Face's names of the ``candidates`` (the model's Linear layers) it selects the same
    layers, else behind ``(?:transformer\.)?``, which makes it match a name with or without
    ``transformer.``, the rule minift applies (``_matches``).
    """
    chosen = [hf_gpt2_name(n) for n in wrapped]
    if not isinstance(targets, str):
        return chosen
    hf_names = [hf_gpt2_name(n) for n in candidates]
    for pattern in (targets, f"{_HF_OPTIONAL_PREFIX}(?:{targets})"):
        if {n for n in hf_names if re.fullmatch(pattern, n)} == set(chosen):
            return pattern
    return chosen  # the method wrapped fewer layers than the regex selects: the exact list
