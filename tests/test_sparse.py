"""Sparse connections, A4 (peft/sparse.py, peft/sparse_mask.py): every claim, checked."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.gradcheck import (
    check_gradients,
    cross_entropy_loss,
    numerical_gradient_array,
    randomize_params,
    rel_error,
)
from minift.nn import Linear
from minift.optim import AdamW
from minift.peft.base import PeftModel, get_peft_model
from minift.peft.counting import count_parameters
from minift.peft.sparse import (
    ACTIVATIONS,
    MaskedLinear,
    SparseConfig,
    SparseDeltaLinear,
    masked_linear_backward,
    masked_linear_forward,
    sparse_delta_backward,
    sparse_delta_forward,
    sparse_delta_weight,
    sparse_weight_backward,
    sparse_weight_forward,
)
from minift.peft.sparse_mask import choose_mask_indices, mask_from_indices

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)
activations = st.sampled_from(ACTIVATIONS)
masks = st.sampled_from(["random", "magnitude"])
dims = st.integers(1, 6)
densities = st.floats(0.3, 1.0)
pair_densities = st.floats(0.6, 1.0)  # round(0.6·n) >= 1 even for a 1×1 weight

# (d_in, d_out) of each target Linear of TINY, C = 8
SHAPES = {"c_attn": (8, 24), "attn.c_proj": (8, 8), "c_fc": (8, 32), "mlp.c_proj": (32, 8)}


def tiny_gpt(seed=0, dtype=np.float64):
    model = minift.GPT(TINY, seed=seed, dtype=dtype)
    if dtype == np.float64:
        randomize_params(model.named_parameters(), seed)
    return model


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def random_mask(rng, shape, density=0.5):
    D = rng.random(shape) < density
    D.flat[0] = True  # at least one kept connection
    return D


def sparse_layers(model):
    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, (SparseDeltaLinear, MaskedLinear))
    ]


# -- A4: the weight parametrization and its gradient ----------------------------------------------


@settings(max_examples=20, deadline=None)
@given(seeds, dims, dims, activations)
def test_a4_pair_matches_finite_differences(seed, d_in, d_out, activation):
    rng = np.random.default_rng(seed)
    W1, D = rng.standard_normal((d_in, d_out)), random_mask(rng, (d_in, d_out))
    W2, cache = sparse_weight_forward(W1, D, activation)
    dW2 = rng.standard_normal(W2.shape)
    dW1 = sparse_weight_backward(dW2, cache)
    numeric = numerical_gradient_array(lambda: sparse_weight_forward(W1, D, activation)[0], W1, dW2)
    assert rel_error(dW1, numeric) < TOL


def test_a4_gradient_is_d_times_sigma_prime_times_upstream():
    rng = np.random.default_rng(0)
    W1, D, dW2 = rng.standard_normal((4, 5)), random_mask(rng, (4, 5)), rng.standard_normal((4, 5))
    _, cache = sparse_weight_forward(W1, D, "tanh")
    expected = D * (1 - np.tanh(W1 * D) ** 2) * dW2  # D ⊙ σ′(W₁ ⊙ D) ⊙ ∂L/∂W₂
    np.testing.assert_allclose(sparse_weight_backward(dW2, cache), expected, rtol=1e-14)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cut_connections_are_absent_and_get_no_gradient(activation):
    rng = np.random.default_rng(1)
    W1, D = rng.standard_normal((6, 7)), random_mask(rng, (6, 7))
    W2, cache = sparse_weight_forward(W1, D, activation)
    assert np.all(W2[~D] == 0) and np.all(W2[D] != 0)  # σ(0) = 0: a cut connection is absent
    assert np.all(sparse_weight_backward(rng.standard_normal(W2.shape), cache)[~D] == 0)


@settings(max_examples=15, deadline=None)
@given(seeds, dims, dims, activations)
def test_masked_linear_pair_matches_finite_differences(seed, d_in, d_out, activation):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, d_in))
    W1, D, b = (
        rng.standard_normal((d_in, d_out)),
        random_mask(rng, (d_in, d_out)),
        rng.standard_normal(d_out),
    )
    y, cache = masked_linear_forward(x, W1, b, D, activation)
    dy = rng.standard_normal(y.shape)
    dx, dW1, db = masked_linear_backward(dy, cache)

    def fwd():
        return masked_linear_forward(x, W1, b, D, activation)[0]

    assert rel_error(dx, numerical_gradient_array(fwd, x, dy)) < TOL
    assert rel_error(dW1, numerical_gradient_array(fwd, W1, dy)) < TOL
    assert rel_error(db, numerical_gradient_array(fwd, b, dy)) < TOL


@settings(max_examples=15, deadline=None)
@given(seeds, dims, dims, activations, pair_densities)
def test_sparse_delta_pair_matches_finite_differences(seed, d_in, d_out, activation, density):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, d_in))
    W0, b = rng.standard_normal((d_in, d_out)), rng.standard_normal(d_out)
    indices = choose_mask_indices(W0, density, "random", rng)
    delta = rng.standard_normal(indices.size)
    y, cache = sparse_delta_forward(x, W0, b, delta, indices, activation)
    dy = rng.standard_normal(y.shape)
    dx, ddelta, dW0, db = sparse_delta_backward(dy, cache, need_dW0=True)

    def fwd():
        return sparse_delta_forward(x, W0, b, delta, indices, activation)[0]

    assert rel_error(dx, numerical_gradient_array(fwd, x, dy)) < TOL
    assert rel_error(ddelta, numerical_gradient_array(fwd, delta, dy)) < TOL
    assert rel_error(dW0, numerical_gradient_array(fwd, W0, dy)) < TOL
    assert rel_error(db, numerical_gradient_array(fwd, b, dy)) < TOL


@settings(max_examples=15, deadline=None)
@given(seeds, dims, dims, activations, pair_densities)
def test_compact_delta_is_a4_on_the_dense_delta(seed, d_in, d_out, activation, density):
    """Scatter/gather of the k kept values = A4 and A4′ on the dense Δ with D."""
    rng = np.random.default_rng(seed)
    indices = choose_mask_indices(rng.standard_normal((d_in, d_out)), density, "random", rng)
    D = mask_from_indices(indices, (d_in, d_out))
    delta = rng.standard_normal(indices.size)
    Delta = np.zeros((d_in, d_out))
    Delta.flat[indices] = delta
    dense, cache = sparse_weight_forward(Delta, D, activation)
    np.testing.assert_array_equal(sparse_delta_weight(delta, indices, D.shape, activation), dense)
    x, dy = rng.standard_normal((4, d_in)), rng.standard_normal((4, d_out))
    _, delta_cache = sparse_delta_forward(
        x, np.zeros((d_in, d_out)), None, delta, indices, activation
    )
    _, ddelta, _, _ = sparse_delta_backward(dy, delta_cache)
    dDelta = sparse_weight_backward(x.T @ dy, cache)
    np.testing.assert_allclose(ddelta, dDelta.flat[indices], rtol=1e-12, atol=1e-15)


# -- the mask -------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(seeds, dims, dims, st.floats(0.01, 1.0), masks)
def test_the_mask_keeps_exactly_round_density_times_n_entries(seed, d_in, d_out, density, mask):
    n = d_in * d_out
    if round(density * n) < 1:
        return
    rng = np.random.default_rng(seed)
    W0 = rng.standard_normal((d_in, d_out))
    indices = choose_mask_indices(W0, density, mask, rng)
    assert indices.size == round(density * n) == np.unique(indices).size
    D = mask_from_indices(indices, W0.shape)
    assert D.sum() == indices.size
    if mask == "magnitude" and indices.size < n:
        assert np.abs(W0[D]).min() >= np.abs(W0[~D]).max()


def test_the_random_mask_depends_only_on_mask_seed_and_the_layer_name():
    a = get_peft_model(tiny_gpt(0), SparseConfig(density=0.2, mask_seed=3), seed=0)
    b = get_peft_model(tiny_gpt(1), SparseConfig(density=0.2, mask_seed=3), seed=99)
    c = get_peft_model(tiny_gpt(0), SparseConfig(density=0.2, mask_seed=4), seed=0)
    ia, ib, ic = (m.h[0].attn.c_attn.indices for m in (a, b, c))
    np.testing.assert_array_equal(ia, ib)
    assert not np.array_equal(ia, ic)
    assert not np.array_equal(ia, a.h[1].attn.c_attn.indices)  # each layer its own mask


# -- the layers in the model ----------------------------------------------------------------------


@settings(max_examples=4, deadline=None)
@given(seeds, activations, st.sampled_from(["delta", "literal"]))
def test_every_sparse_parameter_matches_finite_differences(seed, activation, mode):
    config = SparseConfig(
        density=0.3, activation=activation, mode=mode, target_modules=["c_attn", "c_fc"]
    )
    peft = get_peft_model(tiny_gpt(seed), config, seed=seed)
    own = {n: p for n, p in peft.named_parameters().items() if p.trainable}
    randomize_params(own, seed + 1)  # δ = 0 would test the gradient at a single point
    report = check_gradients(cross_entropy_loss(peft, *batch(seed)), peft.named_parameters())
    assert len(report.errors) == 2 * TINY.n_layer
    assert report.ok(TOL), str(report)


@settings(max_examples=10, deadline=None)
@given(seeds, densities, masks, activations)
def test_delta_mode_at_init_gives_exactly_the_base_output(seed, density, mask, activation):
    model = tiny_gpt(seed)
    idx, _ = batch(seed)
    base = model.forward(idx)
    config = SparseConfig(
        density=density, mask=mask, activation=activation, target_modules=".*c_.*"
    )
    peft = get_peft_model(model, config, seed=seed)
    assert len(sparse_layers(peft)) == 4 * TINY.n_layer
    np.testing.assert_array_equal(peft.forward(idx), base)


def test_literal_mode_prunes_at_init_unless_density_is_one_with_identity():
    idx, _ = batch(0)
    base = tiny_gpt(0).forward(idx)
    full = get_peft_model(tiny_gpt(0), SparseConfig(density=1.0, mode="literal"))
    np.testing.assert_array_equal(full.forward(idx), base)
    for config in [
        SparseConfig(density=0.5, mode="literal"),
        SparseConfig(density=1.0, mode="literal", activation="tanh"),
    ]:
        assert not np.allclose(get_peft_model(tiny_gpt(0), config).forward(idx), base)


@settings(max_examples=10, deadline=None)
@given(
    densities,
    st.sampled_from([["c_attn"], ["c_fc", "mlp.c_proj"], ["attn.c_proj", "c_attn", "c_fc"]]),
)
def test_trainable_count_is_the_closed_form(density, targets):
    L = TINY.n_layer
    delta = get_peft_model(
        tiny_gpt(dtype=np.float32), SparseConfig(density=density, target_modules=targets)
    )
    expected = L * sum(round(density * SHAPES[t][0] * SHAPES[t][1]) for t in targets)
    assert count_parameters(delta).trainable == expected
    literal = get_peft_model(
        tiny_gpt(dtype=np.float32),
        SparseConfig(density=density, mode="literal", target_modules=targets),
    )
    assert count_parameters(literal).trainable == L * sum(
        SHAPES[t][0] * SHAPES[t][1] for t in targets
    )


def train(peft, seed, steps, weight_decay=0.01, lr=1e-2):
    opt = AdamW(peft.named_parameters(), lr=lr, weight_decay=weight_decay)
    loss = cross_entropy_loss(peft, *batch(seed))
    for _ in range(steps):
        loss(True)
        opt.step()


@settings(max_examples=5, deadline=None)
@given(seeds, masks, activations)
def test_masked_entries_never_move_even_with_weight_decay(seed, mask, activation):
    """100 AdamW steps with weight decay 0.1: the effective weight's masked entries are W₀'s, bit
    for bit; every frozen Param is bit-identical; the kept entries did move."""
    config = SparseConfig(
        density=0.25, mask=mask, activation=activation, target_modules=["c_attn", "c_fc"]
    )
    peft = get_peft_model(tiny_gpt(seed), config, seed=seed)
    frozen = {n: p.value.copy() for n, p in peft.named_parameters().items() if not p.trainable}
    train(peft, seed, 100, weight_decay=0.1)
    for name, p in peft.named_parameters().items():
        if not p.trainable:
            np.testing.assert_array_equal(p.value, frozen[name], err_msg=name)
    for name, layer in sparse_layers(peft):
        W0, W, D = frozen[f"{name}.base_layer.weight"], layer.effective_weight(), layer.mask
        np.testing.assert_array_equal(W[~D], W0[~D], err_msg=name)
        assert np.all(W[D] != W0[D]), name


def test_literal_mode_masked_weights_decay_but_never_reach_the_output():
    """The docstring's caveat: W₁'s cut entries shrink under weight decay; σ(W₁ ⊙ D) stays 0."""
    peft = get_peft_model(
        tiny_gpt(2), SparseConfig(density=0.25, mode="literal", activation="tanh")
    )
    layer = peft.h[0].attn.c_attn
    W1_before = layer.base_layer.weight.value.copy()
    train(peft, 2, 100, weight_decay=0.1)
    D = layer.mask
    assert np.all(np.abs(layer.base_layer.weight.value[~D]) < np.abs(W1_before[~D]))
    assert np.all(layer.effective_weight()[~D] == 0)


@settings(max_examples=8, deadline=None)
@given(seeds, st.sampled_from(["delta", "literal"]), activations)
def test_merge_matches_unmerged_output_and_unmerge_restores_the_weight(seed, mode, activation):
    config = SparseConfig(
        density=0.4, mode=mode, activation=activation, target_modules=["c_attn", "mlp.c_proj"]
    )
    peft = get_peft_model(tiny_gpt(seed), config, seed=seed)
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, seed + 1)
    idx, _ = batch(seed)
    unmerged = peft.forward(idx)
    layers = [layer for _, layer in sparse_layers(peft)]
    weights = [layer.base_layer.weight.value.copy() for layer in layers]
    for layer in layers:
        layer.merge()
    np.testing.assert_allclose(peft.forward(idx), unmerged, rtol=0, atol=1e-12)
    for layer, W in zip(layers, weights, strict=True):
        assert not np.array_equal(layer.base_layer.weight.value, W)
        layer.unmerge()
        np.testing.assert_array_equal(layer.base_layer.weight.value, W)
    with pytest.raises(RuntimeError, match="unmerge: this .* layer is not merged"):
        layers[0].unmerge()
    layers[0].merge()
    with pytest.raises(RuntimeError, match="merge: this .* layer is already merged"):
        layers[0].merge()


@pytest.mark.parametrize("mode", ["delta", "literal"])
def test_merge_and_unload_gives_a_plain_gpt_with_the_same_output(mode):
    model = tiny_gpt(3)
    names = list(model.named_parameters())
    peft = get_peft_model(
        model, SparseConfig(density=0.3, mode=mode, target_modules=["c_attn", "c_fc"])
    )
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 4)
    idx, _ = batch(3)
    adapted = peft.forward(idx)
    merged = peft.merge_and_unload()
    assert type(merged) is minift.GPT and list(merged.named_parameters()) == names
    assert all(
        type(m) is Linear for n, m in merged.named_modules() if n.endswith(("c_attn", "c_fc"))
    )
    np.testing.assert_allclose(merged.forward(idx), adapted, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mask", ["random", "magnitude"])
def test_a_saved_sparse_adapter_loads_back_with_the_same_mask(tmp_path, mask):
    config = SparseConfig(density=0.2, mask=mask, mask_seed=7, target_modules=["c_attn"])
    peft = get_peft_model(tiny_gpt(4), config, seed=1)
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 5)
    idx, _ = batch(4)
    out = peft.forward(idx)
    peft.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_gpt(4), tmp_path, seed=2)
    np.testing.assert_array_equal(loaded.h[1].attn.c_attn.indices, peft.h[1].attn.c_attn.indices)
    np.testing.assert_array_equal(loaded.forward(idx), out)


@pytest.mark.parametrize("mode", ["delta", "literal"])
def test_a_few_dozen_steps_lower_the_loss(mode):
    config = SparseConfig(density=0.2, mode=mode, target_modules=["c_attn", "c_fc", "mlp.c_proj"])
    model = minift.GPT(TINY, seed=5, dtype=np.float32)
    # a "pretrained" point of order one: at GPT-2's init (std 0.02) the frozen wte keeps every
    # logit near 0, whatever the sparse weights do
    randomize_params(model.named_parameters(), 5)
    peft = get_peft_model(model, config)
    loss = cross_entropy_loss(peft, *batch(5, B=4, T=8))
    first = loss(False)
    opt = AdamW(peft.named_parameters(), lr=3e-2, weight_decay=0.0)
    for _ in range(40):
        loss(True)
        opt.step()
    assert loss(False) < 0.8 * first


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_zero_one_is_named(density):
    with pytest.raises(
        ValueError, match=rf"density: expected a fraction in \(0, 1\], got {density}"
    ):
        SparseConfig(density=density)


def test_bad_sparse_configs_are_named():
    with pytest.raises(TypeError, match=r"density: expected a number in \(0, 1\], got '0.5'"):
        SparseConfig(density="0.5")
    with pytest.raises(
        ValueError, match=r"activation: expected one of \['identity', 'tanh'\], got 'relu'"
    ):
        SparseConfig(activation="relu")
    with pytest.raises(
        ValueError, match=r"mask: expected one of \['random', 'magnitude'\], got 'l1'"
    ):
        SparseConfig(mask="l1")
    with pytest.raises(
        ValueError, match=r"mode: expected one of \['delta', 'literal'\], got 'dense'"
    ):
        SparseConfig(mode="dense")
    with pytest.raises(ValueError, match=r"activation: expected one of \['identity', 'tanh'\]"):
        sparse_weight_forward(np.ones((2, 2)), np.ones((2, 2)), "sigmoid")


def test_a_density_that_keeps_nothing_names_the_layer():
    with pytest.raises(
        ValueError,
        match=r"density: 0.001 keeps round\(0.001·192\) = 0 of the 192 "
        r"entries of h.0.attn.c_attn \(8, 24\)",
    ):
        get_peft_model(tiny_gpt(), SparseConfig(density=0.001))


def test_a_mask_of_the_wrong_shape_is_named():
    layer = tiny_gpt().h[0].attn.c_attn
    with pytest.raises(
        ValueError, match=r"mask: expected the weight's shape \(8, 24\), got \(24, 8\)"
    ):
        MaskedLinear(layer, np.ones((24, 8), dtype=bool))
    with pytest.raises(
        ValueError, match=r"indices: expected distinct flat positions in \[0, 192\)"
    ):
        SparseDeltaLinear(layer, np.array([0, 192]))
