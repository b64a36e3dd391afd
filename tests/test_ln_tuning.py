"""LN tuning: every claim of minift/peft/ln_tuning.py's docstring, and PEFT's file format."""

import json

import numpy as np
import pytest
from helpers import as_if_written_elsewhere, hf_gpt2, import_references
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift import counts
from minift.errors import FileFormatError
from minift.gradcheck import (
    check_gradients,
    cross_entropy_loss,
    fixed_dropout_masks,
    randomize_params,
)
from minift.nn import LayerNorm
from minift.optim import AdamW
from minift.peft import PeftModel, count_parameters, get_peft_model
from minift.peft.ln_tuning import LNTuningConfig, LNTuningLayer

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)
LAYER_NORMS = ["h.0.ln_1", "h.0.ln_2", "h.1.ln_1", "h.1.ln_2", "ln_f"]


def tiny_model(seed=0, config=TINY, dtype=np.float64):
    model = minift.GPT(config, seed=seed, dtype=dtype)
    randomize_params(model.named_parameters(), seed)  # a "pretrained" point, γ away from 1
    return model


def trainable(model):
    return {n: p for n, p in model.named_parameters().items() if p.trainable}


def move_copies(peft_model, seed):
    """Move the copies away from the originals, as training would."""
    randomize_params(trainable(peft_model), seed + 1)


def batch(seed, B=2, T=6, V=11):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


# ------------------------------------------------------------------------------------------------
# Gradients


@settings(max_examples=4, deadline=None)
@given(seeds, st.integers(1, 2), st.sampled_from([(2, 8), (1, 6), (2, 4)]))
def test_every_tuned_gamma_and_beta_matches_finite_differences_with_dropout_on(seed, L, shape):
    n_head, C = shape
    config = minift.GPTConfig(
        vocab_size=11, block_size=8, n_layer=L, n_head=n_head, d_model=C, dropout=0.2
    )
    peft_model = get_peft_model(tiny_model(seed, config), LNTuningConfig(), seed=seed)
    move_copies(peft_model, seed)
    peft_model.train()
    idx, targets = batch(seed)
    loss = fixed_dropout_masks(cross_entropy_loss(peft_model, idx, targets), peft_model)
    report = check_gradients(loss, peft_model.named_parameters())
    assert set(report.errors) == set(trainable(peft_model))
    assert len(report.errors) == 2 * (2 * L + 1)  # γ' and β' of ln_1, ln_2 per block, ln_f
    assert all(".ln_tuning_layers." in name for name in report.errors)
    assert report.ok(TOL), str(report)


def test_the_frozen_originals_and_every_other_weight_get_no_gradient():
    peft_model = get_peft_model(tiny_model(1), LNTuningConfig())
    idx, targets = batch(1)
    cross_entropy_loss(peft_model, idx, targets)(True)
    frozen = {n: p for n, p in peft_model.named_parameters().items() if not p.trainable}
    assert [n for n in frozen if ".base_layer." in n] == [
        f"{ln}.base_layer.{w}" for ln in LAYER_NORMS for w in ("weight", "bias")
    ]
    assert all(p.grad is None or not p.grad.any() for p in frozen.values())
    assert all(p.grad is not None and p.grad.any() for p in trainable(peft_model).values())


# ------------------------------------------------------------------------------------------------
# Copies: the base untouched, merge puts the copy in place, unload gives the original back


@settings(max_examples=5, deadline=None)
@given(seeds)
def test_ln_tuning_at_init_gives_the_base_output_bit_for_bit(seed):
    idx, _ = batch(seed)
    model = tiny_model(seed % 5)
    base = model.forward(idx)
    np.testing.assert_array_equal(get_peft_model(model, LNTuningConfig()).forward(idx), base)


def test_the_copies_are_new_params_equal_to_the_originals_not_tied_to_them():
    peft_model = get_peft_model(tiny_model(2), LNTuningConfig())
    for name in LAYER_NORMS:
        layer = peft_model.get_submodule(name)
        assert isinstance(layer, LNTuningLayer)
        for w in ("weight", "bias"):
            original, copy = getattr(layer.base_layer, w), getattr(layer.ln_tuning_layers, w)
            assert copy is not original and not np.shares_memory(copy.value, original.value)
            np.testing.assert_array_equal(copy.value, original.value)
            assert copy.trainable and not original.trainable


def test_training_moves_the_copies_and_leaves_every_base_weight_bit_identical():
    model = tiny_model(3)
    idx, targets = batch(3)
    base_logits = model.forward(idx)
    before = {n: p.value.copy() for n, p in model.named_parameters().items()}
    peft_model = get_peft_model(model, LNTuningConfig())
    copies = {n: p.value.copy() for n, p in trainable(peft_model).items()}
    opt = AdamW(peft_model.named_parameters(), lr=1e-2)
    loss = cross_entropy_loss(peft_model, idx, targets)
    for _ in range(10):
        loss(True)
        opt.step()
    assert all(not np.array_equal(trainable(peft_model)[n].value, v) for n, v in copies.items())
    params = peft_model.named_parameters()
    for name, value in before.items():
        owner, _, attr = name.rpartition(".")
        key = f"{owner}.base_layer.{attr}" if owner in LAYER_NORMS else name
        np.testing.assert_array_equal(params[key].value, value)
    # unload: the original LayerNorms, the same objects, back in place
    unloaded = peft_model.unload()
    assert list(unloaded.named_parameters()) == list(before)
    np.testing.assert_array_equal(unloaded.forward(idx), base_logits)


def test_merge_and_unload_puts_the_trained_copies_in_place():
    peft_model = get_peft_model(tiny_model(4), LNTuningConfig())
    move_copies(peft_model, 4)
    idx, _ = batch(4)
    adapted = peft_model.forward(idx)
    trained = {n: p for n, p in trainable(peft_model).items()}
    merged = peft_model.merge_and_unload()
    assert all(isinstance(merged.get_submodule(n), LayerNorm) for n in LAYER_NORMS)
    for name in LAYER_NORMS:
        for w in ("weight", "bias"):
            assert getattr(merged.get_submodule(name), w) is trained[f"{name}.ln_tuning_layers.{w}"]
    np.testing.assert_array_equal(merged.forward(idx), adapted)
    assert all(p.trainable for p in merged.parameters())


def test_merge_equals_the_unmerged_output_and_unmerge_restores_the_originals():
    peft_model = get_peft_model(tiny_model(5), LNTuningConfig())
    move_copies(peft_model, 5)
    idx, _ = batch(5)
    adapted = peft_model.forward(idx)
    layers = [peft_model.get_submodule(n) for n in LAYER_NORMS]
    originals = [(layer.base_layer, layer.base_layer.weight.value.copy()) for layer in layers]
    for layer in layers:
        layer.merge()
    np.testing.assert_array_equal(peft_model.forward(idx), adapted)
    for layer in layers:
        layer.unmerge()
    for layer, (module, value) in zip(layers, originals, strict=True):
        assert layer.base_layer is module
        np.testing.assert_array_equal(layer.base_layer.weight.value, value)
    np.testing.assert_array_equal(peft_model.forward(idx), adapted)
    with pytest.raises(RuntimeError, match="unmerge: this LN-tuning layer is not merged"):
        layers[0].unmerge()
    layers[0].merge()
    with pytest.raises(RuntimeError, match="merge: this LN-tuning layer is already merged"):
        layers[0].merge()


# ------------------------------------------------------------------------------------------------
# Which LayerNorms, and how many parameters


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.sampled_from([(1, 4), (2, 4), (2, 8), (3, 6)]))
def test_trainable_count_is_the_closed_form(L, heads_and_C):
    n_head, C = heads_and_C
    config = minift.GPTConfig(vocab_size=7, block_size=4, n_layer=L, n_head=n_head, d_model=C)
    count = count_parameters(get_peft_model(minift.GPT(config), LNTuningConfig()))
    assert count.trainable == (2 * L + 1) * 2 * C == counts.closed_form("ln-tuning", config)
    assert count.total == count_parameters(minift.GPT(config)).total + count.trainable
    only_ln_f = get_peft_model(minift.GPT(config), LNTuningConfig(target_modules=["ln_f"]))
    assert count_parameters(only_ln_f).trainable == 2 * C


def test_targets_exclude_modules_and_regexes_pick_layer_norms_as_peft_does():
    def tuned(config):
        return get_peft_model(tiny_model(0), config)._tuner_layers()

    assert tuned(LNTuningConfig()) == LAYER_NORMS
    assert tuned(LNTuningConfig(target_modules=["ln_1"])) == ["h.0.ln_1", "h.1.ln_1"]
    assert tuned(LNTuningConfig(exclude_modules=["ln_f"])) == LAYER_NORMS[:-1]
    assert tuned(LNTuningConfig(exclude_modules=r"h\.0\..*")) == LAYER_NORMS[2:]
    # a regex on Hugging Face's names, as PEFT reads it
    assert tuned(LNTuningConfig(target_modules=r"transformer\.h\.\d+\.ln_2")) == [
        "h.0.ln_2",
        "h.1.ln_2",
    ]


def test_a_target_that_is_no_layer_norm_is_refused_naming_what_exists():
    with pytest.raises(ValueError, match=r"\['c_attn'\] matched no LayerNorm module.*'ln_1'"):
        get_peft_model(tiny_model(0), LNTuningConfig(target_modules=["ln_1", "c_attn"]))


def test_excluding_every_target_is_refused():
    config = LNTuningConfig(target_modules=["ln_f"], exclude_modules=["ln_f"])
    with pytest.raises(ValueError, match="exclude_modules: \\['ln_f'\\] excludes every LayerNorm"):
        get_peft_model(tiny_model(0), config)


def test_exclude_modules_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="exclude_modules: expected a regex string or a list"):
        LNTuningConfig(exclude_modules=3)


def test_only_a_layer_norm_can_be_wrapped():
    with pytest.raises(TypeError, match="base_layer: expected a LayerNorm, got Linear"):
        LNTuningLayer(tiny_model(0).h[0].attn.c_attn)


# ------------------------------------------------------------------------------------------------
# PEFT's file format


def test_saved_file_has_peft_keys_and_loads_back(tmp_path):
    peft_model = get_peft_model(tiny_model(6), LNTuningConfig(exclude_modules=["h.1.ln_2"]))
    move_copies(peft_model, 6)
    idx, _ = batch(6)
    adapted = peft_model.forward(idx)
    peft_model.save_pretrained(tmp_path)
    C = TINY.d_model
    assert {k: v.shape for k, v in peft_model.adapter_state_dict().items()} == {
        f"base_model.model.transformer.{ln}.ln_tuning_layers.{w}": (C,)
        for ln in LAYER_NORMS
        if ln != "h.1.ln_2"
        for w in ("weight", "bias")
    }
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LN_TUNING" and saved["task_type"] == "CAUSAL_LM"
    assert saved["exclude_modules"] == ["h.1.ln_2"]
    assert saved["target_modules"] == [
        f"transformer.{ln}" for ln in LAYER_NORMS if ln != "h.1.ln_2"
    ]
    loaded = PeftModel.from_pretrained(tiny_model(6), tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), adapted)
    assert loaded.peft_config.exclude_modules == ["h.1.ln_2"]
    assert count_parameters(loaded).trainable == 0  # inference unless asked


def test_a_file_for_other_layer_norms_does_not_load(tmp_path):
    get_peft_model(tiny_model(7), LNTuningConfig(target_modules=["ln_f"])).save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    saved["target_modules"] = ["ln_1"]
    config_path.write_text(json.dumps(saved))
    with pytest.raises(FileFormatError, match="adapter_config.json.*checksum"):
        PeftModel.from_pretrained(tiny_model(7), tmp_path)
    as_if_written_elsewhere(tmp_path / "adapter_model.safetensors")  # past the checksum
    model = tiny_model(7)
    names = list(model.named_parameters())
    with pytest.raises(FileFormatError, match=r"missing keys \[.*h\.0\.ln_1\.ln_tuning_layers"):
        PeftModel.from_pretrained(model, tmp_path)
    assert list(model.named_parameters()) == names  # the model is left as it was


def test_a_classifier_head_in_modules_to_save_trains_and_is_saved():
    model = minift.GPTForSequenceClassification(TINY, num_labels=3, dtype=np.float64)
    peft_model = get_peft_model(model, LNTuningConfig(modules_to_save=["score"]))
    state = peft_model.adapter_state_dict()
    np.testing.assert_array_equal(
        state["base_model.model.score.weight"], model.score.weight.value.T
    )
    assert len(state) == 1 + 2 * len(LAYER_NORMS)


# ------------------------------------------------------------------------------------------------
# The independent reference: PEFT itself, on a GPT2LMHeadModel with the same weights


def _peft_logits_and_grads(torch, hf, idx, targets):
    logits = hf(torch.tensor(idx)).logits
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), torch.tensor(targets).reshape(-1)
    )
    loss.backward()
    grads = {
        name.removeprefix("base_model.model.transformer.").replace(".default.", "."): p.grad.numpy()
        for name, p in hf.named_parameters()
        if p.requires_grad
    }
    return logits.detach().numpy(), grads


@pytest.mark.reference
def test_ln_tuning_written_by_peft_loads_in_minift_with_equal_logits_and_gradients(tmp_path):
    torch, transformers, peft_lib = import_references()
    model = tiny_model(8)
    hf = hf_gpt2(model, tmp_path / "base")
    hf = peft_lib.get_peft_model(hf, peft_lib.LNTuningConfig(task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln_tuning_layers" in name:
                p.add_(0.3 * torch.randn_like(p))
    idx, targets = batch(8)
    theirs, their_grads = _peft_logits_and_grads(torch, hf, idx, targets)
    hf.save_pretrained(tmp_path / "adapter")
    ours = PeftModel.from_pretrained(tiny_model(8), tmp_path / "adapter", is_trainable=True)
    loss, dlogits = minift.cross_entropy(ours.forward(idx), targets)
    np.testing.assert_allclose(ours.forward(idx), theirs, rtol=0, atol=1e-10)
    ours.zero_grad()
    ours.backward(dlogits)
    our_grads = {n: p.grad for n, p in trainable(ours).items()}
    assert our_grads.keys() == their_grads.keys() and len(our_grads) == 2 * len(LAYER_NORMS)
    for name, grad in our_grads.items():
        np.testing.assert_allclose(grad, their_grads[name], rtol=0, atol=1e-8, err_msg=name)


@pytest.mark.reference
def test_ln_tuning_written_by_minift_loads_in_peft_with_equal_logits(tmp_path):
    torch, transformers, peft_lib = import_references()
    model = tiny_model(9)
    hf = hf_gpt2(model, tmp_path / "base")
    peft_model = get_peft_model(model, LNTuningConfig(exclude_modules=["ln_f"]))
    move_copies(peft_model, 9)
    idx, _ = batch(9)
    ours = peft_model.forward(idx)
    peft_model.save_pretrained(tmp_path / "adapter")
    hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
    assert sum(type(m).__name__ == "LNTuningLayer" for m in hf.modules()) == 4
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
