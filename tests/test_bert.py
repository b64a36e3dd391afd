"""BERT: every new pair and module gradient-checked, the model against a loop reference, the
invariants of padding and bidirectionality, fine-tuning methods on an encoder, and a float64
gradient check of a block of the real all-MiniLM-L6-v2 (skipped when it is not installed)."""

import json
import re

import bert_reference as ref
import numpy as np
import pytest
from helpers import import_references, installed_minilm, well_spread_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from minift import bert as B
from minift.checkpoint import load_tensors
from minift.gradcheck import (
    check_gradients,
    numerical_gradient,
    numerical_gradient_array,
    randomize_params,
    rel_error,
)
from minift.hub import hf_state_dict
from minift.peft import (
    AdaLoraConfig,
    AdapterConfig,
    BitFitConfig,
    GradualUnfreezing,
    HeadOnlyConfig,
    IA3Config,
    LastKBlocksConfig,
    LoraConfig,
    PeftModel,
    SparseConfig,
    count_parameters,
    get_peft_model,
)

TOL = 1e-7
fast = settings(max_examples=12, deadline=None)
seeds = st.integers(0, 2**31 - 1)

TINY = B.BertConfig(
    vocab_size=13,
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=12,
    max_position_embeddings=10,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
)


def tiny_bert(seed=0, pooler=False, config=TINY):
    model = B.BertModel(config, seed=seed, dtype=np.float64, add_pooling_layer=pooler)
    randomize_params(model.named_parameters(), seed)
    return model


def inputs(seed=0, B_=3, T=6, config=TINY):
    """ids, a mask with real padding (row b has T − b real tokens) and random token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, (B_, T))
    mask = np.ones((B_, T), np.int64)
    for b in range(B_):
        mask[b, T - b :] = 0
    ids[mask == 0] = config.pad_token_id
    types = rng.integers(0, config.type_vocab_size, (B_, T))
    return ids, mask, types


def assert_ok(report):
    """Every relative error below TOL, but the key bias's: its gradient is exactly 0.

    Softmax is shift-invariant along each query's row, and q·(k_j + b) = q·k_j + q·b adds the
    SAME q·b to every score of the row; so the loss does not depend on the key bias at all, and
    its relative error compares rounding noise with rounding noise. For it we assert instead
    that the analytic gradient is zero to rounding (1e-12) and the finite difference below 1e-7,
    above the rounding floor ε·|f|/h ≈ 2e-16 · 100 / 1e-5 = 2e-9 of these losses.
    """
    for name, err in report.errors.items():
        if name.endswith("key.bias"):
            _, analytic, numeric = report.worst_entry[name]
            assert abs(analytic) < 1e-12 and abs(numeric) < 1e-7, (name, analytic, numeric)
        else:
            assert err < TOL, str(report)


def scalar_loss(forward, backward, params, dout):
    """Σ forward() ⊙ dout, with backward(dout) filling the grads: what check_gradients takes."""

    def loss(run_backward):
        value = float(np.sum(forward() * dout))
        if run_backward:
            for p in params.values():
                p.zero_grad()
            backward(dout)
        return value

    return loss


# ------------------------------------------------------------------------------------------------
# Ring 1: the new pairs


@fast
@given(seeds, st.sampled_from([(4, 1), (6, 2), (8, 4)]), st.integers(1, 5))
def test_self_attention_pair_with_a_padding_mask(seed, shape, T):
    C, nh = shape
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((2, T, C)) for _ in range(3))
    mask = np.ones((2, T), np.int64)
    mask[1, T // 2 + 1 :] = 0  # row 1 padded (at least one real token stays)
    M = B.padding_mask(mask, np.float64)
    y, cache = B.self_attention_forward(q, k, v, nh, M)
    dy = rng.standard_normal(y.shape)
    dq, dk, dv = B.self_attention_backward(dy, cache)
    for x, dx in ((q, dq), (k, dk), (v, dv)):
        num = numerical_gradient_array(lambda: B.self_attention_forward(q, k, v, nh, M)[0], x, dy)
        assert rel_error(dx, num) < TOL
    # padding keys get no attention: their values have no gradient
    assert np.all(dv[1][mask[1] == 0] == 0) and np.all(dk[1][mask[1] == 0] == 0)


def test_padding_mask_is_zero_on_tokens_and_the_most_negative_float_on_padding():
    M = B.padding_mask(np.array([[1, 1, 0]]), np.float32)
    assert M.shape == (1, 1, 1, 3) and M.dtype == np.float32
    assert M[0, 0, 0, 0] == 0 and M[0, 0, 0, 2] == np.finfo(np.float32).min


@fast
@given(seeds, st.integers(1, 6), st.integers(1, 5))
def test_mean_pooling_pair(seed, T, H):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((3, T, H))
    mask = (rng.random((3, T)) < 0.7).astype(np.int64)
    mask[:, 0] = 1
    e, cache = B.mean_pooling_forward(h, mask)
    for b in range(3):  # the mean of the real tokens, padding ignored
        np.testing.assert_allclose(e[b], h[b][mask[b] == 1].mean(axis=0), rtol=1e-14)
    de = rng.standard_normal(e.shape)
    dh = B.mean_pooling_backward(de, cache)
    assert (
        rel_error(dh, numerical_gradient_array(lambda: B.mean_pooling_forward(h, mask)[0], h, de))
        < TOL
    )


@fast
@given(seeds, st.integers(1, 7))
def test_l2_normalize_pair(seed, H):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, H)) + 0.1
    y, cache = B.l2_normalize_forward(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, rtol=1e-14)
    dy = rng.standard_normal(y.shape)
    dx = B.l2_normalize_backward(dy, cache)
    assert (
        rel_error(dx, numerical_gradient_array(lambda: B.l2_normalize_forward(x)[0], x, dy)) < TOL
    )
    # moving x along itself does not move ê: the gradient has no component along x
    np.testing.assert_allclose((dx * x).sum(axis=-1), 0.0, atol=1e-12)


def test_l2_normalize_below_eps_divides_by_eps_and_its_gradient_too():
    x = np.array([[3e-13, -4e-13]])  # ‖x‖ = 5e-13 < 1e-12
    y, cache = B.l2_normalize_forward(x)
    np.testing.assert_allclose(y, x / 1e-12)
    dy = np.array([[1.0, 2.0]])
    np.testing.assert_allclose(B.l2_normalize_backward(dy, cache), dy / 1e-12)


def test_tanh_pair():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    y, cache = B.tanh_forward(x)
    dy = rng.standard_normal(y.shape)
    num = numerical_gradient_array(lambda: B.tanh_forward(x)[0], x, dy)
    assert rel_error(B.tanh_backward(dy, cache), num) < TOL


# ------------------------------------------------------------------------------------------------
# Ring 2: every module, and the whole model


def module_check(module, forward, backward, x, rng, check_dx=True):
    out = forward(x)
    dout = rng.standard_normal(out.shape)
    params = module.named_parameters()
    report = check_gradients(scalar_loss(lambda: forward(x), backward, params, dout), params)
    assert_ok(report)
    if check_dx:
        forward(x)
        dx = backward(dout)
        assert rel_error(dx, numerical_gradient_array(lambda: forward(x), x, dout)) < TOL


@fast
@given(seeds, st.integers(1, 6))
def test_layer_modules_gradients(seed, T):
    rng = np.random.default_rng(seed)
    c = TINY
    kw = {"rng": rng, "dtype": np.float64}
    mask = np.ones((2, T), np.int64)
    mask[1, T // 2 + 1 :] = 0
    M = B.padding_mask(mask, np.float64)
    x = well_spread_rows(rng, 2, T, c.hidden_size)
    for module in [
        B.BertSelfAttention(c, **kw),
        B.BertAttention(c, **kw),
        B.BertIntermediate(c, **kw),
        B.BertLayer(c, **kw),
    ]:
        randomize_params(module.named_parameters(), seed)
        if isinstance(module, B.BertIntermediate):
            module_check(module, module.forward, module.backward, x, rng)
        else:
            module_check(module, lambda x, m=module: m.forward(x, M), module.backward, x, rng)


@fast
@given(seeds, st.integers(1, 5))
def test_residual_output_gradients_reach_both_inputs(seed, T):
    rng = np.random.default_rng(seed)
    module = B.BertResidualOutput(TINY.intermediate_size, TINY, rng=rng, dtype=np.float64)
    randomize_params(module.named_parameters(), seed)
    h = rng.standard_normal((2, T, TINY.intermediate_size))
    x = well_spread_rows(rng, 2, T, TINY.hidden_size)
    dout = rng.standard_normal((2, T, TINY.hidden_size))
    params = module.named_parameters()
    report = check_gradients(
        scalar_loss(lambda: module.forward(h, x), lambda d: module.backward(d), params, dout),
        params,
    )
    assert_ok(report)
    module.forward(h, x)
    dh, dx = module.backward(dout)
    assert rel_error(dh, numerical_gradient_array(lambda: module.forward(h, x), h, dout)) < TOL
    assert rel_error(dx, numerical_gradient_array(lambda: module.forward(h, x), x, dout)) < TOL


def test_pooler_gradients():
    rng = np.random.default_rng(3)
    module = B.BertPooler(TINY, rng=rng, dtype=np.float64)
    randomize_params(module.named_parameters(), 3)
    module_check(module, module.forward, module.backward, rng.standard_normal((2, 4, 8)), rng)


@pytest.mark.parametrize("seed", [0, 1])
def test_whole_model_gradients_with_padding_and_token_types(seed):
    model = tiny_bert(seed)
    ids, mask, types = inputs(seed)
    out = model.forward(ids, mask, types)
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    params = model.named_parameters()
    report = check_gradients(
        scalar_loss(lambda: model.forward(ids, mask, types), model.backward, params, dout), params
    )
    assert_ok(report)
    # every parameter got a gradient: all of the model is on the path
    model.zero_grad()
    model.forward(ids, mask, types)
    model.backward(dout)
    assert all(p.grad is not None for p in params.values())


@pytest.mark.parametrize("normalize", [False, True])
def test_sentence_classifier_gradients(normalize):
    model = B.BertSentenceClassifier(tiny_bert(4), num_labels=3, seed=4, normalize=normalize)
    randomize_params(model.named_parameters(), 4)
    ids, mask, _ = inputs(4)
    names = sorted(model.named_parameters())
    assert names[0].startswith("bert.") and "classifier.weight" in names
    dout = np.random.default_rng(4).standard_normal((3, 3))
    params = model.named_parameters()
    report = check_gradients(
        scalar_loss(lambda: model.forward(ids), model.backward, params, dout), params
    )
    assert_ok(report)


# ------------------------------------------------------------------------------------------------
# Ring 3: against the loop reference, and the invariants


def test_forward_matches_the_loop_reference_weight_for_weight():
    model = tiny_bert(7)
    ids, mask, types = inputs(7, B_=3, T=7)
    ours = model.forward(ids, mask, types)
    theirs = ref.naive_bert_hidden(
        hf_state_dict(model), ids, mask, types, TINY.num_hidden_layers,
        TINY.num_attention_heads, TINY.layer_norm_eps,
    )  # fmt: skip
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_padding_changes_nothing_at_the_real_tokens():
    """More padding, or other ids under the padding, leave the real tokens' outputs as they were,
    and so the mean-pooled sentence vector."""
    model = tiny_bert(8)
    ids, mask, types = inputs(8, B_=1, T=4)
    short = model.forward(ids, mask, types)
    rng = np.random.default_rng(8)
    padded_ids = np.concatenate([ids, rng.integers(0, TINY.vocab_size, (1, 5))], axis=1)
    padded_mask = np.concatenate([mask, np.zeros((1, 5), np.int64)], axis=1)
    padded_types = np.concatenate([types, np.zeros((1, 5), np.int64)], axis=1)
    long = model.forward(padded_ids, padded_mask, padded_types)
    np.testing.assert_allclose(long[:, :4], short, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        B.mean_pooling_forward(long, padded_mask)[0], B.mean_pooling_forward(short, mask)[0],
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip


def test_attention_is_bidirectional():
    """Unlike the GPT, the FIRST position's output depends on the LAST token."""
    model = tiny_bert(9)
    ids = np.array([[1, 2, 3, 4]])
    other = ids.copy()
    other[0, -1] = 5
    assert np.abs(model.forward(ids)[0, 0] - model.forward(other)[0, 0]).max() > 1e-3


def test_dropout_acts_in_training_mode_only():
    config = B.BertConfig(**{**TINY.to_dict(), "hidden_dropout_prob": 0.5})
    model = B.BertModel(config, seed=1, dtype=np.float64)
    plain = B.BertModel(TINY, seed=1, dtype=np.float64)
    ids, mask, types = inputs(1)
    assert np.abs(model.forward(ids, mask, types) - plain.forward(ids, mask, types)).max() > 1e-3
    model.eval()
    np.testing.assert_array_equal(model.forward(ids, mask, types), plain.forward(ids, mask, types))


def test_defaults_are_hugging_faces_all_ones_mask_and_type_zero():
    model = tiny_bert(2)
    ids = np.array([[3, 4, 5]])
    np.testing.assert_array_equal(
        model.forward(ids),
        model.forward(ids, np.ones((1, 3), np.int64), np.zeros((1, 3), np.int64)),
    )


def test_the_classifier_masks_pad_ids_when_given_no_mask():
    clf = B.BertSentenceClassifier(tiny_bert(5), num_labels=2)
    ids, mask, _ = inputs(5)
    np.testing.assert_array_equal(clf.forward(ids), clf.forward(ids, mask))


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda m: m.forward(np.zeros((1, 11), np.int64)),
            "sequence length 11 exceeds max_position",
        ),
        (lambda m: m.forward(np.array([[1, 13]])), r"token ids must lie in \[0, 13\), got 13"),
        (lambda m: m.forward(np.array([[1.0, 2.0]])), "expected integer token ids"),
        (lambda m: m.forward(np.array([1, 2])), r"expected shape \(B, T\)"),
        (lambda m: m.forward(np.array([[1, 2]]), np.array([[1, 2]])), "1 for a real token and 0"),
        (
            lambda m: m.forward(np.array([[1, 2]]), np.array([[1]])),
            r"attention_mask: expected shape",
        ),
        (lambda m: m.forward(np.array([[1, 2]]), None, np.array([[0, 2]])), r"types in \[0, 2\)"),
        (lambda m: m.backward(np.zeros((1, 2, 8))), "dh: backward called before forward"),
    ],
)
def test_bad_inputs_are_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(tiny_bert())


def test_backward_checks_the_upstream_shape():
    model = tiny_bert()
    model.forward(np.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"dh: expected shape \(1, 3, 8\) \(the last forward"):
        model.backward(np.zeros((1, 2, 8)))


def test_config_is_validated():
    with pytest.raises(ValueError, match="num_attention_heads: must divide hidden_size=8"):
        B.BertConfig(**{**TINY.to_dict(), "num_attention_heads": 3})
    with pytest.raises(ValueError, match="pad_token_id"):
        B.BertConfig(**{**TINY.to_dict(), "pad_token_id": 13})
    with pytest.raises(TypeError, match="dtype"):
        B.BertModel(TINY, dtype=np.float16)


# ------------------------------------------------------------------------------------------------
# Fine-tuning methods on an encoder: Linear modules named like Hugging Face's


ENCODER_METHODS = {
    "lora": lambda: LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]),
    "lora-all": lambda: LoraConfig(
        r=2, lora_alpha=4, target_modules=["query", "key", "value", "dense"]
    ),
    "dora": lambda: LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], use_dora=True),
    "ia3": lambda: IA3Config(
        target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]
    ),
    "adapter": lambda: AdapterConfig(
        bottleneck_size=3, target_modules=["attention.output.dense", "layer.0.output.dense"]
    ),
    "bitfit": lambda: BitFitConfig(),
    "adalora": lambda: AdaLoraConfig(
        init_r=3, target_r=2, total_step=10, target_modules=["query", "value", "dense"]
    ),
    # the article's A4 as sparse fine-tuning: W = W₀ + σ(Δ ⊙ D), Δ = 0 at the start
    "sparse": lambda: SparseConfig(
        density=0.3, activation="tanh", target_modules=["query", "intermediate.dense"]
    ),
    "last-k-blocks": lambda: LastKBlocksConfig(k=1),  # gradients through a frozen block below
}


@pytest.mark.parametrize("method", sorted(ENCODER_METHODS))
def test_methods_start_at_the_base_model_and_their_gradients_check(method):
    ids, mask, _ = inputs(11)
    base = B.BertSentenceClassifier(tiny_bert(11), num_labels=3, seed=11)
    expected = base.forward(ids)
    config = ENCODER_METHODS[method]()
    config.modules_to_save = ["classifier"]
    peft = get_peft_model(base, config, seed=11)
    np.testing.assert_allclose(peft.forward(ids), expected, rtol=1e-12, atol=1e-12)
    trainable = {n: p for n, p in peft.named_parameters().items() if p.trainable}
    assert "classifier.weight" in trainable and 0 < count_parameters(peft).trainable
    assert any(not n.startswith("classifier.") for n in trainable), "the method trains nothing"
    randomize_params(trainable, 12)  # off the start, so that every path carries a gradient
    dout = np.random.default_rng(11).standard_normal(expected.shape)
    report = check_gradients(
        scalar_loss(lambda: peft.forward(ids), peft.backward, trainable, dout), trainable
    )
    assert_ok(report)


def test_head_only_and_last_k_blocks_find_the_classifier_and_the_encoder_layers():
    """The SFT policies read BertSentenceClassifier's declared parts: head-only trains exactly
    the classifier, H·K + K; last-k the top k encoder layers and the classifier, k·(4H² + 2H·I +
    9H + I) + H·K + K (no ln_f: BERT is post-LN); the embeddings never."""
    H, I, K, L = TINY.hidden_size, TINY.intermediate_size, 3, TINY.num_hidden_layers
    block = 4 * H * H + 2 * H * I + 9 * H + I
    head = H * K + K
    for config, expected_prefixes, expected_count in [
        (HeadOnlyConfig(), ("classifier.",), head),
        (LastKBlocksConfig(k=1), ("classifier.", f"bert.encoder.layer.{L - 1}."), block + head),
        (LastKBlocksConfig(k=L), ("classifier.", "bert.encoder.layer."), L * block + head),
    ]:
        clf = B.BertSentenceClassifier(tiny_bert(16), num_labels=K, seed=16)
        peft = get_peft_model(clf, config)
        params = peft.named_parameters()
        trainable = {n for n, p in params.items() if p.trainable}
        assert trainable == {n for n in params if n.startswith(expected_prefixes)}, config
        assert count_parameters(peft).trainable == expected_count, config
    assert len(clf.bert.encoder.layer[0].named_parameters()) == 16  # every part of a block counted


def test_gradual_unfreezing_on_bert_goes_head_then_top_down_then_everything():
    clf = B.BertSentenceClassifier(tiny_bert(17), num_labels=2, seed=17)
    schedule = GradualUnfreezing(clf)

    def trainable_prefixes():
        names = [n for n, p in clf.named_parameters().items() if p.trainable]
        return sorted({".".join(n.split(".")[:4]) if n.startswith("bert.") else n for n in names})

    assert trainable_prefixes() == ["classifier.bias", "classifier.weight"]
    schedule.step_epoch()
    assert trainable_prefixes() == ["bert.encoder.layer.1", "classifier.bias", "classifier.weight"]
    schedule.step_epoch()
    assert trainable_prefixes()[:2] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert not any(n.startswith("bert.embeddings") for n in trainable_prefixes())
    schedule.step_epoch()
    assert schedule.done and all(p.trainable for p in clf.parameters())


def test_the_sft_policies_on_a_bare_bert_model_say_it_has_no_head():
    with pytest.raises(TypeError, match="model: BertModel has no head to train: expected a task"):
        get_peft_model(tiny_bert(), HeadOnlyConfig())


def test_lora_on_bert_merges_exactly_and_counts_r_times_in_plus_out():
    ids, _, _ = inputs(13)
    clf = B.BertSentenceClassifier(tiny_bert(13), num_labels=2, seed=13)
    peft = get_peft_model(clf, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    lora = {n: p for n, p in peft.named_parameters().items() if "lora_" in n}
    assert len(lora) == 2 * 2 * TINY.num_hidden_layers
    assert "bert.encoder.layer.0.attention.self.query.lora_A" in lora
    assert count_parameters(peft).trainable == 2 * TINY.num_hidden_layers * 2 * (8 + 8)
    randomize_params(lora, 13)
    adapted = peft.forward(ids)
    merged = peft.merge_and_unload()
    np.testing.assert_allclose(merged.forward(ids), adapted, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# The real weights: a float64 gradient check of one block of all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def minilm64():
    from minift import hub

    folder = installed_minilm()
    model = hub.from_pretrained(folder, dtype=np.float64, dropout=0.0)
    return model, hub.load_tokenizer(folder)


def test_a_block_of_the_real_minilm_passes_a_float64_gradient_check(minilm64):
    """Layer 0 with its real weights, on the real embeddings of two short sentences (one padded):
    a sample of every parameter's entries, and of the input's, against central differences.

    About 900 forward passes of one layer on 12 tokens: matrices so small that one BLAS thread
    is fastest, and a second only waits for the first (on a busy machine, 30× slower).
    """
    from threadpoolctl import threadpool_limits

    model, tok = minilm64
    ids, mask = tok.encode_batch(["The cat sat.", "Hi!"])  # T = 6, the second row padded
    model.eval()
    x = model.embeddings.forward(ids, np.zeros_like(ids))  # the real input of layer 0
    layer = model.encoder.layer[0]
    M = B.padding_mask(mask, np.float64)
    out = layer.forward(x, M)
    dout = np.random.default_rng(0).standard_normal(out.shape)
    params = layer.named_parameters()
    with threadpool_limits(1, user_api="blas"):
        report = check_gradients(
            scalar_loss(lambda: layer.forward(x, M), layer.backward, params, dout),
            params,
            max_entries=12,
        )
        assert_ok(report)
        layer.forward(x, M)
        dx = layer.backward(dout)
        picks = np.random.default_rng(1).choice(x.size, 40, replace=False)
        loss = lambda: float(np.sum(layer.forward(x, M) * dout))  # noqa: E731
        num = numerical_gradient(loss, x, indices=picks)
    assert rel_error(dx.reshape(-1)[picks], num.reshape(-1)[picks]) < TOL


@pytest.mark.reference
@pytest.mark.filterwarnings("error:fan_in_fan_out")  # the config must say False for BERT itself
def test_a_lora_adapter_on_bert_gives_the_same_output_in_hugging_face_peft(tmp_path):
    """The adapter file (PEFT's keys, A [r, in], B [out, r]) means the same on a torch BertModel,
    and its config says fan_in_fan_out=False (nn.Linear's [out, in]), so PEFT corrects nothing."""
    torch, transformers, peft_lib = import_references()
    from minift import hub

    model = tiny_bert(14, pooler=True)
    hub.save_pretrained(model, tmp_path / "base")
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    randomize_params({n: p for n, p in peft.named_parameters().items() if "lora_" in n}, 14)
    ids, mask, types = inputs(14)
    ours = peft.forward(ids, mask, types)
    peft.save_pretrained(tmp_path / "adapter")
    assert (
        json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["fan_in_fan_out"]
        is False
    )
    hf = transformers.BertModel.from_pretrained(tmp_path / "base", torch_dtype=torch.float64)
    hf = peft_lib.PeftModel.from_pretrained(hf.eval(), tmp_path / "adapter")
    with torch.no_grad():
        # by name: the file says FEATURE_EXTRACTION, whose PeftModel takes inputs_embeds third
        theirs = hf(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        ).last_hidden_state
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("given", [None, False, True])
def test_fan_in_fan_out_follows_bert_whatever_the_config_says(given, recwarn):
    """BERT's files store [out, in]: None is filled in silently, True is corrected with a
    warning (as PEFT does), and the adapter's math is the same either way."""
    config = LoraConfig(r=2, target_modules=["query"], fan_in_fan_out=given)
    peft = get_peft_model(tiny_bert(3), config)
    assert peft.peft_config.fan_in_fan_out is False
    warned = [w for w in recwarn if "fan_in_fan_out is set to True" in str(w.message)]
    assert len(warned) == (1 if given is True else 0)


def test_a_saved_bert_adapter_keeps_an_embedding_table_in_its_own_layout(tmp_path):
    """modules_to_save may hold an embedding table: [vocab, hidden] in the file as in minift
    (only Linear weights are transposed to torch's [out, in]); it loads back exactly."""
    ids, _, _ = inputs(15)
    config = LoraConfig(r=2, target_modules=["query"])
    config.modules_to_save = ["classifier", "bert.embeddings.word_embeddings"]
    clf = B.BertSentenceClassifier(tiny_bert(15), num_labels=2, seed=15)
    peft = get_peft_model(clf, config)
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 15)
    expected = peft.forward(ids)
    peft.save_pretrained(tmp_path)
    tensors, _ = load_tensors(tmp_path / "adapter_model.safetensors")
    table = next(v for k, v in tensors.items() if k.endswith("word_embeddings.weight"))
    head = next(v for k, v in tensors.items() if k.endswith("classifier.weight"))
    assert table.shape == (TINY.vocab_size, TINY.hidden_size) and head.shape == (2, 8)
    fresh = B.BertSentenceClassifier(tiny_bert(15), num_labels=2, seed=15)
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    np.testing.assert_array_equal(loaded.forward(ids), expected)


@pytest.mark.parametrize(
    ("trains", "expected_layers"),
    [("nothing", []), ("layer 2", [2]), ("layer 1", [1, 2]), ("embeddings", [0, 1, 2])],
)
def test_backward_stops_below_the_lowest_layer_that_trains(trains, expected_layers):
    """LoRA on the top layers, or a head alone: the frozen layers below run no backward (nothing
    would keep their gradient), and every trainable gradient is the one the full backward gives."""
    from dataclasses import replace

    config = replace(TINY, num_hidden_layers=3)
    model = tiny_bert(config=config)
    prefix = {"nothing": None, "layer 2": "encoder.layer.2.", "layer 1": "encoder.layer.1.",
              "embeddings": "embeddings."}[trains]  # fmt: skip
    for name, p in model.named_parameters().items():
        p.trainable = prefix is not None and name.startswith(prefix)
    ran = []
    for i, layer in enumerate(model.encoder.layer._items):
        layer.backward = lambda dout, i=i, layer=layer: (
            ran.append(i) or type(layer).backward(layer, dout)
        )
    ids, mask, types = inputs(config=config)
    dh = np.random.default_rng(1).normal(size=(*ids.shape, config.hidden_size))

    def grads():
        model.zero_grad()
        model.forward(ids, mask, types)
        model.backward(dh)
        return {n: p.grad.copy() for n, p in model.named_parameters().items() if p.trainable}

    early = grads()
    assert sorted(ran) == expected_layers
    model._first_layer_to_backprop = lambda: 0  # the full backward, for reference
    ran.clear()
    full = grads()
    assert sorted(ran) == [0, 1, 2]
    assert early.keys() == full.keys() and (len(early) > 0) == (trains != "nothing")
    for name in early:
        np.testing.assert_array_equal(early[name], full[name], err_msg=name)


# -- bad input to the config, the classifier and the sentence encoder, each named --------------

CONFIG_MISFITS = [
    (dict(hidden_size=0), "hidden_size: expected a positive integer, got 0"),
    (dict(num_hidden_layers=2.0), "num_hidden_layers: expected a positive integer, got 2.0"),
    (dict(vocab_size=True), "vocab_size: expected a positive integer, got True"),
    (dict(num_attention_heads=3), "num_attention_heads: must divide hidden_size=8, got 3"),
    (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob: expected a probability in [0, 1)"),
]


@pytest.mark.parametrize(
    "change, message", CONFIG_MISFITS, ids=[m.split(":")[0] for _, m in CONFIG_MISFITS]
)
def test_a_config_out_of_range_is_refused_naming_the_field(change, message):
    import dataclasses

    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(TINY, **change)


def test_the_classifier_refuses_what_is_not_a_bert_or_not_a_label_count():
    bert = tiny_bert()
    with pytest.raises(TypeError, match="config: expected a BertConfig, got dict"):
        B.BertModel({"hidden_size": 8})
    with pytest.raises(TypeError, match="bert: expected a BertModel, got dict"):
        B.BertSentenceClassifier({}, 2)
    with pytest.raises(TypeError, match="num_labels: expected an integer, got 2.0"):
        B.BertSentenceClassifier(bert, 2.0)
    with pytest.raises(ValueError, match="num_labels: a classifier needs >= 2 labels, got 1"):
        B.BertSentenceClassifier(bert, 1)
    classifier = B.BertSentenceClassifier(bert, 3)
    assert classifier.dtype == np.float64  # the encoder's
    with pytest.raises(ValueError, match="dlogits: backward called before forward"):
        classifier.backward(np.zeros((2, 3)))


def test_the_sentence_encoder_refuses_a_length_it_cannot_hold_and_a_lone_string():
    bert, tok = tiny_bert(), object()
    for bad in (1, 2.5, True):
        with pytest.raises(
            ValueError, match=re.escape(f"max_seq_length: expected an integer >= 2, got {bad!r}")
        ):
            B.SentenceEncoder(bert, tok, max_seq_length=bad)
    with pytest.raises(
        ValueError, match="max_seq_length: 11 exceeds the model's max_position_embeddings=10"
    ):
        B.SentenceEncoder(bert, tok, max_seq_length=11)
    encoder = B.SentenceEncoder(bert, tok, max_seq_length=10)
    with pytest.raises(TypeError, match="sentences: expected a list of strings, got one string"):
        encoder.encode("one sentence")
