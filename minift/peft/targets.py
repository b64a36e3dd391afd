r"""Which layers a method wraps: ``target_modules``, matched as PEFT matches them.

A string is a regular expression that must match the WHOLE dotted name (``re.fullmatch``); a
list matches a name equal to an entry or ending in ``"." + entry`` (``"c_attn"`` matches
``h.0.attn.c_attn``; ``"attn.c_proj"`` matches only the attention's output projection, not the
MLP's). A target that matches nothing is an error that lists the modules that exist. A module
answers to two names, minift's (``h.0.attn.c_attn``) and Hugging Face's
(``transformer.h.0.attn.c_attn``, see ``hf_gpt2_name``), so that a target written for either,
by minift or by PEFT, selects the same modules; ``peft_target_modules`` writes the targets into
adapter_config.json so that PEFT selects exactly the layers minift wrapped.

PEFT's refinements (``select_targets``), each as PEFT 0.21 applies it:

- ``"all-linear"``: every Linear but the model's output head (``score``, ``classifier``);
- ``exclude_modules``: matched as ``target_modules`` is; a module it matches is never wrapped;
- ``layers_to_transform`` (an index or a list of block indices) keeps a module matched by a
  SUFFIX of the target list only if its block index is listed. The index is the first number
  after ``<layers_pattern>.``, or, without ``layers_pattern``, the first dotted number after at
  least two components, in Hugging Face's name: ``transformer.h.3.mlp.c_fc`` is block 3
  (minift's ``h.3.mlp.c_fc`` has only one component before it: PEFT would find no index);
- ``rank_pattern`` / ``alpha_pattern`` keys (``pattern_key``): the first key, in dict order, that
  matches the end of Hugging Face's name, ``(.*\.)?(key)$``, gives the layer its r or α.
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


ALL_LINEAR = "all-linear"  # PEFT's shorthand for every Linear but the output head
OUTPUT_HEADS = ("score", "classifier")  # PEFT's SEQ_CLS_HEAD_NAMES; GPT's LM head is wte, no Linear


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


def name_matches(name: str, targets: list[str] | str) -> bool:
    """Does a target field (``target_modules``, ``exclude_modules``) match the module ``name``?"""
    return _matches(name, targets)


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


def check_layer_fields(layers_to_transform, layers_pattern, target_modules) -> None:
    """``layers_to_transform`` an index or a list of them, ``layers_pattern`` a name or a list of
    names, both only with a target list (PEFT's rules: a regex says exactly which layers)."""
    layers, pattern = layers_to_transform, layers_pattern
    as_list = layers if isinstance(layers, list) else [layers]
    if layers is not None and not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in as_list
    ):
        raise TypeError(
            f"layers_to_transform: expected a block index or a list of them, got {layers!r}"
        )
    if pattern is not None and not (
        isinstance(pattern, str)
        or (isinstance(pattern, list) and all(isinstance(p, str) for p in pattern))
    ):
        raise TypeError(f"layers_pattern: expected a name or a list of names, got {pattern!r}")
    if isinstance(target_modules, str) and (layers is not None or pattern):
        raise ValueError(
            "layers_to_transform: cannot be used when target_modules is a regex string "
            f"({target_modules!r})"
        )
    if pattern and layers is None:
        raise ValueError("layers_pattern: needs layers_to_transform (the blocks to keep)")


def check_peft_only_fields(config, method: str) -> None:
    """The fields a config keeps so that its adapter_config.json reads as PEFT's, and that change
    nothing in minift: ``bias`` (where the config has one) only "none", as minift's ``method``
    trains no biases (BitFit does); ``fan_in_fan_out`` True, False or None (the file's layout:
    ``peft_files.hf_fan_in_fan_out``)."""
    bias = getattr(config, "bias", "none")
    if bias != "none":
        raise ValueError(f"bias: minift's {method} trains no biases (use BitFit), got {bias!r}")
    layout = config.fan_in_fan_out
    if not (layout is None or isinstance(layout, bool)):
        raise TypeError(f"fan_in_fan_out: expected True, False or None, got {layout!r}")


def select_targets(
    model: Module,
    targets: list[str] | str,
    exclude_modules: list[str] | str | None = None,
    layers_to_transform: int | list[int] | None = None,
    layers_pattern: list[str] | str | None = None,
) -> list[str]:
    """The Linear layers a LoRA wraps: ``targets`` (or ``"all-linear"``) matched, then the
    excluded and the other blocks' layers taken out (module docstring); an error if none is left.
    """
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        matched = [
            name
            for name, m in model.named_modules()
            if name and isinstance(m, Linear) and name.split(".", 1)[0] not in OUTPUT_HEADS
        ]
    else:
        matched = match_target_modules(model, targets)
    if exclude_modules:
        matched = [n for n in matched if not _matches(n, exclude_modules)]
    if layers_to_transform is not None and not isinstance(targets, str):
        wanted = {layers_to_transform} if isinstance(layers_to_transform, int) else set()
        wanted |= set(layers_to_transform) if isinstance(layers_to_transform, list) else set()
        matched = [
            n
            for n in matched
            if _named_exactly(n, targets) or block_index(n, layers_pattern) in wanted
        ]
    if not matched:
        raise ValueError(
            f"target_modules: {targets!r} left no layer to adapt after exclude_modules="
            f"{exclude_modules!r}, layers_to_transform={layers_to_transform!r}"
        )
    return matched


def check_name_patterns(config, field: str) -> dict:
    """``config.<field>`` (``rank_pattern``, ``alpha_pattern``): a dict keyed by name patterns,
    else a TypeError naming the field."""
    pattern = getattr(config, field)
    if not isinstance(pattern, dict) or not all(isinstance(k, str) for k in pattern):
        raise TypeError(f"{field}: expected a dict of name patterns, got {pattern!r}")
    return pattern


def check_narrowing(config) -> None:
    """Check what narrows a config's targets: ``exclude_modules`` and the layer fields."""
    config.exclude_modules = checked_targets(config.exclude_modules, "exclude_modules")
    check_layer_fields(config.layers_to_transform, config.layers_pattern, config.target_modules)


def wrap_targets(config, model: Module, rng) -> None:
    """Put ``config.wrap(name, layer, rng)`` in the place of every Linear the config targets:
    ``target_modules`` (or its default), less ``exclude_modules``, within
    ``layers_to_transform``."""
    targets = config.target_modules or list(config.default_target_modules)
    narrowing = (config.exclude_modules, config.layers_to_transform, config.layers_pattern)
    for name in select_targets(model, targets, *narrowing):
        model.set_submodule(name, config.wrap(name, model.get_submodule(name), rng))


def _named_exactly(name: str, targets: list[str]) -> bool:
    # PEFT tests the block index only for a module matched by a suffix, not by its full name
    return name in targets or hf_gpt2_name(name) in targets


def block_index(name: str, layers_pattern: list[str] | str | None = None) -> int | None:
    """The block a module sits in, as PEFT reads it from Hugging Face's name (module docstring)."""
    hf_name = hf_gpt2_name(name)
    if not layers_pattern:
        found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", hf_name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        found = next(
            (m for p in patterns if (m := re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", hf_name))),
            None,
        )
    return None if found is None else int(found["idx"])


def pattern_key(keys, name: str) -> str | None:
    r"""The first of ``keys`` (in order) matching the end of ``name``'s Hugging Face name, or None.

    PEFT's rule for ``rank_pattern``/``alpha_pattern``: ``re.match(rf"(.*\.)?({key})$", name)``.
    """
    hf_name = hf_gpt2_name(name)
    return next((k for k in keys if re.match(rf"(.*\.)?({k})$", hf_name)), None)


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
