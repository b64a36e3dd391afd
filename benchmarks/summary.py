"""The README's benchmark summary, written from the committed results rather than typed in.

    python -m benchmarks.summary          # print the Markdown the README's Benchmarks section shows

It reads ``benchmarks/results/{train_step,generate,gradcheck_time,step_profile}.json`` (what
``python -m benchmarks.train_step``, ``.generate``, ``.gradcheck_time`` and ``.step_profile``
wrote) and prints the bullets, the targets table and where a step's time goes;
``tests/test_readme.py`` checks that the README holds exactly this text, so a re-run of a
benchmark without an update of the README is a failing test.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = ("d64", "d128", "d256")


def _find(runs, size, mode, engine) -> dict:
    """train_step's lookup, but a run the summary needs and the results lack is an error."""
    from benchmarks.train_step import _find as find_run

    run = find_run(runs, size, mode, engine)
    if run is None:
        raise ValueError(f"train_step.json: no run for size {size}, mode {mode}, engine {engine}")
    return run


def _speedups(runs, mode, engine) -> list[str]:
    ratios = []
    for s in SIZES:
        ours, torch = _find(runs, s, mode, engine), _find(runs, s, mode, "pytorch")
        ratios.append(f"{ours['tokens_per_s'] / torch['tokens_per_s']:.2f}×")
    return ratios


def _lora_over_full(runs, engine) -> float:
    full, lora = _find(runs, "d256", "full", engine), _find(runs, "d256", "lora", engine)
    return lora["ms_per_step"]["median"] / full["ms_per_step"]["median"]


def summary(results: Path = RESULTS) -> str:
    """The Markdown: one bullet per claim, then the issue's targets as the benchmark judged them."""
    from benchmarks.train_step import targets_table

    step = json.loads((results / "train_step.json").read_text())
    gen = json.loads((results / "generate.json").read_text())
    grad = json.loads((results / "gradcheck_time.json").read_text())
    runs = step["runs"]
    code = [h.removeprefix("code: ") for h in step["header"] if h.startswith("code: ")]

    dp_full, dp_lora = _speedups(runs, "full", "minift-dp2"), _speedups(runs, "lora", "minift-dp2")
    plain = _speedups(runs, "full", "minift")
    d256 = {e: _find(runs, "d256", "full", e) for e in ("minift", "minift-dp2", "pytorch")}
    lora_dp, lora_plain = (
        _find(runs, "d256", "lora", "minift-dp2"),
        _find(runs, "d256", "lora", "minift"),
    )
    speedup = {g["batch"]: g["speedup_vs_no_cache"] for g in gen["generation"] if g["kv_cache"]}
    merged = next(r for r in gen["latency"] if r["model"] == "LoRA merged")
    mib = 2**20
    d256_run = d256["minift-dp2"]
    machine = (
        f"- Measured at {code[0]}, on {d256_run['cpu']}; numpy's BLAS: OpenBLAS "
        f"{d256_run['blas']['version']}, kernel {d256_run['blas']['architecture']}; float32 "
        f"matmul peak {d256_run['matmul_peak_gflops']:.0f} GFLOP/s (one large `a @ b`, "
        f"measured in the same run); each number the median of "
        f"{len(d256_run.get('repeat_tokens_per_s', [0]))} interleaved runs."
    )
    bullets = [machine] + [
        "- With `minift.parallel.DataParallel(model, n_threads=2)` (two Python threads, each half "
        "the batch, BLAS single-threaded in each; what training runs on by default wherever two "
        "cores are free): "
        f"**{dp_full[0]} PyTorch's tokens/s at d=64, {dp_full[1]} at d=128, {dp_full[2]} at "
        f"d=256** (full fine-tuning; LoRA {', '.join(dp_lora)}), and "
        f"**{100 * d256['minift-dp2']['fraction_of_peak']:.0f} % of the measured matmul peak** at "
        f"d=256. The plain single-thread loop (`--threads 1`): {', '.join(plain)} and "
        f"{100 * d256['minift']['fraction_of_peak']:.0f} % of the peak.",
        "- LoRA (r=8 on `c_attn` and `attn.c_proj`) costs "
        f"**{_lora_over_full(runs, 'minift-dp2'):.2f}× a full fine-tuning step** at d=256 with two "
        f"threads ({_lora_over_full(runs, 'minift'):.2f}× in the plain loop; PyTorch: "
        f"{_lora_over_full(runs, 'pytorch'):.2f}×): frozen weights get no dW, but the forward pass "
        "and every dx remain, so a LoRA step does "
        f"{lora_dp['flops_per_step'] / d256['minift-dp2']['flops_per_step']:.2f}× the matmul FLOPs "
        "of a full one. Its optimizer state "
        "is exactly 8 bytes per trainable parameter: "
        f"{lora_dp['optimizer_state_bytes'] / mib:.2f} MiB against "
        f"{d256['minift-dp2']['optimizer_state_bytes'] / mib:.1f} MiB.",
        "- Peak resident memory at d=256 with two threads "
        f"{d256['minift-dp2']['peak_rss_mb'] / d256['pytorch']['peak_rss_mb']:.2f}× PyTorch's "
        "process; counting only what training adds on top of the imported libraries, "
        f"{d256['minift-dp2']['train_rss_mb'] / d256['pytorch']['train_rss_mb']:.2f}× "
        f"(LoRA: {lora_plain['train_rss_mb']:.0f} MB against full's "
        f"{d256['minift']['train_rss_mb']:.0f} MB in the plain loop).",
        "- The whole-model float64 gradient check of the tiny config: "
        f"{grad['seconds_median']:.2f} s (`benchmarks/results/gradcheck_time.md`); greedy "
        f"generation with the KV cache {speedup[1]:.1f}× (batch 1) to {speedup[8]:.1f}× "
        "(batch 8) faster than without, and a merged LoRA model "
        f"{merged['vs_base']:.2f}× the base's forward time (`benchmarks/results/generate.md`).",
    ]
    return (
        "\n".join(bullets)
        + "\n\nThe issue's targets, as the benchmark judged them:\n\n"
        + (targets_table(step["targets"]) + "\n")
        + "\n"
        + profile_summary(json.loads((results / "step_profile.json").read_text()))
    )


def profile_summary(profile: dict) -> str:
    """One paragraph from step_profile.json: the matmuls' share of a step and what the rest is."""
    cfg = profile["config"]
    rows = profile["rows"]
    step_ms = profile["ms_per_step_profiled"]
    matmul_ms = sum(r["ms_per_step"] for r in rows if r["matmul"])
    named = [r for r in rows if not r["matmul"] and r["op"] != "everything else"]
    largest = ", ".join(f"`{r['op']}` {r['ms_per_step']:.0f} ms" for r in named[:4])
    at_peak_ms = (
        1e3 * profile["matmul_flops_per_step"] / (profile["matmul_peak_gflops_1thread"] * 1e9)
    )
    machine = "; ".join(line.removeprefix("code: ") for line in profile["machine"][:3])
    return (
        f"Where a d={cfg['d_model']} step's time goes, op by op "
        f"(`python -m benchmarks.step_profile`, one thread, "
        f"B={profile['B']}, T={cfg['block_size']}; "
        f"`benchmarks/results/step_profile.md`; {machine}): the ops that hold matmuls take "
        f"{100 * matmul_ms / step_ms:.0f} % of the step under the profiler ({matmul_ms:.0f} of "
        f"{step_ms:.0f} ms); the largest of the rest are {largest}. Its "
        f"{profile['matmul_flops_per_step'] / 1e9:.1f} GFLOP of matmuls at the single-thread "
        f"peak measured in that run ({profile['matmul_peak_gflops_1thread']:.0f} GFLOP/s) would "
        f"take {at_peak_ms:.0f} ms; the step, measured without the profiler, takes "
        f"{profile['ms_per_step']:.0f} ms: "
        f"{100 * at_peak_ms / profile['ms_per_step']:.0f} % of the peak on one thread.\n"
    )


if __name__ == "__main__":
    print(summary(), end="")
