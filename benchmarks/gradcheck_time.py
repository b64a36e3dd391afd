"""Wall time of the whole-model float64 gradient check of the tiny config (target: under 10 s).

Run from the repo root:

    python -m benchmarks.gradcheck_time

The check is the one tests/test_model.py runs: every entry of every parameter of
GPT(vocab 11, block 8, L=2, nh=2, d=8) in float64, at a random point (``randomize_params``),
on a [2, 6] batch with two masked targets, against central differences; two forward passes per
entry. It prints and writes (``--out``, default ``benchmarks/results``) gradcheck_time.md and
gradcheck_time.json: the seconds (median of ``--repeats``), entries checked, forward passes, and
the worst relative error. The OpenBLAS pins: see benchmarks/_reexec.py.
"""

from benchmarks._reexec import pins_in_env, reexec_without_openblas_pins

if __name__ == "__main__":
    reexec_without_openblas_pins("benchmarks.gradcheck_time")  # before anything imports numpy

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from minift.gradcheck import check_gradients, cross_entropy_loss, randomize_params  # noqa: E402
from minift.machine import blas_info, blas_line, loadavg, source_line  # noqa: E402
from minift.model import GPT, GPTConfig  # noqa: E402

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TARGET_SECONDS = 10.0


def one_check(seed=0):
    """(seconds, entries, worst parameter, worst relative error) of one whole-model check."""
    rng = np.random.default_rng(seed)
    model = GPT(TINY, seed=seed, dtype=np.float64)
    randomize_params(model.named_parameters(), seed)
    idx = rng.integers(0, TINY.vocab_size, (2, 6))
    targets = rng.integers(0, TINY.vocab_size, (2, 6))
    targets[0, :2] = -100

    t0 = time.perf_counter()
    report = check_gradients(cross_entropy_loss(model, idx, targets), model.named_parameters())
    seconds = time.perf_counter() - t0
    name, err = report.worst
    return seconds, model.num_parameters(), name, err


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gradcheck_time", description=__doc__.split("\n")[0]
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    runs = [one_check(seed) for seed in range(args.repeats)]
    seconds = float(np.median([r[0] for r in runs]))
    entries = runs[0][1]
    worst = max(runs, key=lambda r: r[3])
    record = {
        "config": TINY.to_dict(),
        "batch": [2, 6],
        "dtype": "float64",
        "entries_checked": entries,
        "forward_passes": 2 * entries + 1,
        "seconds_median": seconds,
        "seconds_each": [r[0] for r in runs],
        "worst_rel_error": worst[3],
        "worst_parameter": worst[2],
        "target_seconds": TARGET_SECONDS,
        "met": seconds < TARGET_SECONDS,
        "source": source_line(),
        "blas": blas_line(blas_info()),
        "openblas_pins_in_env": pins_in_env(),
        "loadavg_1min": loadavg(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    md = "\n".join(
        [
            "# Whole-model gradient check, float64, tiny config",
            "",
            f"- {record['source']}",
            f"- {record['blas']}; load average (1 min): {record['loadavg_1min']:.2f}; "
            f"date (UTC): {record['date']}",
            "",
            "| config | entries checked | forward passes | seconds (median of "
            f"{args.repeats}) | worst rel. error | target | met |",
            "|---|--:|--:|--:|--:|--:|:-:|",
            f"| vocab 11, block 8, L=2, nh=2, d=8; batch 2×6 | {entries:,} "
            f"| {record['forward_passes']:,} | {seconds:.2f} | {worst[3]:.1e} ({worst[2]}) "
            f"| < {TARGET_SECONDS:.0f} s | {'yes' if record['met'] else 'no'} |",
            "",
        ]
    )
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gradcheck_time.md").write_text(md, encoding="utf-8")
    (args.out / "gradcheck_time.json").write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    return record


if __name__ == "__main__":
    main()
