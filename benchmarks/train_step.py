"""Training-step throughput of minift's GPT in float32, side by side with PyTorch.

Run from the repo root (with PyTorch installed in the same environment for the comparison):

    python -m benchmarks.train_step                        # everything, a few minutes
    python -m benchmarks.train_step --sizes d64 --seconds 2

One step is forward + cross_entropy + zero_grad + backward + AdamW step (weight decay 0), on
seeded random tokens, for every combination of

    size     d64 (d=64, L=2, T=64, B=32), d128 (128, 4, 128, 16), d256 (256, 6, 128, 8), all with
             vocab 96, and d256-v512 (d256 with vocab 512)
    mode     full  every weight trains
             lora  LoRA r=8, α=16 on c_attn and attn.c_proj; everything else frozen
    engine   minift       the plain step: one Python thread, numpy's BLAS on its default threads
             minift-dp2   minift.parallel.DataParallel(model, n_threads=2): two Python threads,
                          each half the batch on BLAS with ONE thread; AdamW's updates are
                          shared out over the same two threads (``opt.step(dp.run_tasks)``)
             pytorch      benchmarks/torch_gpt.py: the same model in PyTorch eager (nanoGPT style,
                          scaled_dot_product_attention), weights copied from minift, float32,
                          torch.set_num_threads(os.cpu_count()); only when torch is installed

Each combination runs in a child process of its own, so each has its own peak resident memory
(VmHWM, /proc/self/status): reported as the whole peak, and as "train MB", the peak minus the
resident memory after the imports (the libraries themselves: PyTorch's are far larger).

It prints and writes (``--out``, default ``benchmarks/results``):

    train_step.md     the tables: every run; minift / PyTorch; LoRA vs full; the targets
    train_step.json   one record per combination: config, mode, engine, ms/step (median, min,
                      max), tokens/s, GFLOP/s, fraction of peak, peak RSS, optimizer-state
                      bytes, trainable parameters, load average, and the machine header; the
                      record is the median of ``--repeats`` runs (default 3, in interleaved
                      rounds), with every repeat's tokens/s and their spread
    train_step.png    tokens/s per size, engine and mode

GFLOP/s counts matmul FLOPs only (``train_step_flops``) and is compared with the best GFLOP/s of a
single large float32 ``a @ b`` measured on the same machine in the same run.

The OpenBLAS pins: see ``benchmarks/_reexec.py``. This command removes them for itself (and its
children) only, and prints which kernel ran.
"""

import sys

from benchmarks._reexec import pins_in_env, reexec_without_openblas_pins

if __name__ == "__main__":
    reexec_without_openblas_pins("benchmarks.train_step")  # before anything imports numpy

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from minift.functional import cross_entropy  # noqa: E402
from minift.machine import (  # noqa: E402
    blas_info,
    blas_line,
    busy_share,
    cpu_line,
    loadavg,
    matmul_peak,
    rss_mb,
    source_line,
)
from minift.model import GPT, GPTConfig  # noqa: E402


def _cfg(d, L, T, nh, V=96):
    return GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=nh, d_model=d)


# name -> (config, B); block_size = T, the sequence length trained on
SIZES = {
    "d64": (_cfg(64, 2, 64, 4), 32),
    "d128": (_cfg(128, 4, 128, 4), 16),
    "d256": (_cfg(256, 6, 128, 8), 8),
    "d256-v512": (_cfg(256, 6, 128, 8, V=512), 8),
}
MODES = ("full", "lora")
ENGINES = ("minift", "minift-dp2", "pytorch")
LORA = dict(r=8, lora_alpha=16, target_modules=["c_attn", "attn.c_proj"])
WARMUP_STEPS = 3
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------------
# FLOPs


def train_step_flops(cfg: GPTConfig, B: int, T: int, lora_r: int = 0) -> int:
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

    Full fine-tuning: backward is twice the forward for every one of them: a weight matmul
    y = x·W needs dx = dy·Wᵀ and dW = xᵀ·dy; q·kᵀ needs dq and dk; a·v needs da and dv. The
    first layer's dx is computed too (it flows into the token embedding), so the whole step is 3×
    the forward.

    LoRA (``lora_r`` = r > 0, on c_attn and attn.c_proj, every base weight frozen): the weights'
    backward is dx only (no dW: 2× their forward in all, not 3×), attention is unchanged, and
    each adapted [d_in, d_out] layer adds x·Aᵀ and u·Bᵀ forward (2·N·r·(d_in + d_out)) and
    du, dB, dA, dx_lora backward (twice that): 6·N·r·(d_in + d_out), which is 36·N·r·C per layer
    for c_attn (C → 3C) and attn.c_proj (C → C).

    The full T×T score matrix is counted, as minift computes it (the causal mask is added, not
    skipped). Elementwise work (LayerNorm, GELU, softmax, the mask, cross-entropy, AdamW) and the
    embedding lookups are ignored: they are O(N·C) or O(B·nh·T²), not matmuls.
    """
    C, L, V = cfg.d_model, cfg.n_layer, cfg.vocab_size
    N = B * T
    weights_forward = 2 * N * (L * (3 * C * C + C * C + 4 * C * C + 4 * C * C) + C * V)
    attention_forward = L * (2 * B * T * T * C + 2 * B * T * T * C)
    if not lora_r:
        return 3 * (weights_forward + attention_forward)
    return 2 * weights_forward + 3 * attention_forward + L * 36 * N * lora_r * C


# ------------------------------------------------------------------------------------------------
# One run (in a child process): build, warm up, time


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


def build_minift(size: str, mode: str):
    """The benchmark's model: GPT(seed 0, float32), with LoRA when mode == "lora"."""
    cfg, _ = SIZES[size]
    model = GPT(cfg, seed=0, dtype=np.float32)
    if mode == "lora":
        from minift.peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**LORA))
    return model


def time_steps(step, batches, steps, seconds):
    """Warm up, then time each of ``steps`` steps (or as many as fill ``seconds``) on its own."""
    t_warm = math.inf
    for i in range(WARMUP_STEPS):
        t0 = time.perf_counter()
        step(*batches[i % len(batches)])
        t_warm = min(t_warm, time.perf_counter() - t0)
    if steps is None:
        steps = max(5, math.ceil(seconds / t_warm))
    times, losses = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        losses.append(step(*batches[i % len(batches)]))
        times.append(time.perf_counter() - t0)
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"non-finite loss during the benchmark: {losses}")
    return np.array(times), losses[-1]


def run_one(size: str, mode: str, engine: str, steps, seconds) -> dict:
    """Build and time one (size, mode, engine); the record includes this process's peak RSS."""
    from minift.optim import AdamW

    baseline_mb = rss_mb("VmRSS")  # after the imports
    cfg, B = SIZES[size]
    T = cfg.block_size
    batches = make_batches(cfg, B, T)
    model = build_minift(size, mode)
    params = model.named_parameters()
    trainable = sum(p.size for p in params.values() if p.trainable)
    record = {"size": size, "mode": mode, "engine": engine, "trainable_params": trainable}

    if engine == "pytorch":
        import torch

        from benchmarks.torch_gpt import TorchGPT, make_step, optimizer_state_bytes

        baseline_mb = max(baseline_mb, rss_mb("VmRSS"))  # torch imported lazily above
        torch.set_num_threads(os.cpu_count())
        first_loss, _ = cross_entropy(model.forward(batches[0][0]), batches[0][1])
        tmodel = TorchGPT(model)
        del model, params
        tbatches = [(torch.from_numpy(i.copy()), torch.from_numpy(t.copy())) for i, t in batches]
        with torch.no_grad():
            logits = tmodel(tbatches[0][0])
            tloss = float(
                torch.nn.functional.cross_entropy(logits.flatten(0, 1), tbatches[0][1].flatten())
            )
        step, opt = make_step(tmodel)
        times, last_loss = time_steps(step, tbatches, steps, seconds)
        record.update(
            optimizer_state_bytes=optimizer_state_bytes(opt),
            first_loss_minus_minift=tloss - first_loss,
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
        )
    else:
        opt = AdamW(params, lr=1e-3, weight_decay=0.0)
        if engine == "minift-dp2":
            from minift.parallel import DataParallel

            dp = DataParallel(model, n_threads=2)

            def step(idx, targets):
                opt.zero_grad()
                loss = dp.forward_backward(idx, targets)
                opt.step(dp.run_tasks)  # the AdamW updates shared out over the threads too
                return loss
        else:

            def step(idx, targets):
                return train_step(model, opt, idx, targets)

        times, last_loss = time_steps(step, batches, steps, seconds)
        record["optimizer_state_bytes"] = opt.state_bytes()

    median = float(np.median(times))
    flops = train_step_flops(cfg, B, T, LORA["r"] if mode == "lora" else 0)
    record.update(
        config=cfg.to_dict(),
        B=B,
        T=T,
        steps=len(times),
        ms_per_step={
            "median": 1e3 * median,
            "min": 1e3 * float(times.min()),
            "max": 1e3 * float(times.max()),
        },
        tokens_per_s=B * T / median,
        flops_per_step=flops,
        gflops=flops / median / 1e9,
        last_loss=last_loss,
        peak_rss_mb=rss_mb("VmHWM"),
        train_rss_mb=rss_mb("VmHWM") - baseline_mb,
        loadavg_1min_after=loadavg(),
    )
    return record


def run_in_child(size, mode, engine, steps, seconds) -> dict:
    spec = json.dumps(dict(size=size, mode=mode, engine=engine, steps=steps, seconds=seconds))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", "--child", spec],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"{size}/{mode}/{engine}: the child process failed (exit {proc.returncode}):\n"
        + proc.stderr[-3000:]
    )


# ------------------------------------------------------------------------------------------------
# Tables


def _find(records, size, mode, engine):
    for r in records:
        if (r["size"], r["mode"], r["engine"]) == (size, mode, engine):
            return r
    return None


def runs_table(records: list[dict]) -> str:
    lines = [
        "| size | mode | engine | trainable | ms/step median (min–max) | tokens/s | GFLOP/s "
        "| of peak | spread | peak RSS MB | train MB | optimizer state | load |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in records:
        ms = r["ms_per_step"]
        spread = "—" if r.get("spread") is None else f"{100 * r['spread']:.1f} %"
        lines.append(
            f"| {r['size']} | {r['mode']} | {r['engine']} | {r['trainable_params']:,} "
            f"| {ms['median']:.1f} ({ms['min']:.1f}–{ms['max']:.1f}) "
            f"| {r['tokens_per_s']:,.0f} | {r['gflops']:.1f} "
            f"| {100 * r['fraction_of_peak']:.1f} % | {spread} | {r['peak_rss_mb']:.0f} "
            f"| {r['train_rss_mb']:.0f} | {r['optimizer_state_bytes'] / 2**20:.2f} MiB "
            f"| {r['loadavg_1min_after']:.2f} |"
        )
    return "\n".join(lines)


def ratios_table(records: list[dict], sizes) -> str:
    lines = [
        "| size | mode | minift / PyTorch tokens/s | minift-dp2 / PyTorch tokens/s "
        "| minift-dp2 / PyTorch train MB | PyTorch loss − minift loss at step 0 |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for size in sizes:
        for mode in MODES:
            t = _find(records, size, mode, "pytorch")
            m = _find(records, size, mode, "minift")
            d = _find(records, size, mode, "minift-dp2")
            if t is None or m is None or d is None:
                continue
            lines.append(
                f"| {size} | {mode} | {m['tokens_per_s'] / t['tokens_per_s']:.2f}× "
                f"| {d['tokens_per_s'] / t['tokens_per_s']:.2f}× "
                f"| {d['train_rss_mb'] / t['train_rss_mb']:.2f}× "
                f"| {t['first_loss_minus_minift']:+.1e} |"
            )
    return "\n".join(lines)


def lora_table(records: list[dict], sizes, engines) -> str:
    lines = [
        "| size | engine | trainable full → LoRA | step time LoRA / full "
        "| train MB full → LoRA | optimizer state full → LoRA |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for size in sizes:
        for engine in engines:
            f = _find(records, size, "full", engine)
            lo = _find(records, size, "lora", engine)
            if f is None or lo is None:
                continue
            lines.append(
                f"| {size} | {engine} | {f['trainable_params']:,} → {lo['trainable_params']:,} "
                f"| {lo['ms_per_step']['median'] / f['ms_per_step']['median']:.2f} "
                f"| {f['train_rss_mb']:.0f} → {lo['train_rss_mb']:.0f} "
                f"| {f['optimizer_state_bytes']:,} B → {lo['optimizer_state_bytes']:,} B |"
            )
    return "\n".join(lines)


BUSY_SHARE = 0.10  # CPUs busy at start above this share: another process was running
DEFAULT_ENGINE = "minift-dp2"  # what training runs on wherever two cores are free
TARGETS = {  # the performance issue's, for the default engine
    "tokens/s vs PyTorch": {"d128": 1.4, "d256": 1.25},
    "fraction of peak": 0.80,  # at d256
    "lora over full": 0.7,  # step time, at d256
    "peak rss vs PyTorch": 0.6,  # the whole process, every size and mode
    "spread": 0.10,  # (max − min) / median of the repeats' tokens/s
}


def targets(records: list[dict]) -> list[dict]:
    """The issue's targets for the default engine, each with what was measured and whether it
    was met. A target whose runs are missing (a subset of sizes, no PyTorch) is left out."""
    out = []
    engine = DEFAULT_ENGINE

    def add(name, value, goal, ok):
        out.append({"target": name, "measured": value, "goal": goal, "met": bool(ok)})

    for size, goal in TARGETS["tokens/s vs PyTorch"].items():
        t, m = _find(records, size, "full", "pytorch"), _find(records, size, "full", engine)
        if t and m:
            ratio = m["tokens_per_s"] / t["tokens_per_s"]
            add(f"{size} {engine} tokens/s ≥ {goal}× PyTorch", f"{ratio:.2f}×", goal, ratio >= goal)
    m = _find(records, "d256", "full", engine)
    if m:
        goal = TARGETS["fraction of peak"]
        add(
            f"d256 {engine} GFLOP/s ≥ {100 * goal:.0f} % of the matmul peak",
            f"{100 * m['fraction_of_peak']:.1f} %",
            goal,
            m["fraction_of_peak"] >= goal,
        )
    f, lo = _find(records, "d256", "full", engine), _find(records, "d256", "lora", engine)
    if f and lo:
        goal = TARGETS["lora over full"]
        ratio = lo["ms_per_step"]["median"] / f["ms_per_step"]["median"]
        add(f"d256 {engine} LoRA step time ≤ {goal}× full", f"{ratio:.2f}×", goal, ratio <= goal)
    for r in records:
        if r["engine"] != "pytorch":
            expected = 2 * 4 * r["trainable_params"]  # AdamW: m and v, float32
            if r["optimizer_state_bytes"] != expected:
                add(
                    f"{r['size']} {r['mode']} {r['engine']} optimizer state = 8 B × trainable",
                    f"{r['optimizer_state_bytes']:,} B",
                    expected,
                    False,
                )
    if any(r["engine"] != "pytorch" for r in records):
        add(
            "optimizer state = 2 × 4 B × trainable parameters (every minift run)",
            "exact",
            "exact",
            not any(o["target"].endswith("trainable") for o in out),
        )
    ratios = [
        (r["peak_rss_mb"] / t["peak_rss_mb"], f"{r['size']} {r['mode']}")
        for r in records
        if r["engine"] == engine and (t := _find(records, r["size"], r["mode"], "pytorch"))
    ]
    if ratios:
        goal = TARGETS["peak rss vs PyTorch"]
        ratio, where = max(ratios)
        add(
            f"{engine} peak RSS ≤ {goal}× PyTorch's process (worst: {where})",
            f"{ratio:.2f}×",
            goal,
            ratio <= goal,
        )
    spreads = [
        (r["spread"], f"{r['size']} {r['mode']}")
        for r in records
        if r["engine"] == engine and r.get("spread") is not None
    ]
    if spreads:
        goal = TARGETS["spread"]
        spread, where = max(spreads)
        n = min(len(r["repeat_tokens_per_s"]) for r in records if r.get("spread") is not None)
        add(
            f"{engine} run-to-run spread of tokens/s < {100 * goal:.0f} % "
            f"(max − min over median, {n} repeats; worst: {where})",
            f"{100 * spread:.1f} %",
            goal,
            spread < goal,
        )
    return out


def combine_repeats(repeats: list[dict]) -> dict:
    """One record of the same run repeated: the repeat with the median tokens/s, the tokens/s
    of every repeat, and their spread, (max − min) / median (None for a single run)."""
    ordered = sorted(repeats, key=lambda r: r["tokens_per_s"])
    record = dict(ordered[(len(ordered) - 1) // 2])
    speeds = [r["tokens_per_s"] for r in repeats]
    record["repeat_tokens_per_s"] = speeds
    median = float(np.median(speeds))
    record["spread"] = (max(speeds) - min(speeds)) / median if len(speeds) > 1 else None
    return record


def targets_table(rows: list[dict]) -> str:
    lines = ["| target | measured | met |", "|---|--:|:-:|"]
    for t in rows:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines)


def plot(records: list[dict], sizes, path: Path) -> None:
    """Grouped bars: tokens/s per size, one bar per engine; full and LoRA side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = [e for e in ENGINES if any(r["engine"] == e for r in records)]
    modes = [m for m in MODES if any(r["mode"] == m for r in records)]  # a subset: its panels only
    colors = {"minift": "tab:blue", "minift-dp2": "tab:green", "pytorch": "tab:orange"}
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    width = 0.8 / len(engines)
    for ax, mode in zip(axes[0], modes, strict=True):
        for j, engine in enumerate(engines):
            xs, ys = [], []
            for i, size in enumerate(sizes):
                r = _find(records, size, mode, engine)
                if r:
                    xs.append(i + (j - (len(engines) - 1) / 2) * width)
                    ys.append(r["tokens_per_s"])
            bars = ax.bar(xs, ys, width, label=engine, color=colors[engine])
            for bar, y in zip(bars, ys, strict=True):
                ax.annotate(
                    f"{y / 1000:.1f}k",
                    (bar.get_x() + bar.get_width() / 2, y),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_title(f"{'full fine-tuning' if mode == 'full' else 'LoRA r=8'}", fontsize=10)
        ax.set_ylabel("tokens / s (training step, float32; log scale)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    r0 = records[0]
    fig.suptitle(
        f"minift vs PyTorch — {r0.get('cpu', 'CPU not recorded')}\n"
        f"{r0['blas'].get('internal_api')} {r0['blas'].get('architecture')}, "
        f"numpy {r0['numpy']}, {r0['cpu_count']} CPUs, "
        f"float32 matmul peak {r0['matmul_peak_gflops']:.0f} GFLOP/s",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps per run (default: fill --seconds)"
    )
    p.add_argument(
        "--seconds", type=float, default=5.0, help="target timed seconds per run (default 5)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each combination, in interleaved rounds (default 3): the record is the "
        "median one, and their spread is a target",
    )
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    p.add_argument(
        "--update",
        action="store_true",
        help="re-run only the selected runs and merge them into --out's train_step.json "
        "(to repeat runs that another job on the machine disturbed)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one run, JSON spec
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps: expected a positive integer, got {args.steps}")
    if args.repeats < 1:
        p.error(f"--repeats: expected a positive integer, got {args.repeats}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(run_one(**spec)), flush=True)
        return []

    blas = blas_info()
    engines = list(args.engines)
    have_torch = importlib.util.find_spec("torch") is not None
    header = [
        source_line(),
        cpu_line(),
        blas_line(blas),
        f"numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"OPENBLAS pins in env: {pins_in_env() or 'none'}",
        f"load average (1 min) at start: {loadavg():.2f} (other work on the machine inflates "
        "every timing; each run's own is in the last column)",
    ]
    busy = busy_share()
    header.append(
        f"CPU busy in the second before the runs: {100 * busy:.0f} % (this process slept)"
    )
    if busy > BUSY_SHARE:
        header.append(
            f"NOT QUIET: another process kept {100 * busy:.0f} % of the CPUs busy at start "
            f"(> {100 * BUSY_SHARE:.0f} %); every timing below is inflated by it"
        )
    if "pytorch" in engines and not have_torch:
        engines.remove("pytorch")
        header.append("PyTorch is not installed here: the PyTorch columns are skipped")
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

    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    combos = [(s, m, e) for s in args.sizes for m in args.modes for e in engines]
    runs: dict[tuple, list] = {c: [] for c in combos}
    for round_ in range(1, args.repeats + 1):  # interleaved: a slow minute hits every engine
        for size, mode, engine in combos:
            r = run_in_child(size, mode, engine, args.steps, args.seconds)
            r.update(
                matmul_peak_gflops=peak,
                fraction_of_peak=r["gflops"] / peak,
                blas=blas,
                numpy=np.__version__,
                cpu_count=os.cpu_count(),
                cpu=cpu_line(),
                date=date,
            )
            runs[size, mode, engine].append(r)
            print(
                f"[round {round_}/{args.repeats}] {size} {mode} {engine}: "
                f"{r['ms_per_step']['median']:.1f} ms/step, "
                f"{r['tokens_per_s']:,.0f} tokens/s, {r['gflops']:.1f} GFLOP/s "
                f"({100 * r['fraction_of_peak']:.1f} % of peak), peak RSS "
                f"{r['peak_rss_mb']:.0f} MB (train {r['train_rss_mb']:.0f} MB), "
                f"load {r['loadavg_1min_after']:.2f}",
                flush=True,
            )
    records = [combine_repeats(runs[c]) for c in combos]
    sizes = list(args.sizes)
    previous = args.out / "train_step.json"
    if args.update and previous.exists():
        rerun = ", ".join(f"{r['size']} {r['mode']} {r['engine']}" for r in records)
        new = {(r["size"], r["mode"], r["engine"]): r for r in records}
        old_runs = json.loads(previous.read_text(encoding="utf-8"))["runs"]
        merged = [new.pop((r["size"], r["mode"], r["engine"]), r) for r in old_runs]
        records = merged + list(new.values())
        sizes = list(dict.fromkeys(r["size"] for r in records))
        engines = [e for e in ENGINES if any(r["engine"] == e for r in records)]
        header.append(
            f"--update: re-ran {rerun}; the other runs are from the earlier run (each run's "
            "date, matmul peak and load are in its JSON record; its load in the last column)"
        )
    if "pytorch" in engines:
        torch_run = next(r for r in records if r["engine"] == "pytorch")
        header.append(
            f"PyTorch {torch_run['torch']}, {torch_run['torch_threads']} threads, float32 "
            "(benchmarks/torch_gpt.py)"
        )
    header.append(f"date (UTC): {date}; GFLOP/s counts matmul FLOPs only, see train_step_flops")

    goals = targets(records)
    sections = [("Every run", runs_table(records))]
    if "pytorch" in engines:
        sections.append(("minift / PyTorch", ratios_table(records, sizes)))
    sections.append(("LoRA vs full fine-tuning", lora_table(records, sizes, engines)))
    sections.append(("Targets", targets_table(goals)))
    md = ["# Training step throughput (float32)", "", *(f"- {h}" for h in header)]
    for title, table in sections:
        md += ["", f"## {title}", "", table]
        print(f"\n## {title}\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (args.out / "train_step.json").write_text(
        json.dumps({"header": header, "runs": records, "targets": goals}, indent=2) + "\n",
        encoding="utf-8",
    )
    plot(records, sizes, args.out / "train_step.png")
    print(f"\nwrote train_step.md, train_step.json, train_step.png to {args.out}")
    return records


if __name__ == "__main__":
    main()
