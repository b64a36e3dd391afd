"""The whole GPT: every parameter's gradient, causality, KV cache, tying, training, bad input."""

from dataclasses import replace

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.functional import cross_entropy, embedding_backward, embedding_forward
from minift.gradcheck import (
    check_gradients,
    cross_entropy_loss,
    fixed_dropout_masks,
    numerical_gradient_array,
    randomize_params,
    rel_error,
)
from minift.peft import METHODS

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)


def tiny_model(seed=0, config=TINY, cls=minift.GPT, **kw):
    model = cls(config, seed=seed, dtype=np.float64, **kw)
    randomize_params(model.named_parameters(), seed)
    return model


@settings(max_examples=4, deadline=None)
@given(seeds)
def test_every_gpt_parameter_matches_finite_differences(seed):
    rng = np.random.default_rng(seed)
    model = tiny_model(seed)
    idx = rng.integers(0, 11, (2, 6))
    targets = rng.integers(0, 11, (2, 6))
    targets[0, :2] = -100  # a masked prompt
    report = check_gradients(cross_entropy_loss(model, idx, targets), model.named_parameters())
    assert len(report.errors) == len(model.named_parameters()) == 2 + 2 * 12 + 2
    assert report.ok(TOL), str(report)


HEAD_PARAMS = {minift.GPT: ("ln_f", "wte"), minift.GPTForSequenceClassification: ("ln_f", "score")}


@settings(max_examples=6, deadline=None)
@given(seeds, st.integers(1, 3), st.integers(1, 6), st.sampled_from(list(HEAD_PARAMS)))
def test_head_pair_matches_finite_differences(seed, B, T, cls):
    """head_forward / head_backward alone: dx and the head's own gradients (ln_f, and the tied
    wte or the classifier's score), float64 central differences on the pair's output."""
    rng = np.random.default_rng(seed)
    model = tiny_model(seed % 5, cls=cls, **({"num_labels": 3} if cls is not minift.GPT else {}))
    x = rng.standard_normal((B, T, TINY.d_model))
    idx = rng.integers(0, 11, (B, T))
    dlogits = rng.standard_normal(model.head_forward(x, idx).shape)
    model.zero_grad()
    dx = model.head_backward(dlogits)

    def head():
        return model.head_forward(x, idx)

    assert rel_error(dx, numerical_gradient_array(head, x, dlogits)) < TOL
    for name, p in model.named_parameters().items():
        if name.startswith(HEAD_PARAMS[cls]):
            assert rel_error(p.grad, numerical_gradient_array(head, p.value, dlogits)) < TOL, name


@settings(max_examples=4, deadline=None)
@given(seeds, st.floats(0.1, 0.3), st.integers(1, 3), st.integers(1, 8))
def test_every_gpt_parameter_matches_finite_differences_with_dropout_on(seed, p, B, T):
    """The embedding dropout, every block's residual and MLP dropout, each mask held fixed.

    p stays at most 0.3: the embedding dropout acts on rows of only 8 channels, and at p ≈ 0.6
    it can leave a row of ln_1's input nearly constant, where LayerNorm bends like 1/σ³ and the
    1e-5 step errs by 1e-7 in wte's gradient (hypothesis found p = 0.59, B = T = 3)."""
    rng = np.random.default_rng(seed)
    model = tiny_model(seed, replace(TINY, dropout=p))
    idx = rng.integers(0, 11, (B, T))
    targets = rng.integers(0, 11, (B, T))
    targets[rng.random((B, T)) < 0.3] = -100
    targets[0, -1] = rng.integers(0, 11)  # at least one kept target
    loss = fixed_dropout_masks(cross_entropy_loss(model, idx, targets), model)
    report = check_gradients(loss, model.named_parameters())
    assert len(report.errors) == len(model.named_parameters())
    assert report.ok(TOL), str(report)


def test_forward_matches_an_independent_loop_reference():
    rng = np.random.default_rng(1)
    model = tiny_model(1)
    idx = rng.integers(0, 11, (2, 7))
    expected = ref.naive_gpt_logits(model.state_dict(), idx, TINY.n_layer, TINY.n_head)
    np.testing.assert_allclose(model.forward(idx), expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(2, 8))
def test_changing_later_tokens_never_changes_earlier_logits(seed, T):
    rng = np.random.default_rng(seed)
    model = tiny_model(seed % 7)
    idx = rng.integers(0, 11, (1, T))
    t = int(rng.integers(0, T - 1))
    other = idx.copy()
    other[0, t + 1 :] = (idx[0, t + 1 :] + rng.integers(1, 11, T - t - 1)) % 11
    a, b = model.forward(idx), model.forward(other)
    np.testing.assert_array_equal(a[:, : t + 1], b[:, : t + 1])
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_kv_cache_logits_equal_the_uncached_forward():
    rng = np.random.default_rng(2)
    model = tiny_model(2)
    idx = rng.integers(0, 11, (3, 8))
    full = model.forward(idx)
    cache = minift.KVCache(TINY.n_layer)
    pieces = [model.forward(idx[:, :3], kv_cache=cache)]
    for t in range(3, 8):
        pieces.append(model.forward(idx[:, t : t + 1], kv_cache=cache))
    assert cache.length == 8
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("temperature,top_k", [(0, None), (1.0, None), (0.7, 3)])
def test_generation_with_cache_equals_without(temperature, top_k):
    """Same tokens with and without the cache, also past block_size (the context is cropped)."""
    model = tiny_model(3)
    idx = np.random.default_rng(3).integers(0, 11, (2, 5))
    kw = {"temperature": temperature, "top_k": top_k, "seed": 9}
    cached = model.generate(idx, 12, use_cache=True, **kw)
    uncached = model.generate(idx, 12, use_cache=False, **kw)
    assert cached.shape == (2, 17)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached[:, :5], idx)


def test_top_k_of_one_is_greedy_and_sampling_is_seeded():
    model = tiny_model(4)
    idx = np.array([[1, 2, 3]])
    greedy = model.generate(idx, 6, temperature=0)
    np.testing.assert_array_equal(model.generate(idx, 6, temperature=1.3, top_k=1, seed=0), greedy)
    a = model.generate(idx, 6, temperature=1.0, seed=5)
    np.testing.assert_array_equal(a, model.generate(idx, 6, temperature=1.0, seed=5))


def test_generate_restores_the_training_mode():
    model = tiny_model(0)
    model.train()
    model.generate(np.array([[1]]), 2)
    assert model.training and model.h[0].mlp.dropout.training
    model.eval()
    model.generate(np.array([[1]]), 2)
    assert not model.training


def test_tied_wte_gets_lookup_plus_head_gradient():
    """wte is used twice (lookup and LM head); its grad is the sum of both uses' gradients."""
    rng = np.random.default_rng(5)
    model = tiny_model(5)
    idx, targets = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    # the head's use alone: logits = h·wteᵀ, so dwte = dlogitsᵀ·h
    _, dlogits = cross_entropy(model.forward(idx), targets)
    h = model.ln_f.forward(model.forward_body(idx))  # what the head multiplies by wteᵀ
    head_part = dlogits.reshape(-1, 11).T @ h.reshape(-1, 8)
    # the lookup's use alone: feed the same embeddings in, take their gradient, scatter-add it
    model.forward(idx)
    model.zero_grad()
    model.backward(dlogits)
    tied_grad = model.wte.weight.grad.copy()
    embeds, cache = embedding_forward(idx, model.wte.weight.value)
    model.forward(inputs_embeds=embeds)
    model.zero_grad()
    dembeds = model.backward(dlogits)
    lookup_part = embedding_backward(dembeds, cache)
    np.testing.assert_allclose(tied_grad, head_part + lookup_part, rtol=1e-10, atol=1e-14)
    assert not np.allclose(tied_grad, head_part)


def test_gpt_overfits_one_batch():
    from minift.optim import AdamW

    cfg = minift.GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, d_model=32)
    model = minift.GPT(cfg, seed=0, dtype=np.float32)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 20, (4, 16)), rng.integers(0, 20, (4, 16))
    opt = AdamW(model.named_parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):
        loss, dlogits = cross_entropy(model.forward(idx), targets)
        opt.zero_grad()
        model.backward(dlogits)
        opt.step()
    assert loss < 0.05
    assert all(p.value.dtype == np.float32 for p in model.parameters())


def test_float32_model_computes_in_float32():
    model = minift.GPT(TINY, seed=0)
    idx = np.zeros((1, 4), dtype=np.int64)
    logits = model.forward(idx)
    assert logits.dtype == np.float32
    _, dlogits = cross_entropy(logits, idx)
    model.backward(dlogits)
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


def test_same_seed_same_model():
    a, b = minift.GPT(TINY, seed=7), minift.GPT(TINY, seed=7)
    for (name, p), q in zip(a.named_parameters().items(), b.parameters(), strict=True):
        np.testing.assert_array_equal(p.value, q.value, err_msg=name)
    assert not np.array_equal(a.wte.weight.value, minift.GPT(TINY, seed=8).wte.weight.value)


# -- sequence classification -------------------------------------------------------------------


def test_classifier_gradients_match_finite_differences():
    cfg = minift.GPTConfig(
        vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8, pad_token_id=0
    )
    rng = np.random.default_rng(6)
    model = tiny_model(6, cfg, minift.GPTForSequenceClassification, num_labels=3)
    idx = rng.integers(1, 11, (3, 6))
    idx[0, 4:] = 0  # right padding
    labels = rng.integers(0, 3, 3)

    params = model.named_parameters()
    assert "score.weight" in params and params["score.weight"].shape == (8, 3)
    report = check_gradients(cross_entropy_loss(model, idx, labels), params)
    assert report.ok(TOL), str(report)


def full_path(model, idx, dlogits, mask=None):
    """The classifier's logits and gradients with the last block run at every position:
    ``head_forward(forward_body(idx))``, the path prompt tuning takes."""
    logits = model.head_forward(model.forward_body(idx, mask=mask), idx)
    model.zero_grad()
    model.backward_body(model.head_backward(dlogits))
    return logits, {n: p.grad.copy() for n, p in model.named_parameters().items() if p.trainable}


def pooled_path(model, idx, dlogits, mask=None):
    """The same through ``forward``/``backward``: the last block only at the pooled rows."""
    logits = model.forward(idx, mask=mask)
    model.zero_grad()
    model.backward(dlogits)
    return logits, {n: p.grad.copy() for n, p in model.named_parameters().items() if p.trainable}


@settings(max_examples=12, deadline=None)
@given(seeds, st.integers(1, 3), st.integers(1, 4), st.integers(1, 8), st.booleans())
def test_classifier_runs_its_last_block_only_where_the_head_reads_with_the_same_result(
    seed, n_layer, B, T, with_mask
):
    """forward computes the last block at last_b only; logits and every gradient are those of
    the block run at every position, to float64 rounding, for drawn paddings and masks."""
    rng = np.random.default_rng(seed)
    cfg = replace(TINY, n_layer=n_layer, pad_token_id=0)
    model = tiny_model(seed % 7, cfg, minift.GPTForSequenceClassification, num_labels=3)
    idx = rng.integers(1, 11, (B, T))
    for b, length in enumerate(rng.integers(1, T + 1, B)):
        idx[b, length:] = 0  # right padding, each row its own length
    mask = rng.uniform(-3, 0, (B, 1, 1, T)) if with_mask else None  # additive, finite
    dlogits = rng.standard_normal((B, 3))
    logits, grads = pooled_path(model, idx, dlogits, mask)
    ref_logits, ref_grads = full_path(model, idx, dlogits, mask)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-12, atol=1e-12)
    assert grads.keys() == ref_grads.keys() == model.named_parameters().keys()
    for name in grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-10, atol=1e-12)


@settings(max_examples=4, deadline=None)
@given(seeds, st.floats(0.1, 0.3))
def test_classifier_pooled_path_matches_finite_differences_with_dropout_on(seed, p):
    """Block.forward_at / backward_at inside the classifier, every dropout mask held fixed."""
    rng = np.random.default_rng(seed)
    cfg = replace(TINY, n_layer=2, dropout=p, pad_token_id=0)
    model = tiny_model(seed, cfg, minift.GPTForSequenceClassification, num_labels=3)
    idx = rng.integers(1, 11, (3, 6))
    idx[0, 4:] = 0
    labels = rng.integers(0, 3, 3)
    loss = fixed_dropout_masks(cross_entropy_loss(model, idx, labels), model)
    report = check_gradients(loss, model.named_parameters())
    assert len(report.errors) == len(model.named_parameters())
    assert report.ok(TOL), str(report)


@settings(max_examples=4, deadline=None)
@given(seeds, st.floats(0.1, 0.3), st.booleans())
def test_classifier_pooled_path_with_a_prefix_and_a_mask_matches_finite_differences(
    seed, p, prefix_projection
):
    """Attention.forward_at's other branches: a prefix's key/value rows in front (prefix
    tuning, with or without its MLP) and an additive mask over them and the sequence, dropout
    on. Every parameter is checked: the prefix's, and the frozen model's too."""
    from minift.peft import PrefixTuningConfig, get_peft_model

    rng = np.random.default_rng(seed)
    cfg = replace(TINY, n_layer=2, dropout=p, pad_token_id=0)
    model = tiny_model(seed, cfg, minift.GPTForSequenceClassification, num_labels=3)
    config = PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=prefix_projection)
    peft = get_peft_model(model, config, seed=seed)
    for param in peft.named_parameters().values():
        param.trainable = True  # the frozen weights' gradients flow through the same branches
    randomize_params(peft.named_parameters(), seed)
    idx = rng.integers(1, 11, (3, 5))
    idx[0, 3:] = 0
    mask = rng.uniform(-3, 0, (3, 1, 1, 2 + 5))  # over the 2 prefix rows and the 5 positions
    labels = rng.integers(0, 3, 3)

    def loss(run_backward):
        value, dlogits = cross_entropy(peft.forward(idx, mask=mask), labels)
        if run_backward:
            peft.zero_grad()
            peft.backward(dlogits)
        return value

    report = check_gradients(fixed_dropout_masks(loss, peft), peft.named_parameters())
    assert len(report.errors) == len(peft.named_parameters())
    assert report.ok(TOL), str(report)


@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].trains))
def test_every_method_on_the_classifier_gives_the_full_paths_logits_and_gradients(method):
    """The methods that wrap the last block's layers (LoRA on c_proj, adapters, IA3 on the MLP,
    a prefix's keys …) see B rows there instead of B·T: the same logits and gradients."""
    from minift.peft import PeftModel, get_peft_model

    rng = np.random.default_rng(3)
    cfg = replace(TINY, block_size=32, d_model=32, pad_token_id=0)  # room for default ranks
    model = tiny_model(3, cfg, minift.GPTForSequenceClassification, num_labels=3)
    config = METHODS[method].build("classification", 50)
    peft = model if config is None else get_peft_model(model, config, seed=3)
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 4)
    inner = getattr(peft, "base_model", peft)
    idx = rng.integers(1, 11, (3, 5))
    idx[1, 3:] = 0
    dlogits = rng.standard_normal((3, 3))
    logits = peft.forward(idx)
    peft.zero_grad()
    peft.backward(dlogits)
    grads = {n: p.grad.copy() for n, p in peft.named_parameters().items() if p.trainable}
    if isinstance(peft, PeftModel) and type(peft).forward is not PeftModel.forward:
        pytest.skip(f"{method}: its own forward (a prompt in front) takes the full path already")
    ref_logits, _ = full_path(inner, idx, dlogits)
    ref_grads = {n: p.grad.copy() for n, p in peft.named_parameters().items() if p.trainable}
    assert len(grads) > 0
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-12, atol=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-10, atol=1e-12)


def test_classifier_pools_the_last_non_pad_token_and_ignores_padding():
    cfg = minift.GPTConfig(
        vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8, pad_token_id=0
    )
    model = tiny_model(7, cfg, minift.GPTForSequenceClassification, num_labels=2)
    idx = np.array([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(model.pooled_positions(idx), [2, 4])
    short = model.forward(idx[:1, :3])
    padded = model.forward(idx[:1])
    np.testing.assert_allclose(padded, short, rtol=1e-12)
    with pytest.raises(ValueError, match="row 0 holds only pad tokens"):
        model.forward(np.zeros((1, 3), dtype=int))


def test_classifier_from_lm_shares_the_pretrained_params():
    lm = tiny_model(8)
    clf = minift.GPTForSequenceClassification.from_lm(lm, num_labels=4, seed=1, pad_token_id=3)
    assert clf.h[0].attn.c_attn.weight is lm.h[0].attn.c_attn.weight
    assert clf.config.pad_token_id == 3 and lm.config.pad_token_id is None
    assert set(clf.named_parameters()) == set(lm.named_parameters()) | {"score.weight"}
    with pytest.raises(TypeError, match="generate"):
        clf.generate(np.array([[1]]), 1)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idx", "exc", "match"),
    [
        (np.array([[1, 11]]), ValueError, r"idx: token ids must lie in \[0, 11\), got 11"),
        (np.array([[-1, 2]]), ValueError, r"idx: token ids must lie in \[0, 11\), got -1"),
        (np.zeros((1, 9), dtype=int), ValueError, "idx: sequence length 9 exceeds block_size=8"),
        (
            np.zeros((1, 3)),
            TypeError,
            "idx: expected an integer array of token ids, got dtype float64",
        ),
        (np.zeros(3, dtype=int), ValueError, r"idx: expected shape \(B, T\)"),
    ],
)
def test_bad_token_input_is_named(idx, exc, match):
    with pytest.raises(exc, match=match):
        tiny_model().forward(idx)


def test_sequence_too_long_with_cache_is_named():
    model = tiny_model()
    cache = minift.KVCache(TINY.n_layer)
    model.forward(np.zeros((1, 6), dtype=int), kv_cache=cache)
    with pytest.raises(ValueError, match=r"idx: sequence length 3 \(\+6 cached\) exceeds"):
        model.forward(np.zeros((1, 3), dtype=int), kv_cache=cache)


def test_wrong_dlogits_is_named():
    model = tiny_model()
    with pytest.raises(ValueError, match="dlogits: backward called before forward"):
        model.backward(np.zeros((1, 2, 11)))
    model.forward(np.zeros((1, 2), dtype=int))
    with pytest.raises(ValueError, match=r"dlogits: expected shape \(1, 2, 11\).*got \(1, 3, 11\)"):
        model.backward(np.zeros((1, 3, 11)))
    with pytest.raises(TypeError, match="dlogits: expected a floating-point array"):
        model.backward(np.zeros((1, 2, 11), dtype=int))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_head": 3}, "n_head: must divide d_model=8, got n_head=3"),
        ({"vocab_size": 0}, "vocab_size: expected a positive integer, got 0"),
        ({"dropout": 1.0}, r"dropout: expected a probability in \[0, 1\)"),
        ({"pad_token_id": 11}, r"pad_token_id: expected an id in \[0, 11\)"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps: expected > 0, got 0.0"),
        ({"layer_norm_eps": float("nan")}, "layer_norm_eps: expected > 0, got nan"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    fields = {**TINY.to_dict(), **kwargs}
    with pytest.raises(ValueError, match=match):
        minift.GPTConfig(**fields)


def test_bad_dtype_and_generation_options_are_named():
    with pytest.raises(TypeError, match="dtype: expected float32"):
        minift.GPT(TINY, dtype=np.int32)
    model = tiny_model()
    with pytest.raises(ValueError, match="temperature"):
        model.generate(np.array([[1]]), 2, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(np.array([[1]]), 2, top_k=0)
    with pytest.raises(ValueError, match="inputs_embeds: expected shape"):
        model.forward(inputs_embeds=np.zeros((1, 2, 5)))
    with pytest.raises(ValueError, match="max_new_tokens: expected >= 0, got -1"):
        model.generate(np.array([[1]]), -1)
    with pytest.raises(TypeError, match="config: expected a GPTConfig, got dict"):
        minift.GPT(TINY.to_dict())
    for both_or_neither in ({}, {"idx": np.array([[1]]), "inputs_embeds": np.zeros((1, 1, 8))}):
        with pytest.raises(ValueError, match="idx / inputs_embeds: pass exactly one of them"):
            model.forward(**both_or_neither)
    classifier = minift.GPTForSequenceClassification(replace(TINY, pad_token_id=0), num_labels=2)
    with pytest.raises(ValueError, match="idx: the classifier pools the last real token"):
        classifier.head_forward(np.zeros((1, 2, 8), np.float32))  # hidden states, no ids


def _grads_with_and_without_the_early_stop(model, forward_backward):
    """(grads, which blocks ran backward) as the model computes them, and the grads of a
    backward forced through every block, for each trainable Param."""
    ran = []

    def spy(block, i):
        def backward(dout):
            ran.append(i)
            return type(block).backward(block, dout)

        def backward_at(dout):  # the classifier's last block
            ran.append(i)
            return type(block).backward_at(block, dout)

        block.backward, block.backward_at = backward, backward_at

    for i, block in enumerate(model.h._items):
        spy(block, i)
    model.zero_grad()
    forward_backward()
    grads = {n: p.grad.copy() for n, p in model.named_parameters().items() if p.trainable}
    ran_first = sorted(ran)
    model._first_block_to_backprop = lambda: 0  # the full backward, for reference
    model.zero_grad()
    forward_backward()
    full = {n: p.grad.copy() for n, p in model.named_parameters().items() if p.trainable}
    assert sorted(ran[len(ran_first) :]) == list(range(len(model.h._items)))  # forced: all ran
    return grads, full, ran_first


@pytest.mark.parametrize(("k", "expected_blocks"), [(0, []), (1, [2]), (2, [1, 2]), (3, [0, 1, 2])])
def test_backward_stops_below_the_lowest_block_that_trains(k, expected_blocks):
    """Head-only and last-k fine-tuning: the frozen blocks below run no backward (nothing would
    keep their gradient), and every trainable gradient is the one the full backward gives."""
    from minift.peft import last_k_blocks

    config = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, d_model=8)
    model = tiny_model(config=config, cls=minift.GPTForSequenceClassification, num_labels=3)
    last_k_blocks(model, k)
    idx = np.random.default_rng(0).integers(0, 11, (2, 6))
    dlogits = np.random.default_rng(1).normal(size=(2, 3))

    grads, full, ran = _grads_with_and_without_the_early_stop(
        model, lambda: (model.forward(idx), model.backward(dlogits))
    )
    assert ran == expected_blocks
    assert grads.keys() == full.keys() and len(grads) > 0
    for name in grads:
        np.testing.assert_array_equal(grads[name], full[name], err_msg=name)


def test_a_prefix_keeps_the_backward_going_through_its_block():
    """Prefix tuning's Params live outside the blocks; its gradient comes through each block's
    attention, so every block with a prefix runs backward although none of its Params train."""
    from minift.peft import PrefixTuningConfig, get_peft_model

    peft = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=2))
    model = peft.base_model
    idx = np.random.default_rng(0).integers(0, 11, (2, 4))
    _, dlogits = cross_entropy(model.forward(idx), np.roll(idx, -1, axis=1))
    grads, full, ran = _grads_with_and_without_the_early_stop(
        model, lambda: (model.forward(idx), model.backward(dlogits))
    )
    assert ran == [0, 1] and len(grads) > 0
    for name in grads:
        np.testing.assert_array_equal(grads[name], full[name], err_msg=name)
