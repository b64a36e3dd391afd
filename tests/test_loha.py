"""LoHa (peft/loha.py): every claim of its docstring, PEFT's file format, and PEFT itself."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from helpers import (
    as_if_written_elsewhere,
    hf_gpt2_with_linears,
    import_references,
    torch_loss_and_grads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.errors import FileFormatError
from minift.gradcheck import (
    check_gradients,
    check_pair,
    cross_entropy_loss,
    fixed_dropout_masks,
    randomize_params,
)
from minift.optim import AdamW
from minift.peft import LoHaConfig, LoHaLinear, PeftModel, count_parameters, get_peft_model
from minift.peft.loha import loha_backward, loha_delta_weight, loha_forward

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
seeds = st.integers(0, 2**31 - 1)


def tiny_gpt(seed=0, dtype=np.float64, config=TINY):
    model = minift.GPT(config, seed=seed, dtype=dtype)
    if dtype == np.float64:
        randomize_params(model.named_parameters(), seed)  # a "pretrained" point, not the init
    return model


def trainable(model):
    return {n: p for n, p in model.named_parameters().items() if p.trainable}


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def loha_layers(peft_model):
    return [m for _, m in peft_model.named_modules() if isinstance(m, LoHaLinear)]


# -- the pure functions ---------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.booleans())
def test_loha_pair_matches_finite_differences(seed, r, d_in, d_out, has_bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, d_in))
    W0 = rng.standard_normal((d_in, d_out))
    b = rng.standard_normal(d_out) if has_bias else None
    factors = [rng.standard_normal(shape) for shape in [(d_out, r), (r, d_in)] * 2]

    def backward(dy, cache):  # in the order of the inputs: x, W0, (b,) then the four factors
        dx, *dfactors, dW0, db = loha_backward(dy, cache, need_base_grads=True)
        return (dx, dW0, *([db] if has_bias else []), *dfactors)

    report = check_pair(loha_forward, backward, [x, W0, b, *factors, 0.7], rng=seed)
    assert len(report.errors) == 6 + has_bias
    assert report.ok(TOL), str(report)


def test_frozen_base_gets_no_weight_gradient_but_dx_flows():
    rng = np.random.default_rng(0)
    x, W0, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    factors = [rng.standard_normal(shape) for shape in [(3, 2), (2, 5)] * 2]
    y, cache = loha_forward(x, W0, b, *factors, 0.5)
    dx, *_, dW0, db = loha_backward(np.ones_like(y), cache)
    assert dW0 is None and db is None
    W = W0 + loha_delta_weight(*factors, 0.5).T  # dx goes through W₀ + ΔWᵀ, not W₀ alone
    np.testing.assert_allclose(dx, np.ones_like(y) @ W.T, rtol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(1, 3))
def test_the_hadamard_product_of_two_rank_r_products_reaches_rank_r_squared(seed, r):
    rng = np.random.default_rng(seed)
    d_out, d_in = 12, 10
    factors = [rng.standard_normal(shape) for shape in [(d_out, r), (r, d_in)] * 2]
    delta = loha_delta_weight(*factors, 1.0)
    assert np.linalg.matrix_rank(factors[0] @ factors[1]) == r
    assert np.linalg.matrix_rank(delta) == r * r  # FedPara's point: rank r², 2r(in + out) numbers


# -- the whole model ------------------------------------------------------------------------------


@settings(max_examples=3, deadline=None)
@given(seeds, st.floats(0.1, 0.5))
def test_every_loha_factor_matches_finite_differences_with_the_gpts_dropout_on(seed, p):
    """Through the whole model, dropout active with its masks held fixed: a layer's dx reaches
    the factors of the layers below it, and no frozen weight gets a gradient."""
    config = LoHaConfig(r=2, alpha=3, target_modules=["c_attn", "c_fc"])
    peft = get_peft_model(tiny_gpt(seed, config=replace(TINY, dropout=p)), config, seed=seed)
    randomize_params(trainable(peft), seed + 1)  # hada_w2_b = 0 would zero three gradients
    loss = fixed_dropout_masks(cross_entropy_loss(peft, *batch(seed)), peft)
    report = check_gradients(loss, peft.named_parameters())
    assert set(report.errors) == set(trainable(peft))
    assert len(report.errors) == 4 * 2 * TINY.n_layer
    assert report.ok(TOL), str(report)
    frozen = [p for p in peft.named_parameters().values() if not p.trainable]
    assert all(p.grad is None for p in frozen)


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_loha_at_init_gives_the_base_output_bit_for_bit(seed):
    idx, _ = batch(seed)
    model = tiny_gpt(seed % 5)
    base = model.forward(idx)
    peft = get_peft_model(model, LoHaConfig(r=2, target_modules=["c_attn", "mlp.c_proj"]))
    for layer in loha_layers(peft):
        assert not layer.hada_w2_b.value.any()  # W₂ᵦ = 0, the other three random
        assert all(layer.param(n).value.all() for n in FACTORS[:3])
    np.testing.assert_array_equal(peft.forward(idx), base)


def test_only_w2_b_moves_on_the_first_step():
    peft = get_peft_model(tiny_gpt(1), LoHaConfig(r=2))
    cross_entropy_loss(peft, *batch(1))(True)
    layer = loha_layers(peft)[0]
    assert np.abs(layer.hada_w2_b.grad).max() > 1e-6  # s·W₂ₐᵀ·(G ⊙ P₁)
    assert all(not layer.param(n).grad.any() for n in FACTORS[:3])  # each is a multiple of P₂


def test_init_weights_false_draws_every_factor_and_changes_the_output():
    idx, _ = batch(2)
    model = tiny_gpt(2)
    base = model.forward(idx)
    peft = get_peft_model(model, LoHaConfig(r=2, init_weights=False))
    assert all(layer.hada_w2_b.value.all() for layer in loha_layers(peft))
    assert not np.allclose(peft.forward(idx), base)


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_merged_loha_model_equals_the_unmerged_one(seed):
    idx, _ = batch(seed)
    model = tiny_gpt(seed % 5)
    n_base = count_parameters(model).total
    peft = get_peft_model(model, LoHaConfig(r=2, target_modules=["c_attn", "c_fc"]))
    randomize_params(trainable(peft), seed)
    adapted = peft.forward(idx)
    merged = peft.merge_and_unload()
    np.testing.assert_allclose(merged.forward(idx), adapted, rtol=0, atol=1e-12)
    assert not any("hada" in name for name in merged.named_parameters())
    assert count_parameters(merged).total == n_base


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_merge_then_unmerge_restores_the_base_weights(seed):
    peft = get_peft_model(tiny_gpt(seed % 5), LoHaConfig(r=2))
    randomize_params(trainable(peft), seed)
    layers = loha_layers(peft)
    before = [m.base_layer.weight.value.copy() for m in layers]
    for m in layers:
        m.merge()
    assert not np.array_equal(layers[0].base_layer.weight.value, before[0])
    for m, W in zip(layers, before, strict=True):
        m.unmerge()
        np.testing.assert_allclose(m.base_layer.weight.value, W, rtol=0, atol=1e-12)


def test_frozen_params_are_bit_identical_after_20_steps_of_training():
    peft = get_peft_model(tiny_gpt(3), LoHaConfig(r=2, target_modules=["c_attn", "c_fc"]))
    frozen = {n: p.value.copy() for n, p in peft.named_parameters().items() if not p.trainable}
    factors = {n: p.value.copy() for n, p in trainable(peft).items()}
    opt = AdamW(peft.named_parameters(), lr=1e-2)
    loss = cross_entropy_loss(peft, *batch(3))
    first = loss(True)
    for _ in range(20):
        opt.step()
        last = loss(True)
    for name, value in frozen.items():
        np.testing.assert_array_equal(peft.named_parameters()[name].value, value)
    assert all(not np.array_equal(trainable(peft)[n].value, v) for n, v in factors.items())
    assert last < first


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.sampled_from([(1, 4), (2, 4), (2, 8)]), st.integers(1, 4))
def test_trainable_count_is_the_closed_form(L, heads_and_C, r):
    n_head, C = heads_and_C
    r = min(r, C)
    config = minift.GPTConfig(vocab_size=7, block_size=4, n_layer=L, n_head=n_head, d_model=C)
    targets = ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    peft = get_peft_model(minift.GPT(config), LoHaConfig(r=r, target_modules=targets))
    linears = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
    assert count_parameters(peft).trainable == L * sum(2 * r * (i + o) for i, o in linears)


def test_rank_pattern_and_alpha_pattern_set_each_layers_r_and_scale():
    config = LoHaConfig(r=2, alpha=4, rank_pattern={"h.1.attn.c_attn": 3},
                        alpha_pattern={"c_attn": 9})  # fmt: skip
    peft = get_peft_model(tiny_gpt(0), config)
    first, second = (peft.get_submodule(f"h.{i}.attn.c_attn") for i in range(2))
    assert (first.r, first.scaling) == (2, 9 / 2)
    assert (second.r, second.scaling, second.hada_w1_a.shape) == (3, 9 / 3, (24, 3))


# -- PEFT's file format ---------------------------------------------------------------------------


def test_saved_file_has_peft_keys_and_shapes_and_loads_back(tmp_path):
    peft = get_peft_model(tiny_gpt(5), LoHaConfig(r=2, alpha=3, target_modules=["c_attn"]))
    randomize_params(trainable(peft), 5)
    idx, _ = batch(5)
    adapted = peft.forward(idx)
    peft.save_pretrained(tmp_path)
    C = TINY.d_model
    shapes = {"hada_w1_a": (3 * C, 2), "hada_w1_b": (2, C), "hada_w2_a": (3 * C, 2),
              "hada_w2_b": (2, C)}  # fmt: skip
    assert {k: v.shape for k, v in peft.adapter_state_dict().items()} == {
        f"base_model.model.transformer.h.{i}.attn.c_attn.{name}": shape
        for i in range(TINY.n_layer)
        for name, shape in shapes.items()
    }
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["r"], saved["alpha"]) == ("LOHA", 2, 3)
    loaded = PeftModel.from_pretrained(tiny_gpt(5), tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), adapted)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rank_dropout", 1.0, "expected a probability in [0, 1), got 1.0"),
        ("module_dropout", -0.5, "expected a probability in [0, 1), got -0.5"),
        ("r", 0, "expected a positive integer rank, got 0"),
        ("alpha", -2, "expected a number > 0, got -2"),
        ("init_weights", "lycoris", "expected true or false"),
    ],
)
def test_a_file_with_a_field_minift_cannot_honour_names_the_file_and_the_field(
    tmp_path, field, value, message
):
    get_peft_model(tiny_gpt(6), LoHaConfig(r=2)).save_pretrained(tmp_path)
    as_if_written_elsewhere(tmp_path / "adapter_model.safetensors")
    config_file = tmp_path / "adapter_config.json"
    raw = json.loads(config_file.read_text())
    raw[field] = value
    config_file.write_text(json.dumps(raw))
    model = tiny_gpt(6)
    with pytest.raises(FileFormatError, match=re.escape(message)) as err:
        PeftModel.from_pretrained(model, tmp_path)
    assert "adapter_config.json" in str(err.value) and field in str(err.value)
    assert not any("hada" in n for n in model.named_parameters())  # the model is untouched


def test_a_file_for_a_wider_model_is_refused_by_tensor_name(tmp_path):
    get_peft_model(tiny_gpt(), LoHaConfig(r=2)).save_pretrained(tmp_path)
    wider = minift.GPT(replace(TINY, d_model=12), dtype=np.float64)
    with pytest.raises(FileFormatError, match=r"w1_a: expected shape \(36, 2\), got \(24, 2\)"):
        PeftModel.from_pretrained(wider, tmp_path)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"r": 0}, ValueError, "r: expected a positive integer rank, got 0"),
        ({"r": 2.5}, ValueError, "r: expected a positive integer rank, got 2.5"),
        ({"alpha": float("nan")}, ValueError, "alpha: expected a finite number > 0, got nan"),
        ({"alpha": "8"}, TypeError, "alpha: expected a number, got '8'"),
        (
            {"rank_dropout": 1.5},
            ValueError,
            r"rank_dropout: expected a probability in \[0, 1\), got 1.5",
        ),
        ({"module_dropout": -0.2}, ValueError, r"module_dropout: expected .*\[0, 1\), got -0.2"),
        ({"init_weights": "lycoris"}, TypeError, "init_weights: expected True or False"),
        ({"use_effective_conv2d": 1}, TypeError, "use_effective_conv2d: expected True or False"),
        ({"rank_pattern": {"c_attn": 0}}, ValueError, "rank_pattern: 'c_attn': expected a pos"),
        ({"alpha_pattern": {"c_(": 2}}, re.error, r"alpha_pattern: 'c_\(': not a valid"),
        ({"layers_pattern": "h"}, ValueError, "layers_pattern: needs layers_to_transform"),
        ({"exclude_modules": 3}, TypeError, "exclude_modules: expected a regex string or a list"),
        ({"target_modules": 3}, TypeError, "target_modules: expected a regex string or a list"),
    ],
)
def test_bad_config_is_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LoHaConfig(**kwargs)


def test_rank_larger_than_the_matrix_is_refused():
    with pytest.raises(ValueError, match=r"r: expected a rank in \[1, min\(in, out\)\] = \[1, 8\]"):
        get_peft_model(tiny_gpt(), LoHaConfig(r=9))


def test_unknown_target_module_lists_what_exists():
    with pytest.raises(ValueError, match=r"\['q_proj'\] matched no Linear module"):
        get_peft_model(tiny_gpt(), LoHaConfig(target_modules=["c_attn", "q_proj"]))


# -- PEFT itself ----------------------------------------------------------------------------------


@pytest.mark.reference
def test_loha_trained_in_hugging_face_peft_loads_in_minift_with_equal_logits_and_gradients(
    tmp_path,
):
    torch, _, peft_lib = import_references()
    model = tiny_gpt(8)
    hf = hf_gpt2_with_linears(model, tmp_path / "base")
    theirs = peft_lib.LoHaConfig(r=2, alpha=3, target_modules=["c_attn", "mlp.c_proj"],
                                 init_weights=False)  # fmt: skip
    hf = peft_lib.get_peft_model(hf, theirs)
    idx, targets = batch(8)
    expected, expected_grads = torch_loss_and_grads(torch, hf, idx, targets)
    hf.save_pretrained(tmp_path / "adapter")
    peft = PeftModel.from_pretrained(tiny_gpt(8), tmp_path / "adapter", is_trainable=True)
    np.testing.assert_allclose(peft.forward(idx), expected, rtol=0, atol=1e-10)
    cross_entropy_loss(peft, idx, targets)(True)
    ours = {peft.peft_config.peft_key(n): p.grad for n, p in trainable(peft).items()}
    assert ours.keys() == expected_grads.keys() and len(ours) == 4 * 2 * TINY.n_layer
    for key, grad in ours.items():
        np.testing.assert_allclose(grad, expected_grads[key], rtol=0, atol=1e-8, err_msg=key)


@pytest.mark.reference
def test_loha_written_by_minift_loads_in_hugging_face_peft_with_equal_logits(tmp_path):
    torch, _, peft_lib = import_references()
    model = tiny_gpt(9)
    hf = hf_gpt2_with_linears(model, tmp_path / "base")
    peft = get_peft_model(model, LoHaConfig(r=2, alpha=5, target_modules=["c_attn", "c_fc"]))
    randomize_params(trainable(peft), 9)
    idx, _ = batch(9)
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    fields = set(peft_lib.LoHaConfig.__dataclass_fields__)
    assert set(saved) <= fields, sorted(set(saved) - fields)  # PEFT would warn and drop others
    hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
    with torch.no_grad():
        got = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    adapted = {n.split(".hada_")[0].removeprefix("base_model.model.transformer.")
               for n, _ in hf.named_parameters() if ".hada_" in n}  # fmt: skip
    assert sorted(adapted) == sorted(peft._tuner_layers())
