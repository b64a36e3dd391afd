"""minift.counts: a row per registered method, equal to its closed form and to what
``minift finetune`` trains."""

import re

import pytest

import minift
from benchmarks import param_counts
from minift import cli, counts
from minift.peft import METHODS, count_parameters
from minift.pipeline import finetuning

SMALL = minift.GPTConfig(vocab_size=13, block_size=32, n_layer=2, n_head=2, d_model=16)
TRAINING = [name for name, m in METHODS.items() if m.trains]


def test_every_method_that_trains_has_a_row_most_trainable_first():
    rows = counts.measure(SMALL)
    assert sorted(r.method for r in rows) == sorted(TRAINING)
    assert [r.trainable for r in rows] == sorted((r.trainable for r in rows), reverse=True)


def test_measured_counts_equal_the_closed_forms():
    by_method = {r.method: r for r in counts.measure(SMALL)}
    L, C, V, P = SMALL.n_layer, SMALL.d_model, SMALL.vocab_size, SMALL.block_size
    block = 12 * C * C + 13 * C
    base = V * C + P * C + L * block + 2 * C  # GPT-2 with the head tied
    linears = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    lora = L * 8 * ((C + 3 * C) + (C + C))  # r = 8 on c_attn and attn.c_proj
    closed_forms = {
        "full": base,
        "head": V * C,  # the tied wte
        "last-k": block + 2 * C + V * C,  # the top block, ln_f and the tied wte
        "sharing": base - (L - 1) * (8 * C * C + 5 * C),
        "sparse": L * sum(round(0.05 * i * o) for i, o in linears),  # 5 % of every Linear
        "lora": lora,
        "dora": lora + L * (3 * C + C),  # a magnitude per output column
        "adalora": L * (12 * (C + 3 * C) + 12),  # P, Q and Λ at init_r = 12 on c_attn
        "bitfit": (11 * L + 1) * C,
        "adapter": 2 * L * (2 * C * 16 + 16 + C),
        "ia3": 7 * L * C,
        "prompt": 8 * C,
        "prefix": 2 * L * 8 * C,
    }
    assert closed_forms.keys() == by_method.keys()
    for method, trainable in closed_forms.items():
        assert by_method[method].trainable == trainable, method
    assert by_method["bitfit"].added == 0  # it only chooses what trains
    assert by_method["adapter"].added == by_method["adapter"].trainable
    assert by_method["sharing"].added == -(L - 1) * (8 * C * C + 5 * C)


def test_benchmark_writes_the_table_and_the_chart(tmp_path, capsys):
    argv = ["--d-model", "16", "--n-layer", "2", "--n-head", "2", "--vocab-size", "13"]
    rows = param_counts.main([*argv, "--block-size", "32", "--out", str(tmp_path)])
    table = (tmp_path / "param_counts.md").read_text()
    assert "| method | what trains | peft_type | trainable | total | trainable % | added |" in table
    assert all(f"| {r.method} | {r.summary} | {r.peft_type} | {r.trainable:,d} |" in table
               for r in rows)  # fmt: skip
    assert (tmp_path / "param_counts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in capsys.readouterr().out


# -- minift count shows what minift finetune trains -----------------------------------------------

SHAPE = ["--d-model", "32", "--n-layer", "2", "--n-head", "2"]  # two blocks, for sharing


@pytest.fixture(scope="module")
def count_table(tmp_path_factory):
    """minift count's rows for the tiny base: method -> trainable."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["count", *SHAPE]) == 0
    rows = re.findall(r"^\| ([\w-]+) \|[^|]*\| \w+ \| ([\d,]+) \|", printed.getvalue(), re.M)
    return {method: int(trainable.replace(",", "")) for method, trainable in rows}


@pytest.mark.parametrize("method", TRAINING)
def test_count_shows_what_finetune_trains(method, count_table, tmp_path, monkeypatch, capsys):
    """The model `minift finetune --method M` hands to the training loop trains as many
    parameters as `minift count`'s row M says (on a generation task, as the table states)."""
    monkeypatch.setenv("MINIFT_CACHE", str(tmp_path))
    trained = []

    class RecordingTrainer(finetuning.Trainer):
        def __init__(self, model, *args, **kwargs):
            trained.append(count_parameters(model).trainable)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(finetuning, "Trainer", RecordingTrainer)
    base = ["--pretrain-steps", "1", *(f"--base-{a[2:]}" if a.startswith("--") else a
                                       for a in SHAPE)]  # fmt: skip
    argv = ["finetune", "--task", "en-fr-numbers", "--method", method, "--steps", "1"]
    assert cli.main([*argv, "--batch-size", "2", "--eval-examples", "1", *base]) == 0
    capsys.readouterr()
    assert trained == [count_table[method]]
