"""How many parameters each fine-tuning method trains: the article's §3.3 in numbers.

The article says in words that PEFT and LoRA "cut the parameters"; this counts them. For one
model, every method of minift.peft.registry is applied to a fresh copy with the options
``minift finetune`` gives it, and ``count_parameters`` MEASURES what it trains: no count here is
typed in, and none differs from what ``finetune`` trains (tests/test_counts.py holds them
equal). Each method's closed form is written in its config's docstring and checked against the
measurement by its tests.

``total`` counts every Param of the adapted model once (a tied or shared Param once: sharing's
saving shows there); ``added`` is total minus the base model's, the parameters a method brings
along (0 for methods that only choose what trains, negative for sharing).

Used by ``minift count`` and ``python -m benchmarks.param_counts`` (which also draws the chart).
"""

from __future__ import annotations

from dataclasses import dataclass

from minift.model import GPT, GPTConfig
from minift.peft import METHODS, count_parameters, get_peft_model

STEPS = 200  # ``minift finetune``'s default; only AdaLoRA's schedule depends on it, not its count


@dataclass
class Row:
    method: str  # the command line's name: minift finetune --method <method>
    summary: str
    peft_type: str
    trainable: int
    total: int
    added: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total


def measure(config: GPTConfig, seed: int = 0) -> list[Row]:
    """One Row per method that trains, built as ``minift finetune`` builds it for a generation
    task (the method's defaults, from minift.peft.registry), most trainable first."""
    base_total = count_parameters(GPT(config, seed=seed)).total
    rows = []
    for method in METHODS.values():
        if not method.trains:
            continue
        peft_config = method.build("generation", STEPS)
        peft_model = get_peft_model(GPT(config, seed=seed), peft_config, seed=seed)
        count = count_parameters(peft_model)
        rows.append(Row(method.name, method.summary, peft_config.peft_type, count.trainable,
                        count.total, count.total - base_total))  # fmt: skip
    rows.sort(key=lambda r: (-r.trainable, r.method))
    return rows


def markdown(rows: list[Row], config: GPTConfig) -> str:
    c = config
    lines = [
        "# Trainable parameters per method",
        "",
        f"- model: d_model={c.d_model}, n_layer={c.n_layer}, n_head={c.n_head}, "
        f"vocab_size={c.vocab_size}, block_size={c.block_size} "
        f"({count_parameters(GPT(c)).total:,d} parameters, LM head tied to wte)",
        "- each method as `minift finetune --method <method>` trains it on a generation task (a "
        "classifier's new head adds its own); counts measured with `minift.peft.count_parameters`"
        " on the adapted model; `total` counts a shared Param once, `added` = total − the base "
        "model's (negative when a method shares parameters)",
        "",
        "| method | what trains | peft_type | trainable | total | trainable % | added |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.summary} | {r.peft_type} | {r.trainable:,d} | {r.total:,d} | "
            f"{r.percent:.4g} | {r.added:,d} |"
        )
    return "\n".join(lines) + "\n"
