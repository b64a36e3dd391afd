"""The op-by-op profile of a training step: every op the step runs is a row, counted right."""

import json

from benchmarks import step_profile
from benchmarks.train_step import SIZES, train_step_flops


def test_the_profile_lists_each_op_the_step_runs_with_its_calls_per_step(tmp_path):
    record = step_profile.main(["--size", "d64", "--steps", "2", "--out", str(tmp_path)])
    cfg, B = SIZES["d64"]
    rows = {r["op"]: r for r in record["rows"]}
    L = cfg.n_layer
    assert rows["linear_forward"]["calls_per_step"] == 4 * L + 1  # four per block, the LM head
    assert rows["mha_forward_fused"]["calls_per_step"] == L
    assert rows["gelu_forward_fused"]["calls_per_step"] == L
    assert rows["layer_norm_forward_fused"]["calls_per_step"] == 2 * L + 1
    assert {r["op"] for r in record["rows"] if r["matmul"]} == step_profile.MATMUL_OPS
    assert record["rows"][-1]["op"] == "everything else"
    assert all(r["ms_per_step"] > 0 for r in record["rows"][:-1])
    assert abs(sum(r["share"] for r in record["rows"]) - 1.0) < 1e-9
    assert record["matmul_flops_per_step"] == train_step_flops(cfg, B, cfg.block_size)
    text = (tmp_path / "step_profile.md").read_text()
    assert f"| linear_forward | {4 * L + 1} |" in text and "of the peak" in text
    assert json.loads((tmp_path / "step_profile.json").read_text())["rows"] == record["rows"]
