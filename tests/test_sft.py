"""Supervised fine-tuning policies (peft/sft.py, peft/gradual.py): every claim of their
docstrings, checked."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.gradcheck import check_gradients, cross_entropy_loss, randomize_params
from minift.nn import MLP
from minift.optim import AdamW
from minift.peft.base import PeftModel, get_peft_model
from minift.peft.counting import count_parameters
from minift.peft.gradual import GradualUnfreezing
from minift.peft.sft import (
    FullFinetuneConfig,
    HeadOnlyConfig,
    LastKBlocksConfig,
    add_classification_head,
    freeze_by_pattern,
    full_finetune,
    head_only,
    last_k_blocks,
)

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
THREE = minift.GPTConfig(vocab_size=13, block_size=6, n_layer=3, n_head=2, d_model=4)
TOL = 1e-7
K = 3  # labels
seeds = st.integers(0, 2**31 - 1)


# -- closed forms, from the config numbers alone --------------------------------------------------


def per_block(cfg):
    C = cfg.d_model
    return 12 * C * C + 13 * C


def head_size(cfg, num_labels=None):
    return cfg.d_model * num_labels if num_labels else cfg.vocab_size * cfg.d_model


def full_size(cfg, num_labels=None):
    C = cfg.d_model
    body = cfg.vocab_size * C + cfg.block_size * C + cfg.n_layer * per_block(cfg) + 2 * C
    return body + (C * num_labels if num_labels else 0)


def last_k_size(cfg, k, num_labels=None):
    return k * per_block(cfg) + 2 * cfg.d_model + head_size(cfg, num_labels)


# -- models, batches, losses ----------------------------------------------------------------------


def tiny_gpt(seed=0, cfg=TINY, dtype=np.float64):
    model = minift.GPT(cfg, seed=seed, dtype=dtype)
    if dtype == np.float64:
        randomize_params(model.named_parameters(), seed)
    return model


def tiny_classifier(seed=0, cfg=TINY, dtype=np.float64):
    model = add_classification_head(tiny_gpt(seed, cfg, dtype), K, seed=seed)
    if dtype == np.float64:  # the new head at a random point too, not at its small init: there
        # ln_f's gradients are ~1e-5, at the finite differences' noise floor (hypothesis found one)
        head = {n: p for n, p in model.named_parameters().items() if n.startswith("score.")}
        randomize_params(head, seed + 1)
    return model


def is_classifier(model):
    return isinstance(getattr(model, "base_model", model), minift.GPTForSequenceClassification)


def batch(seed, model, B=3, T=6):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 11, (B, T))
    target = rng.integers(0, K, B) if is_classifier(model) else rng.integers(0, 11, (B, T))
    return idx, target


def trainable_names(model):
    return sorted(n for n, p in model.named_parameters().items() if p.trainable)


def make(kind, seed=0, cfg=TINY, dtype=np.float64):
    return tiny_classifier(seed, cfg, dtype) if kind == "clf" else tiny_gpt(seed, cfg, dtype)


kinds = st.sampled_from(["lm", "clf"])


# -- the policies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lm", "clf"])
def test_full_finetune_trains_every_parameter(kind):
    model = make(kind)
    for p in model.parameters():
        p.trainable = False
    full_finetune(model)
    labels = K if kind == "clf" else None
    assert count_parameters(model).trainable == full_size(TINY, labels)
    assert count_parameters(model).frozen == 0


def test_head_only_trains_only_score_on_a_classifier():
    model = head_only(tiny_classifier())
    assert trainable_names(model) == ["score.weight"]
    assert count_parameters(model).trainable == head_size(TINY, K)


def test_head_only_on_a_gpt_trains_the_tied_wte_alone():
    model = head_only(tiny_gpt())
    assert trainable_names(model) == ["wte.weight"]
    assert count_parameters(model).trainable == head_size(TINY)


def test_head_only_without_a_head_is_a_type_error():
    mlp = MLP(4, 0.0, rng=np.random.default_rng(0), dtype=np.float64, proj_std=0.02)
    with pytest.raises(TypeError, match=r"model: MLP has no head to train.*'score'.*'wte'"):
        head_only(mlp)
    with pytest.raises(TypeError, match="model: MLP has no transformer blocks 'h'"):
        last_k_blocks(mlp, 0)


@settings(max_examples=12, deadline=None)
@given(kinds, st.integers(0, 3))
def test_last_k_blocks_count_is_the_closed_form(kind, k):
    model = make(kind, cfg=THREE, dtype=np.float32)
    last_k_blocks(model, k)
    labels = K if kind == "clf" else None
    assert count_parameters(model).trainable == last_k_size(THREE, k, labels)
    L = THREE.n_layer
    for i in range(L):
        flags = {p.trainable for p in model.h[i].parameters()}
        assert flags == {i >= L - k}
    assert model.ln_f.weight.trainable
    assert not model.wpe.weight.trainable
    assert model.wte.weight.trainable == (kind == "lm")  # the LM's head is the tied wte


@pytest.mark.parametrize("k", [-1, 3])
def test_last_k_blocks_outside_0_to_L_is_named(k):
    with pytest.raises(
        ValueError,
        match=rf"k: expected a number of blocks in \[0, n_layer\] = "
        rf"\[0, 2\], got {k}",
    ):
        last_k_blocks(tiny_gpt(), k)


def test_last_k_blocks_non_integer_is_named():
    with pytest.raises(TypeError, match=r"k: expected an integer number of blocks, got 1.5"):
        last_k_blocks(tiny_gpt(), 1.5)


def test_freeze_by_pattern_sets_only_the_matching_parameters():
    model = full_finetune(tiny_gpt())
    freeze_by_pattern(model, [r"\.ln_", r"^wpe\."])
    frozen = {n for n, p in model.named_parameters().items() if not p.trainable}
    assert frozen == {n for n in model.named_parameters() if ".ln_" in n or n.startswith("wpe.")}
    head_only(model)
    freeze_by_pattern(model, r"bias$", trainable=True)
    assert trainable_names(model) == sorted(
        n for n in model.named_parameters() if n.endswith("bias") or n == "wte.weight"
    )


def test_freeze_by_pattern_that_matches_nothing_lists_the_names():
    with pytest.raises(
        ValueError,
        match=r"patterns: \['lora_A'\] matched no parameter; the "
        r"parameters are \['wte.weight', 'wpe.weight', 'h.0.ln_1.weight'",
    ):
        freeze_by_pattern(tiny_gpt(), ["ln_f", "lora_A"])


def test_freeze_by_pattern_bad_regex_is_named():
    with pytest.raises(ValueError, match=r"patterns: '\(' is not a regular expression"):
        freeze_by_pattern(tiny_gpt(), ["("])
    with pytest.raises(TypeError, match="patterns: expected a regex string or a list"):
        freeze_by_pattern(tiny_gpt(), 3)


# -- gradual unfreezing ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lm", "clf"])
def test_gradual_unfreezing_follows_ulmfit_from_the_head_down(kind):
    model = make(kind, cfg=THREE, dtype=np.float32)
    labels = K if kind == "clf" else None
    schedule = GradualUnfreezing(model)
    assert schedule.epoch == 0 and schedule.trainable_blocks == []
    assert count_parameters(model).trainable == head_size(THREE, labels)
    assert not model.ln_f.weight.trainable
    for e, blocks in [(1, [2]), (2, [1, 2]), (3, [0, 1, 2])]:
        assert not schedule.done
        assert schedule.step_epoch() == blocks
        assert count_parameters(model).trainable == last_k_size(THREE, e, labels)
    assert not schedule.embeddings_trainable and not schedule.done
    schedule.step_epoch()  # the last stage: the embeddings too, i.e. full fine-tuning
    assert schedule.embeddings_trainable and schedule.done
    assert count_parameters(model).trainable == full_size(THREE, labels)
    schedule.step_epoch()
    assert count_parameters(model).frozen == 0


def test_gradual_unfreezing_with_n_layer_stops_at_that_many_blocks():
    model = tiny_classifier(cfg=THREE, dtype=np.float32)
    schedule = GradualUnfreezing(model, n_layer=1)
    assert schedule.step_epoch() == [2]
    assert schedule.done
    assert schedule.step_epoch() == [2]
    assert count_parameters(model).trainable == last_k_size(THREE, 1, K)
    with pytest.raises(ValueError, match=r"n_layer: expected a number of blocks in \[0, n_layer\]"):
        GradualUnfreezing(model, n_layer=4)


# -- add a head -----------------------------------------------------------------------------------


def test_add_classification_head_shares_the_body_and_adds_a_trainable_score():
    lm = tiny_gpt(3)
    for p in lm.parameters():
        p.trainable = False
    clf = add_classification_head(lm, num_labels=4, seed=1, pad_token_id=0)
    assert isinstance(clf, minift.GPTForSequenceClassification)
    assert clf.score.weight.shape == (TINY.d_model, 4) and clf.score.weight.trainable
    assert clf.config.pad_token_id == 0 and lm.config.pad_token_id is None
    lm_params = lm.named_parameters()
    for name, p in clf.named_parameters().items():
        if name != "score.weight":
            assert p is lm_params[name] and not p.trainable
    assert count_parameters(clf).trainable == head_size(TINY, 4)


def test_add_classification_head_needs_a_language_model():
    with pytest.raises(
        TypeError, match="lm: expected a GPT language model, got GPTForSequenceClassification"
    ):
        add_classification_head(tiny_classifier(), 2)
    with pytest.raises(ValueError, match="num_labels: expected a positive integer, got 0"):
        add_classification_head(tiny_gpt(), 0)


# -- gradients ------------------------------------------------------------------------------------


@settings(max_examples=3, deadline=None)
@given(seeds, kinds, st.integers(0, 2))
def test_every_trainable_parameter_matches_finite_differences(seed, kind, k):
    model = make(kind, seed)
    last_k_blocks(model, k)
    report = check_gradients(
        cross_entropy_loss(model, *batch(seed, model)), model.named_parameters()
    )
    assert sorted(report.errors) == trainable_names(model)  # the frozen ones have no gradient
    assert report.ok(TOL), str(report)


def test_frozen_parameters_get_no_gradient_but_pass_dx_down():
    model = last_k_blocks(tiny_classifier(4), 1)
    cross_entropy_loss(model, *batch(4, model))(True)
    for name, p in model.named_parameters().items():
        assert (p.grad is not None) == p.trainable, name
    assert np.abs(model.h[1].attn.c_attn.weight.grad).max() > 0


# -- through get_peft_model -----------------------------------------------------------------------


@settings(max_examples=6, deadline=None)
@given(seeds, kinds, st.integers(0, 2))
def test_configs_give_the_closed_form_counts_and_leave_the_output_unchanged(seed, kind, k):
    labels = K if kind == "clf" else None
    for config, expected in [
        (FullFinetuneConfig(), full_size(TINY, labels)),
        (HeadOnlyConfig(), head_size(TINY, labels)),
        (LastKBlocksConfig(k=k), last_k_size(TINY, k, labels)),
    ]:
        model = make(kind, seed)
        idx, _ = batch(seed, model)
        before = model.forward(idx)
        peft = get_peft_model(model, config)
        assert count_parameters(peft).trainable == expected, config
        np.testing.assert_array_equal(peft.forward(idx), before)


@settings(max_examples=5, deadline=None)
@given(seeds, kinds)
def test_frozen_parameters_are_bit_identical_after_training(seed, kind):
    model = make(kind, seed)
    peft = get_peft_model(model, LastKBlocksConfig(k=1))
    before = {n: p.value.copy() for n, p in peft.named_parameters().items()}
    opt = AdamW(peft.named_parameters(), lr=1e-2)
    loss = cross_entropy_loss(peft, *batch(seed, peft))
    for _ in range(20):
        loss(True)
        opt.step()
    for name, p in peft.named_parameters().items():
        if p.trainable:
            assert not np.array_equal(p.value, before[name]), name
        else:
            np.testing.assert_array_equal(p.value, before[name], err_msg=name)


def test_merge_and_unload_returns_the_model_itself_all_trainable():
    model = tiny_classifier()
    peft = get_peft_model(model, HeadOnlyConfig())
    assert isinstance(peft, PeftModel)
    assert peft.merge_and_unload() is model
    assert count_parameters(model).frozen == 0


def test_a_saved_last_k_model_loads_back(tmp_path):
    peft = get_peft_model(tiny_gpt(5), LastKBlocksConfig(k=1))
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 9)
    idx, _ = batch(5, peft)
    out = peft.forward(idx)
    peft.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_gpt(5), tmp_path)
    assert isinstance(loaded.peft_config, LastKBlocksConfig) and loaded.peft_config.k == 1
    np.testing.assert_array_equal(loaded.forward(idx), out)


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match=r"target_modules: HeadOnlyConfig chooses whole layers"):
        HeadOnlyConfig(target_modules=["c_attn"])
    with pytest.raises(ValueError, match=r"k: expected a number of blocks >= 0, got -1"):
        LastKBlocksConfig(k=-1)
    with pytest.raises(TypeError, match=r"k: expected an integer number of blocks, got '2'"):
        LastKBlocksConfig(k="2")
    with pytest.raises(
        ValueError,
        match=r"k: expected a number of blocks in \[0, n_layer\] = "
        r"\[0, 2\], got 5",
    ):
        get_peft_model(tiny_gpt(), LastKBlocksConfig(k=5))


# -- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [head_only, lambda m: last_k_blocks(m, 1), full_finetune],
    ids=["head", "last1", "full"],
)
def test_a_few_dozen_steps_lower_the_classifier_loss(policy):
    model = policy(tiny_classifier(7, dtype=np.float32))
    rng = np.random.default_rng(7)
    idx, labels = rng.integers(0, 11, (8, 6)), rng.integers(0, K, 8)
    opt = AdamW(model.named_parameters(), lr=1e-2, weight_decay=0.0)
    loss = cross_entropy_loss(model, idx, labels)
    first = loss(False)
    for _ in range(40):
        loss(True)
        opt.step()
    assert loss(False) < 0.7 * first


def test_gradual_unfreezing_trains_and_lowers_the_loss():
    model = tiny_classifier(8, dtype=np.float32)
    rng = np.random.default_rng(8)
    idx, labels = rng.integers(0, 11, (8, 6)), rng.integers(0, K, 8)
    schedule = GradualUnfreezing(model)
    opt = AdamW(model.named_parameters(), lr=1e-2, weight_decay=0.0)
    loss = cross_entropy_loss(model, idx, labels)
    first = loss(False)
    while True:
        for _ in range(15):
            loss(True)
            opt.step()
        if schedule.done:
            break
        schedule.step_epoch()
    assert loss(False) < 0.5 * first
