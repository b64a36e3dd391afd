"""minift.counts: a row per registered method, equal to its closed form and to what
``minift finetune`` trains."""

import re
from pathlib import Path

import pytest

import minift
from benchmarks import param_counts
from minift import cli, counts, plots
from minift.peft import METHODS, count_parameters, get_peft_model
from minift.pipeline import finetuning

SMALL = minift.GPTConfig(vocab_size=13, block_size=32, n_layer=2, n_head=2, d_model=16)
TRAINING = [name for name, m in METHODS.items() if m.trains]
ROOT = Path(__file__).resolve().parents[1]


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
        "qlora": lora,  # LoRA's A and B; the 4-bit base trains nothing
        "adalora": L * (12 * (C + 3 * C) + 12),  # P, Q and Λ at init_r = 12 on c_attn
        "bitfit": (11 * L + 1) * C,
        "ln-tuning": (2 * L + 1) * 2 * C,  # γ and β of ln_1, ln_2 per block and ln_f
        "adapter": 2 * L * (2 * C * 16 + 16 + C),
        "ia3": 7 * L * C,
        "vera": L * ((256 + 3 * C) + (256 + C)),  # λ_d (r = 256) and λ_b (out) per target
        "loha": L * 2 * 4 * ((C + 3 * C) + (C + C)),  # r = 4 on c_attn and attn.c_proj: LoRA's
        # r = 8 on c_attn, 16 = 4·4 -> 48 = 6·8: W₁ [6, 4], W₂ [8, 4] (8 ≥ 8/2: whole), and on
        # attn.c_proj, 16 -> 16: W₁ [4, 4], W₂ [4, 4]
        "lokr": L * ((6 * 4 + 8 * 4) + (4 * 4 + 4 * 4)),
        "prompt": 8 * C,
        "prefix": 2 * L * 8 * C,
    }
    assert closed_forms.keys() == by_method.keys()
    for method, trainable in closed_forms.items():
        assert by_method[method].trainable == trainable, method
    assert by_method["bitfit"].added == 0  # it only chooses what trains
    assert by_method["ln-tuning"].added == by_method["ln-tuning"].trainable  # copies, beside
    assert by_method["adapter"].added == by_method["adapter"].trainable
    assert by_method["sharing"].added == -(L - 1) * (8 * C * C + 5 * C)
    assert by_method["qlora"].added == by_method["qlora"].trainable  # W₀ counted, though 4-bit


def test_benchmark_writes_the_table_and_the_chart(tmp_path, capsys):
    argv = ["--d-model", "16", "--n-layer", "2", "--n-head", "2", "--vocab-size", "13"]
    rows = param_counts.main([*argv, "--block-size", "32", "--out", str(tmp_path)])
    table = (tmp_path / "param_counts.md").read_text()
    assert "| method | what trains | peft_type | trainable | total | trainable % | added |" in table
    assert all(f"| {r.method} | {r.summary} | {r.peft_type} | {r.trainable:,d} |" in table
               for r in rows)  # fmt: skip
    assert (tmp_path / "param_counts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in capsys.readouterr().out


# -- the closed forms at sizes too large to build, and the figure drawn from them ---------------


@pytest.mark.parametrize("name", list(counts.GPT2_FAMILY))
def test_closed_forms_equal_the_measured_counts_on_small_models_of_gpt2_s_shapes(name):
    """GPT-2's depth and heads at a head width of 2 (and a small vocabulary and context): every
    method's closed form is what count_parameters measures on the model minift builds."""
    big = counts.GPT2_FAMILY[name]
    small = minift.GPTConfig(vocab_size=29, block_size=11, n_layer=big.n_layer,
                             n_head=big.n_head, d_model=2 * big.n_head)  # fmt: skip
    measured = {r.method: r.trainable for r in counts.measure(small)}
    assert {m: counts.closed_form(m, small) for m in measured} == measured
    assert counts.closed_form("full", small) == count_parameters(minift.GPT(small)).total


def test_closed_form_of_gpt2_small_is_its_published_size():
    assert counts.closed_form("full", counts.GPT2_FAMILY["GPT-2 124M"]) == 124_439_808


def test_closed_form_names_an_unknown_method():
    with pytest.raises(ValueError, match=r"method: expected one of \[.*'lora'.*\], got 'loar'"):
        counts.closed_form("loar", SMALL)


def drawn_counts_are_what_count_parameters_counts(figure: dict, config: minift.GPTConfig):
    """The left panel of a parameter-count figure: at each width, every method's point is the
    base model's size and what count_parameters counts on the model finetune builds; the right
    panel: GPT-2's sizes and the closed forms."""
    (small, gpt2) = figure.values()
    for width in counts.widths(config):
        size = count_parameters(minift.GPT(width)).total
        for method in TRAINING:
            peft = get_peft_model(minift.GPT(width), METHODS[method].build("generation", 200))
            xs, ys = small[method]
            i = xs.index(size)
            assert ys[i] == count_parameters(peft).trainable, (method, width.d_model)
    assert sorted(small) == sorted(gpt2) == sorted(TRAINING)  # DoRA and AdaLoRA among them
    for method, (xs, ys) in gpt2.items():
        family = counts.GPT2_FAMILY.values()
        assert xs == [counts.closed_form("full", c) for c in family]
        assert ys == [counts.closed_form(method, c) for c in family]


def test_the_chart_draws_what_count_parameters_counts(tmp_path):
    argv = ["--d-model", "16", "--n-layer", "2", "--n-head", "2", "--vocab-size", "13"]
    param_counts.main([*argv, "--block-size", "32", "--out", str(tmp_path)])
    figure = plots.figure_data(tmp_path / "param_counts.png")
    drawn_counts_are_what_count_parameters_counts(figure, SMALL)
    fig = counts.plot(tmp_path / "again.png", SMALL)
    for ax in fig.axes:  # each panel: 0.1 %, 1 % and 10 % of the model beside the methods
        guides = [line for line in ax.lines if line.get_label().endswith("% of the model")]
        want = [f"{share} % of the model" for share in ("0.1", "1", "10")]
        assert [g.get_label() for g in guides] == want


def test_the_committed_table_and_chart_are_what_the_code_counts_today(tmp_path, capsys):
    """benchmarks/results/param_counts.{md,png} were made by this code at its defaults: a count
    that changes without the files being regenerated fails here."""
    committed = ROOT / "benchmarks" / "results"
    param_counts.main(["--out", str(tmp_path)])
    capsys.readouterr()
    assert (committed / "param_counts.md").read_text() == (tmp_path / "param_counts.md").read_text()
    figure = plots.figure_data(committed / "param_counts.png")
    assert figure == plots.figure_data(tmp_path / "param_counts.png")
    default = minift.GPTConfig(vocab_size=512, block_size=128, n_layer=6, n_head=4, d_model=256)
    drawn_counts_are_what_count_parameters_counts(figure, default)


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
