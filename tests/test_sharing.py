"""Parameter sharing, A3 (peft/sharing.py): every claim of its docstring, checked."""

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.gradcheck import check_gradients, cross_entropy_loss, randomize_params
from minift.optim import AdamW
from minift.peft.base import PeftModel, get_peft_model
from minift.peft.counting import count_parameters
from minift.peft.sharing import MLP_SUFFIXES, SharingConfig, share_across_blocks, tie_parameters

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
THREE = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, d_model=4)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)


def tiny_gpt(seed=0, cfg=TINY, dtype=np.float64):
    model = minift.GPT(cfg, seed=seed, dtype=dtype)
    if dtype == np.float64:
        randomize_params(model.named_parameters(), seed)
    return model


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def total_size(cfg):
    C = cfg.d_model
    return cfg.vocab_size * C + cfg.block_size * C + cfg.n_layer * (12 * C * C + 13 * C) + 2 * C


def mlp_size(cfg):  # c_fc [C, 4C] + 4C, c_proj [4C, C] + C
    C = cfg.d_model
    return 8 * C * C + 5 * C


# -- tying ----------------------------------------------------------------------------------------


def test_tied_parameters_are_one_object_listed_once_under_the_first_name():
    model = tiny_gpt()
    first = model.h[0].mlp.c_fc.weight
    tie_parameters(model, ["h.0.mlp.c_fc.weight", "h.1.mlp.c_fc.weight"])
    assert model.h[1].mlp.c_fc.weight is first
    names = model.named_parameters()
    assert "h.0.mlp.c_fc.weight" in names and "h.1.mlp.c_fc.weight" not in names
    assert names["h.0.mlp.c_fc.weight"] is first


@settings(max_examples=8, deadline=None)
@given(seeds)
def test_shared_grad_is_the_sum_of_the_grads_of_its_uses(seed):
    """Untied model U whose blocks hold EQUAL values, and its tied copy T: same function, and
    grad(T's shared weight) = Σ over blocks of U's per-block grads."""
    untied = tiny_gpt(seed, THREE)
    for i in range(1, THREE.n_layer):
        for suffix in MLP_SUFFIXES:
            mod, attr = suffix.rsplit(".", 1)
            src = getattr(untied.h[0].get_submodule(mod), attr).value
            getattr(untied.h[i].get_submodule(mod), attr).value[...] = src
    tied = share_across_blocks(copy.deepcopy(untied))
    idx, targets = batch(seed)
    loss_u, loss_t = (
        cross_entropy_loss(untied, idx, targets),
        cross_entropy_loss(tied, idx, targets),
    )
    assert loss_u(True) == loss_t(True)  # same values, same function

    grads_u = {n: p.grad for n, p in untied.named_parameters().items()}
    for name, p in tied.named_parameters().items():
        suffix = name.split(".", 2)[-1]
        if name.startswith("h.0.") and suffix in MLP_SUFFIXES:
            uses = sum(grads_u[f"h.{i}.{suffix}"] for i in range(THREE.n_layer))
            np.testing.assert_allclose(p.grad, uses, rtol=1e-12, atol=1e-14, err_msg=name)
            assert not np.allclose(p.grad, grads_u[name])  # not just block 0's use
        else:
            np.testing.assert_array_equal(p.grad, grads_u[name], err_msg=name)


@settings(max_examples=3, deadline=None)
@given(seeds)
def test_every_parameter_of_the_tied_model_matches_finite_differences(seed):
    model = share_across_blocks(tiny_gpt(seed), MLP_SUFFIXES + ("ln_1.weight", "attn.c_attn.bias"))
    randomize_params(model.named_parameters(), seed + 1)
    report = check_gradients(cross_entropy_loss(model, *batch(seed)), model.named_parameters())
    assert len(report.errors) == 2 + 2 * 12 + 2 - 6  # six Params of block 1 are block 0's now
    assert report.ok(TOL), str(report)


@pytest.mark.parametrize("cfg", [TINY, THREE], ids=["L2", "L3"])
def test_trainable_count_drops_by_the_closed_form(cfg):
    model = share_across_blocks(tiny_gpt(cfg=cfg, dtype=np.float32))
    assert count_parameters(model).total == total_size(cfg) - (cfg.n_layer - 1) * mlp_size(cfg)
    model = share_across_blocks(tiny_gpt(cfg=cfg, dtype=np.float32), ("attn.c_attn.weight",))
    C = cfg.d_model
    assert count_parameters(model).trainable == total_size(cfg) - (cfg.n_layer - 1) * 3 * C * C


@settings(max_examples=4, deadline=None)
@given(seeds)
def test_a_shared_weight_stays_shared_through_training(seed):
    model = share_across_blocks(tiny_gpt(seed, dtype=np.float32))
    shared = model.h[0].mlp.c_fc.weight
    start = shared.value.copy()
    opt = AdamW(model.named_parameters(), lr=1e-2)
    loss = cross_entropy_loss(model, *batch(seed))
    first = loss(False)
    for _ in range(30):
        loss(True)
        opt.step()
    assert model.h[1].mlp.c_fc.weight is shared  # identity …
    np.testing.assert_array_equal(
        model.h[1].mlp.c_fc.weight.value, model.h[0].mlp.c_fc.weight.value
    )
    assert not np.array_equal(shared.value, start)
    assert loss(False) < 0.8 * first


# -- bad input ------------------------------------------------------------------------------------


def test_tying_different_shapes_names_both_shapes():
    with pytest.raises(
        ValueError,
        match=r"names: cannot tie 'h.1.mlp.c_proj.weight' \(32, 8\) float64 to "
        r"'h.0.mlp.c_fc.weight' \(8, 32\) float64",
    ):
        tie_parameters(tiny_gpt(), ["h.0.mlp.c_fc.weight", "h.1.mlp.c_proj.weight"])


def test_an_unknown_name_lists_close_matches():
    with pytest.raises(
        ValueError,
        match=r"names: the model has no parameter 'h.1.mlp.cfc.weight'; close matches: "
        r"\['h.1.mlp.c_fc.weight'",
    ):
        tie_parameters(tiny_gpt(), ["h.0.mlp.c_fc.weight", "h.1.mlp.cfc.weight"])


def test_fewer_than_two_names_or_blocks_is_named():
    with pytest.raises(ValueError, match="names: expected at least two distinct parameter names"):
        tie_parameters(tiny_gpt(), ["h.0.mlp.c_fc.weight"])
    with pytest.raises(TypeError, match="names: expected a list of parameter names"):
        tie_parameters(tiny_gpt(), "h.0.mlp.c_fc.weight")
    one = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
    with pytest.raises(ValueError, match="model: has 1 block; sharing across blocks needs"):
        share_across_blocks(minift.GPT(one))


# -- the config -----------------------------------------------------------------------------------


def test_sharing_config_ties_the_mlps_and_trains_everything_that_remains():
    model = tiny_gpt(cfg=THREE)
    peft = get_peft_model(model, SharingConfig())
    count = count_parameters(peft)
    assert count.frozen == 0
    assert count.trainable == total_size(THREE) - (THREE.n_layer - 1) * mlp_size(THREE)
    assert all(model.h[i].mlp.c_proj.bias is model.h[0].mlp.c_proj.bias for i in range(3))
    assert peft.merge_and_unload() is model  # nothing to merge; the ties stay
    assert model.h[2].mlp.c_fc.weight is model.h[0].mlp.c_fc.weight


def test_sharing_config_with_its_own_patterns():
    config = SharingConfig(patterns=[r"h\.[12]\.attn\.c_proj\.weight", r"h\.\d+\.ln_2\.bias"])
    model = tiny_gpt(cfg=THREE)
    assert config.groups(model) == [
        ["h.1.attn.c_proj.weight", "h.2.attn.c_proj.weight"],
        ["h.0.ln_2.bias", "h.1.ln_2.bias", "h.2.ln_2.bias"],
    ]
    peft = get_peft_model(model, config)
    C = THREE.d_model
    assert count_parameters(peft).trainable == total_size(THREE) - C * C - 2 * C
    assert model.h[2].attn.c_proj.weight is model.h[1].attn.c_proj.weight
    assert model.h[0].attn.c_proj.weight is not model.h[1].attn.c_proj.weight


def test_a_saved_shared_model_loads_back_shared(tmp_path):
    peft = get_peft_model(tiny_gpt(2), SharingConfig())
    randomize_params(peft.named_parameters(), 3)
    idx, _ = batch(2)
    out = peft.forward(idx)
    peft.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_gpt(5), tmp_path)
    assert loaded.h[1].mlp.c_fc.weight is loaded.h[0].mlp.c_fc.weight
    np.testing.assert_array_equal(loaded.forward(idx), out)


def test_bad_sharing_configs_are_named():
    with pytest.raises(
        ValueError,
        match=r"patterns: 'h\\\\.0\\\\.ln_1\\\\.bias' matches "
        r"\['h.0.ln_1.bias'\]; a shared group needs at least 2",
    ):
        get_peft_model(tiny_gpt(), SharingConfig(patterns=[r"h\.0\.ln_1\.bias"]))
    with pytest.raises(ValueError, match=r"patterns: 'h.0.ln_1.bias' is matched by both"):
        get_peft_model(tiny_gpt(), SharingConfig(patterns=[r"h\.\d\.ln_1\.bias", r"h\..\.ln_1.*"]))
    with pytest.raises(ValueError, match="target_modules: SharingConfig ties parameters"):
        SharingConfig(target_modules=["c_fc"])
    with pytest.raises(TypeError, match="patterns: expected a list of regular expressions"):
        SharingConfig(patterns="h.*")
    with pytest.raises(ValueError, match=r"patterns: '\(' is not a regular expression"):
        SharingConfig(patterns=["("])
