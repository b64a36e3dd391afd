"""minift.counts: every registered method measured; the counts equal the closed forms."""

import minift
from benchmarks import param_counts
from minift import counts
from minift.peft.base import PEFT_TYPES

SMALL = minift.GPTConfig(vocab_size=13, block_size=32, n_layer=2, n_head=2, d_model=16)


def test_every_registered_method_has_a_row():
    rows = counts.measure(SMALL)
    assert {r.peft_type for r in rows} == set(PEFT_TYPES)
    assert [r.trainable for r in rows] == sorted((r.trainable for r in rows), reverse=True)


def test_measured_counts_equal_the_closed_forms():
    by_label = {r.label: r for r in counts.measure(SMALL)}
    L, C, V, P = SMALL.n_layer, SMALL.d_model, SMALL.vocab_size, SMALL.block_size
    base = V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C  # GPT-2 with the head tied
    assert by_label["full fine-tuning"].trainable == by_label["full fine-tuning"].total == base
    assert by_label["LoRA r=8 c_attn"].trainable == L * 8 * (C + 3 * C)
    assert by_label["DoRA r=8 c_attn"].trainable == L * (8 * (C + 3 * C) + 3 * C)
    assert by_label["IA3 (PEFT's GPT-2 targets)"].trainable == 7 * L * C
    assert by_label["BitFit (all biases)"].trainable == (11 * L + 1) * C
    assert by_label["BitFit (all biases)"].added == 0  # it only chooses what trains
    adapters = by_label["adapters m=16"]
    assert adapters.trainable == adapters.added == 2 * L * (2 * C * 16 + 16 + C)
    sharing = by_label["sharing A3 (MLPs tied)"]
    assert sharing.added == -(L - 1) * (8 * C * C + 5 * C)


def test_benchmark_writes_the_table_and_the_chart(tmp_path, capsys):
    argv = ["--d-model", "16", "--n-layer", "2", "--n-head", "2", "--vocab-size", "13"]
    rows = param_counts.main([*argv, "--block-size", "32", "--out", str(tmp_path)])
    table = (tmp_path / "param_counts.md").read_text()
    assert "| method | peft_type | trainable | total | trainable % | added |" in table
    assert all(f"| {r.label} | {r.peft_type} | {r.trainable:,d} |" in table for r in rows)
    assert (tmp_path / "param_counts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in capsys.readouterr().out
