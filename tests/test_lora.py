"""LoRA (peft/lora.py): every claim of its docstring, checked."""

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
from helpers import hf_gpt2, import_references
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.checkpoint import load_tensors
from minift.gradcheck import (
    check_gradients,
    check_module,
    cross_entropy_loss,
    fixed_dropout_masks,
    numerical_gradient_array,
    randomize_params,
    rel_error,
)
from minift.nn import Linear
from minift.optim import AdamW
from minift.peft import LoraConfig, LoraLinear, PeftModel, count_parameters, get_peft_model
from minift.peft.lora import (
    lora_backward,
    lora_delta_weight,
    lora_delta_weight_backward,
    lora_forward,
    lora_forward_clear,
    lora_scaling,
)

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)
# A LoRA layer's output is affine in every single entry of x, W₀, b, A and B, so a central
# difference has no truncation error at any step: a larger h than the default 1e-5 only divides
# the rounding error of the loss, which at 1e-5 can reach 1e-7 of a gradient that chance (a small
# entry of A, most of x dropped out) made 1e-4 small.
AFFINE_H = 1e-3


def tiny_gpt(seed=0, dtype=np.float64, config=TINY):
    model = minift.GPT(config, seed=seed, dtype=dtype)
    if dtype == np.float64:
        randomize_params(model.named_parameters(), seed)
    return model


def lora_params(peft_model):
    return {n: p for n, p in peft_model.named_parameters().items() if "lora_" in n}


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


# -- the pure functions ---------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))
def test_lora_pair_matches_finite_differences(seed, r, d_in, d_out):
    r = min(r, d_in, d_out)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, d_in))
    W0, b = rng.standard_normal((d_in, d_out)), rng.standard_normal(d_out)
    A, B = rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r))
    s = 0.7
    y, cache = lora_forward(x, W0, b, A, B, s)
    dy = rng.standard_normal(y.shape)
    dx, dx_lora, dA, dB, dW0, db = lora_backward(dy, cache, need_base_grads=True)

    def fwd():
        return lora_forward(x, W0, b, A, B, s)[0]

    assert rel_error(dx + dx_lora, numerical_gradient_array(fwd, x, dy)) < TOL
    assert rel_error(dA, numerical_gradient_array(fwd, A, dy)) < TOL
    assert rel_error(dB, numerical_gradient_array(fwd, B, dy)) < TOL
    assert rel_error(dW0, numerical_gradient_array(fwd, W0, dy)) < TOL
    assert rel_error(db, numerical_gradient_array(fwd, b, dy)) < TOL


def test_clear_path_backward_is_a11_corrected_and_matches_finite_differences():
    rng = np.random.default_rng(3)
    A, B, s = rng.standard_normal((2, 5)), rng.standard_normal((4, 2)), 0.8
    dDelta = rng.standard_normal((5, 4))  # an upstream gradient on ΔW [in, out]
    dA, dB = lora_delta_weight_backward(dDelta, A, B, s)
    assert (
        rel_error(dA, numerical_gradient_array(lambda: lora_delta_weight(A, B, s), A, dDelta)) < TOL
    )
    assert (
        rel_error(dB, numerical_gradient_array(lambda: lora_delta_weight(A, B, s), B, dDelta)) < TOL
    )


def test_lora_gradients_are_the_papers_formulas():
    """With G = ∂L/∂W in the paper's [out, in] layout: ∂L/∂B = s·G·Aᵀ and ∂L/∂A = s·Bᵀ·G (A11)."""
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    A, B, s = rng.standard_normal((2, 4)), rng.standard_normal((3, 2)), 1.5
    _, cache = lora_forward(x, rng.standard_normal((4, 3)), None, A, B, s)
    _, _, dA, dB, _, _ = lora_backward(dy, cache)
    G = (x.T @ dy).T  # ∂L/∂W for y = x·Wᵀ_paper, in the paper's [out, in] layout
    np.testing.assert_allclose(dB, s * G @ A.T, rtol=1e-12)
    np.testing.assert_allclose(dA, s * B.T @ G, rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))
def test_clear_path_and_fast_path_agree(seed, r, d_in, d_out):
    r = min(r, d_in, d_out)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, d_in))
    W0, b = rng.standard_normal((d_in, d_out)), rng.standard_normal(d_out)
    A, B = rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r))
    fast, _ = lora_forward(x, W0, b, A, B, 0.5)
    np.testing.assert_allclose(
        fast, lora_forward_clear(x, W0, b, A, B, 0.5), rtol=1e-12, atol=1e-12
    )
    assert lora_delta_weight(A, B, 0.5).shape == (d_in, d_out)
    assert np.linalg.matrix_rank(lora_delta_weight(A, B, 0.5)) <= r


def test_scaling_is_alpha_over_r_or_over_sqrt_r():
    assert lora_scaling(8, 16) == 2.0
    assert lora_scaling(16, 16, use_rslora=True) == 4.0
    peft = get_peft_model(tiny_gpt(), LoraConfig(r=4, lora_alpha=8, use_rslora=True))
    assert peft.h[0].attn.c_attn.scaling == 8 / math.sqrt(4)


# -- the layer in the model -----------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    seeds,
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(1, 6),
    st.floats(0.1, 0.7),
    st.booleans(),
    st.booleans(),
)
def test_lora_layer_gradients_with_lora_dropout_on_match_finite_differences(
    seed, r, d_in, d_out, p, train_base, rslora
):
    """A sees the dropped input x_drop, so dA = duᵀ·x_drop, and dx gets du·A back through the
    same mask; W₀ sees x itself. Each mask is held fixed across the probes."""
    r = min(r, d_in, d_out)
    rng = np.random.default_rng(seed)
    base = Linear(d_in, d_out, rng=rng, dtype=np.float64)
    base.weight.trainable = base.bias.trainable = train_base
    layer = LoraLinear(base, r, 1.5 * r, p, use_rslora=rslora, rng=rng)
    randomize_params(layer.named_parameters(), seed)  # B ≠ 0, or A's gradient is 0
    report = check_module(layer, rng.standard_normal((2, 3, d_in)), rng, h=AFFINE_H)
    trained_base = {"base_layer.weight", "base_layer.bias"} if train_base else set()
    assert set(report.errors) == {"lora_A", "lora_B", "input"} | trained_base
    assert report.ok(TOL), str(report)


@settings(max_examples=3, deadline=None)
@given(seeds, st.floats(0.1, 0.6))
def test_every_lora_parameter_matches_finite_differences_with_every_dropout_on(seed, p):
    """lora_dropout and the GPT's own dropouts together, through the whole model: a layer's dx
    reaches the LoRA factors of the layers below it."""
    config = LoraConfig(r=2, lora_alpha=3, lora_dropout=p, target_modules=["c_attn", "c_fc"])
    peft = get_peft_model(tiny_gpt(seed, config=replace(TINY, dropout=p)), config, seed=seed)
    # ΔW a tenth of W₀, as after fine-tuning. As large as W₀ (scale 0.3), and enlarged 1/(1 − p)
    # by the dropout, it sharpens the attention until softmax bends on a 1e-2 scale and the
    # check's 1e-5 step errs by 1e-7 (hypothesis found seed 277, p = 0.44).
    randomize_params(lora_params(peft), seed + 1, scale=0.1)
    loss = fixed_dropout_masks(cross_entropy_loss(peft, *batch(seed)), peft)
    report = check_gradients(loss, peft.named_parameters())
    assert len(report.errors) == 2 * 2 * TINY.n_layer
    assert report.ok(TOL), str(report)


@settings(max_examples=4, deadline=None)
@given(seeds, st.booleans())
def test_every_lora_parameter_matches_finite_differences(seed, rslora):
    config = LoraConfig(r=2, lora_alpha=3, use_rslora=rslora, target_modules=["c_attn", "c_fc"])
    peft = get_peft_model(tiny_gpt(seed), config, seed=seed)
    randomize_params(lora_params(peft), seed + 1)  # B = 0 would leave A's gradient at 0
    report = check_gradients(cross_entropy_loss(peft, *batch(seed)), peft.named_parameters())
    assert len(report.errors) == 2 * 2 * TINY.n_layer  # A and B of 2 targets per block
    assert report.ok(TOL), str(report)


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(1, 4), st.sampled_from([True, "gaussian"]))
def test_lora_at_init_gives_exactly_the_base_output(seed, r, init):
    model = tiny_gpt(seed)
    idx, _ = batch(seed)
    base = model.forward(idx)
    config = LoraConfig(r=r, lora_alpha=2 * r, init_lora_weights=init, target_modules=".*c_.*")
    peft = get_peft_model(model, config, seed=seed)
    layer = peft.h[0].attn.c_attn
    assert np.all(layer.lora_B.value == 0) and np.any(layer.lora_A.value != 0)
    np.testing.assert_array_equal(peft.forward(idx), base)


def test_a_is_kaiming_uniform_or_gaussian_and_b_is_zero():
    model = minift.GPT(minift.GPTConfig(d_model=64, n_head=4, vocab_size=11), seed=0)
    uniform = get_peft_model(model, LoraConfig(r=8), seed=0).h[0].attn.c_attn.lora_A.value
    assert uniform.shape == (8, 64)
    bound = 1 / math.sqrt(64)
    assert np.abs(uniform).max() <= bound and np.abs(uniform).max() > 0.9 * bound
    model = minift.GPT(minift.GPTConfig(d_model=64, n_head=4, vocab_size=11), seed=0)
    config = LoraConfig(r=8, init_lora_weights="gaussian")
    gauss = get_peft_model(model, config, seed=0).h[0].attn.c_attn.lora_A.value
    assert abs(gauss.std() - 1 / 8) < 0.01


def test_first_step_moves_only_b():
    """B = 0 ⇒ ∂L/∂A = s·Bᵀ·G = 0 on the first step; ∂L/∂B = s·G·Aᵀ ≠ 0 gets it going."""
    peft = get_peft_model(tiny_gpt(1), LoraConfig(r=2, lora_alpha=2), seed=1)
    cross_entropy_loss(peft, *batch(1))(True)
    layer = peft.h[0].attn.c_attn
    assert np.all(layer.lora_A.grad == 0)
    assert np.abs(layer.lora_B.grad).max() > 1e-6


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_merge_matches_unmerged_output_and_unmerge_restores_w0(seed):
    peft = get_peft_model(tiny_gpt(seed), LoraConfig(r=2, target_modules=["c_attn", "mlp.c_proj"]))
    randomize_params(lora_params(peft), seed)
    idx, _ = batch(seed)
    unmerged = peft.forward(idx)
    layers = [m for _, m in peft.named_modules() if isinstance(m, LoraLinear)]
    W0 = [layer.base_layer.weight.value.copy() for layer in layers]
    for layer in layers:
        layer.merge()
    np.testing.assert_allclose(peft.forward(idx), unmerged, rtol=0, atol=1e-12)
    for layer, w in zip(layers, W0, strict=True):
        assert not np.allclose(layer.base_layer.weight.value, w)
        layer.unmerge()
        np.testing.assert_allclose(layer.base_layer.weight.value, w, rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="unmerge: this LoRA layer is not merged"):
        layers[0].unmerge()


def test_merge_and_unload_gives_a_plain_gpt_of_the_base_size_and_same_output():
    model = tiny_gpt(2)
    names = list(model.named_parameters())
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn", "c_fc"]))
    randomize_params(lora_params(peft), 2)
    idx, _ = batch(2)
    adapted = peft.forward(idx)
    merged = peft.merge_and_unload()
    assert type(merged) is minift.GPT
    assert list(merged.named_parameters()) == names
    assert all(p.trainable for p in merged.parameters())
    np.testing.assert_allclose(merged.forward(idx), adapted, rtol=0, atol=1e-12)


def test_merge_refuses_a_non_finite_result():
    peft = get_peft_model(tiny_gpt(), LoraConfig(r=1))
    layer = peft.h[0].attn.c_attn
    layer.lora_B.value[0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge()
    assert not layer.merged


def test_frozen_params_bit_identical_after_training_and_loss_falls():
    # a randomized base (tiny_gpt): at GPT-2's 0.02 init the frozen projections after the
    # adapted layers are so small that no low-rank change can move the loss in 40 steps
    model = tiny_gpt(3)
    frozen_before = {n: p.value.copy() for n, p in model.named_parameters().items()}
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]))
    opt = AdamW(peft.named_parameters(), lr=1e-2, weight_decay=0.01)
    idx, targets = batch(3, B=4, T=8)
    losses = []
    for _ in range(40):
        losses.append(cross_entropy_loss(peft, idx, targets)(True))
        opt.step()
    assert losses[-1] < 0.8 * losses[0]
    for name, p in peft.named_parameters().items():
        if "lora_" not in name:
            original = name.replace(".base_layer", "")
            np.testing.assert_array_equal(p.value, frozen_before[original], err_msg=name)
            assert p.grad is None, name


@pytest.mark.parametrize(
    ("targets", "per_block"),
    [
        (["c_attn"], lambda C, r: r * (C + 3 * C)),
        (["c_attn", "attn.c_proj"], lambda C, r: r * (C + 3 * C) + r * (C + C)),
        ([".*"], None),
        (["c_fc", "mlp.c_proj"], lambda C, r: 2 * r * (C + 4 * C)),
    ],
)
@pytest.mark.parametrize("r", [1, 4])
def test_trainable_count_is_r_times_d_in_plus_d_out(targets, per_block, r):
    cfg = minift.GPTConfig(vocab_size=13, block_size=8, n_layer=3, n_head=2, d_model=8)
    model = minift.GPT(cfg, seed=0)
    total = model.num_parameters()
    if targets == [".*"]:  # as a regex: every Linear of every block
        targets = ".*"
        per_block = lambda C, r: r * (C + 3 * C) + r * (C + C) + 2 * r * (C + 4 * C)  # noqa: E731
    peft = get_peft_model(model, LoraConfig(r=r, target_modules=targets))
    count = count_parameters(peft)
    assert count.trainable == cfg.n_layer * per_block(cfg.d_model, r)
    assert count.frozen == total


def test_lora_dropout_acts_on_the_low_rank_path_only():
    peft = get_peft_model(tiny_gpt(4), LoraConfig(r=2, lora_dropout=0.5))
    idx, _ = batch(4)
    peft.train()
    base = peft.forward(idx)  # B = 0: whatever dropout does to A's input, ΔW·x = 0
    np.testing.assert_array_equal(peft.forward(idx), base)
    randomize_params(lora_params(peft), 4)
    assert not np.array_equal(peft.forward(idx), peft.forward(idx))
    peft.eval()
    np.testing.assert_array_equal(peft.forward(idx), peft.forward(idx))


def test_generation_works_through_lora_layers():
    peft = get_peft_model(tiny_gpt(5), LoraConfig(r=2))
    randomize_params(lora_params(peft), 5)
    idx = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(
        peft.generate(idx, 8, temperature=0), peft.generate(idx, 8, temperature=0, use_cache=False)
    )


# -- adapter files (PEFT's format) ----------------------------------------------------------------


def test_save_and_load_round_trip_in_peft_format(tmp_path):
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "attn.c_proj"])
    peft = get_peft_model(tiny_gpt(6), config)
    randomize_params(lora_params(peft), 6)
    idx, _ = batch(6)
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 2 and saved["lora_alpha"] == 4
    # the layers the targets resolved to, by Hugging Face's names, which PEFT matches exactly
    assert saved["target_modules"] == [
        f"transformer.h.{i}.attn.{m}" for i in range(TINY.n_layer) for m in ("c_attn", "c_proj")
    ]
    assert saved["task_type"] == "CAUSAL_LM" and saved["base_model_name_or_path"] is None
    assert saved["fan_in_fan_out"] is True  # GPT-2's Conv1D layout, filled in from the model
    tensors, meta = load_tensors(tmp_path / "adapter_model.safetensors")
    assert meta["format"] == "pt" and len(meta["minift_sha256"]) == 64
    key = "base_model.model.transformer.h.1.attn.c_attn."
    assert tensors[key + "lora_A.weight"].shape == (2, 8)  # [r, in]
    assert tensors[key + "lora_B.weight"].shape == (24, 2)  # [out, r]
    assert len(tensors) == 2 * 2 * TINY.n_layer

    loaded = PeftModel.from_pretrained(tiny_gpt(6), tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), expected)
    assert count_parameters(loaded).trainable == 0  # inference unless asked
    trainable = PeftModel.from_pretrained(tiny_gpt(6), tmp_path, is_trainable=True)
    assert count_parameters(trainable).trainable == count_parameters(peft).trainable


def test_loading_an_adapter_into_another_shape_names_the_mismatch(tmp_path):
    get_peft_model(tiny_gpt(), LoraConfig(r=2)).save_pretrained(tmp_path)
    wider = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=12)
    with pytest.raises(ValueError, match=r"lora_A.weight: expected shape \(2, 12\), got \(2, 8\)"):
        PeftModel.from_pretrained(minift.GPT(wider, dtype=np.float64), tmp_path)


@pytest.mark.reference
def test_adapter_matches_hugging_face_peft_when_installed(tmp_path):
    """An adapter trained in minift gives the same logits in PEFT on the same GPT-2 weights."""
    torch, transformers, peft_lib = import_references()

    model = tiny_gpt(7)
    hf = hf_gpt2(model, tmp_path / "base")
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"]))
    randomize_params(lora_params(peft), 7)
    idx, _ = batch(7)
    ours = peft.forward(idx)
    peft.save_pretrained(tmp_path / "adapter")
    hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"r": 0}, ValueError, "r: expected a positive integer rank, got 0"),
        ({"lora_dropout": 1.0}, ValueError, r"lora_dropout: expected a probability in \[0, 1\)"),
        ({"init_lora_weights": "loftq"}, ValueError, "init_lora_weights: expected True, False"),
        ({"init_lora_weights": "pissa_niter_4"}, ValueError, "randomized SVD of 'pissa_niter_K'"),
        ({"init_lora_weights": 1}, ValueError, "init_lora_weights: expected True, False"),
        ({"rank_pattern": {"c_attn": 0}}, ValueError, "rank_pattern: 'c_attn': expected a pos"),
        ({"alpha_pattern": {"c_(": 2}}, re.error, "alpha_pattern: 'c_\\(': "),
        ({"layers_to_transform": [0, -1]}, TypeError, "layers_to_transform: expected a block"),
        ({"layers_pattern": "h"}, ValueError, "layers_pattern: needs layers_to_transform"),
        ({"layers_to_transform": 0, "target_modules": "c_.*"}, ValueError, "when target_mod"),
        ({"exclude_modules": 3}, TypeError, "exclude_modules: expected a regex string or a list"),
        ({"use_dora": True, "init_lora_weights": "pissa"}, ValueError, "DoRA's magnitude"),
        ({"bias": "all"}, ValueError, "bias: minift's LoRA trains no biases"),
        ({"target_modules": 3}, TypeError, "target_modules: expected a regex string or a list"),
        ({"lora_alpha": float("nan")}, ValueError, "lora_alpha: expected a finite number, got nan"),
        ({"lora_alpha": float("inf")}, ValueError, "lora_alpha: expected a finite number, got inf"),
        ({"lora_alpha": "16"}, TypeError, "lora_alpha: expected a number, got '16'"),
    ],
)
def test_bad_config_is_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LoraConfig(**kwargs)


def test_rank_larger_than_the_matrix_is_refused():
    with pytest.raises(ValueError, match=r"r: expected a rank in \[1, min\(in, out\)\] = \[1, 8\]"):
        get_peft_model(tiny_gpt(), LoraConfig(r=9))


def test_unknown_target_module_lists_what_exists():
    with pytest.raises(ValueError) as err:
        get_peft_model(tiny_gpt(), LoraConfig(target_modules=["c_attn", "q_proj"]))
    message = str(err.value)
    assert "['q_proj'] matched no Linear module" in message
    assert "'c_attn', 'c_fc', 'c_proj'" in message


@pytest.mark.reference
def test_adapter_trained_in_hugging_face_peft_loads_in_minift(tmp_path):
    """The other way round: PEFT writes the adapter, minift reads it and computes the same."""
    torch, transformers, peft_lib = import_references()

    model = tiny_gpt(8)
    hf = hf_gpt2(model, tmp_path / "base")
    config = peft_lib.LoraConfig(
        r=2, lora_alpha=6, target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True
    )
    hf = peft_lib.get_peft_model(hf, config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    idx, _ = batch(8)
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    hf.save_pretrained(tmp_path / "adapter")
    ours = PeftModel.from_pretrained(tiny_gpt(8), tmp_path / "adapter").forward(idx)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


def test_fan_in_fan_out_false_on_a_gpt_is_corrected_with_a_warning_as_peft_does():
    config = LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=False)
    with pytest.warns(UserWarning, match=r"fan_in_fan_out is set to False.*\[in, out\]"):
        peft = get_peft_model(tiny_gpt(0), config)
    assert peft.peft_config.fan_in_fan_out is True
