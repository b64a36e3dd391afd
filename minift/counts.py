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

For models too large to build, ``closed_form`` counts the same from a GPT's shape alone (GPT-2's
published sizes, ``GPT2_FAMILY``) and ``llama_closed_form`` from a Llama's (``LLAMA_7B``, with
minift's GPT-2 targets translated by ``LLAMA_NAMES``); both sum one set of per-Linear formulas
(``per_linear``), which the GPT-2 tests measure.

Used by ``minift count`` and ``python -m benchmarks.param_counts`` (which also draws the chart).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace

from minift.errors import check_int
from minift.model import GPT, GPTConfig
from minift.peft import METHODS, count_parameters, get_peft_model
from minift.peft.lokr import lokr_shapes
from minift.peft.targets import name_matches

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
    base = GPT(config, seed=seed)  # drawn once and copied: a draw costs far more than a copy
    base_total = count_parameters(base).total
    rows = []
    for method in METHODS.values():
        if not method.trains:
            continue
        peft_config = method.build("generation", STEPS)
        peft_model = get_peft_model(copy.deepcopy(base), peft_config, seed=seed)
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
#
# What a method trains is a sum over what it touches: the Linears its target_modules match (a LoRA
# pair, a DoRA magnitude, a sparse mask … on each), the norms (LN tuning), the blocks (prefix
# rows), the embedding (prompt rows). The per-Linear counts below are ONE set of functions, summed
# over GPT-2's Linears by ``closed_form`` and over a Llama's by ``llama_closed_form``:
# tests/test_counts.py holds the first to count_parameters on the GPTs minift builds at every
# GPT-2 depth, so the formulas the Llama sums are measured ones, on non-square Linears too
# (c_attn C → 3C, c_fc C → 4C, mlp.c_proj 4C → C).


def lora_count(d_in: int, d_out: int, r: int) -> int:
    """LoRA's B [d_out, r] and A [r, d_in], ΔW = (α/r)·B·A (Hu et al. 2021, eq. 3)."""
    return r * (d_in + d_out)


def dora_count(d_in: int, d_out: int, r: int) -> int:
    """LoRA's pair and a magnitude per output column, W = m · (W₀ + BA)/‖W₀ + BA‖_c, m ∈ ℝ^d_out
    (Liu et al. 2024, eq. 5)."""
    return lora_count(d_in, d_out, r) + d_out


def adalora_count(d_in: int, d_out: int, r: int) -> int:
    """P [r, d_in], Λ [r] and Q [d_out, r] of ΔW = P·Λ·Q (Zhang et al. 2023, eq. 3), at the
    initial rank; the budget schedule later zeroes entries of Λ, it removes no Param."""
    return r * (d_in + d_out) + r


def loha_count(d_in: int, d_out: int, r: int) -> int:
    """Two rank-r pairs whose products multiply elementwise, ΔW = (B₁A₁) ⊙ (B₂A₂)
    (Hyeon-Woo et al. 2022, eq. 4): twice LoRA's count at the same r."""
    return 2 * lora_count(d_in, d_out, r)


def lokr_count(d_in: int, d_out: int, r: int, decompose_both: bool, decompose_factor: int) -> int:
    """ΔW = W₁ ⊗ W₂, each factor whole or as a rank-r pair, as ``lokr_shapes`` splits the
    Linear (LyCORIS; Yeh et al. 2024, §3.2)."""
    shapes = lokr_shapes(d_in, d_out, r, decompose_both, decompose_factor)
    return sum(a * b for a, b in shapes.values())


def vera_count(d_in: int, d_out: int, r: int) -> int:
    """λ_d [r] and λ_b [d_out] of ΔW = Λ_b·B·Λ_d·A; A and B are shared, frozen and not counted,
    as PEFT keeps them as buffers (Kopiczko et al. 2024, eq. 1)."""
    return r + d_out


def sparse_count(d_in: int, d_out: int, density: float) -> int:
    """The entries of W that a mask of this density keeps trainable (the article's A4)."""
    return round(density * d_in * d_out)


def ia3_count(d_in: int, d_out: int, feedforward: bool) -> int:
    """One vector: on the INPUT of a feed-forward target (the paper's l_ff), on the OUTPUT of the
    others (l_k, l_v; PEFT's rule) (Liu et al. 2022, §3.3)."""
    return d_in if feedforward else d_out


def adapter_count(d_in: int, d_out: int, m: int) -> int:
    """A bottleneck on the Linear's output: down [d_out, m] + m, up [m, d_out] + d_out
    (Houlsby et al. 2019, §2.1)."""
    return 2 * d_out * m + m + d_out


def per_linear(method: str, peft, d_in: int, d_out: int, feedforward: bool = False) -> int:
    """What ``method``, configured as ``peft``, trains on ONE Linear it targets (d_in → d_out;
    ``feedforward``: IA3 scales its input)."""
    if method in ("lora", "dora", "qlora"):  # QLoRA: LoRA's pair; the NF4 base trains nothing
        count = dora_count if peft.use_dora else lora_count
        return count(d_in, d_out, peft.r)
    if method == "adalora":
        return adalora_count(d_in, d_out, peft.init_r)
    if method == "loha":
        return loha_count(d_in, d_out, peft.r)
    if method == "lokr":
        return lokr_count(d_in, d_out, peft.r, peft.decompose_both, peft.decompose_factor)
    if method == "vera":
        return vera_count(d_in, d_out, peft.r)
    if method == "sparse":
        return sparse_count(d_in, d_out, peft.density)
    if method == "ia3":
        return ia3_count(d_in, d_out, feedforward)
    if method == "adapter":
        return adapter_count(d_in, d_out, peft.bottleneck_size)
    raise ValueError(f"method: {method!r} trains no count per Linear")


# the methods whose count is a sum of ``per_linear`` over the Linears they target
PER_LINEAR = ("sparse", "lora", "dora", "qlora", "adalora", "adapter", "ia3", "vera", "loha",
              "lokr")  # fmt: skip


def prompt_count(num_virtual_tokens: int, d_model: int) -> int:
    """A row of the embedding's width per virtual token (Lester et al. 2021, §2)."""
    return num_virtual_tokens * d_model


def prefix_count(num_virtual_tokens: int, d_model: int) -> int:
    """A key and a value row per virtual token, in ONE block (Li & Liang 2021, §4.2); the keys
    and values are C wide when every head has its own, as in GPT-2 and Llama-2 7B."""
    return 2 * num_virtual_tokens * d_model


def _config(method: str, **options):
    """The config ``minift finetune --method <method>`` builds (``options``: its command-line
    options, ``r=8`` …), the one both closed forms read."""
    if method not in METHODS or not METHODS[method].trains:
        trains = sorted(n for n, m in METHODS.items() if m.trains)
        raise ValueError(f"method: expected one of {trains}, got {method!r}")
    return METHODS[method].build("generation", STEPS, **options)


def _matched(peft, names: list[str]) -> list[str]:
    """Those of ``names`` (full module names) that the config's targets match, less its
    ``exclude_modules``, matched as get_peft_model matches them (minift.peft.targets)."""
    targets = peft.target_modules or list(type(peft).default_target_modules)
    excluded = getattr(peft, "exclude_modules", None)
    return [n for n in names if name_matches(n, targets)
            and not (excluded and name_matches(n, excluded))]  # fmt: skip


def _linear_sum(method: str, peft, linears: dict[str, tuple[int, int]]) -> int:
    """Σ of ``per_linear`` over the Linears (full name -> (d_in, d_out)) that ``peft`` targets."""
    feedforward = getattr(peft, "is_feedforward", lambda name: False)
    return sum(per_linear(method, peft, *linears[n], feedforward(n))
               for n in _matched(peft, list(linears)))  # fmt: skip


def _shared_per_block(patterns: list[str], params: dict[str, int]) -> int:
    """How many parameters of ONE block (full name -> size) the sharing patterns tie to the first
    block's (re.fullmatch, as SharingConfig matches them): L − 1 blocks drop as many each."""
    return sum(size for name, size in params.items()
               if any(re.fullmatch(p, name) for p in patterns))  # fmt: skip


# A block's Linears as GPT-2 names them, (fan in, fan out) in units of C = d_model
BLOCK_LINEARS = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4),
                 "mlp.c_proj": (4, 1)}  # fmt: skip
GPT2_BLOCK = "h.0."  # the first block's prefix: a block's modules are matched under their full name
GPT2_NORMS = (GPT2_BLOCK + "ln_1", GPT2_BLOCK + "ln_2", "ln_f")

GPT2_FAMILY = {  # the published GPT-2 shapes (Radford et al. 2019), LM head tied to wte
    "GPT-2 124M": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768),
    "GPT-2 355M": GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, d_model=1024),
    "GPT-2 774M": GPTConfig(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, d_model=1280),
    "GPT-2 1.5B": GPTConfig(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, d_model=1600),
}


def gpt2_linears(config: GPTConfig) -> dict[str, tuple[int, int]]:
    """The first block's Linears, full name -> (fan in, fan out)."""
    C = config.d_model
    return {GPT2_BLOCK + n: (i * C, o * C) for n, (i, o) in BLOCK_LINEARS.items()}


def gpt2_block_params(config: GPTConfig) -> dict[str, int]:
    """The first block's Params, full name -> size: 12C² + 13C in all."""
    C = config.d_model
    params = {GPT2_BLOCK + f"{n}.weight": C for n in ("ln_1", "ln_2")}
    params |= {GPT2_BLOCK + f"{n}.bias": C for n in ("ln_1", "ln_2")}
    for name, (i, o) in gpt2_linears(config).items():
        params |= {f"{name}.weight": i * o, f"{name}.bias": o}
    return params


def closed_form(method: str, config: GPTConfig) -> int:
    """What ``method`` trains on a GPT of ``config``'s shape, as ``measure`` would count it,
    from the shape alone: L blocks, C channels, V tokens, P positions; a GPT-2 block holds
    12C² + 13C parameters. The method's options (r, density, targets …) are read from the config
    ``minift finetune`` builds, so a changed default changes the count here too."""
    peft = _config(method)
    C, L, V, P = config.d_model, config.n_layer, config.vocab_size, config.block_size
    block = sum(gpt2_block_params(config).values())  # 12C² + 13C
    if method == "full":
        return V * C + P * C + L * block + 2 * C
    if method == "head":
        return V * C  # the tied wte
    if method == "last-k":
        return peft.k * block + 2 * C + V * C  # the top blocks, ln_f and the tied wte
    if method == "sharing":  # the patterns' Params of L − 1 blocks are the first block's
        shared = _shared_per_block(peft.patterns, gpt2_block_params(config))
        return closed_form("full", config) - (L - 1) * shared  # default: the MLP, 8C² + 5C
    if method in PER_LINEAR:
        return L * _linear_sum(method, peft, gpt2_linears(config))
    if method == "bitfit":  # a block's biases: 9C in its Linears, 2C in its LayerNorms; ln_f's C
        return (11 * L + 1) * C
    if method == "ln-tuning":  # γ and β (2C) per LayerNorm: ln_1, ln_2 per block, ln_f once
        in_block = len(_matched(peft, list(GPT2_NORMS[:2])))
        return 2 * C * (L * in_block + len(_matched(peft, list(GPT2_NORMS[2:]))))
    if method == "prompt":
        return prompt_count(peft.num_virtual_tokens, C)
    if method == "prefix":
        return L * prefix_count(peft.num_virtual_tokens, C)
    raise ValueError(f"method: no closed form written for {method!r}")


# -- the same methods on a Llama-shaped model ----------------------------------------------------


@dataclass(frozen=True)
class LlamaShape:
    """A Llama-shaped decoder (Touvron et al. 2023, §2.2): L pre-norm blocks, each attention with
    q, k, v, o projections (C × C, no bias: every head has its own k and v, as in Llama-2 7B; the
    grouped-query 70B would shrink k and v) and a SwiGLU MLP (gate and up C → F, down F → C, no
    bias; Shazeer 2020); RMSNorm, a weight and no bias (Zhang & Sennrich 2019); rotary positions,
    no position table (Su et al. 2021); an LM head of its own, not tied to the embedding."""

    vocab_size: int  # V
    n_layer: int  # L
    d_model: int  # C
    d_ff: int  # F, the SwiGLU's hidden width
    n_head: int

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "d_model", "d_ff", "n_head"):
            check_int(name, getattr(self, name))
        if self.d_model % self.n_head:
            raise ValueError(f"n_head: must divide d_model={self.d_model}, got {self.n_head}")


LLAMA_7B = LlamaShape(vocab_size=32000, n_layer=32, d_model=4096, d_ff=11008, n_head=32)  # Llama-2
LLAMA_BLOCK = "model.layers.0."  # Hugging Face's LlamaForCausalLM names, as PEFT matches them
LLAMA_NORM = "model.norm"  # the final RMSNorm

# GPT-2's module -> its Llama counterparts: the translation that turns minift's GPT-2 targets
# into a Llama's. The fused q|k|v projection is three; the MLP's up projection is SwiGLU's two
# inputs; each LayerNorm is the RMSNorm in its place.
LLAMA_NAMES = {
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.c_proj": ("self_attn.o_proj",),
    "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.c_proj": ("mlp.down_proj",),
    "ln_1": ("input_layernorm",),
    "ln_2": ("post_attention_layernorm",),
    "ln_f": ("norm",),  # model.norm, after the last block
}

# what has no meaning on a Llama, and why: left out of its series, the table and the figure
LLAMA_LEFT_OUT = {"bitfit": "a Llama has no biases"}  # its Linears and RMSNorms have none: 0


def llama_linears(shape: LlamaShape) -> dict[str, tuple[int, int]]:
    """The first block's Linears, full name -> (fan in, fan out): 4C² + 3CF parameters."""
    C, F = shape.d_model, shape.d_ff
    fans = {"self_attn.q_proj": (C, C), "self_attn.k_proj": (C, C), "self_attn.v_proj": (C, C),
            "self_attn.o_proj": (C, C), "mlp.gate_proj": (C, F), "mlp.up_proj": (C, F),
            "mlp.down_proj": (F, C)}  # fmt: skip
    return {LLAMA_BLOCK + name: fan for name, fan in fans.items()}


def llama_block_params(shape: LlamaShape) -> dict[str, int]:
    """The first block's Params, full name -> size: 4C² + 3CF + 2C (no bias anywhere)."""
    params = {f"{name}.weight": i * o for name, (i, o) in llama_linears(shape).items()}
    norms = ("input_layernorm", "post_attention_layernorm")
    return params | {f"{LLAMA_BLOCK}{n}.weight": shape.d_model for n in norms}


def _translate(gpt2_name: str) -> tuple[str, ...]:
    """A GPT-2 module's full name -> its Llama counterparts' full names."""
    if gpt2_name == "ln_f":
        return (LLAMA_NORM,)
    return tuple(LLAMA_BLOCK + n for n in LLAMA_NAMES[gpt2_name.removeprefix(GPT2_BLOCK)])


def llama_config(method: str, targets: list[str] | None = None, **options):
    """The config ``minift finetune --method <method>`` builds, its GPT-2 targets translated to a
    Llama's by ``LLAMA_NAMES`` (the modules it matches on GPT-2, each replaced by its
    counterparts, written as PEFT writes Llama targets: "q_proj", "down_proj" …). ``targets``, if
    given, are Llama module names (or suffixes) and replace the translation; ``options`` are the
    method's command-line options (``r=8`` …).

    - IA3: feed-forward (its INPUT scaled) are the counterparts of GPT-2's feed-forward targets:
      with minift's defaults c_attn's output and mlp.c_proj's input become q, k and v's outputs
      and down_proj's input, 3C + F per block. PEFT's own Llama default leaves q out (k_proj,
      v_proj, down_proj: the paper's l_k, l_v, l_ff); minift scales q on GPT-2 because c_attn
      fuses it with k and v, and keeps it here so that both series count one method;
      ``targets=["k_proj", "v_proj", "down_proj"]`` counts PEFT's.
    - sharing: each tied GPT-2 weight becomes its counterparts' weights (the default: every
      block's gate, up and down projections tied to block 0's); a tied bias has none.
    - LoRA and its kin on minift's default c_attn and attn.c_proj adapt q, k, v and o; PEFT's
      Llama default is q_proj and v_proj, which ``targets`` gives.
    """
    peft = _config(method, **options)
    if method in PER_LINEAR or method == "ln-tuning":  # the GPT-2 modules it targets, translated
        names = GPT2_NORMS if method == "ln-tuning" else gpt2_linears(GPTConfig())  # names only
        gpt2 = _matched(peft, list(names))
        translated = [n.rsplit(".", 1)[-1] for g in gpt2 for n in _translate(g)]
        changes = {"target_modules": list(targets) if targets is not None else translated}
        if method == "ia3":  # feed-forward: the counterparts of the feed-forward GPT-2 targets
            ff = [n.rsplit(".", 1)[-1] for g in gpt2 if peft.is_feedforward(g)
                  for n in _translate(g)]  # fmt: skip
            changes["feedforward_modules"] = [t for t in ff if t in changes["target_modules"]]
        if hasattr(peft, "exclude_modules"):  # applied on GPT-2's names already
            changes["exclude_modules"] = None
        return replace(peft, **changes)
    if method == "sharing":  # the tied weights' counterparts, in every block
        names = gpt2_block_params(GPTConfig())  # names only: any width will do
        tied = [n for n in names if n.endswith(".weight")
                and any(re.fullmatch(p, n) for p in peft.patterns)]  # fmt: skip
        patterns = [re.escape(n).replace(r"\.0\.", r"\.\d+\.", 1) + r"\.weight"
                    for t in tied for n in _translate(t.removesuffix(".weight"))]  # fmt: skip
        return replace(peft, patterns=patterns)
    return peft


def llama_closed_form(method: str, shape: LlamaShape, targets: list[str] | None = None,
                      **options) -> int:  # fmt: skip
    """What ``method`` trains on a Llama of ``shape``, from the shape alone: L blocks of
    4C² + 3CF + 2C parameters, V·C in the embedding and V·C in the head, C in the final norm.
    The method's config is ``llama_config``'s: minift finetune's, GPT-2's targets translated (or
    ``targets``), so a changed default changes this count and ``closed_form``'s together. Each
    Linear's share is ``per_linear``, the function GPT-2's closed form sums.

    minift builds no Llama (no RMSNorm, SwiGLU or rotary attention), so no count here is
    measured on a whole one; tests/test_counts.py applies each method's ``llama_config`` to a
    module holding a small Llama's Linears and norms under their Llama names (C = 32, F = 88)
    and counts it with count_parameters, and holds the 7B's full count and a LoRA count to the
    published numbers. BitFit gives 0 (``LLAMA_LEFT_OUT``)."""
    peft = llama_config(method, targets, **options)
    C, L, V = shape.d_model, shape.n_layer, shape.vocab_size
    block = sum(llama_block_params(shape).values())
    if method == "full":
        return V * C + L * block + C + V * C  # embed_tokens, the blocks, norm, lm_head
    if method == "head":
        return V * C  # lm_head, the Llama's own
    if method == "last-k":
        return peft.k * block + C + V * C  # the top blocks, the final norm and lm_head
    if method == "sharing":
        shared = _shared_per_block(peft.patterns, llama_block_params(shape))
        return llama_closed_form("full", shape) - (L - 1) * shared  # default: 3CF
    if method in PER_LINEAR:
        return L * _linear_sum(method, peft, llama_linears(shape))
    if method == "bitfit":
        return 0  # no bias to train
    if method == "ln-tuning":  # an RMSNorm has its weight alone: C per norm
        norms = [LLAMA_BLOCK + "input_layernorm", LLAMA_BLOCK + "post_attention_layernorm"]
        return C * (L * len(_matched(peft, norms)) + len(_matched(peft, [LLAMA_NORM])))
    if method == "prompt":
        return prompt_count(peft.num_virtual_tokens, C)
    if method == "prefix":
        return L * prefix_count(peft.num_virtual_tokens, C)
    raise ValueError(f"method: no Llama closed form written for {method!r}")


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


def llama_closed_form_series(
    shape: LlamaShape = LLAMA_7B,
) -> dict[str, tuple[list[int], list[int]]]:
    """{method: ([the Llama's parameters], [what the method trains])} from ``llama_closed_form``,
    one point per method, most trainable first; the methods of ``LLAMA_LEFT_OUT`` left out."""
    drawn = [m for m, method in METHODS.items() if method.trains and m not in LLAMA_LEFT_OUT]
    methods = sorted(drawn, key=lambda m: (-llama_closed_form(m, shape), m))
    size = llama_closed_form("full", shape)
    return {m: ([size], [llama_closed_form(m, shape)]) for m in methods}


def widths(config: GPTConfig, smallest: int = 32) -> list[GPTConfig]:
    """``config`` and narrower copies of it, halving d_model down to ``smallest``."""
    out = [config]
    while out[0].d_model // 2 >= smallest and (out[0].d_model // 2) % config.n_head == 0:
        out.insert(0, replace(out[0], d_model=out[0].d_model // 2))
    return out


LLAMA_POINTS = "Llama-2 7B (hollow markers), closed form"


def plot(path, config: GPTConfig):
    """The figure of trainable parameters per method against model size: on the left minift's
    GPT of ``config``'s depth at widths up to ``config.d_model``, measured; on the right GPT-2's
    published shapes, 124M to 1.5B, from the closed forms (a line per method), and beside them
    Llama-2 7B (``LLAMA_7B``, a hollow marker per method: ``llama_closed_form``, minift's GPT-2
    targets translated by ``LLAMA_NAMES``). BitFit has no Llama point: a Llama has no biases
    (the panel's axis says so). Llama points that would hide each other are drawn side by side
    around the Llama's size. Grey lines mark 0.1 %, 1 % and 10 % of the model. Returns the
    matplotlib Figure; the PNG carries the counts it drew (``plots.figure_data``: the two
    panels, then the Llama points)."""
    from minift import plots  # matplotlib, loaded only when there is something to draw

    c = config
    left_out = "; ".join(f"no point for {m}: {why}" for m, why in LLAMA_LEFT_OUT.items())
    closed = "GPT-2 124M, 355M, 774M, 1.5B (lines) and Llama-2 7B (hollow): closed form"
    panels = {
        f"minift's GPT (L={c.n_layer}, V={c.vocab_size}), measured by count_parameters": (
            measured_series(widths(c)),
            "model size: parameters of the GPT, d_model "
            + " … ".join(str(w.d_model) for w in widths(c)[:: len(widths(c)) - 1 or 1]),
        ),
        closed: (
            closed_form_series(list(GPT2_FAMILY.values())),
            f"model size: parameters of GPT-2 (tied head) and Llama-2 7B (untied head; {left_out})",
        ),
    }
    llama = {closed: (LLAMA_POINTS, llama_closed_form_series(LLAMA_7B))}  # beside GPT-2's lines
    return plots.plot_parameter_count_panels(
        panels, path, "Trainable parameters per fine-tuning method, as minift finetune sets it up",
        guides=plots.GUIDE_FRACTIONS, points=llama,
    )  # fmt: skip
