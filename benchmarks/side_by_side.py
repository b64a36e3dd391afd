"""Many short fine-tuning runs: one after the other on two threads, or two at a time in processes.

Run from the repo root:

    python -m benchmarks.side_by_side
    python -m benchmarks.side_by_side --runs 4 --steps 60 --repeats 3

The notebooks train a method on three seeds, or several methods on three seeds each. This times
``--runs`` LoRA runs (r=8 on c_attn and attn.c_proj, en-fr-numbers, batches of 16, the cached
base) two ways, interleaved, ``--repeats`` times:

1. one after the other with ``finetune`` and its default, two training threads per batch
   (``minift.parallel``), on numpy's BLAS threads as they are;
2. ``finetune_many``: two runs at a time, each in a process of its own with one thread
   (``minift.pipeline.side_by_side``).

It prints the wall-clock seconds of each and the ratio (2) / (1), its mean and 95 % interval
over the repeats, and writes side_by_side.md and side_by_side.json (``--out``, default
``benchmarks/results``). The OpenBLAS pins: see benchmarks/_reexec.py.
"""

from benchmarks._reexec import pins_in_env, reexec_without_openblas_pins

if __name__ == "__main__":
    reexec_without_openblas_pins("benchmarks.side_by_side")  # before anything imports numpy

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

from minift.data import standard_tokenizer  # noqa: E402
from minift.machine import (  # noqa: E402
    blas_info,
    blas_line,
    cpu_line,
    loadavg,
    matmul_peak,
    source_line,
)
from minift.peft import LoraConfig, get_peft_model  # noqa: E402
from minift.pipeline import RunSettings, finetune, finetune_many, load_base, load_task  # noqa: E402
from minift.stats import mean_ci  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def lora_runs(n):
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "attn.c_proj"])
    return [(get_peft_model(load_base(), config, seed=seed), "lora", seed) for seed in range(n)]


def one_after_the_other(runs, task, tok, settings) -> float:
    start = time.perf_counter()
    for model, method, seed in runs:
        finetune(model, task, method, seed, tok, settings, progress=False)
    return time.perf_counter() - start


def side_by_side(runs, task, tok, settings) -> float:
    start = time.perf_counter()
    finetune_many(runs, task, tok, settings, workers=2)
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=4, help="fine-tuning runs per way (default 4)")
    p.add_argument("--steps", type=int, default=60, help="steps per run (default 60)")
    p.add_argument("--repeats", type=int, default=3, help="timings of each way (default 3)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    for name in ("runs", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    if args.repeats < 2:
        p.error("--repeats: expected at least 2, for an interval")
    peak = matmul_peak(sizes=(1024,))[1024]
    machine = f"{cpu_line()}; {blas_line(blas_info())}; float32 1024² matmul {peak:.0f} GFLOP/s"
    print(machine, "| OpenBLAS pins in the environment:", pins_in_env() or "none")
    tok, task = standard_tokenizer(), load_task("en-fr-numbers", seed=0)
    settings = RunSettings(steps=args.steps, batch_size=16)
    load_base()  # pretrained (or read) once, before any timing
    load_before = loadavg()
    seconds = {"one after the other, 2 threads": [], "side by side, 2 processes": []}
    for repeat in range(args.repeats):
        for way, timed in zip(seconds, (one_after_the_other, side_by_side), strict=True):
            seconds[way].append(timed(lora_runs(args.runs), task, tok, settings))
            print(f"repeat {repeat + 1}: {way:<32} {seconds[way][-1]:6.1f} s", flush=True)
    sequential, parallel = seconds.values()
    ratio = mean_ci([b / a for a, b in zip(sequential, parallel, strict=True)])
    busy = load_before  # after, the load is this benchmark's own
    rows = [
        f"# {args.runs} LoRA runs of {args.steps} steps: one after the other, or side by side",
        "",
        f"Machine: {machine}. {source_line()}. "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; 1-min load average before {busy:.1f}"
        + (" (another process was busy: these timings are inflated)" if busy > 1.5 else "")
        + ".",
        "",
        "| way | seconds, each repeat | mean |",
        "|---|---|--:|",
    ]
    for way, values in seconds.items():
        each = ", ".join(f"{v:.1f}" for v in values)
        rows.append(f"| {way} | {each} | {sum(values) / len(values):.1f} |")
    rows += [
        "",
        f"Side by side / one after the other: {ratio.format(2)} "
        f"(mean and 95 % interval over {args.repeats} repeats).",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "side_by_side.md").write_text("\n".join(rows) + "\n")
    record = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
    record |= {"seconds": seconds, "ratio_mean": ratio.mean, "ratio_half_width": ratio.half_width}
    (args.out / "side_by_side.json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
