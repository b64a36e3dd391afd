"""LoKr (peft/lokr.py): every claim of its docstring, PEFT's file format, and PEFT itself."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from helpers import (
    as_if_written_elsewhere,
    hf_gpt2_with_linears,
    import_references,
    torch_loss_and_grads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.errors import FileFormatError
from minift.gradcheck import (
    check_gradients,
    check_pair,
    cross_entropy_loss,
    fixed_dropout_masks,
    randomize_params,
)
from minift.optim import AdamW
from minift.peft import LoKrConfig, LoKrLinear, PeftModel, count_parameters, get_peft_model
from minift.peft.lokr import (
    SLOTS,
    factorization,
    kron_backward,
    kron_forward,
    lokr_backward,
    lokr_forward,
    lokr_shapes,
)

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)
# (r, decompose_both) on TINY's c_attn (8 -> 24: W₁ [4, 2], W₂ [6, 4]) and c_fc (8 -> 32: W₂
# [8, 4]): every factor split, only W₂ split, none split
SPLITS = {
    (1, True): {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"},
    (2, False): {"lokr_w1", "lokr_w2_a", "lokr_w2_b"},
    (4, True): {"lokr_w1", "lokr_w2"},
}


def tiny_gpt(seed=0, dtype=np.float64, config=TINY):
    model = minift.GPT(config, seed=seed, dtype=dtype)
    if dtype == np.float64:
        randomize_params(model.named_parameters(), seed)  # a "pretrained" point, not the init
    return model


def trainable(model):
    return {n: p for n, p in model.named_parameters().items() if p.trainable}


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def lokr_layers(peft_model):
    return [m for _, m in peft_model.named_modules() if isinstance(m, LoKrLinear)]


def factor_names(peft_model):
    return {name.rsplit(".", 1)[1] for name in trainable(peft_model)}


# -- the shapes -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000))
def test_factorization_without_a_bound_is_the_divisor_pair_nearest_the_square_root(n):
    m, k = factorization(n)
    pairs = [(d, n // d) for d in range(1, n + 1) if n % d == 0 and d <= n // d]
    assert m * k == n and m <= k
    assert k - m == min(b - a for a, b in pairs)


def test_factorization_with_a_factor_that_divides_is_that_factor_first():
    assert factorization(128, 4) == (4, 32)
    assert factorization(128, 32) == (32, 4)  # as given, not sorted (PEFT's rule)
    assert factorization(24, 5) == (4, 6)  # 5 does not divide 24: the walk stops below 6


def test_the_factor_shapes_follow_r_and_decompose_both():
    for (r, both), names in SPLITS.items():
        assert set(lokr_shapes(8, 24, r, both)) == names
    assert lokr_shapes(8, 24, 2) == {"lokr_w1": (4, 2), "lokr_w2_a": (6, 2), "lokr_w2_b": (2, 4)}
    assert lokr_shapes(8, 24, 8, decompose_factor=2) == {"lokr_w1": (2, 2), "lokr_w2": (12, 4)}


# -- the pure functions ---------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
def test_kron_forward_is_the_kronecker_product(seed, a, b, c, d):
    rng = np.random.default_rng(seed)
    W1, W2 = rng.standard_normal((a, c)), rng.standard_normal((b, d))
    np.testing.assert_allclose(kron_forward(W1, W2, 0.3), 0.3 * np.kron(W1, W2), rtol=1e-14)


@settings(max_examples=10, deadline=None)
@given(seeds, st.integers(1, 3), st.integers(1, 3))
def test_the_rank_of_the_kronecker_product_is_the_product_of_the_ranks(seed, r1, r2):
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((4, r1)) @ rng.standard_normal((r1, 3))
    W2 = rng.standard_normal((5, r2)) @ rng.standard_normal((r2, 6))
    assert np.linalg.matrix_rank(kron_forward(W1, W2, 1.0)) == r1 * r2


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
def test_kron_backward_matches_finite_differences(seed, a, b, c, d):
    rng = np.random.default_rng(seed)
    W1, W2 = rng.standard_normal((a, c)), rng.standard_normal((b, d))
    report = check_pair(
        lambda W1, W2: (kron_forward(W1, W2, 0.7), (W1, W2)),
        lambda G, cache: kron_backward(G, *cache, 0.7),
        [W1, W2],
        rng=seed,
    )
    assert report.ok(TOL), str(report)


@settings(max_examples=30, deadline=None)
@given(seeds, st.sampled_from([4, 6, 8, 12]), st.sampled_from([4, 6, 9, 16, 24]),
       st.integers(1, 4), st.booleans(), st.booleans())  # fmt: skip
def test_lokr_pair_matches_finite_differences(seed, d_in, d_out, r, both, has_bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, d_in))
    W0 = rng.standard_normal((d_in, d_out))
    b = rng.standard_normal(d_out) if has_bias else None
    shapes = lokr_shapes(d_in, d_out, r, both)
    slots = [rng.standard_normal(shapes[n]) if n in shapes else None for n in SLOTS]

    def backward(dy, cache):  # in the order of the inputs: x, W0, (b,) then the factors given
        dx, *dfactors, dW0, db = lokr_backward(dy, cache, need_base_grads=True)
        return (dx, dW0, *([db] if has_bias else []), *dfactors)

    report = check_pair(lokr_forward, backward, [x, W0, b, *slots, 0.7], rng=seed)
    assert len(report.errors) == 2 + has_bias + len(shapes)
    assert report.ok(TOL), str(report)


# -- the whole model ------------------------------------------------------------------------------


@settings(max_examples=3, deadline=None)
@given(seeds, st.floats(0.1, 0.5), st.sampled_from(sorted(SPLITS)))
def test_every_lokr_factor_matches_finite_differences_with_the_gpts_dropout_on(seed, p, split):
    """Through the whole model, dropout active with its masks held fixed, for every way of
    splitting the factors; no frozen weight gets a gradient."""
    r, both = split
    config = LoKrConfig(r=r, alpha=3, decompose_both=both, target_modules=["c_attn", "c_fc"])
    peft = get_peft_model(tiny_gpt(seed, config=replace(TINY, dropout=p)), config, seed=seed)
    assert factor_names(peft) == SPLITS[split]
    randomize_params(trainable(peft), seed + 1)  # W₁ = 0 would zero W₂'s gradient
    loss = fixed_dropout_masks(cross_entropy_loss(peft, *batch(seed)), peft)
    report = check_gradients(loss, peft.named_parameters())
    assert set(report.errors) == set(trainable(peft))
    assert report.ok(TOL), str(report)
    assert all(p.grad is None for p in peft.named_parameters().values() if not p.trainable)


@pytest.mark.parametrize(
    ("init", "zeroed"), [(True, {"lokr_w1", "lokr_w1_a"}), ("lycoris", {"lokr_w2", "lokr_w2_b"})]
)
@pytest.mark.parametrize("split", sorted(SPLITS))
def test_lokr_at_init_gives_the_base_output_bit_for_bit(init, zeroed, split):
    idx, _ = batch(0)
    model = tiny_gpt(0)
    base = model.forward(idx)
    r, both = split
    config = LoKrConfig(r=r, decompose_both=both, init_weights=init, target_modules=["c_fc"])
    peft = get_peft_model(model, config)
    for layer in lokr_layers(peft):
        zeros = {n for n in layer.delta_params if not layer.param(n).value.any()}
        assert zeros == zeroed & set(layer.delta_params)  # one side of W₁ ⊗ W₂, the rest random
    np.testing.assert_array_equal(peft.forward(idx), base)


def test_only_w1_moves_on_the_first_step():
    peft = get_peft_model(tiny_gpt(1), LoKrConfig(r=8))
    cross_entropy_loss(peft, *batch(1))(True)
    layer = lokr_layers(peft)[0]
    assert layer.delta_params == ("lokr_w1", "lokr_w2")
    assert np.abs(layer.lokr_w1.grad).max() > 1e-6  # s·Σ G's blocks ⊙ W₂
    assert not layer.lokr_w2.grad.any()  # G's blocks contracted against W₁ = 0


def test_init_weights_false_draws_every_factor_and_changes_the_output():
    idx, _ = batch(2)
    model = tiny_gpt(2)
    base = model.forward(idx)
    peft = get_peft_model(model, LoKrConfig(r=1, decompose_both=True, init_weights=False))
    assert all(p.value.all() for p in trainable(peft).values())
    assert not np.allclose(peft.forward(idx), base)


@settings(max_examples=10, deadline=None)
@given(seeds, st.sampled_from(sorted(SPLITS)))
def test_merged_lokr_model_equals_the_unmerged_one(seed, split):
    idx, _ = batch(seed)
    model = tiny_gpt(seed % 5)
    n_base = count_parameters(model).total
    r, both = split
    config = LoKrConfig(r=r, decompose_both=both, target_modules=["c_attn", "c_fc"])
    peft = get_peft_model(model, config)
    randomize_params(trainable(peft), seed)
    adapted = peft.forward(idx)
    merged = peft.merge_and_unload()
    np.testing.assert_allclose(merged.forward(idx), adapted, rtol=0, atol=1e-12)
    assert not any("lokr" in name for name in merged.named_parameters())
    assert count_parameters(merged).total == n_base


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_merge_then_unmerge_restores_the_base_weights(seed):
    peft = get_peft_model(tiny_gpt(seed % 5), LoKrConfig(r=2))
    randomize_params(trainable(peft), seed)
    layers = lokr_layers(peft)
    before = [m.base_layer.weight.value.copy() for m in layers]
    for m in layers:
        m.merge()
    assert not np.array_equal(layers[0].base_layer.weight.value, before[0])
    for m, W in zip(layers, before, strict=True):
        m.unmerge()
        np.testing.assert_allclose(m.base_layer.weight.value, W, rtol=0, atol=1e-12)


def test_frozen_params_are_bit_identical_after_20_steps_of_training():
    peft = get_peft_model(tiny_gpt(3), LoKrConfig(r=2, target_modules=["c_attn", "c_fc"]))
    frozen = {n: p.value.copy() for n, p in peft.named_parameters().items() if not p.trainable}
    factors = {n: p.value.copy() for n, p in trainable(peft).items()}
    opt = AdamW(peft.named_parameters(), lr=1e-2)
    loss = cross_entropy_loss(peft, *batch(3))
    first = loss(True)
    for _ in range(20):
        opt.step()
        last = loss(True)
    for name, value in frozen.items():
        np.testing.assert_array_equal(peft.named_parameters()[name].value, value)
    assert all(not np.array_equal(trainable(peft)[n].value, v) for n, v in factors.items())
    assert last < first


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_trainable_count_is_the_closed_form(split):
    r, both = split
    config = LoKrConfig(r=r, decompose_both=both, target_modules=["c_attn", "c_fc"])
    peft = get_peft_model(tiny_gpt(0), config)
    # c_attn: W₁ [4, 2], W₂ [6, 4]; c_fc: W₁ [4, 2], W₂ [8, 4]; a split factor is r·(rows + cols)
    w1 = r * (4 + 2) if both and r < 2 else 4 * 2
    w2 = {"c_attn": r * (6 + 4) if r < 3 else 6 * 4, "c_fc": r * (8 + 4) if r < 4 else 8 * 4}
    assert count_parameters(peft).trainable == TINY.n_layer * (2 * w1 + sum(w2.values()))


# -- PEFT's file format ---------------------------------------------------------------------------


def test_saved_file_has_peft_keys_and_shapes_and_loads_back(tmp_path):
    config = LoKrConfig(r=1, alpha=3, decompose_both=True, target_modules=["c_attn"])
    peft = get_peft_model(tiny_gpt(5), config)
    randomize_params(trainable(peft), 5)
    idx, _ = batch(5)
    adapted = peft.forward(idx)
    peft.save_pretrained(tmp_path)
    shapes = {"lokr_w1_a": (4, 1), "lokr_w1_b": (1, 2), "lokr_w2_a": (6, 1), "lokr_w2_b": (1, 4)}
    assert {k: v.shape for k, v in peft.adapter_state_dict().items()} == {
        f"base_model.model.transformer.h.{i}.attn.c_attn.{name}": shape
        for i in range(TINY.n_layer)
        for name, shape in shapes.items()
    }
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["decompose_both"], saved["alpha"]) == ("LOKR", True, 3)
    loaded = PeftModel.from_pretrained(tiny_gpt(5), tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), adapted)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rank_dropout", 1.0, "expected a probability in [0, 1), got 1.0"),
        ("decompose_factor", 0, "expected -1 or a positive integer, got 0"),
        ("init_weights", "gaussian", "expected True, False or 'lycoris', got 'gaussian'"),
    ],
)
def test_a_file_with_a_field_minift_cannot_honour_names_the_file_and_the_field(
    tmp_path, field, value, message
):
    get_peft_model(tiny_gpt(6), LoKrConfig(r=2)).save_pretrained(tmp_path)
    as_if_written_elsewhere(tmp_path / "adapter_model.safetensors")
    config_file = tmp_path / "adapter_config.json"
    raw = json.loads(config_file.read_text())
    raw[field] = value
    config_file.write_text(json.dumps(raw))
    model = tiny_gpt(6)
    with pytest.raises(FileFormatError, match=re.escape(message)) as err:
        PeftModel.from_pretrained(model, tmp_path)
    assert "adapter_config.json" in str(err.value) and field in str(err.value)
    assert not any("lokr" in n for n in model.named_parameters())  # the model is untouched


def test_a_file_for_another_kronecker_split_is_refused_by_tensor_name(tmp_path):
    # saved with c_attn's 24 = 4·6 (W₁ [4, 2]); read with decompose_factor = 2, 24 = 2·12
    get_peft_model(tiny_gpt(), LoKrConfig(r=2)).save_pretrained(tmp_path)
    as_if_written_elsewhere(tmp_path / "adapter_model.safetensors")
    config_file = tmp_path / "adapter_config.json"
    raw = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**raw, "decompose_factor": 2}))
    with pytest.raises(FileFormatError, match=r"lokr_w1: expected shape \(2, 2\), got \(4, 2\)"):
        PeftModel.from_pretrained(tiny_gpt(), tmp_path)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"r": 0}, ValueError, "r: expected a positive integer rank, got 0"),
        ({"alpha": float("inf")}, ValueError, "alpha: expected a finite number > 0, got inf"),
        (
            {"rank_dropout": 1.5},
            ValueError,
            r"rank_dropout: expected a probability in \[0, 1\), got 1.5",
        ),
        ({"module_dropout": 1}, ValueError, r"module_dropout: expected .*\[0, 1\), got 1"),
        ({"init_weights": 1}, ValueError, "init_weights: expected True, False or 'lycoris'"),
        ({"decompose_both": "yes"}, TypeError, "decompose_both: expected True or False"),
        ({"rank_dropout_scale": None}, TypeError, "rank_dropout_scale: expected True or False"),
        ({"decompose_factor": -2}, ValueError, "decompose_factor: expected -1 or a positive"),
        ({"decompose_factor": 2.0}, ValueError, "decompose_factor: expected -1 or a positive"),
        ({"rank_pattern": {"c_attn": -1}}, ValueError, "rank_pattern: 'c_attn': expected a pos"),
        ({"layers_to_transform": [0, -1]}, TypeError, "layers_to_transform: expected a block"),
    ],
)
def test_bad_config_is_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LoKrConfig(**kwargs)


def test_unknown_target_module_lists_what_exists():
    with pytest.raises(ValueError, match=r"\['q_proj'\] matched no Linear module"):
        get_peft_model(tiny_gpt(), LoKrConfig(target_modules=["c_attn", "q_proj"]))


# -- PEFT itself ----------------------------------------------------------------------------------


@pytest.mark.reference
def test_factorization_is_pefts():
    import_references()
    from peft.tuners.lokr.layer import factorization as pefts

    for n in range(1, 300):
        for factor in [-1, *range(1, 20)]:
            assert factorization(n, factor) == pefts(n, factor), (n, factor)


@pytest.mark.reference
@pytest.mark.parametrize("split", sorted(SPLITS))
def test_lokr_trained_in_hugging_face_peft_loads_in_minift_with_equal_logits_and_gradients(
    tmp_path, split
):
    torch, _, peft_lib = import_references()
    model = tiny_gpt(8)
    hf = hf_gpt2_with_linears(model, tmp_path / "base")
    r, both = split
    theirs = peft_lib.LoKrConfig(r=r, alpha=3, decompose_both=both, init_weights=False,
                                 target_modules=["c_attn", "c_fc"])  # fmt: skip
    hf = peft_lib.get_peft_model(hf, theirs)
    idx, targets = batch(8)
    expected, expected_grads = torch_loss_and_grads(torch, hf, idx, targets)
    hf.save_pretrained(tmp_path / "adapter")
    peft = PeftModel.from_pretrained(tiny_gpt(8), tmp_path / "adapter", is_trainable=True)
    assert factor_names(peft) == SPLITS[split]
    np.testing.assert_allclose(peft.forward(idx), expected, rtol=0, atol=1e-10)
    cross_entropy_loss(peft, idx, targets)(True)
    ours = {peft.peft_config.peft_key(n): p.grad for n, p in trainable(peft).items()}
    assert ours.keys() == expected_grads.keys()
    for key, grad in ours.items():
        np.testing.assert_allclose(grad, expected_grads[key], rtol=0, atol=1e-8, err_msg=key)


@pytest.mark.reference
def test_lokr_written_by_minift_loads_in_hugging_face_peft_with_equal_logits(tmp_path):
    torch, _, peft_lib = import_references()
    model = tiny_gpt(9)
    hf = hf_gpt2_with_linears(model, tmp_path / "base")
    config = LoKrConfig(r=1, alpha=5, decompose_both=True, decompose_factor=2,
                        target_modules=["c_attn", "mlp.c_proj"])  # fmt: skip
    peft = get_peft_model(model, config)
    randomize_params(trainable(peft), 9)
    idx, _ = batch(9)
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    fields = set(peft_lib.LoKrConfig.__dataclass_fields__)
    assert set(saved) <= fields, sorted(set(saved) - fields)  # PEFT would warn and drop others
    hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
    with torch.no_grad():
        got = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    adapted = {n.split(".lokr_")[0].removeprefix("base_model.model.transformer.")
               for n, _ in hf.named_parameters() if ".lokr_" in n}  # fmt: skip
    assert sorted(adapted) == sorted(peft._tuner_layers())
