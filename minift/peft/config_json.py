"""A method's config read from a file (adapter_config.json, finetuned.json), every field checked.

PEFT writes many fields; minift reads those its config has, each checked for its JSON type
against the field's annotation (``lora_dropout: float`` a number, never "0.1"; ``use_rslora:
bool`` true or false, never "no" or 1), and refuses a field it does not implement unless that
field holds its neutral value. Every refusal is a FileFormatError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from minift.errors import FileFormatError


def config_from_json(cls, d: dict[str, Any], where):
    """An instance of the config class ``cls`` from the dict ``d`` read from file ``where``.

    Each field must hold what its annotation says, as JSON spells it, a regex in
    ``target_modules`` must compile, a field in ``cls.positive_fields`` must be > 0, and
    whatever the config's own checks refuse is refused too: each a FileFormatError naming
    ``where`` and the field. A field we do not implement, set to a non-default value, is an
    error: PEFT writes many fields (``task_type``, ``inference_mode``, ``lora_bias`` …);
    those left at their neutral values are ignored, anything that would change the method is
    refused rather than silently dropped.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs, refused = {}, []
    for key, value in d.items():
        if key in names:
            kwargs[key] = _checked_field(cls, key, value, hints[key], where)
        elif key in _NEUTRAL_FIELDS or _is_neutral(value):
            continue
        else:
            refused.append(f"{key}={value!r}")
    if refused:
        raise FileFormatError(where, f"fields minift does not implement: {', '.join(refused)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, re.error) as e:
        raise field_error(where, e, names) from None


def _is_neutral(value) -> bool:
    """A field PEFT writes at its "off" value (0 too: it equals False)."""
    return value in (None, False, {}, [], "")


def _json_kinds(hint) -> list[tuple[str, Callable[[Any], bool]]] | None:
    """What JSON may hold for a field annotated ``hint``: (name, test) pairs; None: anything."""
    parts = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = []
    for part in parts:
        origin, args = typing.get_origin(part), typing.get_args(part)
        if part is bool:
            kinds.append(("true or false", lambda v: isinstance(v, bool)))
        elif part is int:
            kinds.append(("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)))
        elif part is float:
            kinds.append(("a finite number", _is_finite_number))
        elif part is str:
            kinds.append(("a string", lambda v: isinstance(v, str)))
        elif part is type(None):
            kinds.append(("null", lambda v: v is None))
        elif part is dict or origin is dict:
            kinds.append(("an object", lambda v: isinstance(v, dict)))
        elif (part is list or origin is list) and args:
            inner = _json_kinds(args[0])
            if inner is None:
                return None
            kinds.append(
                (
                    f"a list of {inner[0][0].removeprefix('a ').removeprefix('an ')}s",
                    lambda v, test=inner[0][1]: isinstance(v, list) and all(map(test, v)),
                )
            )
        else:
            return None  # a type JSON has no word for: the config's own checks decide
    return kinds


def _is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _checked_field(cls, key: str, value, hint, where):
    """``value`` if JSON's type fits the annotation (and the field's range and regex rules)."""
    kinds = _json_kinds(hint)
    if kinds is not None and not any(test(value) for _, test in kinds):
        expected = " or ".join(name for name, _ in kinds)
        raise FileFormatError(where, f"expected {expected}, got {_json_text(value)}", field=key)
    if key in cls.positive_fields and not value > 0:
        raise FileFormatError(where, f"expected a number > 0, got {_json_text(value)}", field=key)
    if key in _REGEX_FIELDS and isinstance(value, str):
        try:
            re.compile(value)
        except re.error as e:
            message = f"not a valid regular expression ({e})"
            raise FileFormatError(where, message, field=key) from None
    return value


# a string in these is a regex (PEFT's rule)
_REGEX_FIELDS = {"target_modules", "feedforward_modules", "exclude_modules"}


def _json_text(value) -> str:
    text = json.dumps(value) if _is_json(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _is_json(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def field_error(where, error: Exception, names) -> FileFormatError:
    """A config's own check (``"r: expected …"``) as an error of the file, naming the field."""
    message = str(error)
    field, sep, rest = message.partition(": ")
    if sep and field in names:
        return FileFormatError(where, rest, field=field)
    return FileFormatError(where, message)


# fields PEFT writes whose value minift may ignore whatever it is
_NEUTRAL_FIELDS = {
    "peft_type",
    "task_type",
    "inference_mode",
    "base_model_name_or_path",
    "revision",
    "auto_mapping",
    "peft_version",
    # defaults of features that stay off unless another field turns them on
    "megatron_core",  # read only with megatron_config
    "qalora_group_size",  # read only with use_qalora
}
