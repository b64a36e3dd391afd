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

from dataclasses import dataclass, replace

from minift.model import GPT, GPTConfig
from minift.peft import METHODS, count_parameters, get_peft_model
from minift.peft.lokr import lokr_shapes

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


# -- the same counts in closed form, for models too large to build -------------------------------

# A block's Linears as GPT-2 names them, (fan in, fan out) in units of C = d_model
BLOCK_LINEARS = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4),
                 "mlp.c_proj": (4, 1)}  # fmt: skip
# PEFT's GPT-2 default where the config leaves it None
DEFAULT_TARGETS = {"adalora": ["c_attn"], "ln-tuning": ["ln_1", "ln_2", "ln_f"]}

GPT2_FAMILY = {  # the published GPT-2 shapes (Radford et al. 2019), LM head tied to wte
    "GPT-2 124M": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768),
    "GPT-2 355M": GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, d_model=1024),
    "GPT-2 774M": GPTConfig(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, d_model=1280),
    "GPT-2 1.5B": GPTConfig(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, d_model=1600),
}


def _targeted(targets: list[str], C: int) -> list[tuple[int, int]]:
    """(fan in, fan out) of each Linear of one block that a target name matches (a whole
    name, or its suffix after a dot, as PEFT matches target_modules)."""
    return [(i * C, o * C) for name, (i, o) in BLOCK_LINEARS.items()
            if any(name == t or name.endswith("." + t) for t in targets)]  # fmt: skip


def closed_form(method: str, config: GPTConfig) -> int:
    """What ``method`` trains on a GPT of ``config``'s shape, as ``measure`` would count it,
    from the shape alone: L blocks, C channels, V tokens, P positions; a GPT-2 block holds
    12C² + 13C parameters. The method's options (r, density, …) are read from the config
    ``minift finetune`` builds, so a changed default changes the count here too."""
    if method not in METHODS or not METHODS[method].trains:
        trains = sorted(n for n, m in METHODS.items() if m.trains)
        raise ValueError(f"method: expected one of {trains}, got {method!r}")
    C, L, V, P = config.d_model, config.n_layer, config.vocab_size, config.block_size
    block = 12 * C * C + 13 * C
    peft = METHODS[method].build("generation", STEPS)
    targets = peft.target_modules or DEFAULT_TARGETS.get(method, [])
    if method == "full":
        return V * C + P * C + L * block + 2 * C
    if method == "head":
        return V * C  # the tied wte
    if method == "last-k":
        return peft.k * block + 2 * C + V * C  # the top blocks, ln_f and the tied wte
    if method == "sharing":  # every block's MLP is the first block's: L − 1 copies fewer
        return closed_form("full", config) - (L - 1) * (8 * C * C + 5 * C)
    if method == "sparse":
        return L * sum(round(peft.density * i * o) for i, o in _targeted(targets, C))
    if method in ("lora", "dora", "qlora"):  # B (out × r), A (r × in); DoRA: a magnitude per out
        lora = L * sum(peft.r * (i + o) for i, o in _targeted(targets, C))
        return lora + (L * sum(o for _, o in _targeted(targets, C)) if peft.use_dora else 0)
    if method == "adalora":  # P (r × in), Q (out × r), Λ (r) at init_r
        return L * sum(peft.init_r * (i + o) + peft.init_r for i, o in _targeted(targets, C))
    if method == "bitfit":  # a block's biases: 9C in its Linears, 2C in its LayerNorms; ln_f's C
        return (11 * L + 1) * C
    if method == "ln-tuning":  # γ and β (2C) per LayerNorm: ln_1, ln_2 per block, ln_f once
        layer_norms = {"ln_1": L, "ln_2": L, "ln_f": 1}
        return 2 * C * sum(k for name, k in layer_norms.items() if name in targets)
    if method == "adapter":  # two adapters per block, each down (C × m + m) and up (m × C + C)
        m = peft.bottleneck_size
        return 2 * L * (2 * C * m + m + C)
    if method == "loha":  # two [out, r]·[r, in] products per target
        return L * sum(2 * peft.r * (i + o) for i, o in _targeted(targets, C))
    if method == "lokr":  # the factors lokr_shapes gives each target (a Kronecker split of it)
        return L * sum(
            sum(a * b for a, b in lokr_shapes(i, o, peft.r, peft.decompose_both,
                                              peft.decompose_factor).values())
            for i, o in _targeted(targets, C)
        )  # fmt: skip
    if method == "ia3":  # a vector on c_attn's output (3C) and on mlp.c_proj's input (4C)
        return 7 * L * C
    if method == "vera":  # λ_d (r) and λ_b (out) per target; the shared A and B are frozen
        return L * sum(peft.r + o for _, o in _targeted(targets, C))
    if method == "prompt":
        return peft.num_virtual_tokens * C
    if method == "prefix":  # a key and a value per virtual token per block
        return 2 * L * peft.num_virtual_tokens * C
    raise ValueError(f"method: no closed form written for {method!r}")


# -- the parameter-count figure --------------------------------------------------------------------


def measured_series(configs: list[GPTConfig]) -> dict[str, tuple[list[int], list[int]]]:
    """{method: (the base model's parameters, what the method trains)} at each config, both
    counted by ``count_parameters`` on built models: one line of the figure per method."""
    series: dict[str, tuple[list[int], list[int]]] = {}
    for config in configs:
        size = count_parameters(GPT(config)).total
        for row in measure(config):
            xs, ys = series.setdefault(row.method, ([], []))
            xs.append(size)
            ys.append(row.trainable)
    return series


def closed_form_series(configs: list[GPTConfig]) -> dict[str, tuple[list[int], list[int]]]:
    """``measured_series`` from the closed forms, for models too large to build here; most
    trainable (on the last config) first, as ``measure`` orders its rows."""
    methods = sorted((m for m, method in METHODS.items() if method.trains),
                     key=lambda m: (-closed_form(m, configs[-1]), m))  # fmt: skip
    return {m: ([closed_form("full", c) for c in configs], [closed_form(m, c) for c in configs])
            for m in methods}  # fmt: skip


def widths(config: GPTConfig, smallest: int = 32) -> list[GPTConfig]:
    """``config`` and narrower copies of it, halving d_model down to ``smallest``."""
    out = [config]
    while out[0].d_model // 2 >= smallest and (out[0].d_model // 2) % config.n_head == 0:
        out.insert(0, replace(out[0], d_model=out[0].d_model // 2))
    return out


def plot(path, config: GPTConfig):
    """The figure of trainable parameters per method against model size: on the left minift's
    GPT of ``config``'s depth at widths up to ``config.d_model``, measured; on the right GPT-2's
    published shapes, 124M to 1.5B, from the closed forms (a Llama-shaped model is left out: its
    gated MLP, RMSNorm and untied head are not a GPTConfig, so no count of it could be checked
    against a model minift builds). Grey lines mark 0.1 %, 1 % and 10 % of the model. Returns
    the matplotlib Figure; the PNG carries the counts it drew (``plots.figure_data``)."""
    from minift import plots  # matplotlib, loaded only when there is something to draw

    c = config
    panels = {
        f"minift's GPT (L={c.n_layer}, V={c.vocab_size}), measured by count_parameters": (
            measured_series(widths(c)),
            "model size: parameters of the GPT, d_model "
            + " … ".join(str(w.d_model) for w in widths(c)[:: len(widths(c)) - 1 or 1]),
        ),
        "GPT-2 124M, 355M, 774M, 1.5B: closed form": (
            closed_form_series(list(GPT2_FAMILY.values())),
            "model size: parameters of GPT-2 (tied head)",
        ),
    }
    return plots.plot_parameter_count_panels(
        panels, path, "Trainable parameters per fine-tuning method, as minift finetune sets it up",
        guides=plots.GUIDE_FRACTIONS,
    )  # fmt: skip
