"""DoRA: every claim of minift/peft/dora.py's docstring, proved."""

import json

import numpy as np
import pytest
from helpers import hf_gpt2, import_references
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minift
from minift.checkpoint import load_tensors
from minift.gradcheck import (
    check_gradients,
    check_module,
    cross_entropy_loss,
    randomize_params,
)
from minift.nn import Linear
from minift.optim import AdamW
from minift.peft import LoraConfig, PeftModel, count_parameters, get_peft_model
from minift.peft.dora import (
    DoraLinear,
    dora_backward,
    dora_backward_clear,
    dora_forward,
    dora_forward_clear,
)
from minift.peft.lora import lora_scaling

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)
target_lists = st.sampled_from([["c_attn"], ["c_attn", "mlp.c_proj"], ["c_fc", "attn.c_proj"]])


def tiny_model(seed=0, dtype=np.float64):
    model = minift.GPT(TINY, seed=seed, dtype=dtype)
    randomize_params(model.named_parameters(), seed)
    return model


def dora_model(seed=0, targets=("c_attn",), r=2, dtype=np.float64, randomize=True, **kw):
    config = LoraConfig(r=r, lora_alpha=2 * r, use_dora=True, target_modules=list(targets), **kw)
    peft_model = get_peft_model(tiny_model(seed, dtype), config, seed=seed)
    if randomize:
        randomize_params(trainable(peft_model), seed + 1)
    return peft_model


def trainable(model):
    return {n: p for n, p in model.named_parameters().items() if p.trainable}


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def dora_layer(seed, d_in=5, d_out=4, r=2, dropout=0.0, **kw):
    rng = np.random.default_rng(seed)
    base = Linear(d_in, d_out, rng=rng, dtype=np.float64, std=0.5)
    base.bias.value[...] = rng.standard_normal(d_out)
    base.weight.trainable = base.bias.trainable = False
    layer = DoraLinear(base, r, 2.0 * r, dropout, rng=rng, **kw)
    randomize_params(trainable(layer), seed, scale=0.5)
    return layer


def well_conditioned_dora_layer(seed, d_in, d_out, r, dropout):
    """A DoRA layer at a random point where a finite difference measures the derivative.

    DoRA divides by n = ‖W₀ + ΔW‖_c, so its curvature grows like 1/n², and a random ΔW can
    cancel a column of W₀ (hypothesis found n = 0.04 against ‖W₀‖_c = 1.05). Here every column
    of W₀ has a norm in [0.5, 1.5], ΔW's columns at most half the smallest, so n ≥ 0.25; and
    |m| ≥ 0.5, so the gradients through m/n are not small by chance either.
    """
    layer = dora_layer(seed, d_in=d_in, d_out=d_out, r=r, dropout=dropout)
    rng = np.random.default_rng(seed + 3)
    W0 = layer.base_layer.weight.value
    W0 *= rng.uniform(0.5, 1.5, d_out) / np.linalg.norm(W0, axis=0)
    largest = np.linalg.norm(layer.delta_weight(), axis=0).max()
    if largest > 0.25:
        layer.lora_B.value *= 0.25 / largest  # ΔW is linear in B
    m = layer.lora_magnitude_vector.value
    m[...] = np.where(m < 0, -0.5, 0.5) + m
    return layer


def layer_loss(layer, x, dout):
    """Σ layer(x) ⊙ dout."""

    def loss(run_backward):
        y = layer.forward(x)
        if run_backward:
            layer.zero_grad()
            layer.backward(dout)
        return float(np.sum(y * dout))

    return loss


# ------------------------------------------------------------------------------------------------
# The decomposition


@settings(max_examples=10, deadline=None)
@given(seeds, target_lists, st.integers(1, 4))
def test_dora_at_init_gives_the_base_output(seed, targets, r):
    idx, _ = batch(seed)
    expected = tiny_model(seed).forward(idx)
    peft_model = dora_model(seed, targets, r, randomize=False)
    np.testing.assert_array_equal(peft_model.forward(idx), expected)


def test_the_norm_is_over_the_in_axis_one_per_output_unit():
    """m₀ = ‖W₀‖_c: d_out numbers, each the norm of a COLUMN of minift's [in, out] weight,
    which is a ROW of torch's [out, in] layout (PEFT's norm over dim=1)."""
    peft_model = dora_model(0, ["c_attn"], r=2, randomize=False)
    layer = peft_model.get_submodule("h.0.attn.c_attn")
    W0 = layer.base_layer.weight.value  # (in, out) = (8, 24)
    m = layer.lora_magnitude_vector.value
    assert m.shape == (24,)
    torch_layout = W0.T  # (out, in)
    np.testing.assert_array_equal(m, np.linalg.norm(W0, axis=0))
    np.testing.assert_allclose(m, np.sqrt((torch_layout**2).sum(axis=1)), rtol=1e-14)
    # after training steps, the effective weight's columns have exactly the lengths m
    randomize_params(trainable(layer), 3)
    W = layer.effective_weight()
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), np.abs(layer.lora_magnitude_vector.value))


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(1, 6), st.integers(1, 6), st.booleans())
def test_the_layer_path_equals_the_clear_path_forward_and_backward(seed, d_in, d_out, detach):
    """LoRA's fast path rescaled by m/n ≡ forming W = m ⊙ V/n; and both backwards agree."""
    rng = np.random.default_rng(seed)
    r = int(rng.integers(1, min(d_in, d_out) + 1))
    x = rng.standard_normal((3, 2, d_in))
    W0, b = rng.standard_normal((d_in, d_out)), rng.standard_normal(d_out)
    A, B = rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r))
    m, s = rng.standard_normal(d_out), lora_scaling(r, 3.0)
    # m/‖V‖_c scales every term of the backward, and with it their rounding: near a vanishing
    # column (‖V‖_c ≈ 1e-4, where DoRA is singular) the paths part by 1e-9 from rounding alone
    assume(np.linalg.norm(W0 + s * (B @ A).T, axis=0).min() > 0.05)
    dy = rng.standard_normal((3, 2, d_out))
    y_fast, cache_fast = dora_forward(x, W0, b, A, B, m, s)
    y_clear, cache_clear = dora_forward_clear(x, W0, b, A, B, m, s)
    np.testing.assert_allclose(y_fast, y_clear, rtol=1e-12, atol=1e-12)
    dx, dx_lora, dA, dB, dm, dW0, db = dora_backward(dy, cache_fast, detach, need_base_grads=True)
    cx, cA, cB, cm, cW0, cb = dora_backward_clear(dy, cache_clear, detach)
    pairs = [(dx + dx_lora, cx), (dA, cA), (dB, cB), (dm, cm), (db, cb)]
    if not detach:  # dW0 = dV is the true gradient (the detached rule is for A, B only)
        pairs.append((dW0, cW0))
    for fast, clear in pairs:  # rounding only (a d_in = 1 column has dV = 0 exactly)
        np.testing.assert_allclose(fast, clear, rtol=1e-11, atol=1e-11)


# ------------------------------------------------------------------------------------------------
# Gradients


@settings(max_examples=3, deadline=None)
@given(seeds, target_lists)
def test_every_dora_parameter_matches_finite_differences(seed, targets):
    peft_model = dora_model(seed, targets, r=2)
    idx, tgt = batch(seed)
    params = trainable(peft_model)
    assert len(params) == 3 * len(peft_model._tuner_layers())
    report = check_gradients(cross_entropy_loss(peft_model, idx, tgt), params)
    assert report.ok(TOL), str(report)


@settings(max_examples=20, deadline=None)
@given(
    seeds,
    st.integers(2, 6),
    st.integers(1, 5),
    st.integers(1, 3),
    st.floats(0.1, 0.7),
    st.booleans(),
)
def test_layer_gradients_with_dropout_on_match_finite_differences(
    seed, d_in, d_out, r, p, train_base
):
    """The dropout path (x_drop into A only, dx back through the same mask), each mask held
    fixed across the probes; and dW₀, db when the base weight is left trainable."""
    r = min(r, d_in, d_out)
    layer = well_conditioned_dora_layer(seed, d_in, d_out, r, p)
    layer.base_layer.weight.trainable = layer.base_layer.bias.trainable = train_base
    x = np.random.default_rng(seed + 1).standard_normal((2, 3, d_in))
    report = check_module(layer, x, rng=seed + 2)
    trained_base = {"base_layer.weight", "base_layer.bias"} if train_base else set()
    assert set(report.errors) == {"lora_A", "lora_B", "lora_magnitude_vector", "input"} | (
        trained_base
    )
    assert report.ok(TOL), str(report)


def test_detached_norm_keeps_the_forward_but_is_not_the_gradient_of_the_loss():
    """PEFT's detach (paper §4.3): same output, same dm, but dA, dB are not ∂L/∂A, ∂L/∂B."""
    assert DoraLinear.dora_detach_norm is False  # the class default: the true gradient
    exact = dora_layer(3)
    detached = dora_layer(3, dora_detach_norm=True)
    assert detached.dora_detach_norm and not exact.dora_detach_norm
    rng = np.random.default_rng(4)
    x, dout = rng.standard_normal((6, 5)), rng.standard_normal((6, 4))
    np.testing.assert_array_equal(exact.forward(x), detached.forward(x))
    report = check_gradients(layer_loss(detached, x, dout), trainable(detached))
    assert report.errors["lora_magnitude_vector"] < TOL, str(report)
    assert report.errors["lora_A"] > 1e-3 and report.errors["lora_B"] > 1e-3, str(report)
    # what the detached rule computes instead: dV = (m/n)·dW, fed to LoRA's dA, dB
    V = detached.base_layer.weight.value + detached.delta_weight()
    m, n = detached.lora_magnitude_vector.value, np.linalg.norm(V, axis=0)
    dV = (m / n) * (x.T @ dout)
    s, A, B = detached.scaling, detached.lora_A.value, detached.lora_B.value
    np.testing.assert_allclose(detached.lora_A.grad, s * B.T @ dV.T, rtol=1e-12)
    np.testing.assert_allclose(detached.lora_B.grad, s * dV.T @ A.T, rtol=1e-12)


def test_the_class_default_switches_every_layer_that_did_not_choose(monkeypatch):
    chose_exact = dora_layer(5, dora_detach_norm=False)
    left_default = dora_layer(5)
    monkeypatch.setattr(DoraLinear, "dora_detach_norm", True)
    assert left_default.dora_detach_norm is True
    assert chose_exact.dora_detach_norm is False


# ------------------------------------------------------------------------------------------------
# Merging, training, counting, files


@settings(max_examples=10, deadline=None)
@given(seeds, target_lists)
def test_merged_model_equals_the_adapted_one_and_unmerge_restores_W0(seed, targets):
    peft_model = dora_model(seed, targets, r=2)
    idx, _ = batch(seed)
    adapted = peft_model.forward(idx)
    for name in peft_model._tuner_layers():
        layer = peft_model.get_submodule(name)
        W0 = layer.base_layer.weight.value.copy()
        expected_W = layer.effective_weight()
        layer.merge()
        assert np.max(np.abs(layer.base_layer.weight.value - expected_W)) <= 1e-12
        layer.unmerge()
        assert np.max(np.abs(layer.base_layer.weight.value - W0)) <= 1e-12
    merged = peft_model.merge_and_unload()
    assert np.max(np.abs(merged.forward(idx) - adapted)) <= 1e-12


def test_frozen_parameters_are_bit_identical_after_20_adamw_steps():
    peft_model = dora_model(1, ["c_attn", "mlp.c_proj"], r=2, randomize=False)
    frozen = {
        n: p.value.copy() for n, p in peft_model.named_parameters().items() if not p.trainable
    }
    optimizer = AdamW(peft_model.named_parameters(), lr=1e-2)
    idx, tgt = batch(1)
    loss = cross_entropy_loss(peft_model, idx, tgt)
    for _ in range(20):
        loss(True)
        optimizer.step()
    now = peft_model.named_parameters()
    for name, value in frozen.items():
        np.testing.assert_array_equal(now[name].value, value, err_msg=name)
    for name in peft_model._tuner_layers():  # and the magnitudes did train
        W0 = now[f"{name}.base_layer.weight"].value
        m = now[f"{name}.lora_magnitude_vector"].value
        assert not np.allclose(m, np.linalg.norm(W0, axis=0)), name


@pytest.mark.parametrize("targets", [["c_attn"], ["c_attn", "c_fc", "mlp.c_proj"]])
@pytest.mark.parametrize("r", [1, 4])
def test_trainable_count_is_the_closed_form(targets, r):
    """Σ over targets of r·(d_in + d_out) + d_out, from the config's numbers."""
    d = TINY.d_model
    shapes = {"c_attn": (d, 3 * d), "c_fc": (d, 4 * d), "mlp.c_proj": (4 * d, d)}
    expected = TINY.n_layer * sum(r * (shapes[t][0] + shapes[t][1]) + shapes[t][1] for t in targets)
    assert count_parameters(dora_model(0, targets, r, randomize=False)).trainable == expected


def test_adapter_file_has_peft_keys_and_round_trips(tmp_path):
    peft_model = dora_model(2, ["c_attn"], r=2)
    idx, _ = batch(2)
    expected = peft_model.forward(idx)
    peft_model.save_pretrained(tmp_path)
    tensors, _ = load_tensors(tmp_path / "adapter_model.safetensors")
    key = "base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector"
    assert tensors[key].shape == (3 * TINY.d_model,)
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (2, 8)
    assert len(tensors) == 3 * TINY.n_layer
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_dora"] is True
    loaded = PeftModel.from_pretrained(tiny_model(2), tmp_path)
    assert isinstance(loaded.get_submodule("h.1.attn.c_attn"), DoraLinear)
    np.testing.assert_array_equal(loaded.forward(idx), expected)


def test_a_few_dozen_adamw_steps_lower_the_loss():
    peft_model = dora_model(4, ["c_attn", "c_fc"], r=4, dtype=np.float32, randomize=False)
    optimizer = AdamW(peft_model.named_parameters(), lr=3e-2)
    idx, tgt = batch(4, B=4, T=8)
    loss = cross_entropy_loss(peft_model, idx, tgt)
    first = loss(True)
    for _ in range(40):
        optimizer.step()
        last = loss(True)
    assert last < 0.8 * first, (first, last)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_a_detach_flag_that_is_not_a_bool_is_a_type_error():
    with pytest.raises(TypeError, match="dora_detach_norm: expected True, False or None, got 'y"):
        dora_layer(0, dora_detach_norm="yes")


def test_a_base_weight_with_a_zero_column_is_refused():
    base = Linear(4, 3, rng=np.random.default_rng(0), dtype=np.float64)
    base.weight.value[:, 1] = 0.0
    with pytest.raises(ValueError, match=r"base_layer.weight: .*columns \[1\]"):
        DoraLinear(base, 2, 4.0, rng=np.random.default_rng(0))


def test_merging_twice_and_unmerging_a_zero_magnitude_are_refused():
    layer = dora_layer(0)
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.lora_magnitude_vector.value[2] = 0.0
    with pytest.raises(ValueError, match=r"lora_magnitude_vector has zero entries.*\[2\]"):
        layer.unmerge()


def test_a_rank_larger_than_the_layer_is_refused():
    with pytest.raises(ValueError, match=r"r: expected a rank in \[1, min\(in, out\)\]"):
        dora_model(0, ["c_attn"], r=9)


@pytest.mark.reference
@pytest.mark.parametrize("direction", ["minift_to_peft", "peft_to_minift"])
def test_dora_adapter_loads_in_hugging_face_peft_both_ways(tmp_path, direction):
    """A DoRA adapter saved by minift gives PEFT's logits on the same GPT-2 weights, and back."""
    torch, transformers, peft_lib = import_references()
    from minift.peft import LoraConfig, PeftModel, get_peft_model

    config = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
    model = minift.GPT(config, seed=3, dtype=np.float64)
    randomize_params(model.named_parameters(), 3)
    hf = hf_gpt2(model, tmp_path / "base")
    idx = np.random.default_rng(3).integers(0, 11, (2, 6))
    if direction == "minift_to_peft":
        ours = LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=["c_attn", "c_fc"])
        peft = get_peft_model(model, ours)
        trainable = {n: p for n, p in peft.named_parameters().items() if p.trainable}
        randomize_params(trainable, 4)
        for name, p in trainable.items():  # a magnitude near the column norms, as after training
            if name.endswith("lora_magnitude_vector"):
                p.value[...] = 1.0 + 0.1 * np.abs(p.value)
        expected = peft.forward(idx)
        peft.save_pretrained(tmp_path / "adapter")
        hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
        with torch.no_grad():
            got = hf(torch.tensor(idx)).logits.numpy()
    else:
        theirs = peft_lib.LoraConfig(
            r=2, lora_alpha=4, use_dora=True, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True
        )
        hf = peft_lib.get_peft_model(hf, theirs)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if "lora_" in name:
                    p.mul_(1.0 + 0.2 * torch.rand_like(p)).add_(0.1 * torch.randn_like(p))
            expected = hf(torch.tensor(idx)).logits.numpy()
        hf.save_pretrained(tmp_path / "adapter")
        got = PeftModel.from_pretrained(model, tmp_path / "adapter").forward(idx)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
