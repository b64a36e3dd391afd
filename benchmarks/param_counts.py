"""How many parameters each fine-tuning method trains, as a table and a chart.

The table is ``minift.counts`` (also printed by ``minift count``); this script runs it for one
model size and draws it. Run from the repo root:

    python -m benchmarks.param_counts
    python -m benchmarks.param_counts --d-model 768 --n-layer 12 --vocab-size 50257 \\
        --block-size 1024 --n-head 12                                   # GPT-2 small's shape

It prints and writes (to ``--out``, default ``benchmarks/results``):

    param_counts.md     the Markdown table: method (as ``minift finetune --method`` names it),
                        what trains, trainable, total, trainable %, added
    param_counts.png    trainable parameters per method, a bar chart on a log scale
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minift import counts, plots
from minift.checkpoint import atomic_write_bytes
from minift.model import GPTConfig


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
    text = counts.markdown(rows, config)
    print(text, end="")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "param_counts.md", text.encode())
    plots.plot_bars(
        {f"{r.method}\n{r.percent:.2g} %": r.trainable for r in rows},
        args.out / "param_counts.png",
        ylabel="trainable parameters (log scale)",
        title=f"Trainable parameters per method (d={config.d_model}, L={config.n_layer}, "
        f"V={config.vocab_size})",
        log=True,
    )
    print(f"wrote {args.out / 'param_counts.md'} and {args.out / 'param_counts.png'}")
    return rows


if __name__ == "__main__":
    main()
