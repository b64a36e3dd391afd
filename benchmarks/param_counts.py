"""How many parameters each fine-tuning method trains, as tables and a chart.

The table is ``minift.counts`` (also printed by ``minift count``); this script runs it for one
model size, adds GPT-2's published sizes and Llama-2 7B's from the closed forms, and draws them.
Run from the repo root:

    python -m benchmarks.param_counts
    python -m benchmarks.param_counts --d-model 768 --n-layer 12 --vocab-size 50257 \\
        --block-size 1024 --n-head 12                                   # GPT-2 small's shape

It prints and writes (to ``--out``, default ``benchmarks/results``):

    param_counts.md     the Markdown tables: for the chosen model, each method (as ``minift
                        finetune --method`` names it), what trains, trainable, total, trainable %,
                        added; then each method on GPT-2 124M … 1.5B and on Llama-2 7B, from the
                        closed forms
    param_counts.png    trainable parameters against model size, log–log: minift's GPT at widths
                        up to --d-model (measured), and GPT-2's sizes with Llama-2 7B beside them
                        (closed form); guide lines at 0.1 %, 1 % and 10 % of the model
                        (``minift.counts.plot``)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minift import counts
from minift.checkpoint import atomic_write_bytes
from minift.model import GPTConfig


def closed_form_markdown() -> str:
    """Each method's trainable parameters on GPT-2's published shapes and on Llama-2 7B's, from
    the closed forms (tests/test_counts.py holds GPT-2's to ``count_parameters`` on small models
    of the same depth, the Llama's to its published size, to PEFT's LoRA count and to
    ``count_parameters`` on a small Llama's Linears and norms)."""
    family = counts.GPT2_FAMILY
    series = counts.closed_form_series(list(family.values()))
    llama, shape = counts.llama_closed_form_series(counts.LLAMA_7B), counts.LLAMA_7B
    left_out = "; ".join(f"{m} is left out of the chart ({why})"
                         for m, why in counts.LLAMA_LEFT_OUT.items())  # fmt: skip
    lines = [
        "## The same methods on GPT-2's published shapes and on Llama-2 7B's (closed form)",
        "",
        "Counted from the shapes alone by `minift.counts.closed_form` and "
        "`minift.counts.llama_closed_form` (the models are too large to build here); trainable "
        "parameters, in brackets the share of the model. Llama-2 7B (Touvron et al. 2023: "
        f"{shape.n_layer} blocks, d_model {shape.d_model}, SwiGLU width {shape.d_ff}, "
        f"{shape.vocab_size:,d} tokens, RMSNorm, rotary positions, untied head) gets each method "
        "with minift's GPT-2 targets translated (`counts.LLAMA_NAMES`: c_attn → q_proj, k_proj, "
        "v_proj; attn.c_proj → o_proj; mlp.c_fc → gate_proj, up_proj; mlp.c_proj → down_proj; "
        "ln_1, ln_2, ln_f → its RMSNorms, a weight each): LoRA adapts q, k, v and o (PEFT's "
        "Llama default is q and v), IA3 scales q, k and v's outputs and down_proj's input; "
        f"{left_out}.",
        "",
        "| method | " + " | ".join(family) + " | Llama-2 7B |",
        "|---|" + "---:|" * (len(family) + 1),
    ]
    for method, (sizes, trainable) in series.items():
        cells = [f"{t:,d} ({100 * t / s:.3g} %)" for s, t in zip(sizes, trainable, strict=True)]
        if method in llama:
            (size,), (t,) = llama[method]
            cells.append(f"{t:,d} ({100 * t / size:.3g} %)")
        else:  # left out of the Llama's series and chart, its count and the reason here
            why = counts.LLAMA_LEFT_OUT[method]
            cells.append(f"{counts.llama_closed_form(method, shape):,d} ({why})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[counts.Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    config = GPTConfig(
        vocab_size=args.vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
    )
    rows = counts.measure(config)
    text = counts.markdown(rows, config) + "\n" + closed_form_markdown()
    print(text, end="")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "param_counts.md", text.encode())
    counts.plot(args.out / "param_counts.png", config)
    print(f"wrote {args.out / 'param_counts.md'} and {args.out / 'param_counts.png'}")
    return rows


if __name__ == "__main__":
    main()
