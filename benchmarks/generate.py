"""Inference: generation with and without the KV cache, and merged LoRA against the base model.

Run from the repo root:

    python -m benchmarks.generate
    python -m benchmarks.generate --repeats 3

Two measurements on the d256 model of benchmarks.train_step (d=256, L=6, nh=8, block 128,
vocab 96, float32, seeded random weights: speed does not depend on what the weights learned):

1. ``GPT.generate``, greedy, from a 16-token prompt to the full block (112 new tokens), batch 1
   and batch 8, with ``use_cache=True`` and ``False``: tokens/s (new tokens × batch / seconds) and
   the speed-up. Without the cache every new token reruns the whole window; with it, one position.
   The two outputs are checked equal.
2. The latency of one forward pass of an [8, 128] batch (evaluation mode) for the base model,
   the same model with LoRA r=8 on c_attn and attn.c_proj (unmerged: the extra x·Aᵀ·Bᵀ), and that
   LoRA merged by ``merge_and_unload`` (W₀ + ΔW in the base's own Linear layers). Merged should
   cost what the base costs: same layers, same shapes.

It prints and writes (``--out``, default ``benchmarks/results``): generate.md, generate.json,
generate.png. The OpenBLAS pins: see benchmarks/_reexec.py.
"""

from benchmarks._reexec import pins_in_env, reexec_without_openblas_pins

if __name__ == "__main__":
    reexec_without_openblas_pins("benchmarks.generate")  # before anything imports numpy

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.train_step import LORA, SIZES  # noqa: E402
from minift.machine import blas_info, blas_line, loadavg, source_line  # noqa: E402
from minift.model import GPT  # noqa: E402
from minift.peft import LoraConfig, get_peft_model  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
PROMPT = 16


def timed(fn, repeats):
    """(median seconds, min seconds, last result) of ``repeats`` calls after one warm-up."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(min(times)), result


def bench_generation(model, batch, repeats) -> list[dict]:
    cfg = model.config
    new = cfg.block_size - PROMPT
    idx = np.random.default_rng(1).integers(0, cfg.vocab_size, (batch, PROMPT))
    rows, outputs = [], {}
    for use_cache in (True, False):
        med, best, out = timed(
            lambda uc=use_cache: model.generate(idx, new, temperature=0, use_cache=uc), repeats
        )
        outputs[use_cache] = out
        rows.append(
            {
                "batch": batch,
                "kv_cache": use_cache,
                "new_tokens": new,
                "seconds_median": med,
                "seconds_min": best,
                "tokens_per_s": batch * new / med,
                "loadavg_1min": loadavg(),
            }
        )
    if not np.array_equal(outputs[True], outputs[False]):
        raise RuntimeError("generation with and without the KV cache disagree")
    return rows


def make_lora(cfg):
    """The d256 model with LoRA as the training benchmark applies it, B moved off 0 (a
    trained-looking adapter, so that merging really changes W₀)."""
    peft = get_peft_model(GPT(cfg, seed=0, dtype=np.float32), LoraConfig(**LORA))
    rng = np.random.default_rng(3)
    for name, p in peft.named_parameters().items():
        if name.endswith("lora_B"):
            p.value[...] = 0.01 * rng.standard_normal(p.shape)
    return peft.eval()


def bench_latency(repeats) -> list[dict]:
    cfg, B = SIZES["d256"]
    idx = np.random.default_rng(2).integers(0, cfg.vocab_size, (B, cfg.block_size))
    models = {
        "base": GPT(cfg, seed=0, dtype=np.float32).eval(),
        "LoRA unmerged": make_lora(cfg),
        "LoRA merged": make_lora(cfg).merge_and_unload().eval(),
    }
    err = float(
        np.abs(models["LoRA merged"].forward(idx) - models["LoRA unmerged"].forward(idx)).max()
    )
    # interleaved, in a rotating order, so that a slow moment of the machine (or a warm cache)
    # falls on every model alike instead of on whichever ran first
    names = list(models)
    times = {name: [] for name in names}
    for name in names:
        models[name].forward(idx)  # warm-up
    for round_ in range(4 * repeats):
        for name in names[round_ % 3 :] + names[: round_ % 3]:
            t0 = time.perf_counter()
            models[name].forward(idx)
            times[name].append(time.perf_counter() - t0)
    rows = [
        {
            "model": name,
            "batch": [B, cfg.block_size],
            "ms_median": 1e3 * float(np.median(times[name])),
            "ms_min": 1e3 * min(times[name]),
            "rounds": len(times[name]),
            "loadavg_1min": loadavg(),
        }
        for name in names
    ]
    for r in rows:
        r["vs_base"] = r["ms_median"] / rows[0]["ms_median"]
    rows[2]["max_abs_logit_diff_merged_vs_unmerged"] = err
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.generate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each (default 5)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    blas = blas_info()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = [
        source_line(),
        blas_line(blas),
        f"numpy {np.__version__}, {os.cpu_count()} CPUs, OPENBLAS pins in env: "
        f"{pins_in_env() or 'none'}, load average (1 min) at start: {loadavg():.2f}",
        f"model: d256 of benchmarks.train_step, float32; date (UTC): {date}",
    ]
    for line in header:
        print(line, flush=True)
    cfg, _ = SIZES["d256"]
    model = GPT(cfg, seed=0, dtype=np.float32)
    gen = [row for batch in (1, 8) for row in bench_generation(model, batch, args.repeats)]
    lat = bench_latency(args.repeats)

    gen_lines = [
        "| batch | KV cache | new tokens | seconds (median) | tokens/s | speed-up | load |",
        "|--:|:-:|--:|--:|--:|--:|--:|",
    ]
    for r in gen:
        plain = next(g for g in gen if g["batch"] == r["batch"] and not g["kv_cache"])
        r["speedup_vs_no_cache"] = r["tokens_per_s"] / plain["tokens_per_s"]
        gen_lines.append(
            f"| {r['batch']} | {'yes' if r['kv_cache'] else 'no'} | {r['new_tokens']} "
            f"| {r['seconds_median']:.3f} | {r['tokens_per_s']:,.0f} "
            f"| {r['speedup_vs_no_cache']:.1f}× | {r['loadavg_1min']:.2f} |"
        )
    lat_lines = [
        "| model | forward of [8, 128], ms median (min) | vs base | load |",
        "|---|--:|--:|--:|",
    ]
    for r in lat:
        lat_lines.append(
            f"| {r['model']} | {r['ms_median']:.1f} ({r['ms_min']:.1f}) | {r['vs_base']:.2f}× "
            f"| {r['loadavg_1min']:.2f} |"
        )
    note = (
        "merged vs unmerged logits: max |difference| "
        f"{lat[2]['max_abs_logit_diff_merged_vs_unmerged']:.1e} (float32)"
    )
    md = [
        "# Inference (float32)",
        "",
        *(f"- {h}" for h in header),
        "",
        "## Generation, greedy, 16-token prompt to the full block",
        "",
        *gen_lines,
        "",
        "## Merged LoRA against the base model",
        "",
        *lat_lines,
        "",
        note,
        "",
    ]
    text = "\n".join(md)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generate.md").write_text(text, encoding="utf-8")
    (args.out / "generate.json").write_text(
        json.dumps({"header": header, "generation": gen, "latency": lat}, indent=2) + "\n",
        encoding="utf-8",
    )
    plot(gen, lat, args.out / "generate.png")
    print(f"wrote generate.md, generate.json, generate.png to {args.out}")
    return gen, lat


def _label_bars(ax, bars, texts) -> None:
    """Each bar's value written above it."""
    for bar, text in zip(bars, texts, strict=True):
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )


def plot(gen, lat, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"batch {r['batch']}\n{'KV cache' if r['kv_cache'] else 'no cache'}" for r in gen]
    colors = ["tab:green" if r["kv_cache"] else "tab:gray" for r in gen]
    bars = a1.bar(labels, [r["tokens_per_s"] for r in gen], color=colors)
    _label_bars(a1, bars, [f"{r['tokens_per_s']:,.0f}" for r in gen])
    a1.set_ylabel("generated tokens / s")
    a1.set_title("generation, d256, greedy", fontsize=10)
    bars = a2.bar(
        [r["model"] for r in lat],
        [r["ms_median"] for r in lat],
        color=["tab:blue", "tab:orange", "tab:green"],
    )
    _label_bars(a2, bars, [f"{r['ms_median']:.1f} ms" for r in lat])
    a2.set_ylabel("ms per forward of [8, 128]")
    a2.set_title("merged LoRA costs what the base costs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
