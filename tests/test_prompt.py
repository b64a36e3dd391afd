"""Prompt tuning and prefix tuning (peft/prompt.py, peft/prefix.py): every claim of their
docstrings, checked."""

import json
import math

import numpy as np
import pytest
import reference as ref
from helpers import hf_gpt2, import_references
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.checkpoint import load_tensors, save_tensors
from minift.data import standard_tokenizer, tokenizer_from_name
from minift.errors import FileFormatError
from minift.functional import cross_entropy
from minift.gradcheck import check_gradients, cross_entropy_loss, randomize_params
from minift.optim import AdamW
from minift.peft import count_parameters, get_peft_model
from minift.peft.base import PeftModel
from minift.peft.prefix import PrefixTuningConfig, prefix_mlp_backward, prefix_mlp_forward
from minift.peft.prompt import PromptTuningConfig, text_init_ids

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)
METHODS = {
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=3),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=3),
    "prefix_projection": lambda: PrefixTuningConfig(
        num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=5
    ),
}


def tiny_model(seed=0, cls=minift.GPT, config=TINY, dtype=np.float64):
    """A tiny model at a random point of order one (so every gradient path carries signal)."""
    kw = {"num_labels": 3} if cls is minift.GPTForSequenceClassification else {}
    model = cls(config, seed=seed, dtype=dtype, **kw)
    if dtype == np.float64:
        randomize_params(model.named_parameters(), seed)
    return model


def peft_of(model, config, seed=0):
    """get_peft_model, with the method's own params moved to a random point too."""
    peft = get_peft_model(model, config, seed=seed)
    own = {n: p for n, p in peft.named_parameters().items() if n.startswith("prompt_encoder.")}
    randomize_params(own, seed + 1, scale=0.5)
    return peft


def method_model(peft):
    """The PeftModel subclass the config names (what get_peft_model will build once base.py
    honours ``peft_model_class``)."""
    return peft.peft_config.peft_model_class(peft.base_model, peft.peft_config)


# ------------------------------------------------------------------------------------------------
# An independent reference: the GPT forward with plain loops, with virtual tokens or prefixes


def naive_logits(state, embeds, n_layer, n_head, prefix=None, start=0):
    """Logits of GPT-2 from input EMBEDDINGS [B, T', C] at positions start … start+T'−1;
    ``prefix`` is PEFT's prompt_embeddings [n, 2·L·C], unpacked as PEFT unpacks
    past_key_values."""
    out = []
    for x0 in embeds:
        T, C = x0.shape
        hs = C // n_head
        x = x0 + state["wpe.weight"][start : start + T]
        for layer in range(n_layer):
            p = f"h.{layer}."
            a = ref._layer_norm(x, state[p + "ln_1.weight"], state[p + "ln_1.bias"])
            qkv = a @ state[p + "attn.c_attn.weight"] + state[p + "attn.c_attn.bias"]
            q, k, v = qkv[:, :C], qkv[:, C : 2 * C], qkv[:, 2 * C :]
            if prefix is not None:
                n = prefix.shape[0]
                # PEFT: view(n, 2L, nh, hs).permute → [2L, nh, n, hs]; layer ℓ = (2ℓ, 2ℓ + 1)
                kv = prefix.reshape(n, 2 * n_layer, n_head, hs).transpose(1, 2, 0, 3)
                k_p = kv[2 * layer].transpose(1, 0, 2).reshape(n, C)  # heads side by side
                v_p = kv[2 * layer + 1].transpose(1, 0, 2).reshape(n, C)
                k, v = np.concatenate([k_p, k]), np.concatenate([v_p, v])
            heads = []
            for h in range(n_head):
                sl = slice(h * hs, (h + 1) * hs)
                one = (t[None, None, :, sl] for t in (q, k, v))
                heads.append(ref.naive_causal_attention(*one)[0, 0])
            y = np.concatenate(heads, axis=1)
            x = x + y @ state[p + "attn.c_proj.weight"] + state[p + "attn.c_proj.bias"]
            m = ref._layer_norm(x, state[p + "ln_2.weight"], state[p + "ln_2.bias"])
            m = ref._gelu(m @ state[p + "mlp.c_fc.weight"] + state[p + "mlp.c_fc.bias"])
            x = x + m @ state[p + "mlp.c_proj.weight"] + state[p + "mlp.c_proj.bias"]
        x = ref._layer_norm(x, state["ln_f.weight"], state["ln_f.bias"])
        out.append(x @ state["wte.weight"].T)
    return np.stack(out)


def test_prompt_tuning_matches_the_loop_reference_on_prompt_then_tokens():
    rng = np.random.default_rng(0)
    peft = peft_of(tiny_model(0), PromptTuningConfig(num_virtual_tokens=3))
    idx = rng.integers(0, 11, (2, 5))
    state = peft.state_dict()
    P = state["prompt_encoder.embedding"]
    embeds = np.concatenate([np.broadcast_to(P, (2, 3, 8)), state["wte.weight"][idx]], axis=1)
    expected = naive_logits(state, embeds, 2, 2)[:, 3:]  # positions 0…7, last 5 kept
    np.testing.assert_allclose(peft.forward(idx), expected, rtol=1e-10, atol=1e-12)


def test_prefix_tuning_matches_the_loop_reference_with_peft_layout_and_positions_n_to_n_plus_T():
    """The prefix counts as n earlier tokens (as in PEFT): the real ones sit at n … n+T−1, and
    the longest sequence that fits is block_size − n."""
    rng = np.random.default_rng(1)
    n = 3
    peft = peft_of(tiny_model(1), PrefixTuningConfig(num_virtual_tokens=n))
    idx = rng.integers(0, 11, (2, TINY.block_size - n))
    state = peft.state_dict()
    assert state["prompt_encoder.embedding"].shape == (n, 2 * 2 * 8)
    expected = naive_logits(
        state, state["wte.weight"][idx], 2, 2, state["prompt_encoder.embedding"], start=n
    )
    np.testing.assert_allclose(peft.forward(idx), expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Gradients


@settings(max_examples=3, deadline=None)
@given(seeds, st.sampled_from(sorted(METHODS)))
def test_every_trainable_param_matches_finite_differences_through_the_gpt(seed, method):
    rng = np.random.default_rng(seed)
    peft = peft_of(tiny_model(seed % 5), METHODS[method](), seed % 7)
    T = TINY.block_size - 3  # every method's n = 3 virtual tokens take positions
    idx, targets = rng.integers(0, 11, (2, T)), rng.integers(0, 11, (2, T))
    targets[0, :2] = -100
    report = check_gradients(cross_entropy_loss(peft, idx, targets), peft.named_parameters())
    trainable = {n for n, p in peft.named_parameters().items() if p.trainable}
    assert set(report.errors) == trainable and trainable
    assert all(n.startswith("prompt_encoder.") for n in trainable)
    assert report.ok(TOL), str(report)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_classifier_params_and_score_match_finite_differences(method):
    """The pooled position moves by n under prompt tuning; the gradient follows it there."""
    cfg = minift.GPTConfig(**{**TINY.to_dict(), "pad_token_id": 0})
    config = METHODS[method]()
    config.modules_to_save = ["score"]
    peft = peft_of(tiny_model(2, minift.GPTForSequenceClassification, cfg), config)
    idx = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])  # padding after the first sequence
    targets = np.array([1, 2])
    report = check_gradients(cross_entropy_loss(peft, idx, targets), peft.named_parameters())
    assert "score.weight" in report.errors and len(report.errors) >= 2
    assert report.ok(TOL), str(report)


def test_a_trainable_wte_gets_the_lookup_and_the_head_gradients_through_the_prompt():
    peft = peft_of(tiny_model(3), PromptTuningConfig(num_virtual_tokens=2, modules_to_save=["wte"]))
    rng = np.random.default_rng(3)
    idx, targets = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    report = check_gradients(cross_entropy_loss(peft, idx, targets), peft.named_parameters())
    assert set(report.errors) == {"wte.weight", "prompt_encoder.embedding"}
    assert report.ok(TOL), str(report)


def test_prefix_mlp_backward_matches_finite_differences():
    rng = np.random.default_rng(4)
    args = [rng.standard_normal(s) for s in [(3, 4), (4, 5), (5,), (5, 6), (6,)]]
    dP = rng.standard_normal((3, 6))
    grads = prefix_mlp_backward(dP, prefix_mlp_forward(*args)[1])
    for i, (x, g) in enumerate(zip(args, grads, strict=True)):
        num = np.zeros_like(x)
        for j in np.ndindex(x.shape):
            old = x[j]
            x[j] = old + 1e-5
            plus = np.sum(prefix_mlp_forward(*args)[0] * dP)
            x[j] = old - 1e-5
            minus = np.sum(prefix_mlp_forward(*args)[0] * dP)
            x[j] = old
            num[j] = (plus - minus) / 2e-5
        assert np.linalg.norm(g - num) / np.linalg.norm(g + num) < TOL, f"argument {i}"


# ------------------------------------------------------------------------------------------------
# What holds at init, and what the methods change


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(1, 4))
def test_text_init_computes_exactly_what_the_base_computes_on_the_text_then_the_input(seed, n, T):
    rng = np.random.default_rng(seed)
    model = tiny_model(seed % 5)
    ids = [int(i) for i in rng.integers(0, 11, n)]
    idx = rng.integers(0, 11, (2, T))
    expected = model.forward(np.concatenate([np.tile(ids, (2, 1)), idx], axis=1))[:, n:]
    cfg = PromptTuningConfig(
        num_virtual_tokens=n, prompt_tuning_init="TEXT", prompt_tuning_init_token_ids=ids
    )
    # equal up to rounding: the LM head multiplies a [B, T] slice instead of [B, n + T] rows
    np.testing.assert_allclose(
        get_peft_model(model, cfg).forward(idx), expected, rtol=0, atol=1e-12
    )


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(1, 3))
def test_text_init_classifier_pools_the_last_real_token_n_positions_later(seed, n):
    """The base classifier on text + input pools position n + last; so must prompt tuning."""
    rng = np.random.default_rng(seed)
    cfg = minift.GPTConfig(**{**TINY.to_dict(), "pad_token_id": 0})
    clf = tiny_model(seed % 5, minift.GPTForSequenceClassification, cfg)
    ids = [int(i) for i in rng.integers(1, 11, n)]
    idx = rng.integers(1, 11, (3, 8 - n))
    idx[0, -2:] = 0  # padding: the pooled token is the last real one
    expected = clf.forward(np.concatenate([np.tile(ids, (3, 1)), idx], axis=1))
    config = PromptTuningConfig(
        num_virtual_tokens=n, prompt_tuning_init="TEXT", prompt_tuning_init_token_ids=ids
    )
    np.testing.assert_allclose(
        get_peft_model(clf, config).forward(idx), expected, rtol=0, atol=1e-12
    )


@settings(max_examples=10, deadline=None)
@given(seeds, st.sampled_from(sorted(METHODS)), st.integers(2, 5))
def test_changing_later_tokens_never_changes_earlier_logits(seed, method, T):
    rng = np.random.default_rng(seed)
    peft = peft_of(tiny_model(seed % 5), METHODS[method](), seed % 3)
    idx = rng.integers(0, 11, (1, T))
    t = int(rng.integers(0, T - 1))
    other = idx.copy()
    other[0, t + 1 :] = (idx[0, t + 1 :] + rng.integers(1, 11, T - t - 1)) % 11
    a, b = peft.forward(idx), peft.forward(other)
    np.testing.assert_array_equal(a[:, : t + 1], b[:, : t + 1])
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])


@settings(max_examples=10, deadline=None)
@given(seeds, st.sampled_from(sorted(METHODS)))
def test_every_position_sees_the_virtual_tokens(seed, method):
    """Change one entry of the method's parameters: every position's logits move."""
    rng = np.random.default_rng(seed)
    peft = peft_of(tiny_model(seed % 5), METHODS[method](), seed % 3)
    idx = rng.integers(0, 11, (2, 5))
    before = peft.forward(idx)
    own = [p for n, p in peft.named_parameters().items() if n.startswith("prompt_encoder.")]
    p = own[int(rng.integers(len(own)))]
    p.value.reshape(-1)[int(rng.integers(p.size))] += 0.5
    moved = np.abs(peft.forward(idx) - before).max(axis=-1)  # (B, T)
    assert (moved > 1e-9).all(), moved


@pytest.mark.parametrize("layer", [0, 1])
def test_each_layer_reads_its_own_columns_of_the_prefix(layer):
    """Only layer ℓ's columns [2ℓC, (2ℓ+2)C) change layer ℓ's keys and values."""
    peft = peft_of(tiny_model(5), PrefixTuningConfig(num_virtual_tokens=2))
    attn = peft.base_model.h[layer].attn
    P = peft.named_parameters()["prompt_encoder.embedding"].value
    k, v = attn.prefix.forward(1)
    P[:, [c for c in range(32) if not 16 * layer <= c < 16 * layer + 16]] += 1.0
    k2, v2 = attn.prefix.forward(1)
    np.testing.assert_array_equal(k, k2)
    np.testing.assert_array_equal(v, v2)


def test_a_zero_prefix_is_not_a_no_op_it_scales_each_head_by_z_over_z_plus_n():
    """K = V = 0: y_t = Z_t/(Z_t + n)·y_t^base, Z_t = Σ_{j≤t} exp(q_t·k_j/√hs) (one head)."""
    cfg = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, d_model=8)
    model = tiny_model(6, config=cfg)
    n = 3
    attn = model.h[0].attn
    x = np.random.default_rng(6).standard_normal((2, 5, 8))
    base = attn.forward(x)
    get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=n, init_weights="zero"))
    zero = attn.forward(x)
    qkv = x @ attn.c_attn.weight.value + attn.c_attn.bias.value
    q, k = qkv[..., :8], qkv[..., 8:16]
    s = np.exp(q @ k.swapaxes(1, 2) / math.sqrt(8)) * np.tri(5)  # causal
    Z = s.sum(-1, keepdims=True)  # (B, T, 1)
    b = attn.c_proj.bias.value
    np.testing.assert_allclose(zero - b, Z / (Z + n) * (base - b), rtol=1e-12, atol=1e-14)
    assert not np.allclose(zero, base)


# ------------------------------------------------------------------------------------------------
# KV cache and generation


@pytest.mark.parametrize("method", sorted(METHODS))
def test_kv_cache_logits_equal_the_uncached_forward(method):
    rng = np.random.default_rng(7)
    peft = peft_of(tiny_model(7), METHODS[method]())
    T = TINY.block_size - 3
    idx = rng.integers(0, 11, (3, T))
    full = peft.forward(idx)
    cache = minift.KVCache(TINY.n_layer)
    pieces = [peft.forward(idx[:, :2], kv_cache=cache)]
    for t in range(2, T):
        pieces.append(peft.forward(idx[:, t : t + 1], kv_cache=cache))
    assert cache.length == T + (3 if method == "prompt" else 0)  # the prompt went in once
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize(("temperature", "top_k"), [(0, None), (1.0, None), (0.7, 3)])
def test_generation_with_cache_equals_without_also_past_the_window(method, temperature, top_k):
    peft = peft_of(tiny_model(8), METHODS[method]())
    idx = np.random.default_rng(8).integers(0, 11, (2, 4))
    kw = {"temperature": temperature, "top_k": top_k, "seed": 9}
    cached = peft.generate(idx, 10, use_cache=True, **kw)
    uncached = peft.generate(idx, 10, use_cache=False, **kw)
    assert cached.shape == (2, 14)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached[:, :4], idx)


def test_generation_puts_the_prompt_in_front():
    """Greedy generation with a TEXT prompt = the base model's on text + input, minus the text."""
    model = tiny_model(9)
    ids, idx = [1, 2], np.array([[3, 4, 5]])
    base = model.generate(np.array([ids + [3, 4, 5]]), 3, temperature=0)[:, 2:]
    cfg = PromptTuningConfig(
        num_virtual_tokens=2, prompt_tuning_init="TEXT", prompt_tuning_init_token_ids=ids
    )
    np.testing.assert_array_equal(get_peft_model(model, cfg).generate(idx, 3, temperature=0), base)


# ------------------------------------------------------------------------------------------------
# Training, counts, files


@pytest.mark.parametrize("method", sorted(METHODS))
def test_frozen_params_are_bit_identical_after_training(method):
    rng = np.random.default_rng(10)
    peft = peft_of(tiny_model(10), METHODS[method]())
    frozen = {n: p.value.copy() for n, p in peft.named_parameters().items() if not p.trainable}
    own = {n: p.value.copy() for n, p in peft.named_parameters().items() if p.trainable}
    opt = AdamW(peft.named_parameters(), lr=1e-2)
    idx, targets = rng.integers(0, 11, (2, 5)), rng.integers(0, 11, (2, 5))
    for _ in range(20):
        _, dlogits = cross_entropy(peft.forward(idx), targets)
        opt.zero_grad()
        peft.backward(dlogits)
        opt.step()
    params = peft.named_parameters()
    for n, v in frozen.items():
        np.testing.assert_array_equal(params[n].value, v, err_msg=n)
    assert all(not np.array_equal(params[n].value, v) for n, v in own.items())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_few_dozen_steps_steer_the_frozen_model_to_a_fixed_answer(method):
    """Only the soft prompt trains, yet it can make the model answer token 3 everywhere."""
    cfg = minift.GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, d_model=16)
    model = minift.GPT(cfg, seed=0, dtype=np.float32)
    randomize_params(model.named_parameters(), 0)  # a "pretrained" model far from uniform
    peft = get_peft_model(model, METHODS[method]())
    idx, targets = np.random.default_rng(0).integers(0, 16, (4, 10)), np.full((4, 10), 3)
    opt = AdamW(peft.named_parameters(), lr=0.1)
    losses = []
    for _ in range(40):
        loss, dlogits = cross_entropy(peft.forward(idx), targets)
        losses.append(loss)
        opt.zero_grad()
        peft.backward(dlogits)
        opt.step()
    assert losses[-1] < 0.7 * losses[0], losses


@settings(max_examples=10, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 3),
    st.sampled_from([4, 8]),
    st.integers(1, 9),
    st.booleans(),
    st.sampled_from(["prompt", "prefix"]),
)
def test_trainable_count_equals_the_closed_form(n, L, C, h, projection, method):
    cfg = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=L, n_head=2, d_model=C)
    if method == "prompt":
        config, expected = PromptTuningConfig(num_virtual_tokens=min(n, 7)), min(n, 7) * C
    elif projection:
        config = PrefixTuningConfig(
            num_virtual_tokens=n, prefix_projection=True, encoder_hidden_size=h
        )
        expected = n * C + (C * h + h) + (h * 2 * L * C + 2 * L * C)
    else:
        config, expected = PrefixTuningConfig(num_virtual_tokens=n), 2 * L * n * C
    peft = get_peft_model(minift.GPT(cfg, dtype=np.float64), config)
    count = count_parameters(peft)
    assert count.trainable == expected
    assert count.frozen == minift.GPT(cfg).num_parameters()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_adapter_file_is_pefts_layout_and_loads_back(tmp_path, method):
    """A projection adapter is saved as PEFT saves it: its projected P, in inference mode."""
    rng = np.random.default_rng(11)
    peft = peft_of(tiny_model(11), METHODS[method]())
    idx = rng.integers(0, 11, (2, 5))
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path)
    tensors, _ = load_tensors(tmp_path / "adapter_model.safetensors")
    width = 8 if method == "prompt" else 2 * 2 * 8
    assert {k: v.shape for k, v in tensors.items()} == {"prompt_embeddings": (3, width)}
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == ("PROMPT_TUNING" if method == "prompt" else "PREFIX_TUNING")
    assert {k: saved[k] for k in ("num_virtual_tokens", "token_dim", "num_layers")} == {
        "num_virtual_tokens": 3,
        "token_dim": 8,
        "num_layers": 2,
    }
    assert saved["num_attention_heads"] == 2 and saved["num_transformer_submodules"] == 1
    assert saved["task_type"] == "CAUSAL_LM"
    assert saved["inference_mode"] is (method == "prefix_projection")
    loaded = PeftModel.from_pretrained(tiny_model(11), tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), expected)


def test_a_peft_projection_file_loads_as_the_direct_prefix_it_saved(tmp_path):
    """PEFT saves a projection adapter as its projected P, with inference_mode=true."""
    P = np.random.default_rng(12).standard_normal((3, 32))
    save_tensors(tmp_path / "adapter_model.safetensors", {"prompt_embeddings": P})
    (tmp_path / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "PREFIX_TUNING",
                "task_type": "CAUSAL_LM",
                "inference_mode": True,
                "num_virtual_tokens": 3,
                "token_dim": 8,
                "num_transformer_submodules": 1,
                "num_attention_heads": 2,
                "num_layers": 2,
                "encoder_hidden_size": 16,
                "prefix_projection": True,
                "base_model_name_or_path": "gpt2",
                "revision": None,
                "modules_to_save": None,
            }
        )
    )
    loaded = PeftModel.from_pretrained(tiny_model(12), tmp_path)
    np.testing.assert_array_equal(loaded.named_parameters()["prompt_encoder.embedding"].value, P)
    assert count_parameters(loaded).trainable == 0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merge_and_unload_is_a_type_error_and_unload_restores_the_base(method):
    rng = np.random.default_rng(13)
    idx = rng.integers(0, 11, (2, 5))
    expected = tiny_model(13).forward(idx)
    peft = peft_of(tiny_model(13), METHODS[method]())
    assert not np.allclose(peft.forward(idx), expected)
    with pytest.raises(TypeError, match="cannot be merged: .+, not a change of any weight"):
        peft.merge_and_unload()
    model = method_model(peft).unload()
    np.testing.assert_array_equal(model.forward(idx), expected)
    assert "prompt_encoder" not in dict(model._children())
    assert all(p.trainable for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("config_cls", [PromptTuningConfig, PrefixTuningConfig])
@pytest.mark.parametrize("n", [0, -1, 2.5, True, None])
def test_num_virtual_tokens_must_be_a_positive_integer(config_cls, n):
    with pytest.raises(
        ValueError, match=f"num_virtual_tokens: expected a positive integer, got {n}"
    ):
        config_cls(num_virtual_tokens=n)


def test_a_sequence_longer_than_block_size_minus_n_is_refused():
    peft = get_peft_model(tiny_model(), PromptTuningConfig(num_virtual_tokens=3))
    peft.forward(np.zeros((1, 5), dtype=int))  # 3 + 5 = block_size fits
    with pytest.raises(
        ValueError,
        match=r"length 6 \(\+3 virtual tokens of the prompt, which take positions\) exceeds "
        r"block_size=8",
    ):
        peft.forward(np.zeros((1, 6), dtype=int))


def test_a_sequence_longer_than_block_size_minus_n_is_refused_under_a_prefix():
    peft = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=3))
    peft.forward(np.zeros((1, 5), dtype=int))  # 3 + 5 = block_size fits
    with pytest.raises(
        ValueError, match=r"length 6 \(\+3 virtual tokens of the prefix, which take positions\)"
    ):
        peft.forward(np.zeros((1, 6), dtype=int))
    cache = minift.KVCache(TINY.n_layer)
    peft.forward(np.zeros((1, 4), dtype=int), kv_cache=cache)
    with pytest.raises(ValueError, match=r"length 2 \(\+4 cached\) \(\+3 virtual tokens"):
        peft.forward(np.zeros((1, 2), dtype=int), kv_cache=cache)


@pytest.mark.parametrize("config_cls", [PromptTuningConfig, PrefixTuningConfig])
def test_a_prompt_or_prefix_that_fills_the_block_is_refused(config_cls):
    with pytest.raises(ValueError, match="num_virtual_tokens: expected fewer than block_size=8"):
        get_peft_model(tiny_model(), config_cls(num_virtual_tokens=8))


def test_text_init_ids_must_be_in_the_vocabulary():
    cfg = PromptTuningConfig(
        num_virtual_tokens=2, prompt_tuning_init="TEXT", prompt_tuning_init_token_ids=[3, 11]
    )
    with pytest.raises(ValueError, match=r"prompt_tuning_init_token_ids: .*\[0, 11\), got 11"):
        get_peft_model(tiny_model(), cfg)


def test_text_init_needs_exactly_n_ids():
    with pytest.raises(ValueError, match="expected num_virtual_tokens=3 ids, got 2"):
        PromptTuningConfig(
            num_virtual_tokens=3, prompt_tuning_init="TEXT", prompt_tuning_init_token_ids=[1, 2]
        )
    with pytest.raises(ValueError, match="prompt_tuning_init_text: .*'TEXT' needs a text"):
        PromptTuningConfig(num_virtual_tokens=3, prompt_tuning_init="TEXT")
    with pytest.raises(ValueError, match="only used with prompt_tuning_init='TEXT'"):
        PromptTuningConfig(num_virtual_tokens=1, prompt_tuning_init_token_ids=[1])
    with pytest.raises(ValueError, match="expected one of 'RANDOM', 'TEXT', 'SAMPLE_VOCAB'"):
        PromptTuningConfig(num_virtual_tokens=1, prompt_tuning_init="ZEROS")


def test_fields_that_describe_the_model_must_match_it():
    with pytest.raises(ValueError, match="token_dim: the model has 8, the config says 16"):
        get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=2, token_dim=16))
    with pytest.raises(ValueError, match="task_type: the model has 'CAUSAL_LM'"):
        get_peft_model(tiny_model(), PromptTuningConfig(num_virtual_tokens=2, task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match="num_transformer_submodules: expected 1"):
        PromptTuningConfig(num_virtual_tokens=2, num_transformer_submodules=2)
    with pytest.raises(ValueError, match="target_modules: PrefixTuningConfig changes no module"):
        PrefixTuningConfig(num_virtual_tokens=2, target_modules=["c_attn"])


def test_prefix_options_are_checked():
    with pytest.raises(ValueError, match="encoder_hidden_size: expected a positive integer"):
        PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=True, encoder_hidden_size=0)
    with pytest.raises(ValueError, match="init_weights: expected None or 'zero', got 'ones'"):
        PrefixTuningConfig(num_virtual_tokens=2, init_weights="ones")


def test_backward_checks_its_upstream_gradient():
    peft = get_peft_model(tiny_model(), PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="backward called before forward"):
        peft.backward(np.zeros((1, 3, 11)))
    peft.forward(np.zeros((1, 3), dtype=int))
    with pytest.raises(ValueError, match=r"expected shape \(1, 3, 11\).*got \(1, 5, 11\)"):
        peft.backward(np.zeros((1, 5, 11)))


@pytest.mark.reference
@pytest.mark.parametrize("direction", ["minift_to_peft", "peft_to_minift"])
def test_prompt_tuning_adapter_loads_in_hugging_face_peft_both_ways(tmp_path, direction):
    """Prompt embeddings saved by minift give PEFT's logits on the same GPT-2, and back."""
    torch, transformers, peft_lib = import_references()
    from minift.gradcheck import randomize_params
    from minift.peft import PeftModel, PromptTuningConfig, get_peft_model

    config = minift.GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, d_model=8)
    model = minift.GPT(config, seed=5, dtype=np.float64)
    randomize_params(model.named_parameters(), 5)
    hf = hf_gpt2(model, tmp_path / "base")
    idx = np.random.default_rng(5).integers(0, 11, (2, 6))
    n = 4
    if direction == "minift_to_peft":
        peft = get_peft_model(model, PromptTuningConfig(num_virtual_tokens=n))
        randomize_params({n_: p for n_, p in peft.named_parameters().items() if p.trainable}, 6)
        expected = peft.forward(idx)
        peft.save_pretrained(tmp_path / "adapter")
        hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
        with torch.no_grad():
            got = hf(input_ids=torch.tensor(idx)).logits.numpy()[:, n:]
        # PEFT keeps the prompt embedding in float32 whatever the model's dtype: our float64
        # values reach it rounded to float32 (relative 6e-8), which the logits then carry
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        return
    else:
        theirs = peft_lib.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n)
        hf = peft_lib.get_peft_model(hf, theirs)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if "prompt_encoder" in name:
                    p.copy_(0.3 * torch.randn_like(p))
            expected = hf(input_ids=torch.tensor(idx)).logits.numpy()[:, n:]
        hf.save_pretrained(tmp_path / "adapter")
        got = PeftModel.from_pretrained(model, tmp_path / "adapter").forward(idx)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Prompt tuning initialised from a text, through a tokenizer (PEFT's TEXT), or SAMPLE_VOCAB

CHAR = minift.GPTConfig(vocab_size=128, block_size=32, n_layer=1, n_head=2, d_model=8)
WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "a"]
WORDPIECE_VOCAB += ["mat", "##s", "dog", "."]


def write_wordpiece(folder):
    """A BERT tokenizer folder that minift and transformers both read, offline."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in WORDPIECE_VOCAB))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def text_config(n, text, tokenizer="minift-char", **kw):
    return PromptTuningConfig(
        num_virtual_tokens=n, prompt_tuning_init="TEXT", prompt_tuning_init_text=text,
        tokenizer_name_or_path=str(tokenizer), **kw,
    )  # fmt: skip


def pefts_rule(init_token_ids, total_virtual_tokens):
    """PEFT 0.21's trim-or-repeat of the text's ids (tuners/prompt_tuning/model.py), restated."""
    num_text_tokens = len(init_token_ids)
    if num_text_tokens > total_virtual_tokens:
        init_token_ids = init_token_ids[:total_virtual_tokens]
    elif num_text_tokens < total_virtual_tokens:
        init_token_ids = init_token_ids * math.ceil(total_virtual_tokens / num_text_tokens)
    return init_token_ids[:total_virtual_tokens]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 127), min_size=1, max_size=12), st.integers(1, 20))
def test_text_ids_are_cycled_or_cut_to_n_by_pefts_rule(ids, n):
    cycled = text_init_ids(ids, n)
    assert cycled == pefts_rule(ids, n)
    assert cycled == [ids[k % len(ids)] for k in range(n)]


@settings(max_examples=10, deadline=None)
@given(seeds, st.text(alphabet="abcdef ghij(:)", min_size=1, max_size=12), st.integers(1, 9))
def test_text_init_rows_are_copies_of_the_embedding_rows_of_the_texts_ids(seed, text, n):
    model = tiny_model(seed % 5, config=CHAR)
    wte = model.wte.weight.value.copy()
    peft = get_peft_model(model, text_config(n, text))
    ids = text_init_ids(standard_tokenizer().encode(text), n)
    np.testing.assert_array_equal(peft.prompt.value, wte[ids])
    assert not np.shares_memory(peft.prompt.value, model.wte.weight.value)
    peft.prompt.value += 1.0  # a trained prompt leaves the embedding table as it was
    np.testing.assert_array_equal(model.wte.weight.value, wte)


def test_text_init_computes_what_the_base_computes_on_the_encoded_text_then_the_input():
    model = tiny_model(1, config=CHAR)
    text, idx = "def f(x):", np.random.default_rng(1).integers(4, 128, (2, 5))
    ids = standard_tokenizer().encode(text)
    expected = model.forward(np.concatenate([np.tile(ids, (2, 1)), idx], axis=1))[:, len(ids) :]
    got = get_peft_model(model, text_config(len(ids), text)).forward(idx)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_sample_vocab_starts_each_virtual_token_as_a_row_of_the_embedding_table():
    model = tiny_model(2, config=CHAR)
    wte = model.wte.weight.value
    config = PromptTuningConfig(num_virtual_tokens=6, prompt_tuning_init="SAMPLE_VOCAB")
    P = get_peft_model(model, config, seed=3).prompt.value
    ids = np.random.default_rng(3).integers(0, CHAR.vocab_size, 6)  # the seed's draw
    np.testing.assert_array_equal(P, wte[ids])
    assert not np.shares_memory(P, wte)


def test_a_text_init_config_round_trips_through_adapter_config_json(tmp_path):
    model = tiny_model(4, config=CHAR)
    peft = peft_of(model, text_config(5, "x = 1"))
    idx = np.random.default_rng(4).integers(4, 128, (2, 6))
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["prompt_tuning_init"] == "TEXT" and saved["prompt_tuning_init_text"] == "x = 1"
    assert saved["tokenizer_name_or_path"] == "minift-char"
    assert "prompt_tuning_init_token_ids" not in saved
    loaded = PeftModel.from_pretrained(tiny_model(4, config=CHAR), tmp_path)
    assert loaded.peft_config.to_dict() == peft.peft_config.to_dict()
    np.testing.assert_array_equal(loaded.forward(idx), expected)


def test_tokenizer_name_or_path_names_a_tokenizer_minift_loads_offline(tmp_path):
    from minift.data.wordpiece import WordPieceTokenizer

    assert tokenizer_from_name("minift-char") == standard_tokenizer()
    wordpiece = tokenizer_from_name(write_wordpiece(tmp_path / "bert"))
    assert isinstance(wordpiece, WordPieceTokenizer)
    assert wordpiece.encode("The cats sat.") == [2, 5, 6, 11, 7, 13, 3]
    base = tmp_path / "base"
    base.mkdir()
    (base / "pretraining.json").write_text(
        json.dumps({"tokenizer": standard_tokenizer().to_dict()})
    )
    assert tokenizer_from_name(base) == standard_tokenizer()
    with pytest.raises(ValueError, match="tokenizer_name_or_path: 'gpt2' is no tokenizer minift"):
        tokenizer_from_name("gpt2")
    (base / "pretraining.json").write_text(json.dumps({"tokenizer": {"type": "bpe"}}))
    with pytest.raises(FileFormatError, match=r"pretraining.json: tokenizer: .*type 'char'"):
        tokenizer_from_name(base)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"tokenizer_name_or_path": None}, ValueError, "tokenizer_name_or_path: 'TEXT' needs"),
        ({"prompt_tuning_init_text": None}, ValueError, "prompt_tuning_init_text: 'TEXT' needs"),
        ({"prompt_tuning_init_token_ids": [1, 2]}, ValueError, "the ids or prompt_tuning_init_t"),
        ({"prompt_tuning_init_text": 3}, TypeError, "prompt_tuning_init_text: expected a string"),
    ],
)
def test_a_text_init_without_its_text_or_tokenizer_is_refused(kwargs, exc, match):
    fields = {"prompt_tuning_init_text": "ab", "tokenizer_name_or_path": "minift-char", **kwargs}
    with pytest.raises(exc, match=match.replace("'TEXT' needs", ".*'TEXT' needs")):
        PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT", **fields)


def test_a_text_the_tokenizer_cannot_encode_into_the_models_vocabulary_is_refused(tmp_path):
    model = tiny_model(0, config=CHAR)
    with pytest.raises(ValueError, match="tokenizer_name_or_path: 'gpt2' is no tokenizer"):
        get_peft_model(model, text_config(2, "ab", "gpt2"))
    with pytest.raises(ValueError, match="prompt_tuning_init_text: '' encodes to no token"):
        get_peft_model(model, text_config(2, ""))
    with pytest.raises(ValueError, match="prompt_tuning_init_text: text: character '日'"):
        get_peft_model(model, text_config(2, "日"))
    small = tiny_model(0)  # vocab 11: the WordPiece ids 12 and 13 do not fit
    with pytest.raises(ValueError, match=r"tokenizer_name_or_path: .* to id 12, outside .*11\)"):
        get_peft_model(small, text_config(4, "dog.", write_wordpiece(tmp_path / "bert")))
    with pytest.raises(ValueError, match="prompt_tuning_init_token_ids: only used with"):
        PromptTuningConfig(
            num_virtual_tokens=1,
            prompt_tuning_init="SAMPLE_VOCAB",
            prompt_tuning_init_token_ids=[1],
        )


@pytest.mark.reference
def test_text_init_equals_pefts_with_a_tokenizer_both_read(tmp_path):
    """A WordPiece folder that transformers' AutoTokenizer and minift both read offline: PEFT's
    initial prompt is minift's, rounded to float32 (PEFT casts the copied rows so)."""
    torch, transformers, peft_lib = import_references()
    folder = write_wordpiece(tmp_path / "bert")
    config = minift.GPTConfig(vocab_size=len(WORDPIECE_VOCAB), block_size=32, n_layer=1, n_head=2,
                              d_model=8)  # fmt: skip
    model = tiny_model(6, config=config)
    hf = hf_gpt2(model, tmp_path / "base")
    text, n = "The cat sat on the mats.", 13  # 9 ids with [CLS] and [SEP]: cycled to 13
    theirs = peft_lib.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=n, prompt_tuning_init="TEXT",
        prompt_tuning_init_text=text, tokenizer_name_or_path=str(folder),
    )  # fmt: skip
    hf = peft_lib.get_peft_model(hf, theirs)
    their_prompt = hf.prompt_encoder["default"].embedding.weight.detach().numpy()
    peft = get_peft_model(model, text_config(n, text, folder))
    assert their_prompt.dtype == np.float32
    np.testing.assert_array_equal(peft.prompt.value.astype(np.float32), their_prompt)
    peft.save_pretrained(tmp_path / "adapter")  # and PEFT reads minift's TEXT config back
    fresh = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base", dtype=torch.float64)
    loaded = peft_lib.PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    assert loaded.peft_config["default"].prompt_tuning_init == "TEXT"
    assert loaded.peft_config["default"].tokenizer_name_or_path == str(folder)


def test_zero_init_with_the_projection_starts_as_a_zero_prefix_and_trains_w2_first():
    """init_weights="zero" makes P = 0 through W₂ = 0, b₂ = 0: the model starts where the
    direct zero prefix starts, and only (W₂, b₂) get a gradient at the first step (as LoRA's
    B = 0: da = dP·W₂ᵀ = 0 stops it below them)."""
    idx = np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 4))
    zero = dict(num_virtual_tokens=3, init_weights="zero")
    direct = get_peft_model(tiny_model(4), PrefixTuningConfig(**zero))
    projected = get_peft_model(
        tiny_model(4), PrefixTuningConfig(**zero, prefix_projection=True, encoder_hidden_size=5)
    )
    logits = projected.forward(idx)
    np.testing.assert_allclose(logits, direct.forward(idx), rtol=0, atol=1e-12)
    _, dlogits = minift.cross_entropy(logits, idx)
    projected.backward(dlogits)
    grads = {n: p.grad for n, p in projected.named_parameters().items() if p.trainable}
    moved = sorted(n for n, g in grads.items() if g is not None and np.abs(g).max() > 0)
    assert moved == ["prompt_encoder.transform.1.bias", "prompt_encoder.transform.1.weight"]
