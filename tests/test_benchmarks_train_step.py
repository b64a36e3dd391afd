"""``python -m benchmarks.train_step`` runs any subset of sizes, modes and engines to the end
(tables, JSON, plot), and names the machine it ran on. No timing is asserted: the runs here are a
couple of steps on a machine busy with the other tests."""

import json

import pytest

from benchmarks import train_step
from minift.machine import cpu_line


@pytest.mark.parametrize(
    "modes", [["lora"], ["full"], ["full", "lora"]], ids=["lora-only", "full-only", "both"]
)
def test_a_subset_of_runs_writes_its_tables_and_plot_naming_the_machine(tmp_path, modes):
    argv = ["--sizes", "d64", "--modes", *modes, "--engines", "minift", "--steps", "2"]
    records = train_step.main([*argv, "--seconds", "0.1", "--out", str(tmp_path)])
    assert [(r["size"], r["mode"], r["engine"]) for r in records] == [
        ("d64", mode, "minift") for mode in modes
    ]
    assert all(r["tokens_per_s"] > 0 and r["steps"] == 2 for r in records)
    saved = json.loads((tmp_path / "train_step.json").read_text(encoding="utf-8"))
    assert saved["runs"] == records and cpu_line() in saved["header"]
    assert cpu_line() in (tmp_path / "train_step.md").read_text(encoding="utf-8")
    assert (tmp_path / "train_step.png").stat().st_size > 0


def test_repeats_run_in_rounds_and_the_record_is_the_median_run_with_its_spread(tmp_path):
    argv = ["--sizes", "d64", "--modes", "lora", "--engines", "minift", "--steps", "2"]
    (record,) = train_step.main(
        [*argv, "--repeats", "3", "--seconds", "0.1", "--out", str(tmp_path)]
    )
    speeds = record["repeat_tokens_per_s"]
    assert len(speeds) == 3 and record["tokens_per_s"] == sorted(speeds)[1]
    assert record["spread"] == pytest.approx((max(speeds) - min(speeds)) / sorted(speeds)[1])


def test_a_single_run_has_no_spread_and_no_spread_target():
    (record,) = [train_step.combine_repeats([{"tokens_per_s": 100.0}])]
    assert record["spread"] is None and record["repeat_tokens_per_s"] == [100.0]


def _run(size, mode, engine, tokens_per_s, **kw):
    record = dict(size=size, mode=mode, engine=engine, tokens_per_s=tokens_per_s,
                  ms_per_step={"median": 1e3 / tokens_per_s}, fraction_of_peak=0.5,
                  peak_rss_mb=100.0, optimizer_state_bytes=8, trainable_params=1)  # fmt: skip
    return {**record, **kw}


def test_the_targets_are_the_issues_for_the_default_engine_and_each_can_fail():
    torch = [_run(s, m, "pytorch", 1000.0, peak_rss_mb=200.0) for s in ("d128", "d256")
             for m in ("full", "lora")]  # fmt: skip

    def judged(speed128, speed256, peak, lora_speed, rss, spreads):
        ours = [
            _run("d128", "full", "minift-dp2", speed128, peak_rss_mb=rss, spread=spreads[0],
                 repeat_tokens_per_s=[1, 2, 3]),
            _run("d256", "full", "minift-dp2", speed256, fraction_of_peak=peak,
                 spread=spreads[1], repeat_tokens_per_s=[1, 2, 3]),
            _run("d256", "lora", "minift-dp2", lora_speed),
            _run("d256", "full", "minift", 10.0),  # the plain loop: no target of its own
        ]  # fmt: skip
        ours[3]["optimizer_state_bytes"] = 8
        return {t["target"].split(" (")[0]: t["met"] for t in train_step.targets(torch + ours)}

    met = judged(1400.0, 1250.0, 0.8, 1250.0 / 0.7, 120.0, [0.05, 0.09])
    assert all(met.values()) and len(met) == 7, met
    missed = judged(1399.0, 1249.0, 0.79, 1250.0 / 0.71, 121.0, [0.05, 0.10])
    assert [k for k, v in missed.items() if not v] == [
        "d128 minift-dp2 tokens/s ≥ 1.4× PyTorch",
        "d256 minift-dp2 tokens/s ≥ 1.25× PyTorch",
        "d256 minift-dp2 GFLOP/s ≥ 80 % of the matmul peak",
        "d256 minift-dp2 LoRA step time ≤ 0.7× full",
        "minift-dp2 peak RSS ≤ 0.6× PyTorch's process",
        "minift-dp2 run-to-run spread of tokens/s < 10 %",
    ]
