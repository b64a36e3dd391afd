"""BitFit: every claim of minift/peft/bitfit.py's docstring."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.gradcheck import check_gradients, cross_entropy_loss, randomize_params
from minift.optim import AdamW
from minift.peft import PeftModel, count_parameters, get_peft_model
from minift.peft.bitfit import BitFitConfig

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)


def tiny_model(seed=0, config=TINY, dtype=np.float64):
    model = minift.GPT(config, seed=seed, dtype=dtype)
    randomize_params(model.named_parameters(), seed)  # every bias away from 0, too
    return model


def trainable(model):
    return {n: p for n, p in model.named_parameters().items() if p.trainable}


def batch(seed, B=2, T=6, V=11):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


@settings(max_examples=3, deadline=None)
@given(seeds)
def test_every_bias_matches_finite_differences(seed):
    peft_model = get_peft_model(tiny_model(seed), BitFitConfig())
    idx, targets = batch(seed)
    report = check_gradients(
        cross_entropy_loss(peft_model, idx, targets), peft_model.named_parameters()
    )
    assert set(report.errors) == set(trainable(peft_model))
    assert len(report.errors) == 6 * TINY.n_layer + 1  # 4 Linear + 2 LayerNorm biases, ln_f
    assert report.ok(TOL), str(report)


@settings(max_examples=5, deadline=None)
@given(seeds)
def test_bitfit_at_init_gives_the_base_output(seed):
    idx, _ = batch(seed)
    model = tiny_model(seed % 5)
    base = model.forward(idx)
    np.testing.assert_array_equal(get_peft_model(model, BitFitConfig()).forward(idx), base)


def test_only_the_biases_train_and_no_layer_is_added():
    model = tiny_model(0)
    names = list(model.named_parameters())
    peft_model = get_peft_model(model, BitFitConfig())
    assert list(peft_model.named_parameters()) == names  # nothing wrapped, nothing added
    assert set(trainable(peft_model)) == {n for n in names if n.endswith(".bias")}
    linear_only = get_peft_model(tiny_model(0), BitFitConfig(include_layer_norm=False))
    assert not any(".ln_" in n for n in trainable(linear_only))


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.sampled_from([(1, 4), (2, 4), (2, 8), (3, 6)]))
def test_trainable_count_is_the_closed_form(L, heads_and_C):
    n_head, C = heads_and_C
    config = minift.GPTConfig(vocab_size=7, block_size=4, n_layer=L, n_head=n_head, d_model=C)
    linear_biases = L * (3 * C + C + 4 * C + C)  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    layer_norm_biases = (2 * L + 1) * C  # ln_1, ln_2 per block, ln_f
    peft_model = get_peft_model(minift.GPT(config), BitFitConfig())
    assert count_parameters(peft_model).trainable == linear_biases + layer_norm_biases
    assert linear_biases + layer_norm_biases == (11 * L + 1) * C
    peft_model = get_peft_model(minift.GPT(config), BitFitConfig(include_layer_norm=False))
    assert count_parameters(peft_model).trainable == linear_biases
    peft_model = get_peft_model(minift.GPT(config), BitFitConfig(target_modules=["mlp.c_fc"]))
    assert count_parameters(peft_model).trainable == L * 4 * C


def test_frozen_params_are_bit_identical_after_20_steps_of_training():
    peft_model = get_peft_model(tiny_model(3), BitFitConfig())
    frozen = {
        n: p.value.copy() for n, p in peft_model.named_parameters().items() if not p.trainable
    }
    biases = {n: p.value.copy() for n, p in trainable(peft_model).items()}
    opt = AdamW(peft_model.named_parameters(), lr=1e-2)
    idx, targets = batch(3)
    loss = cross_entropy_loss(peft_model, idx, targets)
    for _ in range(20):
        loss(True)
        opt.step()
    assert frozen and all(".weight" in n for n in frozen)
    for name, value in frozen.items():
        np.testing.assert_array_equal(peft_model.named_parameters()[name].value, value)
    assert all(not np.array_equal(trainable(peft_model)[n].value, v) for n, v in biases.items())


def test_merge_and_unload_returns_the_same_model_all_trainable():
    model = tiny_model(2)
    peft_model = get_peft_model(model, BitFitConfig())
    idx, targets = batch(2)
    opt = AdamW(peft_model.named_parameters(), lr=1e-2)
    for _ in range(3):
        cross_entropy_loss(peft_model, idx, targets)(True)
        opt.step()
    adapted = peft_model.forward(idx)
    merged = peft_model.merge_and_unload()
    assert merged is model
    np.testing.assert_array_equal(merged.forward(idx), adapted)
    assert all(p.trainable for p in merged.parameters())


def test_saved_biases_load_back(tmp_path):
    peft_model = get_peft_model(tiny_model(1), BitFitConfig(include_layer_norm=False))
    for p in trainable(peft_model).values():
        p.value += 1.0
    idx, _ = batch(1)
    adapted = peft_model.forward(idx)
    peft_model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(1), tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), adapted)
    assert isinstance(loaded.peft_config, BitFitConfig)
    assert not loaded.peft_config.include_layer_norm


def test_a_short_training_run_lowers_the_loss():
    peft_model = get_peft_model(tiny_model(4, dtype=np.float32), BitFitConfig())
    opt = AdamW(peft_model.named_parameters(), lr=5e-2)
    idx, targets = batch(4, B=4, T=8)
    loss = cross_entropy_loss(peft_model, idx, targets)
    first = loss(True)
    for _ in range(40):
        opt.step()
        last = loss(True)
    assert last < 0.8 * first, (first, last)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_include_layer_norm_not_a_bool_is_a_type_error():
    with pytest.raises(TypeError, match="include_layer_norm: expected True or False, got 'yes'"):
        BitFitConfig(include_layer_norm="yes")


def test_target_modules_without_a_bias_is_a_value_error():
    with pytest.raises(ValueError, match=r"target_modules: BitFit found no bias .*\['wte'\]"):
        get_peft_model(tiny_model(0), BitFitConfig(target_modules=["wte"]))


def test_target_modules_matching_nothing_is_a_value_error():
    with pytest.raises(ValueError, match=r"target_modules: \['q_proj'\] matched no Module"):
        get_peft_model(tiny_model(0), BitFitConfig(target_modules=["q_proj"]))
