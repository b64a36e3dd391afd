"""Several adapters on one base model (peft/adapters.py) and add_weighted_adapter's three
combinations (peft/weighted_adapter.py), with PEFT 0.21's semantics; the reference tests load
PEFT-written adapters side by side, combine them as PEFT does, and hand minift's folder to PEFT.
"""

import contextlib
import json
import warnings

import numpy as np
import pytest
from helpers import as_if_written_elsewhere, hf_gpt2, import_references
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.errors import FileFormatError, MissingFileError
from minift.gradcheck import (
    check_gradients,
    cross_entropy_loss,
    fixed_dropout_masks,
    numerical_gradient,
    randomize_params,
)
from minift.peft import (
    AdaLoraConfig,
    IA3Config,
    LoraConfig,
    PeftModel,
    PromptTuningConfig,
    get_peft_model,
)
from minift.peft.weighted_adapter import (
    cat_combination,
    linear_combination,
    svd_combination,
)

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-10  # float64 on both sides: only the order of the sums differs


def gpt(seed=0):
    model = minift.GPT(TINY, seed=seed, dtype=np.float64)
    randomize_params(model.named_parameters(), seed)
    return model


def tokens(seed, T=6):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, (2, T))


def two_adapters(seed=0, **lora):
    """A model with "default" on c_attn, mlp.c_proj and "other" on c_attn, c_fc, both random."""
    peft = get_peft_model(
        gpt(seed), LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "mlp.c_proj"], **lora)
    )
    peft.add_adapter(
        "other", LoraConfig(r=3, lora_alpha=5, target_modules=["c_attn", "c_fc"], **lora)
    )
    randomize_params(peft.adapter_parameters("default"), seed + 1)
    randomize_params(peft.adapter_parameters("other"), seed + 2)
    return peft


def delta(layer):  # ΔW of a LoRA layer in the paper's layout, [out, in]
    return layer.scaling * (layer.lora_B.value @ layer.lora_A.value)


# ------------------------------------------------------------------------------------------------
# add_adapter, set_adapter, gradients


def test_an_added_adapter_is_inactive_and_frozen_until_set_adapter_switches_to_it():
    peft = get_peft_model(gpt(), LoraConfig(r=2, target_modules=["c_attn"]))
    randomize_params(peft.adapter_parameters("default"), 1)
    idx = tokens(0)
    first = peft.forward(idx)
    peft.add_adapter("other", LoraConfig(r=2, target_modules=["c_fc"]))
    randomize_params(peft.adapter_parameters("other"), 2)
    assert peft.active_adapter == "default"
    assert not any(p.trainable for p in peft.adapter_parameters("other").values())
    np.testing.assert_array_equal(peft.forward(idx), first)

    peft.set_adapter("other")
    trainable = {n for n, p in peft.named_parameters().items() if p.trainable}
    assert (
        trainable
        == set(peft.adapter_parameters("other"))
        == {f"h.{i}.mlp.c_fc.lora_{m}" for i in (0, 1) for m in "AB"}
    )
    assert not np.allclose(peft.forward(idx), first)
    peft.set_adapter("default")
    np.testing.assert_array_equal(peft.forward(idx), first)  # bit for bit: nothing was copied


def test_set_adapter_in_inference_mode_leaves_every_adapter_frozen():
    peft = two_adapters()
    peft.set_adapter("other", inference_mode=True)
    assert not any(p.trainable for p in peft.named_parameters().values())


@pytest.mark.parametrize(
    "config",
    [
        lambda: LoraConfig(r=2, lora_alpha=3, use_dora=True, target_modules=["c_attn"]),
        lambda: IA3Config(
            target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"]
        ),
    ],
    ids=["dora", "ia3"],
)
def test_dora_and_ia3_adapters_switch_as_lora_ones_do(config):
    peft = get_peft_model(gpt(), config())
    randomize_params(peft.adapter_parameters("default"), 1)
    peft.add_adapter("other", config())
    randomize_params(peft.adapter_parameters("other"), 2)
    idx = tokens(3)
    first = peft.forward(idx)
    peft.set_adapter("other")
    second = peft.forward(idx)
    alone = get_peft_model(gpt(), config())  # the second adapter on a model of its own
    for name, p in alone.named_parameters().items():
        if p.trainable:
            p.value[...] = peft.adapter_parameters("other")[name].value
    np.testing.assert_allclose(second, alone.forward(idx), rtol=1e-12, atol=1e-12)
    peft.set_adapter("default")
    np.testing.assert_array_equal(peft.forward(idx), first)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["default", "other"]))
def test_only_the_active_adapter_gets_gradients_and_they_match_finite_differences(seed, active):
    """Dropout on (masks fixed); the inactive adapter is made trainable on purpose, so that a
    gradient reaching it would be kept: its gradient is None and its finite differences 0."""
    peft = two_adapters(seed, lora_dropout=0.2)
    peft.set_adapter(active)
    inactive = peft.adapter_parameters("other" if active == "default" else "default")
    for p in inactive.values():
        p.trainable = True
    idx = tokens(seed)
    targets = np.random.default_rng(seed + 1).integers(0, TINY.vocab_size, idx.shape)
    loss = fixed_dropout_masks(cross_entropy_loss(peft, idx, targets), peft)
    report = check_gradients(loss, peft.adapter_parameters(active))
    assert set(report.errors) == set(peft.adapter_parameters(active))
    assert report.ok(1e-7), str(report)
    loss(True)
    for name, p in inactive.items():
        assert p.grad is None, name
        assert not numerical_gradient(lambda: loss(False), p.value).any(), name


# ------------------------------------------------------------------------------------------------
# disable, merge, delete


def test_disable_adapter_gives_the_base_output_and_restores_the_adapter_even_on_an_exception():
    idx = tokens(1)
    base = gpt().forward(idx)
    peft = two_adapters()
    adapted = peft.forward(idx)
    with peft.disable_adapter():
        np.testing.assert_array_equal(peft.forward(idx), base)
        assert not any(".lora_" in n for n in peft.named_parameters())
    np.testing.assert_array_equal(peft.forward(idx), adapted)
    with pytest.raises(KeyError, match="inside"), peft.disable_adapter():
        raise KeyError("inside")
    np.testing.assert_array_equal(peft.forward(idx), adapted)
    with peft.disable_adapter(), pytest.raises(RuntimeError, match="set_adapter: not inside"):
        peft.set_adapter("other")


def test_merge_adapter_keeps_the_output_and_unmerge_restores_w0():
    peft = two_adapters()
    idx = tokens(2)
    W0 = peft.get_submodule("h.0.attn.c_attn.base_layer").weight.value.copy()
    adapted = peft.forward(idx)
    peft.merge_adapter()
    assert peft.merged
    np.testing.assert_allclose(peft.forward(idx), adapted, rtol=1e-12, atol=1e-12)
    assert not np.allclose(peft.get_submodule("h.0.attn.c_attn.base_layer").weight.value, W0)
    peft.unmerge_adapter()
    assert not peft.merged
    np.testing.assert_allclose(
        peft.get_submodule("h.0.attn.c_attn.base_layer").weight.value, W0, rtol=0, atol=1e-14
    )


def test_set_adapter_and_disable_adapter_unmerge_a_merged_model_first():
    idx = tokens(4)
    base = gpt().forward(idx)
    peft = two_adapters()
    peft.set_adapter("other")
    other = peft.forward(idx)
    peft.set_adapter("default")
    peft.merge_adapter()
    with pytest.warns(UserWarning, match="unmerging it first"):
        peft.set_adapter("other")
    np.testing.assert_allclose(peft.forward(idx), other, rtol=1e-12, atol=1e-12)
    peft.merge_adapter()
    with peft.disable_adapter():
        np.testing.assert_allclose(peft.forward(idx), base, rtol=1e-12, atol=1e-12)
    assert not peft.merged


def test_deleting_the_active_adapter_hands_over_to_the_first_remaining_by_name():
    peft = two_adapters()
    peft.add_adapter("b", LoraConfig(r=2, target_modules=["c_fc"]))
    with pytest.warns(UserWarning, match="'default' was active; 'b' is now"):
        peft.delete_adapter("default")
    assert peft.active_adapter == "b" and list(peft.peft_configs) == ["other", "b"]
    assert {n for n, p in peft.named_parameters().items() if p.trainable} == set(
        peft.adapter_parameters("b")
    )
    assert not any("c_proj.lora" in n for n in peft.named_parameters())  # "default"'s are gone
    peft.delete_adapter("other")
    with pytest.raises(ValueError, match="adapter_name: 'b' is the only adapter"):
        peft.delete_adapter("b")
    with pytest.raises(ValueError, match=r"adapter_name: no adapter 'x'; the model has \['b'\]"):
        peft.delete_adapter("x")


def test_a_merged_model_refuses_to_delete_its_active_adapter_or_to_add_one():
    peft = two_adapters()
    peft.merge_adapter()
    with pytest.raises(ValueError, match="adapter_name: 'default' is merged"):
        peft.delete_adapter("default")
    with pytest.raises(RuntimeError, match="merged; unmerge_adapter"):
        peft.add_adapter("c", LoraConfig(r=2))
    peft.delete_adapter("other")  # an inactive adapter is not merged
    assert list(peft.peft_configs) == ["default"] and peft.merged


def test_a_method_that_changes_more_than_its_layers_holds_one_adapter_and_cannot_be_disabled():
    peft = get_peft_model(gpt(), PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(TypeError, match="disable_adapter: PromptTuningConfig"):
        with peft.disable_adapter():
            pass
    with pytest.raises(TypeError, match="peft_config: .* got PromptTuningConfig"):
        peft.add_adapter("other", PromptTuningConfig(num_virtual_tokens=2))


@pytest.mark.parametrize(
    ("name", "config", "error", "message"),
    [
        (
            "default",
            lambda: LoraConfig(r=2),
            ValueError,
            "adapter_name: an adapter 'default' exists",
        ),
        ("a/b", lambda: LoraConfig(r=2), ValueError, "adapter_name: expected letters"),
        ("x", lambda: AdaLoraConfig(total_step=10), TypeError, "peft_config: .* got AdaLoraConfig"),
        (
            "x",
            lambda: PromptTuningConfig(num_virtual_tokens=2),
            TypeError,
            "got PromptTuningConfig",
        ),
        ("x", lambda: IA3Config(), ValueError, "this model's are LORA, got IA3"),
        (
            "x",
            lambda: LoraConfig(init_lora_weights="pissa"),
            ValueError,
            "init_lora_weights: 'pissa'",
        ),
        ("x", lambda: LoraConfig(modules_to_save=["ln_f"]), ValueError, "modules_to_save"),
        (
            "x",
            lambda: LoraConfig(target_modules=["nope"]),
            ValueError,
            r"target_modules: \['nope'\]",
        ),
    ],
)
def test_add_adapter_refuses_what_one_model_cannot_hold_and_leaves_it_unchanged(
    name, config, error, message
):
    peft = two_adapters()
    idx = tokens(5)
    before = peft.forward(idx)
    names = list(peft.named_parameters())
    with pytest.raises(error, match=message):
        peft.add_adapter(name, config())
    assert (
        list(peft.peft_configs) == ["default", "other"] and list(peft.named_parameters()) == names
    )
    np.testing.assert_array_equal(peft.forward(idx), before)


# ------------------------------------------------------------------------------------------------
# add_weighted_adapter: the three formulas


def lora_factors(seed, ranks, d_in=5, d_out=7):
    rng = np.random.default_rng(seed)
    As = [rng.standard_normal((r, d_in)) for r in ranks]
    Bs = [rng.standard_normal((d_out, r)) for r in ranks]
    return As, Bs, list(rng.uniform(0.5, 2, len(ranks))), list(rng.uniform(-2, 2, len(ranks)))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.integers(1, 3), min_size=1, max_size=3))
def test_cat_is_the_exact_weighted_sum_at_the_summed_rank(seed, ranks):
    As, Bs, s, w = lora_factors(seed, ranks)
    A, B = cat_combination(As, Bs, s, w)
    assert A.shape[0] == B.shape[1] == sum(ranks)
    expected = sum(wi * si * Bi @ Ai for Ai, Bi, si, wi in zip(As, Bs, s, w, strict=True))
    np.testing.assert_allclose(B @ A, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 3), st.integers(1, 3))
def test_linear_adds_the_cross_terms_and_puts_the_sign_on_a_only(seed, r, n):
    As, Bs, s, w = lora_factors(seed, [r] * n)
    A, B = linear_combination(As, Bs, s, w)
    c = [wi * si for wi, si in zip(w, s, strict=True)]
    expected = sum(
        np.sqrt(abs(c[i])) * np.sign(c[j]) * np.sqrt(abs(c[j])) * Bs[i] @ As[j]
        for i in range(n)
        for j in range(n)
    )
    np.testing.assert_allclose(B @ A, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        B, sum(np.sqrt(abs(ci)) * Bi for ci, Bi in zip(c, Bs, strict=True)), rtol=1e-14
    )
    if n == 1:  # one adapter: exactly w·ΔW, whatever the sign of w
        np.testing.assert_allclose(B @ A, c[0] * Bs[0] @ As[0], rtol=1e-12, atol=1e-12)


def test_linear_refuses_adapters_of_different_ranks():
    As, Bs, s, w = lora_factors(0, [1, 2])
    with pytest.raises(ValueError, match=r"combination_type 'linear': .* ranks \[1, 2\]"):
        linear_combination(As, Bs, s, w)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 4))
def test_svd_is_the_best_rank_r_approximation_and_exact_at_full_rank(seed, rank):
    As, Bs, s, w = lora_factors(seed, [2, 2])
    exact = sum(wi * si * Bi @ Ai for Ai, Bi, si, wi in zip(As, Bs, s, w, strict=True))
    A, B = svd_combination(As, Bs, s, w, rank)
    assert A.shape == (rank, 5) and B.shape == (7, rank)
    S = np.linalg.svd(exact, compute_uv=False)
    # Eckart–Young: the Frobenius error of the best rank-r approximation is √(Σ of the rest S²)
    np.testing.assert_allclose(
        np.linalg.norm(exact - B @ A), np.sqrt(np.sum(S[rank:] ** 2)), atol=1e-10
    )
    np.testing.assert_allclose(A @ A.T, np.eye(rank), atol=1e-12)  # A: orthonormal rows (Vᵀ)
    if rank == 4:  # the sum of two rank-2 changes has rank ≤ 4
        np.testing.assert_allclose(B @ A, exact, rtol=1e-10, atol=1e-10)


def test_svd_clamp_clips_every_entry_to_the_quantile_of_all_entries():
    As, Bs, s, w = lora_factors(3, [2, 3])
    A0, B0 = svd_combination(As, Bs, s, w, 3)
    A, B = svd_combination(As, Bs, s, w, 3, clamp=0.9)
    hi = np.quantile(np.concatenate([B0.ravel(), A0.ravel()]), 0.9)
    np.testing.assert_array_equal(A, np.clip(A0, -hi, hi))
    np.testing.assert_array_equal(B, np.clip(B0, -hi, hi))
    assert (np.abs(B0) > hi).any()  # something was clipped


# ------------------------------------------------------------------------------------------------
# add_weighted_adapter on a model


@pytest.mark.parametrize(("combination", "rank"), [("cat", 5), ("svd", 3), ("svd", 5)])
def test_the_weighted_adapter_has_alpha_r_the_adapters_targets_and_their_weighted_sum(
    combination, rank
):
    peft = two_adapters()
    w = [0.7, -1.3]
    svd_rank = rank if combination == "svd" else None
    peft.add_weighted_adapter(["default", "other"], w, "mix", combination, svd_rank=svd_rank)
    cfg = peft.peft_configs["mix"]
    assert (cfg.r, cfg.lora_alpha, cfg.rank_pattern) == (rank, rank, {})
    assert cfg.target_modules == ["c_attn", "c_fc", "mlp.c_proj"]
    assert peft.active_adapter == "default"
    assert not any(p.trainable for p in peft.adapter_parameters("mix").values())
    layers = {a: peft.adapter_layers(a) for a in ("default", "other", "mix")}
    assert sorted(layers["mix"]) == sorted(set(layers["default"]) | set(layers["other"]))
    for module, layer in layers["mix"].items():
        assert layer.scaling == 1.0
        exact = sum(
            wi * delta(layers[a][module])
            for a, wi in zip(["default", "other"], w, strict=True)
            if module in layers[a]
        )
        if combination == "cat" or rank == 5:  # exact: ranks 2 + 3 fit in rank 5
            np.testing.assert_allclose(delta(layer), exact, rtol=1e-10, atol=1e-10)
        else:
            S = np.linalg.svd(exact, compute_uv=False)
            np.testing.assert_allclose(
                np.linalg.norm(exact - delta(layer)), np.sqrt(np.sum(S[rank:] ** 2)), atol=1e-10
            )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda p: p.add_weighted_adapter(["default", "other"], [1, 1], "m", "linear"),
            r"needs one rank, got \[2, 3\]",
        ),
        (
            lambda p: p.add_weighted_adapter(["default", "nope"], [1, 1], "m", "cat"),
            "adapters: no adapter 'nope'",
        ),
        (
            lambda p: p.add_weighted_adapter(["default"], [1, 1], "m", "cat"),
            "weights: expected 1 numbers",
        ),
        (
            lambda p: p.add_weighted_adapter(["default"], [float("nan")], "m", "cat"),
            "weights: expected finite",
        ),
        (
            lambda p: p.add_weighted_adapter(["default", "other"], [1, 1], "m", "ties"),
            "combination_type: expected one of",
        ),
        (
            lambda p: p.add_weighted_adapter(["default", "other"], [1, 1], "other", "cat"),
            "adapter_name: an adapter 'other' exists",
        ),
        (
            lambda p: p.add_weighted_adapter(["default", "other"], [1, 1], "m", "svd", svd_rank=0),
            "svd_rank: expected a positive",
        ),
        (
            lambda p: p.add_weighted_adapter(["default", "other"], [1, 1], "m", "svd", svd_clamp=2),
            "svd_clamp: expected a quantile",
        ),
        (
            lambda p: p.add_weighted_adapter([], [], "m", "cat"),
            r"adapters: expected a list of adapter names, got \[\]",
        ),
        (
            lambda p: p.add_weighted_adapter("default", [1], "m", "cat"),
            "adapters: expected a list of adapter names, got 'default'",
        ),
        (
            lambda p: (
                p.add_weighted_adapter(["default", "other"], [1, 1], "m", "cat")
                or p.add_weighted_adapter(["m", "m"], [1, 1], "n", "cat")  # rank 10 > 8
            ),
            r"r: expected a rank in \[1, min",
        ),
    ],
)
def test_add_weighted_adapter_refuses_what_peft_cannot_combine(call, message):
    peft = two_adapters()
    with pytest.raises(ValueError, match=message):
        call(peft)
    assert set(peft.peft_configs) <= {"default", "other", "m"}


def test_add_weighted_adapter_refuses_dora_and_a_regex_mixed_with_a_list():
    peft = get_peft_model(gpt(), LoraConfig(r=2, use_dora=True))
    peft.add_adapter("b", LoraConfig(r=2, use_dora=True))
    with pytest.raises(ValueError, match="adapters: 'default' is not a plain LoRA"):
        peft.add_weighted_adapter(["default", "b"], [1, 1], "m", "cat")
    peft = get_peft_model(gpt(), LoraConfig(r=2, target_modules=r"h\.0\.attn\.c_attn"))
    peft.add_adapter("b", LoraConfig(r=2, target_modules=["c_fc"]))
    with pytest.raises(ValueError, match="mix a regex and a list"):
        peft.add_weighted_adapter(["default", "b"], [1, 1], "m", "cat")


# ------------------------------------------------------------------------------------------------
# files: PEFT's layout, read back strictly


def saved_pair(tmp_path):
    peft = two_adapters()
    peft.save_pretrained(tmp_path / "saved")
    return peft, tmp_path / "saved"


def test_several_adapters_are_saved_in_pefts_layout_and_read_back_with_the_same_logits(tmp_path):
    peft, folder = saved_pair(tmp_path)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert files == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "other",
        "other/adapter_config.json",
        "other/adapter_model.safetensors",
    ]
    assert json.loads((folder / "other" / "adapter_config.json").read_text())["r"] == 3
    loaded = PeftModel.from_pretrained_all(gpt(), folder)
    assert loaded.active_adapter == "default" and list(loaded.peft_configs) == ["default", "other"]
    assert not any(p.trainable for p in loaded.named_parameters().values())
    idx = tokens(6)
    for name in ("default", "other"):
        peft.set_adapter(name)
        loaded.set_adapter(name)
        np.testing.assert_array_equal(loaded.forward(idx), peft.forward(idx))


def missing_weights(folder):
    (folder / "other" / "adapter_model.safetensors").unlink()


def stray_folder(folder):
    (folder / "notes").mkdir()


def default_sub_folder(folder):
    (folder / "other").rename(folder / "default")


def badly_named(folder):
    (folder / "other").rename(folder / "other adapter")


def shape_mismatch(folder):  # a config that says r=2 over tensors of rank 3
    path = folder / "other" / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "r": 2}))
    as_if_written_elsewhere(folder / "other" / "adapter_model.safetensors")


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (missing_weights, MissingFileError, "other/adapter_model.safetensors.*every sub-folder"),
        (stray_folder, MissingFileError, "notes/adapter_config.json"),
        (default_sub_folder, FileFormatError, "default.*no adapter PEFT would write"),
        (badly_named, FileFormatError, "other adapter.*no adapter PEFT would write"),
        (shape_mismatch, FileFormatError, "expected shape"),
    ],
)
def test_reading_a_folder_of_adapters_is_strict_and_a_failure_leaves_the_model_as_it_was(
    tmp_path, damage, error, message
):
    _, folder = saved_pair(tmp_path)
    damage(folder)
    model = gpt()
    idx = tokens(7)
    before, names = model.forward(idx), list(model.named_parameters())
    with pytest.raises(error, match=message):
        PeftModel.from_pretrained_all(model, folder)
    assert list(model.named_parameters()) == names
    assert all(p.trainable for p in model.parameters())
    np.testing.assert_array_equal(model.forward(idx), before)


def test_an_empty_folder_holds_no_adapter(tmp_path):
    with pytest.raises(MissingFileError, match="no adapter in this folder"):
        PeftModel.from_pretrained_all(gpt(), tmp_path)


def test_load_adapter_adds_an_inactive_adapter_and_a_bad_one_adds_nothing(tmp_path):
    peft, folder = saved_pair(tmp_path)
    fresh = get_peft_model(gpt(), LoraConfig(r=1, target_modules=["c_fc"]))
    fresh.load_adapter(folder / "other", "other", is_trainable=True)
    assert fresh.active_adapter == "default" and fresh.training
    assert all(p.trainable for p in fresh.adapter_parameters("other").values())
    fresh.load_adapter(folder, "first")  # for inference: frozen, and dropout off
    assert not fresh.training
    assert not any(p.trainable for p in fresh.adapter_parameters("first").values())
    fresh.set_adapter("other")
    peft.set_adapter("other")
    np.testing.assert_array_equal(fresh.forward(tokens(8)), peft.forward(tokens(8)))
    shape_mismatch(folder)
    with pytest.raises(FileFormatError, match="expected shape"):
        fresh.load_adapter(folder / "other", "again")
    with pytest.raises(FileFormatError, match="peft_type"):
        get_peft_model(gpt(), IA3Config()).load_adapter(folder, "lora")
    assert list(fresh.peft_configs) == ["default", "other", "first"]


# ------------------------------------------------------------------------------------------------
# against PEFT 0.21 (reference)


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def peft_lora(peft_lib, **fields):
    """PEFT's LoraConfig for GPT-2's Conv1D layers."""
    return peft_lib.LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=True, **fields)


def randomize_torch(torch, model, adapter, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{adapter}." in name and "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def hf_logits(torch, hf, idx):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(idx)).logits.numpy()


FIRST = {"r": 2, "lora_alpha": 4, "target_modules": ["c_attn", "mlp.c_proj"]}
SECOND = {"r": 2, "lora_alpha": 6, "target_modules": ["c_attn", "c_fc"]}


def peft_pair(tmp_path):
    """PEFT's GPT-2 with two random LoRA adapters, "default" and "other", saved by PEFT."""
    torch, _, peft_lib = import_references()
    model = gpt(9)
    hf = hf_gpt2(model, tmp_path / "base")
    with quiet():
        hf = peft_lib.get_peft_model(hf, peft_lora(peft_lib, **FIRST))
        hf.add_adapter("other", peft_lora(peft_lib, **SECOND))
    randomize_torch(torch, hf, "default", 2)
    randomize_torch(torch, hf, "other", 3)
    hf.eval()
    hf.save_pretrained(tmp_path / "peft")
    return torch, peft_lib, model, hf


@pytest.mark.reference
def test_two_peft_written_adapters_give_pefts_logits_per_adapter_in_one_minift_model(tmp_path):
    torch, _, model, hf = peft_pair(tmp_path)
    ours = PeftModel.from_pretrained_all(model, tmp_path / "peft")
    assert list(ours.peft_configs) == ["default", "other"]
    idx = tokens(10)
    for name in ("default", "other"):
        hf.set_adapter(name)
        ours.set_adapter(name)
        np.testing.assert_allclose(ours.forward(idx), hf_logits(torch, hf, idx), rtol=TOL, atol=TOL)


@pytest.mark.reference
@pytest.mark.parametrize("combination", ["linear", "cat", "svd"])
def test_add_weighted_adapter_equals_pefts(tmp_path, combination):
    torch, _, model, hf = peft_pair(tmp_path)
    ours = PeftModel.from_pretrained_all(model, tmp_path / "peft")
    # PEFT holds the weights (and "linear"'s √|wᵢ·sᵢ|) in torch.tensor(...), float32 by torch's
    # default, rounding them; these are exact in float32 (s = 2 and 3: √|w·s| = 1 and 1.5), so
    # that both sides compute with the same numbers
    weights = [0.5, -0.75]
    with quiet():
        hf.add_weighted_adapter(["default", "other"], weights, "mix", combination_type=combination)
    ours.add_weighted_adapter(["default", "other"], weights, "mix", combination_type=combination)
    theirs = hf.peft_config["mix"]
    cfg = ours.peft_configs["mix"]
    assert (cfg.r, cfg.lora_alpha) == (theirs.r, theirs.lora_alpha)
    assert sorted(cfg.target_modules) == sorted(theirs.target_modules)
    for module, layer in ours.adapter_layers("mix").items():
        hf_layer = hf.get_submodule(f"base_model.model.transformer.{module}")
        A = hf_layer.lora_A["mix"].weight.detach().numpy()
        B = hf_layer.lora_B["mix"].weight.detach().numpy()
        assert layer.scaling == hf_layer.scaling["mix"] == 1.0
        # SVD's singular vectors carry arbitrary signs: B·A is what both must agree on
        np.testing.assert_allclose(delta(layer), B @ A, rtol=TOL, atol=TOL)
        if combination != "svd":
            np.testing.assert_allclose(layer.lora_A.value, A, rtol=TOL, atol=TOL)
            np.testing.assert_allclose(layer.lora_B.value, B, rtol=TOL, atol=TOL)
    hf.set_adapter("mix")
    ours.set_adapter("mix")
    idx = tokens(11)
    np.testing.assert_allclose(ours.forward(idx), hf_logits(torch, hf, idx), rtol=TOL, atol=TOL)


@pytest.mark.reference
def test_minifts_folder_of_several_adapters_loads_in_peft_with_the_same_logits(tmp_path):
    torch, _, peft_lib = import_references()
    model = gpt(12)
    hf = hf_gpt2(model, tmp_path / "base")
    peft = get_peft_model(model, LoraConfig(**FIRST))
    peft.add_adapter("other", LoraConfig(**SECOND))
    randomize_params(peft.adapter_parameters("default"), 13)
    randomize_params(peft.adapter_parameters("other"), 14)
    peft.save_pretrained(tmp_path / "ours")
    with quiet():
        theirs = peft_lib.PeftModel.from_pretrained(hf.eval(), tmp_path / "ours")
        theirs.load_adapter(tmp_path / "ours" / "other", adapter_name="other")
    idx = tokens(15)
    for name in ("default", "other"):
        theirs.set_adapter(name)
        peft.set_adapter(name)
        np.testing.assert_allclose(
            hf_logits(torch, theirs, idx), peft.forward(idx), rtol=TOL, atol=TOL
        )


def _base_weights(peft):
    return {
        name: p.value.copy()
        for name, p in peft.named_parameters().items()
        if "base_layer" in name and name.endswith("weight")
    }


def test_a_merge_that_fails_midway_takes_back_the_layers_it_merged():
    """The last adapted layer's ΔW is not finite (a B that diverged): merge_adapter refuses it,
    and the layers merged before it are unmerged, so every base weight is what it was."""
    peft = two_adapters(seed=3)
    before = _base_weights(peft)
    layers = [m for _, m in peft.named_modules() if hasattr(m, "lora_B") and not m.merged]
    assert len(layers) == 4  # c_attn and mlp.c_proj in each of the 2 blocks
    layers[-1].lora_B.value[0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        peft.merge_adapter()
    assert not peft.merged and not any(layer.merged for layer in layers)
    after = _base_weights(peft)
    for name, value in before.items():  # unmerged again: W0 + ΔW − ΔW, to rounding
        np.testing.assert_allclose(after[name], value, rtol=0, atol=1e-13, err_msg=name)
    layers[-1].lora_B.value[...] = 0.0
    peft.merge_adapter()  # with a finite ΔW it merges
    assert peft.merged


def test_merging_twice_or_unmerging_an_unmerged_model_warns_and_changes_nothing():
    peft = two_adapters(seed=4)
    with pytest.warns(UserWarning, match="unmerge_adapter: not merged; nothing to do"):
        peft.unmerge_adapter()
    peft.merge_adapter()
    merged = _base_weights(peft)
    with pytest.warns(UserWarning, match="merge_adapter: already merged; nothing to do"):
        peft.merge_adapter()
    for name, value in _base_weights(peft).items():
        np.testing.assert_array_equal(value, merged[name], err_msg=name)  # not merged twice


def test_disable_adapter_nested_stays_disabled_until_the_outer_block_ends():
    peft = two_adapters(seed=5)
    idx = tokens(6)
    adapted = peft.forward(idx)
    with peft.disable_adapter():
        base = peft.forward(idx)
        with peft.disable_adapter():
            np.testing.assert_array_equal(peft.forward(idx), base)
        np.testing.assert_array_equal(peft.forward(idx), base)  # the inner end changed nothing
    np.testing.assert_array_equal(peft.forward(idx), adapted)
    assert not np.allclose(base, adapted)


def test_merge_adapter_of_a_method_that_cannot_merge_is_a_type_error():
    peft = get_peft_model(gpt(0), PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(TypeError, match="merge_adapter: "):
        peft.merge_adapter()


def test_a_combination_that_fails_midway_leaves_no_half_made_adapter(monkeypatch):
    """The new adapter is added first, then filled layer by layer: an error in a later layer
    deletes it again, so the model has the adapters, the active one and the output it had."""
    from minift.peft import weighted_adapter

    peft = two_adapters(seed=6)
    idx = tokens(7)
    before = peft.forward(idx)
    calls = []
    combined = weighted_adapter._combined

    def fails_at_the_third_layer(*args):
        calls.append(1)
        if len(calls) == 3:
            raise FloatingPointError("overflow in the third layer")
        return combined(*args)

    monkeypatch.setattr(weighted_adapter, "_combined", fails_at_the_third_layer)
    with pytest.raises(FloatingPointError, match="third layer"):
        peft.add_weighted_adapter(["default", "other"], [1, 1], "mix", "cat")
    assert len(calls) == 3 and sorted(peft.peft_configs) == ["default", "other"]
    assert peft.active_adapter == "default"
    np.testing.assert_array_equal(peft.forward(idx), before)
    monkeypatch.setattr(weighted_adapter, "_combined", combined)
    peft.add_weighted_adapter(["default", "other"], [1, 1], "mix", "cat")  # the name is free
    assert sorted(peft.peft_configs) == ["default", "mix", "other"]


def test_regex_targets_are_joined_and_each_layer_combines_the_adapters_that_adapt_it():
    peft = get_peft_model(gpt(7), LoraConfig(r=2, lora_alpha=4, target_modules=r".*\.c_attn"))
    peft.add_adapter("mlp", LoraConfig(r=2, lora_alpha=4, target_modules=r".*\.c_fc"))
    randomize_params(peft.adapter_parameters("default"), 8)
    randomize_params(peft.adapter_parameters("mlp"), 9)
    peft.add_weighted_adapter(["default", "mlp"], [1, 1], "both", "cat")
    assert peft.peft_configs["both"].target_modules == r"(.*\.c_attn)|(.*\.c_fc)"
    layers = {a: peft.adapter_layers(a) for a in ("default", "mlp", "both")}
    assert sorted(layers["both"]) == sorted([*layers["default"], *layers["mlp"]])
    for module, layer in layers["both"].items():  # one source per layer: its ΔW, exactly
        source = layers["default" if module in layers["default"] else "mlp"][module]
        np.testing.assert_allclose(delta(layer), delta(source), rtol=1e-12, atol=1e-12)
