"""LoRA's options as PEFT spells them (peft/lora_init.py, peft/targets.py, LoraConfig): every claim
of their docstrings, checked."""

import json
import math
import warnings

import numpy as np
import pytest
from helpers import hf_gpt2, import_references
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.errors import FileFormatError, MiniftError
from minift.gradcheck import (
    check_gradients,
    cross_entropy_loss,
    fixed_dropout_masks,
    randomize_params,
)
from minift.optim import AdamW
from minift.param_groups import loraplus_param_groups
from minift.peft import LoraConfig, PeftModel, get_peft_model
from minift.peft.lora_init import olora_init, pissa_init
from minift.peft.registry import command_line_options, method_config
from minift.peft.targets import block_index, pattern_key
from minift.train import TrainConfig, build_optimizer

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)


def tiny_gpt(seed=0, config=TINY):
    model = minift.GPT(config, seed=seed, dtype=np.float64)
    randomize_params(model.named_parameters(), seed)
    return model


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def lora_layers(peft):
    return {n: m for n, m in peft.named_modules() if hasattr(m, "lora_A")}


# -- init_lora_weights ----------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.floats(0.25, 4.0))
def test_pissa_and_olora_split_w0_into_residual_plus_s_b_a_exactly(seed, d_in, d_out, r, s):
    r = min(r, d_in, d_out)
    W0 = np.random.default_rng(seed).standard_normal((d_in, d_out))
    for init in (pissa_init, olora_init):
        A, B, residual = init(W0, r, s)
        assert A.shape == (r, d_in) and B.shape == (d_out, r) and residual.shape == W0.shape
        np.testing.assert_allclose(residual + s * (B @ A).T, W0, rtol=0, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(2, 6), st.integers(2, 6), st.integers(1, 4), st.floats(0.25, 4.0))
def test_pissa_moves_the_top_r_singular_values_into_b_a_and_leaves_the_rest(
    seed, d_in, d_out, r, s
):
    r = min(r, d_in, d_out)
    W0 = np.random.default_rng(seed).standard_normal((d_in, d_out))
    A, B, residual = pissa_init(W0, r, s)
    S = np.linalg.svd(W0, compute_uv=False)
    k = min(d_in, d_out)
    moved = np.linalg.svd(s * B @ A, compute_uv=False)[:r]
    kept = np.linalg.svd(residual, compute_uv=False)[: k - r]
    np.testing.assert_allclose(moved, S[:r], atol=1e-12)
    np.testing.assert_allclose(kept, S[r:], atol=1e-12)
    # A and B carry √(S_r/s) each: their row and column norms
    np.testing.assert_allclose(np.linalg.norm(A, axis=1) ** 2, S[:r] / s, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(B, axis=0) ** 2, S[:r] / s, rtol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(2, 6), st.integers(2, 6), st.integers(1, 4))
def test_olora_b_has_orthonormal_columns_and_a_is_upper_triangular_with_no_one_over_s(
    seed, d_in, d_out, r
):
    r = min(r, d_in, d_out)
    W0 = np.random.default_rng(seed).standard_normal((d_in, d_out))
    A, B, _ = olora_init(W0, r, 2.0)
    np.testing.assert_allclose(B.T @ B, np.eye(r), atol=1e-12)
    assert np.all(np.tril(A, -1) == 0)
    # Q_r·R_r is W₀'s projection on Q's first r columns, whatever s is
    np.testing.assert_allclose(B @ A, B @ B.T @ W0.T, atol=1e-12)


@settings(max_examples=6, deadline=None)
@given(seeds, st.integers(1, 4), st.sampled_from(["pissa", "olora"]), st.booleans())
def test_pissa_and_olora_leave_the_models_output_unchanged_at_init(seed, r, init, rslora):
    model = tiny_gpt(seed)
    idx, _ = batch(seed)
    base = model.forward(idx)
    W0 = model.h[0].attn.c_attn.weight.value.copy()
    config = LoraConfig(
        r=r, lora_alpha=3, use_rslora=rslora, init_lora_weights=init, target_modules=".*c_.*"
    )
    peft = get_peft_model(model, config, seed=seed)
    layer = peft.h[0].attn.c_attn
    assert np.abs(layer.lora_B.value).max() > 0.1  # the factors are W₀'s, not zero
    assert np.abs(layer.base_layer.weight.value - W0).max() > 0.1  # the base is the residual
    np.testing.assert_allclose(peft.forward(idx), base, rtol=0, atol=1e-10)


def test_init_false_draws_b_too_so_the_model_starts_elsewhere():
    model = minift.GPT(minift.GPTConfig(d_model=64, n_head=4, vocab_size=11), seed=0)
    idx, _ = batch(0)
    base = model.forward(idx)
    peft = get_peft_model(model, LoraConfig(r=8, init_lora_weights=False), seed=0)
    A, B = peft.h[0].attn.c_attn.lora_A.value, peft.h[0].attn.c_attn.lora_B.value
    # nn.Linear's default for both factors: U(±1/√fan_in), fan_in = d_in for A and r for B
    assert 0.9 / math.sqrt(64) < np.abs(A).max() <= 1 / math.sqrt(64)
    assert 0.9 / math.sqrt(8) < np.abs(B).max() <= 1 / math.sqrt(8)
    assert np.abs(peft.forward(idx) - base).max() > 1e-3


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_pissa_or_olora_adapter_loads_onto_the_original_base_with_the_trained_logits(
    tmp_path, init
):
    """The file is for the ORIGINAL base: loading factorises it again (the residual), then the
    trained A, B replace the initial ones (PEFT's from_pretrained does the same)."""
    config = LoraConfig(r=2, lora_alpha=4, init_lora_weights=init, target_modules=["c_attn"])
    peft = get_peft_model(tiny_gpt(3), config)
    for layer in lora_layers(peft).values():  # a training step's worth of change
        layer.lora_A.value += 0.05 * np.random.default_rng(4).standard_normal(layer.lora_A.shape)
    idx, _ = batch(3)
    expected = peft.forward(idx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft.save_pretrained(tmp_path)
    # PEFT's OLoRA cannot take GPT-2's [in, out] weights: saving says the file is minift's only
    warned = [w for w in caught if "loads in minift only" in str(w.message)]
    assert len(warned) == (1 if init == "olora" else 0)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["init_lora_weights"] == init
    loaded = PeftModel.from_pretrained(tiny_gpt(3), tmp_path)
    np.testing.assert_allclose(loaded.forward(idx), expected, rtol=0, atol=1e-10)


def trained_from(init, tmp_path, rslora=False, **options):
    """(the adapted model after a training step's worth of change, its logits, the initial
    adapter's folder): PEFT's recipe, the adapter saved right after get_peft_model."""
    config = LoraConfig(r=2, lora_alpha=4, init_lora_weights=init, target_modules=["c_attn"],
                        use_rslora=rslora, **options)  # fmt: skip
    peft = get_peft_model(tiny_gpt(3), config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OLoRA's "loads in minift only": not this test's point
        peft.save_pretrained(tmp_path / "init")
    rng = np.random.default_rng(4)
    for layer in lora_layers(peft).values():
        layer.lora_A.value += 0.05 * rng.standard_normal(layer.lora_A.shape)
        layer.lora_B.value += 0.05 * rng.standard_normal(layer.lora_B.shape)
    return peft, peft.forward(batch(3)[0]), tmp_path / "init"


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("init", ["pissa", "olora", True])
def test_a_trained_adapter_saved_against_its_init_is_a_plain_lora_of_the_original_base(
    tmp_path, init, rslora
):
    """PEFT's path_initial_model_for_weight_conversion: A' = [A ; A₀], B' = [B | −B₀], r and α
    doubled (α·√2 under rsLoRA), init True; it loads onto the original base, unfactorised."""
    peft, expected, initial = trained_from(init, tmp_path, rslora)
    peft.save_pretrained(tmp_path / "plain", path_initial_model_for_weight_conversion=initial)
    saved = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    assert (saved["r"], saved["init_lora_weights"]) == (4, True)
    assert saved["lora_alpha"] == pytest.approx(4 * math.sqrt(2) if rslora else 8)
    original = tiny_gpt(3)
    before = {n: p.value.copy() for n, p in original.named_parameters().items()}
    loaded = PeftModel.from_pretrained(original, tmp_path / "plain")
    np.testing.assert_allclose(loaded.forward(batch(3)[0]), expected, rtol=0, atol=1e-10)
    for name, layer in lora_layers(loaded).items():
        assert layer.lora_A.shape == (4, 8)  # rank 2r
        np.testing.assert_array_equal(layer.base_layer.weight.value, before[name + ".weight"])


@pytest.mark.reference
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_the_plain_lora_of_a_trained_pissa_or_olora_gives_pefts_gpt2_the_same_logits(
    tmp_path, init
):
    """The converted file is a plain LoRA: PEFT applies it to the original GPT-2 (Conv1D), even
    for OLoRA, whose unconverted file PEFT cannot apply there."""
    torch, _, peft_lib = import_references()
    hf = hf_gpt2(tiny_gpt(3), tmp_path / "base")
    peft, expected, initial = trained_from(init, tmp_path)
    peft.save_pretrained(tmp_path / "plain", path_initial_model_for_weight_conversion=initial)
    hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "plain")
    with torch.no_grad():
        got = hf(torch.tensor(batch(3)[0])).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_a_conversion_that_cannot_hold_is_refused_naming_what_and_writing_nothing(tmp_path):
    where = "path_initial_model_for_weight_conversion"
    peft, _, initial = trained_from("pissa", tmp_path)
    wider = get_peft_model(tiny_gpt(3), LoraConfig(r=3, target_modules=["c_attn"]))
    wider.save_pretrained(tmp_path / "r3")
    with pytest.raises(
        FileFormatError, match=r"adapter_model.safetensors.*expected shape \(2, 8\)"
    ):
        peft.save_pretrained(
            tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "r3"
        )
    with pytest.raises(MiniftError, match="none: no such folder"):
        peft.save_pretrained(
            tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "none"
        )
    dora = get_peft_model(tiny_gpt(3), LoraConfig(r=2, use_dora=True, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match=f"{where}: only a LoRA.*DoRA"):
        dora.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=initial)
    patterned, _, patterned_initial = trained_from(
        True, tmp_path / "p", rslora=True, rank_pattern={"c_attn": 2}
    )
    with pytest.raises(ValueError, match=f"{where}: not with rank_pattern"):
        patterned.save_pretrained(
            tmp_path / "out", path_initial_model_for_weight_conversion=patterned_initial
        )
    peft.add_adapter("second", LoraConfig(r=2, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match=f"{where}: converts the one adapter 'default'"):
        peft.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=initial)
    assert not (tmp_path / "out").exists()


# -- which layers, with which r and α ----------------------------------------------------------


def test_rank_and_alpha_patterns_take_the_first_matching_key_in_dict_order():
    config = LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["c_attn", "c_fc"],
        # "h.1.attn.c_attn" also ends in "c_attn": the first key wins, so its order matters
        rank_pattern={r"h\.1\.attn\.c_attn": 3, "c_attn": 1},
        alpha_pattern={"c_attn": 5, r"h\.1\.attn\.c_attn": 7, "mlp.c_fc": 6},
    )
    layers = lora_layers(get_peft_model(tiny_gpt(), config))
    got = {n: (m.r, m.scaling) for n, m in layers.items()}
    assert got["h.1.attn.c_attn"] == (3, 5 / 3)
    assert got["h.0.attn.c_attn"] == got["h.2.attn.c_attn"] == (1, 5 / 1)
    assert got["h.0.mlp.c_fc"] == (2, 6 / 2)
    assert layers["h.1.attn.c_attn"].lora_A.shape == (3, 8)


def test_a_pattern_key_matches_the_end_of_hugging_faces_name():
    assert pattern_key(["attn.c_proj"], "h.0.attn.c_proj") == "attn.c_proj"
    assert pattern_key(["attn.c_proj"], "h.0.mlp.c_proj") is None
    assert pattern_key([r"transformer\.h\.0\..*"], "h.0.mlp.c_fc") == r"transformer\.h\.0\..*"
    assert pattern_key(["c_pro"], "h.0.attn.c_proj") is None  # the key must reach the end


def test_layers_to_transform_keeps_only_the_listed_blocks_by_hugging_faces_names():
    for layers, pattern in ((1, None), ([0, 2], None), ([0, 2], "h"), ([2], ["x", "h"])):
        config = LoraConfig(
            r=2, target_modules=["c_attn"], layers_to_transform=layers, layers_pattern=pattern
        )
        wanted = [layers] if isinstance(layers, int) else layers
        assert sorted(lora_layers(get_peft_model(tiny_gpt(), config))) == [
            f"h.{i}.attn.c_attn" for i in wanted
        ]
    # PEFT reads the index after two name components: transformer.h.3…, never minift's h.3…
    assert block_index("h.3.mlp.c_fc") == 3 and block_index("h.3.mlp.c_fc", "mlp") is None


def test_exclude_modules_removes_what_the_targets_matched():
    config = LoraConfig(r=2, target_modules=["c_attn", "c_proj"], exclude_modules=["mlp.c_proj"])
    assert sorted(lora_layers(get_peft_model(tiny_gpt(), config))) == [
        f"h.{i}.attn.{m}" for i in range(3) for m in ("c_attn", "c_proj")
    ]
    regex = LoraConfig(r=2, target_modules="all-linear", exclude_modules=r".*h\.[01]\..*")
    assert len(lora_layers(get_peft_model(tiny_gpt(), regex))) == 4
    with pytest.raises(ValueError, match="target_modules: .* left no layer to adapt"):
        get_peft_model(tiny_gpt(), LoraConfig(target_modules=["c_fc"], exclude_modules=["c_fc"]))


def test_all_linear_is_every_linear_but_the_head_saved_as_full_names(tmp_path):
    model = minift.GPTForSequenceClassification(TINY, num_labels=3, seed=0, dtype=np.float64)
    config = LoraConfig(r=2, target_modules="all-linear", modules_to_save=["score"])
    peft = get_peft_model(model, config)
    kinds = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert sorted(lora_layers(peft)) == sorted(f"h.{i}.{k}" for i in range(3) for k in kinds)
    peft.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == sorted(
        f"transformer.h.{i}.{k}" for i in range(3) for k in kinds
    )


def test_patterns_and_layers_survive_the_adapter_files_both_ways(tmp_path):
    config = LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["c_attn", "c_fc"],
        rank_pattern={"c_fc": 3, "attn.c_attn": 1},  # not sorted: the order is the meaning
        alpha_pattern={r"h\.2\.attn\.c_attn": 9},
        layers_to_transform=[0, 2],
        exclude_modules=["h.0.mlp.c_fc"],
    )
    peft = get_peft_model(tiny_gpt(5), config)
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 6)
    idx, _ = batch(5)
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert list(saved["rank_pattern"].items()) == [("c_fc", 3), ("attn.c_attn", 1)]
    assert saved["layers_to_transform"] == [0, 2]
    loaded = PeftModel.from_pretrained(tiny_gpt(5), tmp_path)
    assert sorted(lora_layers(loaded)) == ["h.0.attn.c_attn", "h.2.attn.c_attn", "h.2.mlp.c_fc"]
    np.testing.assert_array_equal(loaded.forward(idx), expected)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rank_pattern", ["c_attn", 2], "expected an object"),
        ("rank_pattern", {"c_attn": 2.5}, "'c_attn': expected a positive integer rank"),
        ("alpha_pattern", {"c_attn": "8"}, "'c_attn': expected a number"),
        ("layers_to_transform", "0", "expected an integer or a list of integers or null"),
        ("exclude_modules", "c_(", "not a valid regular expression"),
        ("init_lora_weights", "pissa_niter_16", "not implemented: use 'pissa'"),
    ],
)
def test_a_bad_option_in_adapter_config_is_named_with_its_file(tmp_path, field, value, message):
    get_peft_model(tiny_gpt(), LoraConfig(r=2)).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    saved[field] = value
    path.write_text(json.dumps(saved))
    with pytest.raises(FileFormatError) as caught:
        LoraConfig.from_dict(saved, path)
    assert "adapter_config.json" in str(caught.value) and field in str(caught.value)
    assert message in str(caught.value)


# -- gradients with per-layer r and α ------------------------------------------------------------


@settings(max_examples=4, deadline=None)
@given(seeds, st.sampled_from([True, "pissa", "olora"]), st.floats(0.1, 0.5))
def test_every_parameter_of_a_lora_with_rank_and_alpha_patterns_matches_finite_differences(
    seed, init, dropout
):
    """Per-layer r and α from the patterns, lora_dropout on (its masks fixed for the check)."""
    config = LoraConfig(
        r=2,
        lora_alpha=3,
        lora_dropout=dropout,
        init_lora_weights=init,
        target_modules=["c_attn", "c_fc"],
        rank_pattern={"c_fc": 1, r"h\.1\.attn\.c_attn": 3},
        alpha_pattern={"c_attn": 5},
    )
    peft = get_peft_model(tiny_gpt(seed), config, seed=seed)
    assert {m.r for m in lora_layers(peft).values()} == {1, 2, 3}
    lora = {n: p for n, p in peft.named_parameters().items() if "lora_" in n}
    randomize_params(lora, seed + 1, scale=0.1)
    loss = fixed_dropout_masks(cross_entropy_loss(peft, *batch(seed)), peft)
    report = check_gradients(loss, peft.named_parameters())
    assert len(report.errors) == 2 * 2 * TINY.n_layer
    assert report.ok(TOL), str(report)


# -- LoRA+ -----------------------------------------------------------------------------------------


def test_loraplus_groups_give_b_and_the_1d_params_ratio_times_the_lr_as_peft_does():
    model = minift.GPTForSequenceClassification(TINY, num_labels=3, seed=0, dtype=np.float64)
    config = LoraConfig(r=2, target_modules=["c_attn"], modules_to_save=["score", "ln_f"])
    named = get_peft_model(model, config).named_parameters()
    groups = {g["name"]: g for g in loraplus_param_groups(named, 1e-3, 16, weight_decay=0.1)}
    assert sorted(groups["A"]["params"]) == sorted(
        [f"h.{i}.attn.c_attn.lora_A" for i in range(3)] + ["score.weight"]
    )
    assert sorted(groups["B"]["params"]) == [f"h.{i}.attn.c_attn.lora_B" for i in range(3)]
    assert sorted(groups["B_no_decay"]["params"]) == ["ln_f.bias", "ln_f.weight"]
    lrs = {k: (g["lr"], g["weight_decay"]) for k, g in groups.items()}
    assert lrs == {"A": (1e-3, 0.1), "B": (16e-3, 0.1), "B_no_decay": (16e-3, 0.0)}
    with pytest.raises(ValueError, match="loraplus_lr_ratio: expected a finite number > 0"):
        loraplus_param_groups(named, 1e-3, 0)


def test_loraplus_steps_b_exactly_as_an_adamw_with_ratio_times_the_lr():
    def trained(ratio):
        config = LoraConfig(r=2, lora_alpha=4, loraplus_lr_ratio=ratio)
        peft = get_peft_model(tiny_gpt(7), config, seed=7)
        train_config = TrainConfig(steps=3, lr=1e-2, weight_decay=0.01)
        optimizer = build_optimizer(peft, train_config)
        for _ in range(3):
            peft.zero_grad()
            cross_entropy_loss(peft, *batch(7))(True)
            optimizer.step()
        return {n: p.value for n, p in peft.named_parameters().items() if "lora_" in n}

    def plain(lr_of):
        peft = get_peft_model(tiny_gpt(7), LoraConfig(r=2, lora_alpha=4), seed=7)
        named = {n: p for n, p in peft.named_parameters().items() if p.trainable}
        groups = [
            {"params": {n: p for n, p in named.items() if kind in n}, "lr": lr_of[kind]}
            for kind in ("lora_A", "lora_B")
        ]
        optimizer = AdamW(groups, lr=1e-2, weight_decay=0.01)
        for _ in range(3):
            peft.zero_grad()
            cross_entropy_loss(peft, *batch(7))(True)
            optimizer.step()
        return {n: p.value for n, p in peft.named_parameters().items() if "lora_" in n}

    loraplus = trained(16.0)
    reference = plain({"lora_A": 1e-2, "lora_B": 16e-2})
    for name, value in reference.items():
        np.testing.assert_array_equal(loraplus[name], value, err_msg=name)
    same_lr = trained(1.0)["h.0.attn.c_attn.lora_B"]
    assert np.abs(same_lr - loraplus["h.0.attn.c_attn.lora_B"]).max() > 1e-3


def test_finetune_takes_loraplus_lr_ratio_and_peft_files_leave_it_out(tmp_path):
    config = method_config("lora", "generation", 10, loraplus_lr_ratio=8.0)
    assert config.loraplus_lr_ratio == 8.0
    assert command_line_options()["loraplus_lr_ratio"].flag == "--loraplus-lr-ratio"
    get_peft_model(tiny_gpt(), config).save_pretrained(tmp_path)
    assert "loraplus_lr_ratio" not in json.loads((tmp_path / "adapter_config.json").read_text())
    with pytest.raises(ValueError, match="layerwise_lr_decay: cannot be combined with LoRA+"):
        build_optimizer(get_peft_model(tiny_gpt(), config), TrainConfig(layerwise_lr_decay=0.9))


def test_a_failed_pissa_load_leaves_the_base_weights_as_they_were(tmp_path):
    config = LoraConfig(r=2, init_lora_weights="pissa", target_modules=["c_attn"])
    get_peft_model(tiny_gpt(1), config).save_pretrained(tmp_path)
    wider = minift.GPTConfig(**{**vars(TINY), "d_model": 12})
    model = tiny_gpt(1, config=wider)
    before = {n: p.value.copy() for n, p in model.named_parameters().items()}
    with pytest.raises(FileFormatError, match="expected shape"):
        # the layers wrap (and factorise) first; only the tensors then do not fit
        PeftModel.from_pretrained(model, tmp_path)
    after = model.named_parameters()
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name].value, value, err_msg=name)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_unload_gives_the_residual_base_and_merge_and_unload_the_original(init):
    config = LoraConfig(r=2, lora_alpha=4, init_lora_weights=init, target_modules=["c_attn"])
    W0 = tiny_gpt(2).h[1].attn.c_attn.weight.value
    merged = get_peft_model(tiny_gpt(2), config).merge_and_unload().h[1].attn.c_attn.weight.value
    np.testing.assert_allclose(merged, W0, rtol=0, atol=1e-12)
    peft = get_peft_model(tiny_gpt(2), config)
    layer = peft.h[1].attn.c_attn
    residual = W0 - 2.0 * (layer.lora_B.value @ layer.lora_A.value).T  # s = 4/2
    np.testing.assert_allclose(peft.unload().h[1].attn.c_attn.weight.value, residual, atol=1e-12)
