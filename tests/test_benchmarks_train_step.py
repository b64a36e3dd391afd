"""``python -m benchmarks.train_step`` runs any subset of sizes, modes and engines to the end
(tables, JSON, plot), and names the machine it ran on. No timing is asserted: the runs here are a
couple of steps on a machine busy with the other tests."""

import json

import pytest

from benchmarks import train_step
from benchmarks.machine import cpu_line


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
