"""VeRA (peft/vera.py): every claim of its docstring, and PEFT's file format both ways."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from helpers import as_if_written_elsewhere, hf_gpt2, import_references
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.checkpoint import load_tensors, save_tensors
from minift.errors import FileFormatError
from minift.functional import linear_forward
from minift.gradcheck import (
    check_gradients,
    check_module,
    check_pair,
    cross_entropy_loss,
    fixed_dropout_masks,
    randomize_params,
)
from minift.nn import Linear
from minift.optim import AdamW
from minift.peft import PeftModel, VeraConfig, VeraLinear, count_parameters, get_peft_model
from minift.peft import vera as vera_module
from minift.peft.vera import vera_backward, vera_delta_weight, vera_forward, vera_projections

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)
# A VeRA layer's output is affine in every single entry of x, W₀, b, λ_d and λ_b (as LoRA's in
# each entry of A and B), so a central difference has no truncation error: a larger step than
# the default 1e-5 only divides the loss's rounding error (see tests/test_lora.py)
AFFINE_H = 1e-3
BOTH = ["c_attn", "mlp.c_proj"]  # the widest output (3C) and the widest input (4C) of a block


def tiny_gpt(seed=0, dtype=np.float64, config=TINY):
    model = minift.GPT(config, seed=seed, dtype=dtype)
    if dtype == np.float64:
        randomize_params(model.named_parameters(), seed)  # a "pretrained" point, not the init
    return model


def vectors(peft_model):
    return {n: p for n, p in peft_model.named_parameters().items() if p.trainable}


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def vera_layers(peft_model):
    return [m for _, m in peft_model.named_modules() if isinstance(m, VeraLinear)]


# ------------------------------------------------------------------------------------------------
# Gradients


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 6), st.integers(1, 5), st.integers(1, 5), st.booleans())
def test_vera_pair_matches_finite_differences_for_x_w0_b_and_both_vectors(
    seed, r, d_in, d_out, has_bias
):
    """The pure pair, on slices of larger shared projections, r free of d_in and d_out."""
    rng = np.random.default_rng(seed)
    A, B = vera_projections(r, d_in + 2, d_out + 1, seed)
    A, B = A[:, :d_in], B[:d_out, :]
    x = rng.standard_normal((2, 3, d_in))
    W0, lambda_d, lambda_b = (rng.standard_normal(s) for s in [(d_in, d_out), r, d_out])
    b = rng.standard_normal(d_out) if has_bias else None

    def forward(x, W0, *rest):
        b, (lambda_d, lambda_b) = (rest[0], rest[1:]) if has_bias else (None, rest)
        return vera_forward(x, W0, b, lambda_d, lambda_b, A, B)

    def backward(dy, cache):
        dx, dx_lora, dlambda_d, dlambda_b, dW0, db = vera_backward(dy, cache, True)
        return (dx + dx_lora, dW0, *([db] if has_bias else []), dlambda_d, dlambda_b)

    inputs = [x, W0, *([b] if has_bias else []), lambda_d, lambda_b]
    report = check_pair(forward, backward, inputs, rng, h=AFFINE_H)
    assert len(report.errors) == len(inputs)
    assert report.ok(TOL), str(report)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.floats(0.1, 0.7),
       st.booleans())  # fmt: skip
def test_vera_layer_gradients_with_vera_dropout_on_match_finite_differences(
    seed, r, d_in, d_out, p, train_base
):
    """A sees the dropped input, dx gets du·A back through the same mask; W₀ sees x itself."""
    rng = np.random.default_rng(seed)
    base = Linear(d_in, d_out, rng=rng, dtype=np.float64)
    base.weight.trainable = base.bias.trainable = train_base
    A, B = vera_projections(r, d_in, d_out, seed)
    layer = VeraLinear(base, A, B, vera_dropout=p, rng=rng)
    randomize_params(layer.named_parameters(), seed)  # λ_b ≠ 0, or λ_d's gradient is 0
    report = check_module(layer, rng.standard_normal((2, 3, d_in)), rng, h=AFFINE_H)
    trained_base = {"base_layer.weight", "base_layer.bias"} if train_base else set()
    assert set(report.errors) == {"vera_lambda_d", "vera_lambda_b", "input"} | trained_base
    assert report.ok(TOL), str(report)


@settings(max_examples=3, deadline=None)
@given(seeds, st.floats(0.1, 0.6))
def test_every_vera_vector_matches_finite_differences_with_every_dropout_on(seed, p):
    """Through the whole model, vera_dropout and the GPT's own dropouts on: each layer's dx
    reaches the vectors of the layers below it; the shared A and B are no Params to check."""
    config = VeraConfig(r=5, vera_dropout=p, target_modules=BOTH, projection_prng_key=seed)
    peft = get_peft_model(tiny_gpt(seed, config=replace(TINY, dropout=p)), config, seed=seed)
    # ΔW a tenth of W₀ or so, as after fine-tuning (see the LoRA test of the same name)
    randomize_params(vectors(peft), seed + 1, scale=0.3)
    loss = fixed_dropout_masks(cross_entropy_loss(peft, *batch(seed)), peft)
    report = check_gradients(loss, peft.named_parameters())
    assert len(report.errors) == 2 * 2 * TINY.n_layer  # λ_d and λ_b of 2 targets per block
    assert report.ok(TOL), str(report)


# ------------------------------------------------------------------------------------------------
# Invariants


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(1, 40))
def test_vera_at_init_gives_exactly_the_base_output(seed, r):
    """λ_b = 0 at init: ΔW = 0, and the output is the base model's bit for bit, any r."""
    model = tiny_gpt(seed % 5)
    idx, _ = batch(seed)
    base = model.forward(idx)
    peft = get_peft_model(model, VeraConfig(r=r, target_modules=BOTH), seed=seed)
    assert all(np.all(m.vera_lambda_d.value == 0.1) for m in vera_layers(peft))
    np.testing.assert_array_equal(peft.forward(idx), base)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.booleans())
def test_vera_forward_equals_the_linear_with_w0_plus_delta_w(seed, r, d_in, d_out, has_bias):
    """ΔW = (Λ_b·B·Λ_d·A)ᵀ in minift's [in, out] layout, the paper's formula transposed."""
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r))
    lambda_d, lambda_b = rng.standard_normal(r), rng.standard_normal(d_out)
    x, W0 = rng.standard_normal((3, 2, d_in)), rng.standard_normal((d_in, d_out))
    b = rng.standard_normal(d_out) if has_bias else None
    y, _ = vera_forward(x, W0, b, lambda_d, lambda_b, A, B)
    paper = np.diag(lambda_b) @ B @ np.diag(lambda_d) @ A  # [out, in]
    np.testing.assert_allclose(vera_delta_weight(A, B, lambda_d, lambda_b), paper.T, atol=1e-12)
    expected, _ = linear_forward(x, W0 + paper.T, b)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-11)


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_merged_vera_model_equals_the_unmerged_one(seed):
    idx, _ = batch(seed)
    model = tiny_gpt(seed % 5)
    n_base = count_parameters(model).total
    peft = get_peft_model(model, VeraConfig(r=6, target_modules=BOTH))
    randomize_params(vectors(peft), seed)
    adapted = peft.forward(idx)
    merged = peft.merge_and_unload()
    np.testing.assert_allclose(merged.forward(idx), adapted, rtol=0, atol=1e-12)
    assert not any("vera" in name for name in merged.named_parameters())
    assert count_parameters(merged).total == n_base  # the deployed model is the base's size


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_merge_then_unmerge_restores_the_base_weights(seed):
    peft = get_peft_model(tiny_gpt(seed % 5), VeraConfig(r=3, target_modules=BOTH))
    randomize_params(vectors(peft), seed)
    layers = vera_layers(peft)
    before = [m.base_layer.weight.value.copy() for m in layers]
    for m in layers:
        m.merge()
    assert not np.array_equal(layers[0].base_layer.weight.value, before[0])
    for m, W0 in zip(layers, before, strict=True):
        m.unmerge()
        np.testing.assert_allclose(m.base_layer.weight.value, W0, rtol=0, atol=1e-12)


def test_one_shared_pair_sized_for_the_largest_layer_is_sliced_per_layer():
    C = TINY.d_model
    peft = get_peft_model(tiny_gpt(0), VeraConfig(r=4, target_modules=BOTH))
    A, B = peft.projections()
    assert A.shape == (4, 4 * C) and B.shape == (3 * C, 4)  # mlp.c_proj's in, c_attn's out
    for m in vera_layers(peft):
        assert m.vera_A is A and m.vera_B is B  # the same arrays, not copies
        A_used, B_used = m.delta_constants()
        np.testing.assert_array_equal(A_used, A[:, : m.in_features])
        np.testing.assert_array_equal(B_used, B[: m.out_features, :])
    assert not any("vera_A" in n or "vera_B" in n for n in peft.named_parameters())


def test_the_projections_follow_projection_prng_key_and_not_the_model_seed():
    def drawn(key, seed):
        peft = get_peft_model(tiny_gpt(0), VeraConfig(r=4, projection_prng_key=key), seed=seed)
        return peft.projections()

    same = drawn(7, 0), drawn(7, 1)
    np.testing.assert_array_equal(same[0][0], same[1][0])
    np.testing.assert_array_equal(same[0][1], same[1][1])
    assert not np.array_equal(drawn(8, 0)[0], same[0][0])
    A, B = same[0]  # Kaiming-uniform, as PEFT: bounds √(6/fan_in), fan_in = 3C's in (C), r
    assert np.abs(A).max() <= np.sqrt(6 / TINY.d_model) and np.abs(B).max() <= np.sqrt(6 / 4)


def test_a_rank_larger_than_the_matrix_is_allowed_and_delta_w_keeps_its_rank_bound():
    """r may exceed d_in and d_out (the paper's r = 1024 on d = 768); ΔW's rank cannot."""
    peft = get_peft_model(tiny_gpt(0), VeraConfig(r=40, target_modules=["attn.c_proj"]))
    randomize_params(vectors(peft), 1)
    layer = vera_layers(peft)[0]
    assert np.linalg.matrix_rank(layer.delta_weight()) == TINY.d_model


def test_frozen_base_and_projections_are_bit_identical_after_20_steps_of_training():
    peft = get_peft_model(tiny_gpt(3), VeraConfig(r=4, vera_dropout=0.1, target_modules=BOTH))
    frozen = {n: p.value.copy() for n, p in peft.named_parameters().items() if not p.trainable}
    projections = [M.copy() for M in peft.projections()]
    before = {n: p.value.copy() for n, p in vectors(peft).items()}
    opt = AdamW(peft.named_parameters(), lr=1e-2)
    loss = cross_entropy_loss(peft, *batch(3))
    for _ in range(20):
        loss(True)
        opt.step()
    for name, value in frozen.items():
        np.testing.assert_array_equal(peft.named_parameters()[name].value, value)
        assert peft.named_parameters()[name].grad is None, name  # no dW for a frozen W₀
    for M, M0 in zip(peft.projections(), projections, strict=True):
        np.testing.assert_array_equal(M, M0)
    assert all(not np.array_equal(vectors(peft)[n].value, v) for n, v in before.items())


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.sampled_from([(1, 4), (2, 4), (2, 8), (3, 6)]), st.integers(1, 300))
def test_trainable_count_is_r_plus_d_out_per_adapted_layer(L, heads_and_C, r):
    n_head, C = heads_and_C
    config = minift.GPTConfig(vocab_size=7, block_size=4, n_layer=L, n_head=n_head, d_model=C)
    targets = ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    peft = get_peft_model(
        minift.GPT(config, dtype=np.float64), VeraConfig(r=r, target_modules=targets)
    )
    assert count_parameters(peft).trainable == L * ((r + 3 * C) + (r + C) + (r + 4 * C) + (r + C))


def test_a_short_training_run_lowers_the_loss():
    peft = get_peft_model(tiny_gpt(4), VeraConfig(r=16, target_modules=BOTH))
    opt = AdamW(peft.named_parameters(), lr=5e-2)
    loss = cross_entropy_loss(peft, *batch(4, B=4, T=8))
    first = loss(True)
    for _ in range(40):
        opt.step()
        last = loss(True)
    assert last < 0.8 * first, (first, last)


def test_init_weights_false_draws_vectors_that_change_the_output():
    model = tiny_gpt(0)
    idx, _ = batch(0)
    base = model.forward(idx)
    peft = get_peft_model(model, VeraConfig(r=4, init_weights=False))
    assert all(np.all(m.vera_lambda_b.value == 1) for m in vera_layers(peft))
    assert not np.allclose(peft.forward(idx), base)


# ------------------------------------------------------------------------------------------------
# PEFT's file format


def trained(seed, **fields):
    peft = get_peft_model(tiny_gpt(seed), VeraConfig(r=4, target_modules=BOTH, **fields))
    randomize_params(vectors(peft), seed)
    return peft


def test_saved_file_has_peft_keys_and_shapes_and_loads_back_exactly(tmp_path):
    peft = trained(5)
    idx, _ = batch(5)
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path)
    C, prefix = TINY.d_model, "base_model.model.transformer.h"
    layers = ["attn.c_attn", "mlp.c_proj"]
    tensors, _ = load_tensors(tmp_path / "adapter_model.safetensors")
    assert {k: v.shape for k, v in tensors.items()} == {
        "base_model.vera_A": (4, 4 * C),
        "base_model.vera_B": (3 * C, 4),
        **{f"{prefix}.{i}.{name}.vera_lambda_d": (4,) for i in (0, 1) for name in layers},
        **{f"{prefix}.{i}.attn.c_attn.vera_lambda_b": (3 * C,) for i in (0, 1)},
        **{f"{prefix}.{i}.mlp.c_proj.vera_lambda_b": (C,) for i in (0, 1)},
    }  # fmt: skip
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "VERA" and saved["save_projection"] is True
    # another projection key on loading: the file's A and B are what loads, not a redraw
    raw = {**saved, "projection_prng_key": 99}
    (tmp_path / "adapter_config.json").write_text(json.dumps(raw))
    as_if_written_elsewhere(tmp_path / "adapter_model.safetensors")
    loaded = PeftModel.from_pretrained(tiny_gpt(5), tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), expected)


def test_without_save_projection_minift_redraws_its_own_projections(tmp_path):
    peft = trained(6, save_projection=False, projection_prng_key=3)
    idx, _ = batch(6)
    expected = peft.forward(idx)
    with pytest.warns(UserWarning, match="only minift can load this adapter"):
        peft.save_pretrained(tmp_path)
    tensors, metadata = load_tensors(tmp_path / "adapter_model.safetensors")
    assert not any("vera_A" in k or "vera_B" in k for k in tensors)
    assert metadata[vera_module.VeraModel.METADATA_KEY].startswith("numpy default_rng")
    loaded = PeftModel.from_pretrained(tiny_gpt(6), tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), expected)


def test_without_save_projection_a_file_minift_did_not_write_is_refused(tmp_path):
    """PEFT's file holds no record of how A and B were drawn: they came from torch's generator."""
    with pytest.warns(UserWarning):
        trained(7, save_projection=False).save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    tensors, metadata = load_tensors(weights)
    metadata.pop(vera_module.VeraModel.METADATA_KEY)
    save_tensors(weights, tensors, metadata)
    with pytest.raises(FileFormatError, match="torch's generator, which minift cannot reproduce"):
        PeftModel.from_pretrained(tiny_gpt(7), tmp_path)


def test_without_save_projection_another_generator_never_loads_silently(tmp_path, monkeypatch):
    with pytest.warns(UserWarning):
        trained(8, save_projection=False).save_pretrained(tmp_path)

    def another_generator(r, d_in, d_out, key):
        A, B = vera_projections(r, d_in, d_out, key)
        return A[:, ::-1].copy(), B  # the same numbers, drawn in another order

    monkeypatch.setattr(vera_module, "vera_projections", another_generator)
    with pytest.raises(FileFormatError, match="drawn by another generator"):
        PeftModel.from_pretrained(tiny_gpt(8), tmp_path)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda t: t.pop("base_model.vera_A"), "missing key 'base_model.vera_A': save_projection"),
        (
            lambda t: t.update({"base_model.vera_B": t["base_model.vera_B"][:-1]}),
            r"base_model.vera_B: expected floats of shape \(24, 4\), got float64 of shape",
        ),
    ],
)
def test_a_file_without_its_projections_or_with_other_shapes_is_refused(tmp_path, damage, match):
    trained(9).save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    tensors, metadata = load_tensors(weights)
    damage(tensors)
    save_tensors(weights, tensors, {"format": "pt"})  # as if another program wrote it
    model = tiny_gpt(9)
    before = {n: p.value.copy() for n, p in model.named_parameters().items()}
    with pytest.raises(FileFormatError, match=match):
        PeftModel.from_pretrained(model, tmp_path)
    assert set(model.named_parameters()) == set(before)  # the model is put back as it was


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"r": 0}, ValueError, "r: expected a positive integer, got 0"),
        ({"r": 2.5}, ValueError, "r: expected a positive integer, got 2.5"),
        ({"projection_prng_key": -1}, ValueError, "projection_prng_key: expected an integer >= 0"),
        ({"vera_dropout": 1.0}, ValueError, r"vera_dropout: expected a probability in \[0, 1\)"),
        ({"d_initial": float("nan")}, ValueError, "d_initial: expected a finite number, got nan"),
        ({"d_initial": "0.1"}, ValueError, "d_initial: expected a finite number, got '0.1'"),
        ({"save_projection": 1}, TypeError, "save_projection: expected True or False, got 1"),
        ({"init_weights": "yes"}, TypeError, "init_weights: expected True or False"),
        ({"bias": "all"}, ValueError, "bias: minift's VeRA trains no biases"),
        ({"fan_in_fan_out": "no"}, TypeError, "fan_in_fan_out: expected True, False or None"),
        ({"layers_pattern": "h"}, ValueError, "layers_pattern: needs layers_to_transform"),
        ({"target_modules": 3}, TypeError, "target_modules: expected a regex string or a list"),
    ],
)
def test_bad_config_is_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        VeraConfig(**kwargs)


def test_unknown_target_module_lists_what_exists():
    with pytest.raises(ValueError, match=re.escape("['q_proj'] matched no Linear module")):
        get_peft_model(tiny_gpt(), VeraConfig(target_modules=["c_attn", "q_proj"]))


def test_layers_to_transform_adapts_only_the_blocks_listed():
    peft = get_peft_model(tiny_gpt(), VeraConfig(r=2, target_modules=BOTH, layers_to_transform=1))
    assert peft._tuner_layers() == ["h.1.attn.c_attn", "h.1.mlp.c_proj"]


# ------------------------------------------------------------------------------------------------
# The independent reference: Hugging Face PEFT, on a GPT2LMHeadModel with the same weights


def peft_vera_gpt2(torch, peft_lib, model, folder, seed):
    """PEFT's VeRA on ``model``'s weights, its vectors moved to a random point."""
    hf = hf_gpt2(model, folder)
    config = peft_lib.VeraConfig(r=4, target_modules=BOTH, fan_in_fan_out=True)
    hf = peft_lib.get_peft_model(hf, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "vera_lambda_" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return hf


@pytest.mark.reference
def test_vera_written_by_peft_loads_in_minift_with_equal_logits_and_gradients(tmp_path):
    torch, _, peft_lib = import_references()
    model = tiny_gpt(10)
    hf = peft_vera_gpt2(torch, peft_lib, model, tmp_path / "base", 10)
    idx, targets = batch(10)
    logits = hf(torch.tensor(idx)).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.tensor(targets).reshape(-1))  # fmt: skip
    loss.backward()
    theirs = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.requires_grad}
    hf.save_pretrained(tmp_path / "adapter")

    ours = PeftModel.from_pretrained(model, tmp_path / "adapter", is_trainable=True)
    np.testing.assert_allclose(ours.forward(idx), logits.detach().numpy(), rtol=0, atol=1e-10)
    assert abs(cross_entropy_loss(ours, idx, targets)(True) - loss.item()) < 1e-10
    grads = {n: p.grad for n, p in vectors(ours).items()}
    assert len(grads) == len(theirs) == 2 * 2 * TINY.n_layer
    for name, grad in grads.items():
        their = theirs[f"base_model.model.transformer.{name}.default"]
        np.testing.assert_allclose(grad, their, rtol=0, atol=1e-8, err_msg=name)


@pytest.mark.reference
def test_vera_written_by_minift_loads_in_peft_with_equal_logits(tmp_path):
    torch, _, peft_lib = import_references()
    model = tiny_gpt(11)
    hf = hf_gpt2(model, tmp_path / "base")
    peft = get_peft_model(model, VeraConfig(r=4, target_modules=BOTH, projection_prng_key=5))
    randomize_params(vectors(peft), 11)
    idx, _ = batch(11)
    ours = peft.forward(idx)
    peft.save_pretrained(tmp_path / "adapter")
    hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
    # PEFT's own draw from the same key differs: the file's A and B are what made them equal
    A = hf.base_model.vera_A["default"].numpy()
    np.testing.assert_array_equal(A, peft.projections()[0])
    theirs_only = peft_lib.VeraConfig(
        r=4, target_modules=BOTH, projection_prng_key=5, fan_in_fan_out=True
    )
    redrawn = peft_lib.get_peft_model(hf_gpt2(tiny_gpt(11), tmp_path / "again"), theirs_only)
    assert not np.allclose(redrawn.base_model.vera_A["default"].numpy(), A)
