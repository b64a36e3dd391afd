"""Where a training step's time goes, op by op: matmul time against everything else.

Run from the repo root:

    python -m benchmarks.step_profile                       # d256, as train_step sizes it
    python -m benchmarks.step_profile --size d128 --steps 20

The plain step of ``benchmarks.train_step`` (forward + cross_entropy + backward + AdamW, full
fine-tuning, float32) runs under cProfile on ONE thread with BLAS on one thread, so that each op's
time is its own and not another thread's wait. Each function of ``minift.functional`` is a row:
calls and milliseconds per step, and its share of the step; AdamW's update is one row, and what
is left (the modules' Python, reshapes, the loss) is the last. What each op is made of:

    linear_forward / linear_backward     matmuls (x·W, dy·Wᵀ, xᵀ·dy) and the bias's add or sum
    mha_forward_fused / _backward_fused  the attention's matmuls (q·kᵀ, a·v and their gradients)
                                         and the re-layouts between heads and channels; its
                                         softmax is a row of its own
    everything else                      element-wise work and reductions: no matmul

Under the table: the step's matmul FLOPs (``train_step_flops``) at the single-thread float32
matmul peak measured here, which is the time the step would take if the matmuls ran at the peak
and nothing else ran at all, beside the step as measured. The gap between the two is what issue 17
asks to close. cProfile adds about a microsecond per Python call (a few hundred per step); the
step measured without it is printed too.

Writes step_profile.md and step_profile.json in --out (default benchmarks/results). The OpenBLAS
pins: see ``benchmarks/_reexec.py``; this command removes them for itself and prints the kernel.
"""

from benchmarks._reexec import reexec_without_openblas_pins

if __name__ == "__main__":
    reexec_without_openblas_pins("benchmarks.step_profile")  # before anything imports numpy

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.train_step import (  # noqa: E402
    DEFAULT_OUT,
    SIZES,
    build_minift,
    make_batches,
    train_step,
    train_step_flops,
)
from minift.machine import blas_info, blas_line, cpu_line, matmul_peak, source_line  # noqa: E402

MATMUL_OPS = {"linear_forward", "linear_backward", "mha_forward_fused", "mha_backward_fused"}


def profile_steps(size: str, steps: int) -> dict:
    """Time ``steps`` plain steps without the profiler, then as many under it; the record."""
    from minift.optim import AdamW

    cfg, B = SIZES[size]
    batches = make_batches(cfg, B, cfg.block_size)
    model = build_minift(size, "full")
    opt = AdamW(model.named_parameters(), lr=1e-3, weight_decay=0.0)
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(3):  # warm-up: first-touch allocations, BLAS buffers
            train_step(model, opt, *batches[i % len(batches)])
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            train_step(model, opt, *batches[i % len(batches)])
            times.append(time.perf_counter() - t0)
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        for i in range(steps):
            train_step(model, opt, *batches[i % len(batches)])
        profiler.disable()
        profiled_s = time.perf_counter() - t0
        peak = max(matmul_peak(sizes=(512, 1024)).values())
    rows = op_rows(pstats.Stats(profiler).stats, steps, profiled_s)
    return {
        "size": size,
        "config": cfg.to_dict(),
        "B": B,
        "steps": steps,
        "ms_per_step": 1e3 * float(np.median(times)),
        "ms_per_step_profiled": 1e3 * profiled_s / steps,
        "matmul_flops_per_step": train_step_flops(cfg, B, cfg.block_size),
        "matmul_peak_gflops_1thread": peak,
        "rows": rows,
    }


def op_rows(stats: dict, steps: int, profiled_s: float) -> list[dict]:
    """One row per op of minift.functional (its own time, ``tottime``), AdamW's update, and the
    rest of the step; largest first, the rest last."""
    rows = {}
    for (filename, _, name), (_, calls, tottime, _, _) in stats.items():
        path = Path(filename).as_posix()
        if path.endswith("minift/functional.py") and not name.startswith("<"):
            op = name  # (a generator expression inside one is left to "everything else")
        elif path.endswith("minift/optim.py"):
            op = "AdamW (optim.py)"
        else:
            continue
        row = rows.setdefault(op, {"op": op, "calls": 0, "seconds": 0.0})
        row["calls"] += calls
        row["seconds"] += tottime
    listed = sorted(rows.values(), key=lambda r: -r["seconds"])
    rest = profiled_s - sum(r["seconds"] for r in listed)
    listed.append({"op": "everything else", "calls": 0, "seconds": rest})
    for r in listed:
        r.update(
            calls_per_step=r["calls"] / steps,
            ms_per_step=1e3 * r["seconds"] / steps,
            share=r["seconds"] / profiled_s,
            matmul=r["op"] in MATMUL_OPS,
        )
    return listed


def markdown(record: dict, header: list[str]) -> str:
    r = record
    at_peak_ms = 1e3 * r["matmul_flops_per_step"] / (r["matmul_peak_gflops_1thread"] * 1e9)
    matmul_ms = sum(row["ms_per_step"] for row in r["rows"] if row["matmul"])
    lines = [
        f"# Where a training step's time goes: {r['size']} (B={r['B']}, "
        f"T={r['config']['block_size']}, d={r['config']['d_model']}, "
        f"L={r['config']['n_layer']}), one thread",
        "",
        f"Made by `python -m benchmarks.step_profile --size {r['size']} --steps {r['steps']}`, on:",
        "",
        *[f"- {line}" for line in header],
        "",
        "| op | calls/step | ms/step | share of the step | holds matmuls |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in r["rows"]:
        calls = f"{row['calls_per_step']:.0f}" if row["calls"] else ""
        lines.append(
            f"| {row['op']} | {calls} | {row['ms_per_step']:.2f} | "
            f"{100 * row['share']:.1f} % | {'yes' if row['matmul'] else ''} |"
        )
    lines += [
        "",
        f"- The step: {r['ms_per_step']:.1f} ms measured ({r['ms_per_step_profiled']:.1f} ms "
        "under the profiler).",
        f"- The ops that hold matmuls: {matmul_ms:.1f} ms per step, "
        f"{100 * matmul_ms / r['ms_per_step_profiled']:.0f} % of it under the profiler; "
        f"everything else {r['ms_per_step_profiled'] - matmul_ms:.1f} ms.",
        f"- The step's {r['matmul_flops_per_step'] / 1e9:.2f} GFLOP of matmuls at the "
        f"single-thread peak ({r['matmul_peak_gflops_1thread']:.1f} GFLOP/s) would take "
        f"{at_peak_ms:.1f} ms: the step runs at "
        f"{100 * at_peak_ms / r['ms_per_step']:.0f} % of the peak.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.step_profile", description=__doc__.splitlines()[0]
    )
    p.add_argument("--size", choices=list(SIZES), default="d256")
    p.add_argument("--steps", type=int, default=30, help="steps timed, and as many profiled")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps: expected a positive integer, got {args.steps}")
    header = [source_line(), cpu_line(), blas_line(blas_info()), f"numpy {np.__version__}"]
    for line in header:
        print(line, flush=True)
    record = profile_steps(args.size, args.steps)
    record["machine"] = header
    text = markdown(record, header)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_profile.md").write_text(text)
    (args.out / "step_profile.json").write_text(json.dumps(record, indent=2) + "\n")
    print(text)
    return record


if __name__ == "__main__":
    main()
