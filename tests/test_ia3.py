"""IA3: every claim of minift/peft/ia3.py's docstring, and PEFT's file format."""

import json

import numpy as np
import pytest
from helpers import as_if_written_elsewhere, hf_gpt2, import_references
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.functional import linear_forward
from minift.gradcheck import check_gradients, cross_entropy_loss, randomize_params
from minift.optim import AdamW
from minift.peft import PeftModel, count_parameters, get_peft_model
from minift.peft.ia3 import IA3Config, IA3Linear, ia3_forward, ia3_merged_weights

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)


def tiny_model(seed=0, config=TINY, dtype=np.float64):
    model = minift.GPT(config, seed=seed, dtype=dtype)
    randomize_params(model.named_parameters(), seed)  # a "pretrained" point, not the init
    return model


def trainable(model):
    return {n: p for n, p in model.named_parameters().items() if p.trainable}


def randomize_ia3(peft_model, seed):
    """Move the vectors away from their init (ones) to a random point around it."""
    params = trainable(peft_model)
    randomize_params(params, seed)
    for p in params.values():
        p.value += 1.0


def batch(seed, B=2, T=6, V=11):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


# ------------------------------------------------------------------------------------------------
# Gradients


@settings(max_examples=3, deadline=None)
@given(seeds)
def test_every_ia3_vector_matches_finite_differences(seed):
    # c_attn and attn.c_proj scale their outputs, mlp.c_fc and mlp.c_proj their inputs
    config = IA3Config(
        target_modules=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
        feedforward_modules=["mlp.c_fc", "mlp.c_proj"],
    )
    peft_model = get_peft_model(tiny_model(seed), config)
    randomize_ia3(peft_model, seed)
    idx, targets = batch(seed)
    report = check_gradients(
        cross_entropy_loss(peft_model, idx, targets), peft_model.named_parameters()
    )
    assert set(report.errors) == set(trainable(peft_model))
    assert len(report.errors) == 4 * TINY.n_layer
    assert report.ok(TOL), str(report)


# ------------------------------------------------------------------------------------------------
# Invariants


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_ia3_at_init_gives_the_base_output(seed):
    idx, _ = batch(seed)
    model = tiny_model(seed % 5)
    base = model.forward(idx)
    peft_model = get_peft_model(model, IA3Config())
    np.testing.assert_array_equal(peft_model.forward(idx), base)  # x·1 = x, bit for bit


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 6), st.integers(1, 6), st.booleans(), st.booleans())
def test_ia3_forward_equals_the_linear_with_merged_weights(seed, d_in, d_out, ff, has_bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, d_in))
    W = rng.standard_normal((d_in, d_out))
    b = rng.standard_normal(d_out) if has_bias else None
    l = rng.standard_normal(d_in if ff else d_out)
    y, _ = ia3_forward(x, W, b, l, ff)
    W_merged, b_merged = ia3_merged_weights(W, b, l, ff)
    expected, _ = linear_forward(x, W_merged, b_merged)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_merged_ia3_model_equals_the_unmerged_one(seed):
    idx, _ = batch(seed)
    model = tiny_model(seed % 5)
    n_base = count_parameters(model).total
    peft_model = get_peft_model(model, IA3Config())
    randomize_ia3(peft_model, seed)
    adapted = peft_model.forward(idx)
    merged = peft_model.merge_and_unload()
    np.testing.assert_allclose(merged.forward(idx), adapted, rtol=0, atol=1e-12)
    assert not any("ia3" in name for name in merged.named_parameters())
    assert count_parameters(merged).total == n_base  # the deployed model is the base's size


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_merge_then_unmerge_restores_the_base_weights(seed):
    peft_model = get_peft_model(tiny_model(seed % 5), IA3Config())
    randomize_ia3(peft_model, seed)
    layers = [m for _, m in peft_model.named_modules() if isinstance(m, IA3Linear)]
    before = [(m.base_layer.weight.value.copy(), m.base_layer.bias.value.copy()) for m in layers]
    for m in layers:
        m.merge()
    assert not np.array_equal(layers[0].base_layer.weight.value, before[0][0])
    for m, (W, b) in zip(layers, before, strict=True):
        m.unmerge()
        np.testing.assert_allclose(m.base_layer.weight.value, W, rtol=0, atol=1e-12)
        np.testing.assert_allclose(m.base_layer.bias.value, b, rtol=0, atol=1e-12)


def test_feedforward_layers_scale_the_input_and_the_others_the_output():
    peft_model = get_peft_model(tiny_model(0), IA3Config())
    C = TINY.d_model
    c_attn = peft_model.get_submodule("h.0.attn.c_attn")
    c_proj = peft_model.get_submodule("h.0.mlp.c_proj")
    assert not c_attn.is_feedforward and c_attn.ia3_l.shape == (3 * C,)  # q, k and v (PEFT)
    assert c_proj.is_feedforward and c_proj.ia3_l.shape == (4 * C,)  # the MLP's hidden l_ff
    assert isinstance(peft_model.get_submodule("h.0.attn.c_proj"), minift.nn.Linear)  # untouched


def test_init_ia3_weights_false_draws_random_vectors_that_change_the_output():
    idx, _ = batch(0)
    model = tiny_model(0)
    base = model.forward(idx)
    peft_model = get_peft_model(model, IA3Config(init_ia3_weights=False))
    assert not any(np.all(p.value == 1.0) for p in trainable(peft_model).values())
    assert not np.allclose(peft_model.forward(idx), base)


def test_frozen_params_are_bit_identical_after_20_steps_of_training():
    peft_model = get_peft_model(tiny_model(3), IA3Config())
    frozen = {
        n: p.value.copy() for n, p in peft_model.named_parameters().items() if not p.trainable
    }
    vectors = {n: p.value.copy() for n, p in trainable(peft_model).items()}
    opt = AdamW(peft_model.named_parameters(), lr=1e-2)
    idx, targets = batch(3)
    loss = cross_entropy_loss(peft_model, idx, targets)
    for _ in range(20):
        loss(True)
        opt.step()
    for name, value in frozen.items():
        np.testing.assert_array_equal(peft_model.named_parameters()[name].value, value)
    assert all(not np.array_equal(trainable(peft_model)[n].value, v) for n, v in vectors.items())


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.sampled_from([(1, 4), (2, 4), (2, 8), (3, 6)]))
def test_trainable_count_is_the_closed_form(L, heads_and_C):
    n_head, C = heads_and_C
    config = minift.GPTConfig(vocab_size=7, block_size=4, n_layer=L, n_head=n_head, d_model=C)
    # PEFT's GPT-2 defaults: d_out of c_attn (3C) + d_in of mlp.c_proj (4C), per block
    peft_model = get_peft_model(minift.GPT(config, dtype=np.float64), IA3Config())
    assert count_parameters(peft_model).trainable == L * (3 * C + 4 * C)
    # every Linear: outputs of c_attn (3C) and attn.c_proj (C), inputs of c_fc (C) and c_proj (4C)
    every = IA3Config(
        target_modules=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
        feedforward_modules=["mlp.c_fc", "mlp.c_proj"],
    )
    peft_model = get_peft_model(minift.GPT(config, dtype=np.float64), every)
    assert count_parameters(peft_model).trainable == L * (3 * C + C + C + 4 * C)


def test_a_short_training_run_lowers_the_loss():
    peft_model = get_peft_model(tiny_model(4, dtype=np.float32), IA3Config())
    opt = AdamW(peft_model.named_parameters(), lr=5e-2)
    idx, targets = batch(4, B=4, T=8)
    loss = cross_entropy_loss(peft_model, idx, targets)
    first = loss(True)
    for _ in range(40):
        opt.step()
        last = loss(True)
    assert last < 0.8 * first, (first, last)


# ------------------------------------------------------------------------------------------------
# PEFT's file format


def test_saved_file_has_peft_keys_and_shapes_and_loads_back(tmp_path):
    model = tiny_model(5)
    peft_model = get_peft_model(model, IA3Config())
    randomize_ia3(peft_model, 5)
    idx, _ = batch(5)
    adapted = peft_model.forward(idx)
    peft_model.save_pretrained(tmp_path)
    C = TINY.d_model
    state = peft_model.adapter_state_dict()
    assert {k: v.shape for k, v in state.items()} == {
        f"base_model.model.transformer.h.{i}.{name}.ia3_l": shape
        for i in range(TINY.n_layer)
        for name, shape in [("attn.c_attn", (3 * C, 1)), ("mlp.c_proj", (1, 4 * C))]
    }
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "IA3"
    loaded = PeftModel.from_pretrained(tiny_model(5), tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), adapted)


def test_a_classifier_head_in_modules_to_save_is_stored_as_torch_stores_it():
    model = minift.GPTForSequenceClassification(TINY, num_labels=3, dtype=np.float64)
    peft_model = get_peft_model(model, IA3Config(modules_to_save=["score"]))
    state = peft_model.adapter_state_dict()
    # Hugging Face's score is an nn.Linear, weight [num_labels, C], outside "transformer."
    np.testing.assert_array_equal(
        state["base_model.model.score.weight"], model.score.weight.value.T
    )


@pytest.mark.reference
def test_ia3_file_loads_in_hugging_face_peft_and_gives_the_same_output(tmp_path):
    """The independent reference: PEFT itself, on a GPT2LMHeadModel with the same weights."""
    torch, transformers, peft_lib = import_references()

    model = tiny_model(6)
    hf = hf_gpt2(model, tmp_path / "base")
    peft_model = get_peft_model(model, IA3Config())
    randomize_ia3(peft_model, 6)
    idx, _ = batch(6)
    ours = peft_model.forward(idx)
    peft_model.save_pretrained(tmp_path / "adapter")
    hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.reference
def test_ia3_trained_in_hugging_face_peft_loads_in_minift(tmp_path):
    """The other way round: PEFT picks GPT-2's targets, writes the file, minift reads it."""
    torch, transformers, peft_lib = import_references()

    model = tiny_model(9)
    hf = hf_gpt2(model, tmp_path / "base")
    hf = peft_lib.get_peft_model(hf, peft_lib.IA3Config(task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ia3_l" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    idx, _ = batch(9)
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    hf.save_pretrained(tmp_path / "adapter")
    ours = PeftModel.from_pretrained(tiny_model(9), tmp_path / "adapter").forward(idx)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.reference
def test_ia3_with_a_classifier_head_loads_in_hugging_face_peft(tmp_path):
    """modules_to_save=["score"]: the head's key and [num_labels, C] layout are torch's."""
    torch, transformers, peft_lib = import_references()
    model = minift.GPTForSequenceClassification(TINY, num_labels=3, dtype=np.float64)
    randomize_params(model.named_parameters(), 10)
    hf_config = transformers.GPT2Config(
        vocab_size=TINY.vocab_size,
        n_positions=TINY.block_size,
        n_embd=TINY.d_model,
        n_layer=TINY.n_layer,
        n_head=TINY.n_head,
        num_labels=3,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=TINY.layer_norm_eps,
    )
    hf = transformers.GPT2ForSequenceClassification(hf_config).double().eval()
    state = {
        ("transformer." + k if not k.startswith("score.") else k): torch.tensor(v)
        for k, v in model.state_dict().items()
    }
    state["score.weight"] = state["score.weight"].T.contiguous()  # nn.Linear: [out, in]
    hf.load_state_dict(state)
    peft_model = get_peft_model(model, IA3Config(modules_to_save=["score"]))
    randomize_ia3(peft_model, 10)  # the head moves too
    idx, _ = batch(10, B=1)  # GPT-2 without a pad token classifies one sequence at a time
    ours = peft_model.forward(idx)
    peft_model.save_pretrained(tmp_path)
    hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path)
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_feedforward_modules_outside_target_modules_is_a_value_error():
    with pytest.raises(ValueError, match=r"feedforward_modules: expected a subset.*mlp\.c_fc"):
        IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_fc"])


def test_feedforward_modules_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="feedforward_modules: expected a regex string or a list"):
        IA3Config(feedforward_modules=3)


def test_init_ia3_weights_not_a_bool_is_a_type_error():
    with pytest.raises(TypeError, match="init_ia3_weights: expected True or False, got 'ones'"):
        IA3Config(init_ia3_weights="ones")


def test_fan_in_fan_out_not_a_bool_is_a_type_error():
    with pytest.raises(TypeError, match="fan_in_fan_out: expected True, False or None, got 'yes'"):
        IA3Config(fan_in_fan_out="yes")


def test_unmerge_with_a_zero_scale_is_a_value_error():
    peft_model = get_peft_model(tiny_model(7), IA3Config())
    layer = peft_model.get_submodule("h.1.attn.c_attn")
    layer.ia3_l.value[5] = 0.0
    layer.merge()
    with pytest.raises(ValueError, match=r"unmerge: ia3_l has 1 zero entries \(first at index 5\)"):
        layer.unmerge()


def test_a_file_with_the_other_orientation_is_a_value_error(tmp_path):
    # an adapter saved with c_attn treated as feed-forward cannot load into the default config
    config = IA3Config(target_modules=["c_attn"], feedforward_modules=["c_attn"])
    get_peft_model(tiny_model(8), config).save_pretrained(tmp_path)
    as_if_written_elsewhere(tmp_path / "adapter_model.safetensors")  # so edits pass its checksum
    config_file = tmp_path / "adapter_config.json"
    raw = json.loads(config_file.read_text())
    raw["feedforward_modules"] = []
    config_file.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"c_attn.ia3_l: expected PEFT's \[out, 1\]"):
        PeftModel.from_pretrained(tiny_model(8), tmp_path)
