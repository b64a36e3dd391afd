"""Houlsby adapters: every claim of minift/peft/adapter.py's docstring."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minift
from minift.gradcheck import (
    check_gradients,
    cross_entropy_loss,
    numerical_gradient_array,
    randomize_params,
    rel_error,
)
from minift.optim import AdamW
from minift.peft import PeftModel, count_parameters, get_peft_model
from minift.peft.adapter import AdapterConfig, AdapterLinear, adapter_backward, adapter_forward

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)


def tiny_model(seed=0, config=TINY, dtype=np.float64):
    model = minift.GPT(config, seed=seed, dtype=dtype)
    randomize_params(model.named_parameters(), seed)  # a "pretrained" point, not the init
    return model


def trainable(model):
    return {n: p for n, p in model.named_parameters().items() if p.trainable}


def batch(seed, B=2, T=6, V=11):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


# ------------------------------------------------------------------------------------------------
# Gradients


def relu_inputs(peft_model, idx) -> dict[str, np.ndarray]:
    """Each adapter's bottleneck pre-activations a = y·W_down + b_down, on the batch ``idx``."""
    peft_model.forward(idx)
    inputs = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, AdapterLinear):
            y, W_down, _ = module._cache[0]  # adapter_down's linear cache
            inputs[name] = y @ W_down + module.adapter_down.bias.value
    return inputs


@pytest.mark.parametrize("non_linearity", ["gelu", "relu"])
@settings(max_examples=3, deadline=None)
@given(seed=seeds)
def test_every_adapter_param_matches_finite_differences(non_linearity, seed):
    config = AdapterConfig(bottleneck_size=3, non_linearity=non_linearity)
    peft_model = get_peft_model(tiny_model(seed), config, seed=seed)
    randomize_params(trainable(peft_model), seed)  # W_up = 0 would hide W_down's gradient
    idx, targets = batch(seed)
    if non_linearity == "relu":
        # Finite differences prove a ReLU backward only where they can see it: no input within
        # a probe's reach of the kink at 0 (h = 1e-5 moves an input by ~1e-4 at most here), and
        # each adapter's ReLU open for a fair share of its inputs. A bottleneck open on 1 input
        # of 36 (seed 3120) gives W_up a gradient of ~1e-6, the size of the difference
        # quotient's rounding noise: a right backward that the check cannot tell from a wrong one.
        for a in relu_inputs(peft_model, idx).values():
            assume(np.abs(a).min() > 1e-3 and 0.2 <= (a > 0).mean() <= 0.8)
    report = check_gradients(
        cross_entropy_loss(peft_model, idx, targets), peft_model.named_parameters()
    )
    assert set(report.errors) == set(trainable(peft_model))
    assert len(report.errors) == 2 * 4 * TINY.n_layer  # 2 adapters × (2 weights + 2 biases)
    assert report.ok(TOL), str(report)


@pytest.mark.parametrize("non_linearity", ["gelu", "relu"])
def test_adapter_backward_passes_dy_through_the_skip_and_the_branch(non_linearity):
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 3, 5))
    W_down, b_down = rng.standard_normal((5, 4)), rng.standard_normal(4)
    W_up, b_up = rng.standard_normal((4, 5)), rng.standard_normal(5)
    dout = rng.standard_normal((2, 3, 5))
    _, cache = adapter_forward(y, W_down, b_down, W_up, b_up, non_linearity)
    dy = adapter_backward(dout, cache)[0]
    numeric = numerical_gradient_array(
        lambda: adapter_forward(y, W_down, b_down, W_up, b_up, non_linearity)[0], y, dout
    )
    assert rel_error(dy, numeric) < TOL


def test_at_init_only_the_up_projection_gets_a_gradient():
    peft_model = get_peft_model(tiny_model(1), AdapterConfig(bottleneck_size=3))
    idx, targets = batch(1)
    cross_entropy_loss(peft_model, idx, targets)(True)
    for name, p in trainable(peft_model).items():
        if ".adapter_up." in name:
            assert np.abs(p.grad).max() > 0, name
        else:  # W_up = 0 cuts the path to W_down for this first step
            np.testing.assert_array_equal(p.grad, 0.0)


# ------------------------------------------------------------------------------------------------
# Invariants


@settings(max_examples=10, deadline=None)
@given(seeds, st.sampled_from(["gelu", "relu"]))
def test_adapter_at_init_gives_the_base_output(seed, non_linearity):
    idx, _ = batch(seed)
    model = tiny_model(seed % 5)
    base = model.forward(idx)
    config = AdapterConfig(bottleneck_size=4, non_linearity=non_linearity)
    peft_model = get_peft_model(model, config, seed=seed)
    np.testing.assert_array_equal(peft_model.forward(idx), base)  # the branch is exactly 0


def test_adapters_wrap_both_output_projections_and_nothing_else():
    peft_model = get_peft_model(tiny_model(0), AdapterConfig(bottleneck_size=2))
    wrapped = [n for n, m in peft_model.named_modules() if isinstance(m, AdapterLinear)]
    assert wrapped == [f"h.{i}.{s}.c_proj" for i in range(TINY.n_layer) for s in ("attn", "mlp")]


@settings(max_examples=10, deadline=None)
@given(
    st.integers(1, 3),
    st.sampled_from([(1, 4), (2, 4), (2, 8), (3, 6)]),
    st.integers(1, 9),
)
def test_trainable_count_is_the_closed_form(L, heads_and_C, m):
    n_head, C = heads_and_C
    config = minift.GPTConfig(vocab_size=7, block_size=4, n_layer=L, n_head=n_head, d_model=C)
    peft_model = get_peft_model(minift.GPT(config), AdapterConfig(bottleneck_size=m))
    per_adapter = 2 * C * m + m + C  # W_down [C, m], W_up [m, C], b_down [m], b_up [C]
    assert count_parameters(peft_model).trainable == 2 * L * per_adapter


def test_frozen_params_are_bit_identical_after_20_steps_of_training():
    peft_model = get_peft_model(tiny_model(3), AdapterConfig(bottleneck_size=3))
    frozen = {
        n: p.value.copy() for n, p in peft_model.named_parameters().items() if not p.trainable
    }
    adapters = {n: p.value.copy() for n, p in trainable(peft_model).items()}
    opt = AdamW(peft_model.named_parameters(), lr=1e-2)
    idx, targets = batch(3)
    loss = cross_entropy_loss(peft_model, idx, targets)
    for _ in range(20):
        loss(True)
        opt.step()
    for name, value in frozen.items():
        np.testing.assert_array_equal(peft_model.named_parameters()[name].value, value)
    assert all(not np.array_equal(trainable(peft_model)[n].value, v) for n, v in adapters.items())


def test_unload_gives_back_the_base_model():
    model = tiny_model(2)
    idx, _ = batch(2)
    base = model.forward(idx)
    peft_model = get_peft_model(model, AdapterConfig(bottleneck_size=3))
    randomize_params(trainable(peft_model), 2)
    assert not np.allclose(peft_model.forward(idx), base)
    unloaded = peft_model.unload()
    assert not any("adapter" in n for n in unloaded.named_parameters())
    np.testing.assert_array_equal(unloaded.forward(idx), base)


def test_saved_adapters_load_back(tmp_path):
    peft_model = get_peft_model(
        tiny_model(5), AdapterConfig(bottleneck_size=3, non_linearity="relu")
    )
    randomize_params(trainable(peft_model), 5)
    idx, _ = batch(5)
    adapted = peft_model.forward(idx)
    peft_model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(5), tmp_path)
    assert loaded.peft_config == peft_model.peft_config
    np.testing.assert_array_equal(loaded.forward(idx), adapted)


def test_a_short_training_run_lowers_the_loss():
    peft_model = get_peft_model(tiny_model(4, dtype=np.float32), AdapterConfig(bottleneck_size=4))
    opt = AdamW(peft_model.named_parameters(), lr=5e-2)
    idx, targets = batch(4, B=4, T=8)
    loss = cross_entropy_loss(peft_model, idx, targets)
    first = loss(True)
    for _ in range(40):
        opt.step()
        last = loss(True)
    assert last < 0.8 * first, (first, last)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_merge_and_unload_is_a_type_error():
    peft_model = get_peft_model(tiny_model(0), AdapterConfig(bottleneck_size=2))
    with pytest.raises(TypeError, match="merge_and_unload: AdapterConfig"):
        peft_model.merge_and_unload()
    with pytest.raises(TypeError, match="merged_layer: an adapter is non-linear"):
        peft_model.get_submodule("h.0.mlp.c_proj").merged_layer()


def test_bottleneck_size_below_one_is_a_value_error():
    with pytest.raises(ValueError, match=r"bottleneck_size: expected a positive integer \(>= 1\)"):
        AdapterConfig(bottleneck_size=0)


def test_bottleneck_size_not_an_integer_is_a_type_error():
    with pytest.raises(TypeError, match="bottleneck_size: expected a positive integer, got 2.5"):
        AdapterConfig(bottleneck_size=2.5)


def test_unknown_non_linearity_is_a_value_error():
    with pytest.raises(ValueError, match=r"non_linearity: expected one of \['gelu', 'relu'\]"):
        AdapterConfig(non_linearity="tanh")
