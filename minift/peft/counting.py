"""Counting parameters: how many a method trains, how many it leaves frozen, and where.

A Param counts once however many modules hold it (sharing's saving, A3, shows here), under the
module that owns it: ``h.0.attn.c_attn.lora_A`` counts for ``h.0.attn.c_attn``. PEFT's
``print_trainable_parameters`` line is ``peft_line``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minift.nn import Module
from minift.quant import NF4Linear


@dataclass
class ParameterCount:
    """Trainable and frozen element counts, in total and per module (the Param's owner)."""

    trainable: int = 0
    frozen: int = 0
    by_module: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def count_parameters(model: Module) -> ParameterCount:
    """Count every Param once (a shared Param counts once: A3's saving shows here), and every
    quantized weight (an NF4Linear's) as the frozen values it stands for."""
    count = ParameterCount()
    sizes = [(name, p.size, p.trainable) for name, p in model.named_parameters().items()]
    # a quantized W₀ is a frozen weight of d_in·d_out values, stored in 4 bits (PEFT counts it so)
    sizes += [(f"{name}.weight", m.in_features * m.out_features, False)
              for name, m in model.named_modules() if isinstance(m, NF4Linear)]  # fmt: skip
    for name, size, trainable in sizes:
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        row = count.by_module.setdefault(owner, {"trainable": 0, "frozen": 0})
        kind = "trainable" if trainable else "frozen"
        row[kind] += size
        setattr(count, kind, getattr(count, kind) + size)
    return count


def peft_line(count: ParameterCount) -> str:
    """The line PEFT's ``print_trainable_parameters`` prints, to the same digits."""
    return (
        f"trainable params: {count.trainable:,d} || all params: {count.total:,d} || "
        f"trainable%: {100 * count.trainable / count.total:.4f}"
    )
