"""Training-step throughput of minift's GPT in float32, against the machine's matmul peak.

Run from the repo root:

    .venv/bin/python -m benchmarks.train_step                  # all three sizes, ~5-10 s each
    .venv/bin/python -m benchmarks.train_step --sizes d64 --steps 20

One step is forward + cross_entropy + zero_grad + backward + AdamW step, on seeded random tokens.
For each size it prints and writes (to ``--out``, default ``benchmarks/results``):

    train_step.md     the Markdown table below, with the BLAS kernel, numpy version and matmul peak
    train_step.json   one record per size: config, B, T, ms/step (median, min, max), tokens/s,
                      GFLOP/s, fraction of peak, BLAS info, numpy version, date
    train_step.png    tokens/s per size

GFLOP/s counts matmul FLOPs only (``train_step_flops``) and is compared with the best GFLOP/s of a
single large float32 ``a @ b`` measured on the same machine in the same process.

The OpenBLAS pins. These machines export OPENBLAS_CORETYPE=Haswell and OPENBLAS_L2_SIZE=512,
which older OpenBLAS builds need on this CPU, but which make the current numpy's OpenBLAS use an
older, slower kernel. When either is set, this module re-executes itself, BEFORE numpy is
imported, as

    sys.executable -m benchmarks.train_step [the same arguments]

with both removed from the environment (this command only: tests and CI keep them), and says so
on one line. It then prints the kernel that actually ran (threadpoolctl), so every number comes
with the BLAS it was measured on.
"""

import os
import sys

_OPENBLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _reexec_without_openblas_pins():
    """Restart this benchmark without the OpenBLAS pins (they are read once, when numpy loads)."""
    pinned = [name for name in _OPENBLAS_PINS if name in os.environ]
    if not pinned:
        return
    env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_PINS}
    print(
        f"re-executing without {', '.join(f'{k}={os.environ[k]}' for k in pinned)} "
        "so OpenBLAS picks its own kernel for this CPU",
        flush=True,
    )
    argv = [sys.executable, "-m", "benchmarks.train_step", *sys.argv[1:]]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    _reexec_without_openblas_pins()  # must run before anything below imports numpy

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from minift.functional import cross_entropy  # noqa: E402
from minift.model import GPT, GPTConfig  # noqa: E402

VOCAB = 96
# name -> (config, B); block_size = T, the sequence length trained on
SIZES = {
    "d64": (GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, d_model=64), 32),
    "d128": (GPTConfig(vocab_size=VOCAB, block_size=128, n_layer=4, n_head=4, d_model=128), 16),
    "d256": (GPTConfig(vocab_size=VOCAB, block_size=128, n_layer=6, n_head=8, d_model=256), 8),
}
WARMUP_STEPS = 3
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------------
# FLOPs


def train_step_flops(cfg: GPTConfig, B: int, T: int) -> int:
    """Matmul FLOPs of one training step (forward + backward) of GPT(cfg) on a [B, T] batch.

    A matmul [m, k]×[k, n] costs 2·m·k·n FLOPs. With N = B·T tokens, C = d_model, hs = C/nh:

        per layer, forward
            c_attn       [N, C]×[C, 3C]        2·N·C·3C
            attn.c_proj  [N, C]×[C, C]         2·N·C·C
            mlp.c_fc     [N, C]×[C, 4C]        2·N·C·4C
            mlp.c_proj   [N, 4C]×[4C, C]       2·N·4C·C      → weights: 24·N·C² per layer
            q·kᵀ         B·nh × [T, hs]×[hs, T]  2·B·T²·C
            a·v          B·nh × [T, T]×[T, hs]   2·B·T²·C      → attention: 4·B·T²·C per layer
        LM head (tied to wte)  [N, C]×[C, V]   2·N·C·V

    Backward is twice the forward for every one of them: a weight matmul y = x·W needs dx = dy·Wᵀ
    and dW = xᵀ·dy; q·kᵀ needs dq and dk; a·v needs da and dv. The first layer's dx is computed
    too (it flows into the token embedding), so the whole step is 3× the forward.

    The full T×T score matrix is counted, as minift computes it (the causal mask is added, not
    skipped). Elementwise work (LayerNorm, GELU, softmax, the mask, cross-entropy, AdamW) and the
    embedding lookups are ignored: they are O(N·C) or O(B·nh·T²), not matmuls.
    """
    C, L, V = cfg.d_model, cfg.n_layer, cfg.vocab_size
    N = B * T
    weights_forward = 2 * N * (L * (3 * C * C + C * C + 4 * C * C + 4 * C * C) + C * V)
    attention_forward = L * (2 * B * T * T * C + 2 * B * T * T * C)
    return 3 * (weights_forward + attention_forward)


# ------------------------------------------------------------------------------------------------
# The machine


def blas_info() -> dict:
    """numpy's BLAS (the one ``@`` calls): internal_api, version, architecture (the kernel that
    runs), num_threads, filepath; ``others`` lists any other BLAS loaded, such as scipy's own
    OpenBLAS, which threadpoolctl may list first.
    """
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads", "filepath")
    pools = [{k: p.get(k) for k in keys} for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return {"internal_api": "unknown", "others": []}
    numpy_dir = Path(np.__file__).resolve().parent  # .../site-packages/numpy
    ours = [
        p
        for p in pools
        if Path(p["filepath"]).parent.name == "numpy.libs"  # a wheel's bundled library
        or Path(p["filepath"]).resolve().is_relative_to(numpy_dir)
    ]
    main = (ours or pools)[0]
    return {**main, "others": [p for p in pools if p is not main]}


def blas_line(info: dict) -> str:
    line = (
        f"BLAS (numpy's): {info.get('internal_api')} {info.get('version')}, "
        f"kernel {info.get('architecture')}, {info.get('num_threads')} threads"
    )
    for other in info.get("others", []):
        line += (
            f"; also loaded: {Path(other['filepath']).name} {other['version']} "
            f"(kernel {other['architecture']})"
        )
    return line


def matmul_peak(sizes=(1024, 2048), repeats=5) -> dict[int, float]:
    """Best GFLOP/s of a float32 [n, n]·[n, n] matmul (2n³ FLOPs) for each n."""
    rng = np.random.default_rng(0)
    result = {}
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        a @ b  # warm-up: thread pool start, page faults
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        result[n] = 2 * n**3 / best / 1e9
    return result


# ------------------------------------------------------------------------------------------------
# The training step


def make_batches(cfg: GPTConfig, B: int, T: int, n: int = 8, seed: int = 0):
    """n seeded batches of random tokens (idx [B, T], targets [B, T]), targets = idx shifted."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        tokens = rng.integers(0, cfg.vocab_size, size=(B, T + 1))
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    return batches


def train_step(model, opt, idx, targets) -> float:
    """forward + cross_entropy + zero_grad + backward + AdamW step; returns the loss."""
    logits = model.forward(idx)  # (B, T, V)
    loss, dlogits = cross_entropy(logits, targets)
    opt.zero_grad()
    model.backward(dlogits)
    opt.step()
    return loss


def time_size(cfg: GPTConfig, B: int, T: int, steps: int | None, seconds: float) -> dict:
    """Warm up, then time each of ``steps`` steps (or as many as fill ``seconds``) on its own."""
    from minift.optim import AdamW  # imported here so train_step_flops needs no optimizer

    model = GPT(cfg, seed=0, dtype=np.float32)
    opt = AdamW(model.named_parameters(), lr=1e-3, weight_decay=0.0)
    batches = make_batches(cfg, B, T)
    t_warm = math.inf
    for i in range(WARMUP_STEPS):
        t0 = time.perf_counter()
        train_step(model, opt, *batches[i % len(batches)])
        t_warm = min(t_warm, time.perf_counter() - t0)
    if steps is None:
        steps = max(5, math.ceil(seconds / t_warm))
    times, losses = [], []
    for i in range(steps):
        idx, targets = batches[i % len(batches)]
        t0 = time.perf_counter()
        losses.append(train_step(model, opt, idx, targets))
        times.append(time.perf_counter() - t0)
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"non-finite loss during the benchmark: {losses}")
    return {
        "params": model.num_parameters(),
        "steps": steps,
        "times": np.array(times),
        "last_loss": losses[-1],
    }


def benchmark_size(name, cfg, B, steps, seconds, peak_gflops) -> dict:
    """One record of the results: timing, throughput and FLOP rate for one size."""
    T = cfg.block_size
    run = time_size(cfg, B, T, steps, seconds)
    t = run["times"]
    median = float(np.median(t))
    flops = train_step_flops(cfg, B, T)
    gflops = flops / median / 1e9
    return {
        "name": name,
        "config": cfg.to_dict(),
        "B": B,
        "T": T,
        "params": run["params"],
        "steps": run["steps"],
        "ms_per_step": {
            "median": 1e3 * median,
            "min": 1e3 * float(t.min()),
            "max": 1e3 * float(t.max()),
        },
        "tokens_per_s": B * T / median,
        "flops_per_step": flops,
        "gflops": gflops,
        "matmul_peak_gflops": peak_gflops,
        "fraction_of_peak": gflops / peak_gflops,
        "last_loss": run["last_loss"],
    }


# ------------------------------------------------------------------------------------------------
# Output


def markdown_table(records: list[dict]) -> str:
    lines = [
        "| size | layers | heads | params | B×T | steps | ms/step median (min–max) "
        "| tokens/s | GFLOP/s | of peak |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in records:
        ms, cfg = r["ms_per_step"], r["config"]
        lines.append(
            f"| {r['name']} | {cfg['n_layer']} | {cfg['n_head']} | {r['params']:,} "
            f"| {r['B']}×{r['T']} | {r['steps']} "
            f"| {ms['median']:.1f} ({ms['min']:.1f}–{ms['max']:.1f}) "
            f"| {r['tokens_per_s']:,.0f} | {r['gflops']:.1f} "
            f"| {100 * r['fraction_of_peak']:.1f} % |"
        )
    return "\n".join(lines)


def write_results(out: Path, records: list[dict], header: list[str], table: str) -> None:
    """train_step.md, train_step.json and train_step.png in ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Training step throughput (float32)", "", *(f"- {h}" for h in header), "", table, ""]
    (out / "train_step.md").write_text("\n".join(md), encoding="utf-8")
    (out / "train_step.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    plot_tokens_per_s(records, out / "train_step.png")


def plot_tokens_per_s(records: list[dict], path: Path) -> None:
    """Bar chart of tokens/s per size, each bar labelled with its fraction of the matmul peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['name']}\nL{r['config']['n_layer']}, {r['B']}×{r['T']}" for r in records]
    values = [r["tokens_per_s"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, values, color="tab:blue")
    for bar, r in zip(bars, records, strict=True):
        ax.annotate(
            f"{r['tokens_per_s']:,.0f}\n{100 * r['fraction_of_peak']:.0f} % of peak",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("tokens / s (training step)")
    ax.set_xlabel("model size: d_model, layers, B×T")
    blas = records[0]["blas"]
    ax.set_title(
        f"minift train step, float32 — {blas.get('internal_api')} {blas.get('version')} "
        f"{blas.get('architecture')} ×{blas.get('num_threads')}, numpy {records[0]['numpy']}",
        fontsize=9,
    )
    ax.set_ylim(0, 1.2 * max(values))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps per size (default: fill --seconds)"
    )
    p.add_argument(
        "--seconds", type=float, default=7.0, help="target timed seconds per size (default 7)"
    )
    p.add_argument(
        "--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="subset of sizes"
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (benchmarks/results)"
    )
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps: expected a positive integer, got {args.steps}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    blas = blas_info()
    header = [
        blas_line(blas),
        f"numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"OPENBLAS pins in env: {[k for k in _OPENBLAS_PINS if k in os.environ] or 'none'}",
        # other work on the machine inflates the max and then the median: say how busy it was
        f"load average (1 min) at start: {os.getloadavg()[0]:.2f}",
    ]
    for line in header:
        print(line, flush=True)

    peaks = matmul_peak()
    peak = max(peaks.values())
    header.append(
        "float32 matmul peak: "
        + ", ".join(f"n={n}: {g:.1f} GFLOP/s" for n, g in peaks.items())
        + f" → peak {peak:.1f} GFLOP/s"
    )
    print(header[-1], flush=True)

    records = []
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for name in args.sizes:
        cfg, B = SIZES[name]
        r = benchmark_size(name, cfg, B, args.steps, args.seconds, peak)
        r.update(
            blas=blas,
            numpy=np.__version__,
            cpu_count=os.cpu_count(),
            loadavg_1min_after=os.getloadavg()[0],
            date=date,
        )
        records.append(r)
        ms = r["ms_per_step"]["median"]
        print(
            f"{name}: {r['steps']} steps, {ms:.1f} ms/step, {r['tokens_per_s']:,.0f} tokens/s, "
            f"{r['gflops']:.1f} GFLOP/s ({100 * r['fraction_of_peak']:.1f} % of peak)",
            flush=True,
        )

    header.append(f"date (UTC): {date}; matmul FLOPs only, see train_step_flops")
    table = markdown_table(records)
    print()
    print(table)
    write_results(args.out, records, header, table)
    print(f"\nwrote train_step.md, train_step.json, train_step.png to {args.out}")
    return records


if __name__ == "__main__":
    main()
