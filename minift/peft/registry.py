"""The fine-tuning methods by their command-line names: ONE table, filled where each is defined.

Each method's file registers it once, beside its config (PEFT's ``register_peft_method`` is the
model), with everything the rest of minift needs to know about it, as a declaration of a few
lines, each one thing: who (the command line's name, the config, a one-line summary), how fast
(its learning rate per kind of task, from the sweep over ``lr_grid``), with what (defaults and
the command line's options). Laid out by hand (``# fmt: skip``), so that it reads as the row of
a table, not as a column of keywords:

    register_method("lora", LoraConfig, "LoRA r=8 on c_attn and attn.c_proj (§2.3; Hu et al. 2021)",
                    lr=1e-2, classification_lr=3e-3, lr_grid=[1e-3, 3e-3, 1e-2, 3e-2],
                    defaults=LORA_DEFAULTS, options=LORA_OPTIONS)  # fmt: skip

(``minift finetune --method lora``: ``LORA_OPTIONS`` are its ``--r``, ``--lora-alpha``, …;
``lr_grid`` is what benchmarks/lr_sweep.py tries.)

``minift finetune`` (its ``--method`` choices and options), ``minift count``, ``minift compare``,
``benchmarks/lr_sweep.py``, ``benchmarks/param_counts.py`` and the notebooks all read ``METHODS``,
so what ``count`` shows is what ``finetune`` trains (tests/test_counts.py holds them equal).

Importing this module imports the package ``minift.peft`` first, which imports every method's
file: the table is whole by the time anyone reads it. Its order is the order of registration,
which is the order ``minift/peft/__init__.py`` imports the chapters in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("classification", "generation")
CLASSIFIER_HEAD = "score"  # GPTForSequenceClassification's new head, trained by every method


@dataclass(frozen=True)
class Option:
    """A method's command-line option: ``--lora-alpha 8`` sets the config's field ``lora_alpha``.

    The values allowed: a ``type`` (int, float or str), between ``low`` and ``high`` (None: no
    bound; ``low_open``/``high_open`` leave the end out), several at once if ``many``.
    """

    field: str
    help: str
    type: type = int
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    many: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


TARGET_MODULES = Option(
    "target_modules", "names or suffixes of the Linears to adapt", type=str, many=True
)


@dataclass(frozen=True)
class Method:
    """A fine-tuning method as the command line names it.

    ``config`` is the config class (None: "base", which does not train); ``defaults`` the fields
    it is built with; ``per_steps(steps)`` the fields that depend on the length of training
    (AdaLoRA's budget schedule). The learning rates are the best on the validation split of
    ``python -m benchmarks.lr_sweep`` over ``lr_grid`` (benchmarks/results/lr_sweep.md; a test
    holds them to it), one per kind of task: the same method wants a smaller step to re-aim a
    classifier than to learn a new output language. A method with no ``lr_grid`` has its
    learning rates set by hand. ``compare``: one of ``minift compare``'s default methods.
    """

    name: str
    summary: str  # one line, with the article's section or the paper
    config: type | None
    lr: float  # for generation tasks (and classification, unless classification_lr is set)
    classification_lr: float | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    per_steps: Callable[[int], dict] | None = None
    options: tuple[Option, ...] = ()
    lr_grid: tuple[float, ...] = ()
    compare: bool = True

    @property
    def trains(self) -> bool:
        return self.config is not None

    def lr_for(self, kind: str) -> float:
        """The learning rate for a task of this kind ("classification" or "generation")."""
        if kind not in KINDS:
            raise ValueError(f"kind: expected 'classification' or 'generation', got {kind!r}")
        if kind == "classification" and self.classification_lr is not None:
            return self.classification_lr
        return self.lr

    def build(self, kind: str, steps: int, **overrides):
        """The config for a task of this kind, trained ``steps`` steps; None if it does not train.

        ``overrides`` replace the defaults (the command line's ``--r 4`` is ``r=4``); each must
        be one of the method's ``options``, and the config's ``__post_init__`` checks its value,
        without touching any model. A classifier's new head ``score`` trains with every method
        (PEFT's ``modules_to_save``). An error names the field (the command line shows it as
        the flag: "--lora-alpha" for ``lora_alpha``).
        """
        if kind not in KINDS:
            raise ValueError(f"kind: expected 'classification' or 'generation', got {kind!r}")
        if not self.trains:
            if overrides:
                raise ValueError(f"{next(iter(overrides))}: method {self.name} has no options")
            return None
        allowed = {o.field for o in self.options}
        unknown = [name for name in overrides if name not in allowed]
        if unknown:
            raise ValueError(
                f"{unknown[0]}: method {self.name} has no such option "
                f"(its options: {', '.join(sorted(allowed)) or 'none'})"
            )
        fields = {**self.defaults, **(self.per_steps(steps) if self.per_steps else {})}
        fields.update(overrides)
        if kind == "classification":
            saved = fields.get("modules_to_save") or []
            fields["modules_to_save"] = sorted({*saved, CLASSIFIER_HEAD})
        return self.config(**fields)  # __post_init__ checks every value


METHODS: dict[str, Method] = {}


def register_method(name: str, config: type | None, summary: str, **fields) -> Method:
    """Add a method to ``METHODS``: its name, its config class, its summary, and as keyword
    arguments the rest of ``Method``'s fields; returns it.

    A name registered twice is an error, as is an option whose field means something else in
    another method (the command line has one ``--r`` for every method that takes it).
    """
    fields.update(
        options=tuple(fields.get("options", ())), lr_grid=tuple(fields.get("lr_grid", ()))
    )
    method = Method(name, summary, config, **fields)
    if method.name in METHODS:
        raise ValueError(f"name: method {method.name!r} is registered already")
    for option in method.options:
        other = command_line_options().get(option.field)
        if other is not None and dataclasses.replace(other, help=option.help) != option:
            raise ValueError(
                f"options: {option.flag} of {method.name} is {option}, elsewhere {other}"
            )
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method: unknown {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def method_names() -> list[str]:
    return list(METHODS)


def method_config(method: str, kind: str, steps: int, **overrides):
    """The config of ``method`` for a task of this kind (see ``Method.build``)."""
    return get_method(method).build(kind, steps, **overrides)


def command_line_options() -> dict[str, Option]:
    """Every method's options, one per field, in the order they were first registered."""
    options: dict[str, Option] = {}
    for method in METHODS.values():
        for option in method.options:
            options.setdefault(option.field, option)
    return options


register_method("base", None, "the pretrained model, not fine-tuned (a new head: random)", lr=0)
