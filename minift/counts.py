"""How many parameters each fine-tuning method trains: the article's §3.3 in numbers.

The article says in words that PEFT and LoRA "cut the parameters"; this counts them. For one
model, every registered method is applied to a fresh copy with the options below, and
``count_parameters`` MEASURES what it trains: no count here is typed in. (Each method's closed
form is written in its config's docstring and checked against the measurement by its tests.)

``total`` counts every Param of the adapted model once (a tied or shared Param once: sharing's
saving shows there); ``added`` is total minus the base model's, the parameters a method brings
along (0 for methods that only choose what trains, negative for sharing).

Used by ``minift count`` and ``python -m benchmarks.param_counts`` (which also draws the chart).
"""

from __future__ import annotations

from dataclasses import dataclass

import minift.peft  # noqa: F401  (importing the package registers every method)
from minift.model import GPT, GPTConfig
from minift.peft.base import PEFT_TYPES, count_parameters, get_peft_model

# peft_type -> [(label, options)]: how each method is built for the table, and the variants of
# one type worth a row of their own
OPTIONS: dict[str, list[tuple[str, dict]]] = {
    "MINIFT_FULL": [("full fine-tuning", {})],
    "MINIFT_LAST_K_BLOCKS": [("last block (k=1)", {"k": 1})],
    "MINIFT_HEAD_ONLY": [("head only (tied wte)", {})],
    "MINIFT_SHARING": [("sharing A3 (MLPs tied)", {})],
    "MINIFT_SPARSE": [("sparse A4 (5% of c_attn)", {"density": 0.05})],
    "LORA": [
        ("LoRA r=8 c_attn", {"r": 8, "target_modules": ["c_attn"]}),
        ("DoRA r=8 c_attn", {"r": 8, "target_modules": ["c_attn"], "use_dora": True}),
    ],
    "ADALORA": [("AdaLoRA init_r=12 c_attn", {"init_r": 12, "target_r": 8, "total_step": 1000})],
    "IA3": [("IA3 (PEFT's GPT-2 targets)", {})],
    "MINIFT_BITFIT": [("BitFit (all biases)", {})],
    "MINIFT_ADAPTER": [("adapters m=16", {"bottleneck_size": 16})],
    "PROMPT_TUNING": [("prompt tuning n=16", {"num_virtual_tokens": 16})],
    "PREFIX_TUNING": [("prefix tuning n=16", {"num_virtual_tokens": 16})],
}


@dataclass
class Row:
    label: str
    peft_type: str
    trainable: int
    total: int
    added: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total


def measure(config: GPTConfig, seed: int = 0) -> list[Row]:
    """One Row per method (and variant), most trainable first."""
    base_total = count_parameters(GPT(config, seed=seed)).total
    rows = []
    for peft_type, cls in PEFT_TYPES.items():
        for label, options in OPTIONS.get(peft_type, [(peft_type, {})]):
            peft_model = get_peft_model(GPT(config, seed=seed), cls(**options), seed=seed)
            count = count_parameters(peft_model)
            rows.append(
                Row(label, peft_type, count.trainable, count.total, count.total - base_total)
            )
    rows.sort(key=lambda r: (-r.trainable, r.label))
    return rows


def markdown(rows: list[Row], config: GPTConfig) -> str:
    c = config
    lines = [
        "# Trainable parameters per method",
        "",
        f"- model: d_model={c.d_model}, n_layer={c.n_layer}, n_head={c.n_head}, "
        f"vocab_size={c.vocab_size}, block_size={c.block_size} "
        f"({count_parameters(GPT(c)).total:,d} parameters, LM head tied to wte)",
        "- counts measured with `minift.peft.count_parameters` on the adapted model; `total` "
        "counts a shared Param once, `added` = total − the base model's (negative when a method "
        "shares parameters)",
        "",
        "| method | peft_type | trainable | total | trainable % | added |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.peft_type} | {r.trainable:,d} | {r.total:,d} | "
            f"{r.percent:.4g} | {r.added:,d} |"
        )
    return "\n".join(lines) + "\n"
