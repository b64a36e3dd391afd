"""minift.counts: a row per registered method, equal to its closed form and to what
``minift finetune`` trains."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

import minift
from benchmarks import param_counts
from minift import cli, counts, plots
from minift.nn import Embedding, Linear, Module, ModuleList
from minift.param import Param
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


# -- a Llama's closed forms: its published counts, and count_parameters on a small one ------------

SMALL_LLAMA = counts.LlamaShape(vocab_size=29, n_layer=3, d_model=32, d_ff=88, n_head=4)
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# QLoRA quantizes the blocks of a GPT (h), not a Llama's: its count is LoRA's per_linear, which
# the small Llama measures under "lora" and the GPT-2 tests above measure under "qlora"
MEASURABLE = [m for m in counts.PER_LINEAR if m != "qlora"]


class Holder(Module):
    """A module of the given children, in their order (no forward: only names and Params)."""

    def __init__(self, **children):
        for name, child in children.items():
            setattr(self, name, child)


class RMSNormWeight(Module):
    """An RMSNorm's one Param, its gain (Zhang & Sennrich 2019): no bias, no mean."""

    def __init__(self, dim):
        self.weight = Param(np.ones(dim, dtype=np.float32))


def small_llama(shape: counts.LlamaShape, seed: int = 0) -> Module:
    """A Llama's Params under Hugging Face's LlamaForCausalLM names, written out here from the
    architecture (Touvron et al. 2023), not from minift.counts: model.embed_tokens, per block
    self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj (Linears without bias) and two RMSNorm
    weights, model.norm, lm_head. minift cannot build a working Llama (no RMSNorm, SwiGLU or
    rotary attention), but PEFT's methods wrap Linears by name and count_parameters counts
    Params: all a count needs."""
    rng = np.random.default_rng(seed)
    C, F, V = shape.d_model, shape.d_ff, shape.vocab_size

    def linear(d_in, d_out):
        return Linear(d_in, d_out, bias=False, rng=rng)

    def block():
        attn = Holder(q_proj=linear(C, C), k_proj=linear(C, C), v_proj=linear(C, C),
                      o_proj=linear(C, C))  # fmt: skip
        mlp = Holder(gate_proj=linear(C, F), up_proj=linear(C, F), down_proj=linear(F, C))
        return Holder(input_layernorm=RMSNormWeight(C), self_attn=attn,
                      post_attention_layernorm=RMSNormWeight(C), mlp=mlp)  # fmt: skip

    body = Holder(embed_tokens=Embedding(V, C, rng=rng),
                  layers=ModuleList([block() for _ in range(shape.n_layer)]),
                  norm=RMSNormWeight(C))  # fmt: skip
    return Holder(model=body, lm_head=linear(C, V))


def test_llama_7b_full_count_is_its_published_size():
    """Llama-2 7B (Touvron et al. 2023) as Hugging Face's meta-llama/Llama-2-7b-hf counts it."""
    assert counts.llama_closed_form("full", counts.LLAMA_7B) == 6_738_415_616


def test_llama_lora_on_q_and_v_is_peft_s_published_count():
    """PEFT's print_trainable_parameters() for LoraConfig(r=8, target_modules=["q_proj",
    "v_proj"]) on Llama-2 7B: "trainable params: 4,194,304 || all params: 6,742,609,920"."""
    lora = counts.llama_closed_form("lora", counts.LLAMA_7B, targets=["q_proj", "v_proj"], r=8)
    assert lora == 4_194_304
    assert counts.llama_closed_form("full", counts.LLAMA_7B) + lora == 6_742_609_920


@pytest.mark.parametrize("targets", [None, LLAMA_LINEARS], ids=["translated", "all-seven"])
@pytest.mark.parametrize("method", MEASURABLE)
def test_llama_closed_forms_equal_count_parameters_on_a_small_llama(method, targets):
    """Each method as ``llama_config`` sets it up (minift's GPT-2 targets translated, or every
    Linear of a block: gate, up and down are not square, C = 32 to F = 88 and back), applied by
    get_peft_model to a small Llama's modules, trains what ``llama_closed_form`` counts."""
    model = get_peft_model(small_llama(SMALL_LLAMA), counts.llama_config(method, targets))
    closed = counts.llama_closed_form(method, SMALL_LLAMA, targets)
    assert count_parameters(model).trainable == closed > 0


def test_a_small_llama_s_params_are_what_the_llama_closed_forms_count():
    """The whole model, sharing's ties, and what head, last-k and LN tuning train (the Params
    they name, as a Llama names them)."""
    L, shape = SMALL_LLAMA.n_layer, SMALL_LLAMA
    params = {name: p.value.size for name, p in small_llama(shape).named_parameters().items()}
    assert sum(params.values()) == counts.llama_closed_form("full", shape)
    shared = get_peft_model(small_llama(shape), counts.llama_config("sharing"))
    assert count_parameters(shared).trainable == counts.llama_closed_form("sharing", shape)
    untied = [n for n in shared.named_parameters() if re.search(r"layers\.[1-9]\.mlp", n)]
    assert untied == []  # every block's gate, up and down are block 0's
    top = [n for n in params if n.startswith(f"model.layers.{L - 1}.")]
    head = params["lm_head.weight"]
    assert head == counts.llama_closed_form("head", shape)
    last = sum(params[n] for n in top) + params["model.norm.weight"] + head
    assert last == counts.llama_closed_form("last-k", shape)  # k = 1
    norms = sum(size for n, size in params.items() if n.endswith("norm.weight"))
    assert norms == counts.llama_closed_form("ln-tuning", shape)


def test_bitfit_trains_nothing_on_a_llama_and_is_left_out_of_its_series():
    with pytest.raises(ValueError, match="no bias to train"):  # minift's BitFit finds none
        get_peft_model(small_llama(SMALL_LLAMA), counts.llama_config("bitfit"))
    assert counts.llama_closed_form("bitfit", counts.LLAMA_7B) == 0
    assert sorted(counts.llama_closed_form_series()) == sorted(set(TRAINING) - {"bitfit"})


def test_minift_s_gpt2_targets_become_their_llama_counterparts():
    """The translation: c_attn -> q, k, v; attn.c_proj -> o; mlp.c_fc -> gate, up; mlp.c_proj ->
    down; ln_1, ln_2, ln_f -> the RMSNorms in their places."""
    qkvo = ["q_proj", "k_proj", "v_proj", "o_proj"]
    for method in ("lora", "dora", "qlora", "vera", "loha", "lokr"):  # c_attn and attn.c_proj
        assert counts.llama_config(method).target_modules == qkvo, method
    assert counts.llama_config("adalora").target_modules == qkvo[:3]  # c_attn
    assert counts.llama_config("adapter").target_modules == ["o_proj", "down_proj"]
    assert counts.llama_config("sparse").target_modules == LLAMA_LINEARS  # c_proj: both
    ia3 = counts.llama_config("ia3")
    assert ia3.target_modules == [*qkvo[:3], "down_proj"]  # c_attn's output, mlp.c_proj's input
    assert ia3.feedforward_modules == ["down_proj"]
    ln = ["input_layernorm", "post_attention_layernorm", "norm"]
    assert counts.llama_config("ln-tuning").target_modules == ln


def test_a_changed_default_changes_gpt2_s_and_the_llama_s_closed_forms(monkeypatch):
    lora = METHODS["lora"]
    before = counts.closed_form("lora", SMALL), counts.llama_closed_form("lora", counts.LLAMA_7B)
    doubled = dataclasses.replace(lora, defaults={**lora.defaults, "r": 2 * lora.defaults["r"]})
    monkeypatch.setitem(METHODS, "lora", doubled)
    after = counts.closed_form("lora", SMALL), counts.llama_closed_form("lora", counts.LLAMA_7B)
    assert after == (2 * before[0], 2 * before[1])


def drawn_counts_are_what_count_parameters_counts(figure: dict, config: minift.GPTConfig):
    """The left panel of a parameter-count figure: at each width, every method's point is the
    base model's size and what count_parameters counts on the model finetune builds; the right
    panel: GPT-2's sizes and the closed forms, and Llama-2 7B's points beside them."""
    (small, gpt2, llama) = figure.values()
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
    assert sorted(llama) == sorted(set(TRAINING) - {"bitfit"})  # a Llama has no bias
    for method, (xs, ys) in llama.items():
        assert xs == [counts.llama_closed_form("full", counts.LLAMA_7B)]
        assert ys == [counts.llama_closed_form(method, counts.LLAMA_7B)]


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
    # the closed-form panel says which method has no Llama point, and why
    assert "bitfit: a Llama has no biases" in fig.axes[1].get_xlabel().replace("\n", " ")


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
