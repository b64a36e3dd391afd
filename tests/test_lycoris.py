"""LoHa's and LoKr's two dropouts (peft/lycoris.py): rank dropout scales ΔW's rows, module dropout
skips the method; both drawn at every forward in training mode and never in eval mode, and both
gradient-checked with their draws held fixed."""

import copy

import numpy as np
import pytest
from helpers import hf_gpt2_with_linears, import_references
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.gradcheck import (
    check_gradients,
    check_pair,
    cross_entropy_loss,
    fixed_dropout_masks,
    randomize_params,
)
from minift.nn import Linear
from minift.peft import (
    LoHaConfig,
    LoHaLinear,
    LoKrConfig,
    LoKrLinear,
    PeftModel,
    get_peft_model,
)
from minift.peft.lycoris import (
    LycorisLinear,
    dense_delta_backward,
    dense_delta_forward,
    rank_dropout_rows,
)

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)
CONFIGS = {"loha": LoHaConfig, "lokr": LoKrConfig}


def tiny_gpt(seed):
    model = minift.GPT(TINY, seed=seed, dtype=np.float64)
    randomize_params(model.named_parameters(), seed)  # a "pretrained" point, not the init
    return model


def trainable(model):
    return {n: p for n, p in model.named_parameters().items() if p.trainable}


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def layer(method, seed, d_in=6, d_out=10, **dropouts):
    """A LoHa or LoKr layer on a float64 Linear, every factor random (ΔW ≠ 0), in training mode."""
    rng = np.random.default_rng(seed)
    base = Linear(d_in, d_out, rng=rng, dtype=np.float64)
    base.weight.trainable = base.bias.trainable = False
    if method == "loha":
        wrapped = LoHaLinear(base, 2, 3.0, init_weights=False, rng=rng, **dropouts)
    else:
        wrapped = LoKrLinear(base, 2, 3.0, init_weights=False, rng=rng, **dropouts)
    wrapped.train()
    return wrapped


# -- the pure functions ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(1, 12), st.floats(0.0, 0.95), st.booleans())
def test_rank_dropout_rows_keep_a_row_with_probability_one_minus_p_and_rescale_to_mean_one(
    seed, d_out, p, rescale
):
    m = rank_dropout_rows(np.random.default_rng(seed), d_out, p, rescale)
    kept = np.random.default_rng(seed).random(d_out) > p  # the same draws
    assert m.shape == (d_out,) and np.isfinite(m).all()
    assert np.array_equal(m != 0, kept)
    if rescale and kept.any():
        np.testing.assert_allclose(m[kept], d_out / kept.sum(), rtol=1e-15)
        assert m.mean() == pytest.approx(1.0)
    else:  # unscaled, or nothing kept (where PEFT's k / mean(k) is NaN)
        assert np.array_equal(m, kept.astype(np.float64))


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 5), st.integers(1, 6), st.floats(0.1, 0.7))
def test_dense_delta_pair_with_rank_dropout_matches_finite_differences(seed, d_in, d_out, p):
    rng = np.random.default_rng(seed)
    x, W0 = rng.standard_normal((2, 3, d_in)), rng.standard_normal((d_in, d_out))
    b, delta = rng.standard_normal(d_out), rng.standard_normal((d_out, d_in))
    m = rank_dropout_rows(rng, d_out, p, rescale=True)

    def forward(x, W0, b, delta):
        return dense_delta_forward(x, W0, b, delta, row_scale=m)

    def backward(dy, cache):
        dx, G, dW0, db = dense_delta_backward(dy, cache, need_base_grads=True)
        return dx, dW0, db, G

    report = check_pair(forward, backward, [x, W0, b, delta], rng=seed)
    assert report.ok(TOL), str(report)
    _, cache = forward(x, W0, b, delta)
    G = dense_delta_backward(rng.standard_normal((2, 3, d_out)), cache)[1]
    assert not G[m == 0].any()  # a dropped row of ΔW gets no gradient


# -- the layers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(CONFIGS))
@settings(max_examples=10, deadline=None)
@given(seed=seeds, p=st.floats(0.1, 0.8))
def test_a_training_forward_scales_the_rows_of_delta_w_as_its_method_says(method, seed, p):
    """LoHa always rescales the kept rows; LoKr only with rank_dropout_scale (PEFT's rules)."""
    for rank_dropout_scale in (False, True) if method == "lokr" else (True,):
        wrapped = layer(method, seed, rank_dropout=p)
        wrapped.rescale_rank_dropout = rank_dropout_scale
        x = np.random.default_rng(seed + 1).standard_normal((3, 6))
        draws = copy.deepcopy(wrapped.rng)
        m = rank_dropout_rows(draws, 10, p, rescale=rank_dropout_scale)
        delta = wrapped.delta_weight().T  # ΔW [out, in], undropped
        want = x @ (wrapped.base_layer.weight.value + (m[:, None] * delta).T)
        want += wrapped.base_layer.bias.value
        np.testing.assert_allclose(wrapped.forward(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(CONFIGS))
@settings(max_examples=5, deadline=None)
@given(seed=seeds)
def test_module_dropout_skips_the_method_and_gives_its_params_no_gradient(method, seed):
    wrapped = layer(method, seed, module_dropout=0.5)
    base = copy.deepcopy(wrapped.base_layer)
    x = np.random.default_rng(seed + 1).standard_normal((3, 6))
    dy = np.random.default_rng(seed + 2).standard_normal((3, 10))
    seen = set()
    while len(seen) < 2:  # both outcomes: each has probability ½ per forward
        skipped = copy.deepcopy(wrapped.rng).random() <= 0.5  # the draw the forward makes
        for name in wrapped.delta_params:
            wrapped.param(name).grad = None
        y, dx = wrapped.forward(x), wrapped.backward(dy)
        grads = [wrapped.param(name).grad for name in wrapped.delta_params]
        if skipped:
            np.testing.assert_array_equal(y, base.forward(x))
            np.testing.assert_array_equal(dx, base.backward(dy))
            assert all(g is None for g in grads)
        else:
            assert not np.allclose(y, base.forward(x))
            assert all(g is not None and g.any() for g in grads)
        seen.add(skipped)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_eval_mode_draws_nothing_and_computes_the_model_without_dropout(method):
    idx, _ = batch(3)
    config = CONFIGS[method](r=2, alpha=3, target_modules=["c_attn", "c_fc"], init_weights=False)
    dropped = CONFIGS[method](r=2, alpha=3, target_modules=["c_attn", "c_fc"], init_weights=False,
                              rank_dropout=0.5, module_dropout=0.5)  # fmt: skip
    plain = get_peft_model(tiny_gpt(3), config, seed=3)
    with_dropout = get_peft_model(tiny_gpt(3), dropped, seed=3)
    layers = [m for _, m in with_dropout.named_modules() if isinstance(m, LycorisLinear)]
    assert len(layers) == 2 * TINY.n_layer and all(m.draws_at_random for m in layers)
    with_dropout.eval()
    assert not any(m.draws_at_random for m in layers)
    states = [m.rng.bit_generator.state for m in layers]
    np.testing.assert_array_equal(with_dropout.forward(idx), plain.forward(idx))
    assert [m.rng.bit_generator.state for m in layers] == states  # nothing was drawn
    with_dropout.train()  # and in training the draws change the output
    assert not np.allclose(with_dropout.forward(idx), plain.forward(idx))


# -- the whole model ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(CONFIGS))
@settings(max_examples=3, deadline=None)
@given(seed=seeds, rank_dropout=st.floats(0.1, 0.6), module_dropout=st.sampled_from([0.0, 0.3]))
def test_every_factor_matches_finite_differences_with_both_dropouts_on(
    method, seed, rank_dropout, module_dropout
):
    """The draws held fixed by fixed_dropout_masks: a dropped row, or a skipped layer, is part of
    the loss, and the check covers how the backward uses it; no frozen weight gets a gradient."""
    config = CONFIGS[method](r=2, alpha=3, target_modules=["c_attn", "c_fc"],
                             rank_dropout=rank_dropout, module_dropout=module_dropout)  # fmt: skip
    peft = get_peft_model(tiny_gpt(seed), config, seed=seed)
    randomize_params(trainable(peft), seed + 1)  # off the zero init, so every path is exercised
    loss = fixed_dropout_masks(cross_entropy_loss(peft, *batch(seed)), peft)
    report = check_gradients(loss, peft.named_parameters())
    assert report.ok(TOL), str(report)
    assert all(p.grad is None for p in peft.named_parameters().values() if not p.trainable)


# -- PEFT itself ----------------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_both_dropouts_travel_in_pefts_file_both_ways_and_eval_logits_agree(method, tmp_path):
    """The draws are minift's, not torch's; what must agree is the file and the eval forward."""
    torch, _, peft_lib = import_references()
    model = tiny_gpt(4)
    hf = hf_gpt2_with_linears(model, tmp_path / "base")
    dropouts = {"rank_dropout": 0.25, "module_dropout": 0.125}
    config = CONFIGS[method](r=2, alpha=3, target_modules=["c_attn", "c_fc"], init_weights=False,
                             **dropouts)  # fmt: skip
    peft = get_peft_model(model, config, seed=4)
    peft.eval()
    idx, _ = batch(4)
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path / "adapter")
    theirs = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
    theirs.eval()
    assert {k: getattr(theirs.peft_config["default"], k) for k in dropouts} == dropouts
    with torch.no_grad():
        got = theirs(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)

    theirs.save_pretrained(tmp_path / "back")
    back = PeftModel.from_pretrained(tiny_gpt(4), tmp_path / "back")
    assert {k: getattr(back.peft_config, k) for k in dropouts} == dropouts
    layers = [m for _, m in back.named_modules() if isinstance(m, LycorisLinear)]
    assert len(layers) == 2 * TINY.n_layer
    assert all((m.rank_dropout, m.module_dropout) == (0.25, 0.125) for m in layers)
    np.testing.assert_allclose(back.forward(idx), expected, rtol=0, atol=1e-10)
