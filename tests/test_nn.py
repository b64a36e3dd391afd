"""Ring 2 for layers: every Module's gradients, accumulation, modes, names, strict state dicts."""

import numpy as np
import pytest
from helpers import well_spread_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from minift import nn
from minift.gradcheck import (
    check_gradients,
    check_module,
    numerical_gradient_array,
    randomize_params,
    rel_error,
)

TOL = 1e-7
fast = settings(max_examples=15, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def module_check(module, x, rng, forward=None, backward=None):
    """Gradcheck every Param of a module and its input, through Σ forward(x) ⊙ dout."""
    forward = forward or module.forward
    backward = backward or module.backward
    out = forward(x)
    dout = rng.standard_normal(out.shape)

    def loss(run_backward):
        value = float(np.sum(forward(x) * dout))
        if run_backward:
            module.zero_grad()
            backward(dout)
        return value

    report = check_gradients(loss, module.named_parameters())
    assert report.ok(TOL), str(report)
    forward(x)
    dx = backward(dout)
    assert rel_error(dx, numerical_gradient_array(lambda: forward(x), x, dout)) < TOL


@fast
@given(seeds, st.integers(1, 5), st.integers(1, 5), st.booleans())
def test_linear_module_gradients(seed, n_in, n_out, bias):
    rng = np.random.default_rng(seed)
    layer = nn.Linear(n_in, n_out, bias, rng=rng, dtype=np.float64)
    randomize_params(layer.named_parameters(), seed)
    module_check(layer, rng.standard_normal((2, 3, n_in)), rng)


@fast
@given(seeds, st.integers(3, 8))
def test_layer_norm_module_gradients(seed, C):
    rng = np.random.default_rng(seed)
    layer = nn.LayerNorm(C, dtype=np.float64)
    randomize_params({"ln.weight": layer.weight, "ln.bias": layer.bias}, seed)
    module_check(layer, well_spread_rows(rng, 2, 3, C), rng)


@fast
@given(seeds, st.sampled_from([(4, 1), (4, 2), (6, 3), (8, 2)]), st.integers(1, 5))
def test_attention_and_mlp_and_block_gradients(seed, shape, T):
    C, nh = shape
    rng = np.random.default_rng(seed)
    kw = {"rng": rng, "dtype": np.float64, "proj_std": 0.02}
    x = rng.standard_normal((2, T, C))
    for module in (
        nn.Attention(C, nh, 0.0, **kw),
        nn.MLP(C, 0.0, **kw),
        nn.Block(C, nh, 0.0, **kw),
    ):
        randomize_params(module.named_parameters(), seed)
        module_check(module, x, rng)


@fast
@given(
    seeds,
    st.sampled_from([(4, 1), (4, 2), (6, 3), (8, 2)]),
    st.integers(1, 3),
    st.integers(1, 5),
    st.floats(0.1, 0.7),
)
def test_attention_and_mlp_and_block_gradients_with_dropout_on(seed, shape, B, T, p):
    """Dropout active, each mask held fixed across the probes: every backward must apply the
    mask its forward drew (the MLP's dropout, the attention's residual dropout, both in a Block).
    minift's attention has no dropout on the attention probabilities (GPT-2's attn_pdrop): the
    residual dropout after c_proj is its only one."""
    C, nh = shape
    rng = np.random.default_rng(seed)
    kw = {"rng": rng, "dtype": np.float64, "proj_std": 0.02}
    x = rng.standard_normal((B, T, C))
    for module in (
        nn.Attention(C, nh, p, **kw),
        nn.MLP(C, p, **kw),
        nn.Block(C, nh, p, **kw),
    ):
        randomize_params(module.named_parameters(), seed)
        report = check_module(module, x, rng)
        assert set(report.errors) == {*module.named_parameters(), "input"}
        assert report.ok(TOL), f"{type(module).__name__}\n{report}"


def test_embedding_module_gradients():
    rng = np.random.default_rng(0)
    emb = nn.Embedding(7, 3, rng=rng, dtype=np.float64)
    ids = rng.integers(0, 7, (2, 5))
    dout = rng.standard_normal((2, 5, 3))

    def loss(run_backward):
        value = float(np.sum(emb.forward(ids) * dout))
        if run_backward:
            emb.zero_grad()
            emb.backward(dout)
        return value

    assert check_gradients(loss, emb.named_parameters()).ok(TOL)


def test_shared_param_gets_the_sum_of_its_uses():
    """Two Linear layers holding ONE Param (A3): its grad is the sum of the two layers' dW."""
    rng = np.random.default_rng(0)
    a = nn.Linear(4, 4, rng=rng, dtype=np.float64)
    b = nn.Linear(4, 4, rng=rng, dtype=np.float64)
    b.weight = a.weight  # tie: y = (x·W + b_a)·W + b_b
    x, dout = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    h = a.forward(x)
    b.forward(h)
    a.backward(b.backward(dout))
    W = a.weight.value
    dW_second_use = h.T @ dout
    dW_first_use = x.T @ (dout @ W.T)
    np.testing.assert_allclose(a.weight.grad, dW_first_use + dW_second_use, rtol=1e-12)
    assert not np.allclose(a.weight.grad, dW_second_use)


def test_frozen_linear_has_no_grad_but_passes_dx():
    rng = np.random.default_rng(0)
    layer = nn.Linear(3, 2, rng=rng, dtype=np.float64)
    layer.weight.trainable = False
    x = rng.standard_normal((4, 3))
    layer.forward(x)
    dx = layer.backward(np.ones((4, 2)))
    assert layer.weight.grad is None
    assert layer.bias.grad is not None
    np.testing.assert_allclose(dx, np.ones((4, 2)) @ layer.weight.value.T)


def test_grads_accumulate_until_zero_grad():
    rng = np.random.default_rng(0)
    layer = nn.Linear(3, 2, rng=rng, dtype=np.float64)
    x, dout = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    layer.forward(x)
    layer.backward(dout)
    once = layer.weight.grad.copy()
    layer.forward(x)
    layer.backward(dout)
    np.testing.assert_allclose(layer.weight.grad, 2 * once)
    layer.zero_grad()
    assert layer.weight.grad is None


def test_dropout_is_active_only_in_training_mode():
    rng = np.random.default_rng(0)
    block = nn.Block(8, 2, 0.5, rng=rng, dtype=np.float64, proj_std=0.02)
    x = rng.standard_normal((2, 5, 8))
    block.eval()
    assert not block.mlp.dropout.training
    np.testing.assert_array_equal(block.forward(x), block.forward(x))
    block.train()
    assert not np.array_equal(block.forward(x), block.forward(x))


def test_named_parameters_use_gpt2_names_and_list_shared_params_once():
    rng = np.random.default_rng(0)
    blocks = nn.ModuleList(
        [nn.Block(8, 2, 0.0, rng=rng, dtype=np.float64, proj_std=0.02) for _ in range(2)]
    )
    names = list(blocks.named_parameters())
    assert names[:4] == [
        "0.ln_1.weight",
        "0.ln_1.bias",
        "0.attn.c_attn.weight",
        "0.attn.c_attn.bias",
    ]
    assert len(names) == 24
    blocks[1].mlp.c_fc.weight = blocks[0].mlp.c_fc.weight
    params = blocks.named_parameters()
    assert "1.mlp.c_fc.weight" not in params and "0.mlp.c_fc.weight" in params
    assert len(params) == 23


def test_get_and_set_submodule():
    rng = np.random.default_rng(0)
    blocks = nn.ModuleList([nn.Block(8, 2, 0.0, rng=rng, dtype=np.float64, proj_std=0.02)])
    layer = blocks.get_submodule("0.attn.c_attn")
    assert isinstance(layer, nn.Linear) and layer.out_features == 24
    new = nn.Linear(8, 24, rng=rng, dtype=np.float64)
    blocks.set_submodule("0.attn.c_attn", new)
    assert blocks[0].attn.c_attn is new
    with pytest.raises(KeyError, match="0.attn.nope"):
        blocks.get_submodule("0.attn.nope")
    with pytest.raises(KeyError, match="5.attn"):
        blocks.get_submodule("5.attn")


def test_load_state_dict_is_strict_and_names_every_problem():
    rng = np.random.default_rng(0)
    layer = nn.Block(4, 2, 0.0, rng=rng, dtype=np.float64, proj_std=0.02)
    state = layer.state_dict()
    before = layer.state_dict()
    bad = dict(state)
    del bad["ln_1.weight"]
    bad["extra.weight"] = np.zeros(3)
    bad["mlp.c_fc.weight"] = np.zeros((4, 5))
    bad["ln_2.bias"] = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError) as err:
        layer.load_state_dict(bad)
    message = str(err.value)
    assert "missing keys ['ln_1.weight']" in message
    assert "unexpected keys ['extra.weight']" in message
    assert "mlp.c_fc.weight: expected shape (4, 16), got (4, 5)" in message
    assert "ln_2.bias: expected floating-point values" in message
    for k, v in layer.state_dict().items():  # nothing changed
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_copies_into_shared_params():
    rng = np.random.default_rng(0)
    a = nn.Linear(3, 3, rng=rng, dtype=np.float64)
    b = nn.Linear(3, 3, rng=rng, dtype=np.float64)
    b.weight = a.weight
    pair = nn.ModuleList([a, b])
    state = {k: v + 1.0 for k, v in pair.state_dict().items()}
    pair.load_state_dict(state)
    assert b.weight is a.weight
    np.testing.assert_array_equal(b.weight.value, state["0.weight"])


def test_attention_rejects_heads_that_do_not_divide_channels():
    with pytest.raises(ValueError, match="n_head: must divide d_model=10, got 4"):
        nn.Attention(10, 4, 0.0, rng=np.random.default_rng(0), dtype=np.float64, proj_std=0.02)
