"""AdaLoRA: every claim of minift/peft/adalora.py's docstring, proved."""

import itertools
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift.checkpoint import load_tensors
from minift.functional import cross_entropy
from minift.gradcheck import (
    check_gradients,
    check_module,
    numerical_gradient,
    randomize_params,
    rel_error,
)
from minift.nn import Linear
from minift.optim import AdamW
from minift.peft import LoraConfig, PeftModel, count_parameters, get_peft_model
from minift.peft.adalora import (
    AdaLoraConfig,
    RankAllocator,
    SVDLinear,
    adalora_regularizer,
    budget_schedule,
    orth_deviation_backward,
    orth_deviation_forward,
)

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)
target_lists = st.sampled_from([["c_attn"], ["c_attn", "mlp.c_proj"], ["c_fc", "attn.c_proj"]])
D = TINY.d_model
# The layer's output is affine in every single entry of x, W₀, b, P, λ and Q, so a central
# difference has no truncation error at any step: a larger h than the default 1e-5 only divides
# the rounding error of the loss. At 1e-5 that error reaches 1e-7 of a gradient that chance made
# 1e-4 small (hypothesis found one: Q = 0.012 with most of x dropped out).
AFFINE_H = 1e-3
SHAPES = {"c_attn": (D, 3 * D), "c_fc": (D, 4 * D), "mlp.c_proj": (4 * D, D), "attn.c_proj": (D, D)}


def tiny_model(seed=0, dtype=np.float64):
    model = minift.GPT(TINY, seed=seed, dtype=dtype)
    randomize_params(model.named_parameters(), seed)
    return model


def config(targets=("c_attn",), init_r=3, target_r=1, **kw):
    kw = {"total_step": 20, "tinit": 2, "tfinal": 4, "deltaT": 2, **kw}
    return AdaLoraConfig(target_modules=list(targets), init_r=init_r, target_r=target_r, **kw)


def adalora_model(seed=0, targets=("c_attn",), dtype=np.float64, randomize=True, **kw):
    peft_model = get_peft_model(tiny_model(seed, dtype), config(targets, **kw), seed=seed)
    if randomize:
        randomize_params(trainable(peft_model), seed + 1)
    return peft_model


def trainable(model):
    return {n: p for n, p in model.named_parameters().items() if p.trainable}


def layers(peft_model):
    return [m for _, m in peft_model.named_modules() if isinstance(m, SVDLinear)]


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


def total_loss(model, idx, targets):
    """Task loss + the orthogonality regulariser, as the training loop computes it."""

    def loss(run_backward):
        value, dlogits = cross_entropy(model.forward(idx), targets)
        if run_backward:
            model.zero_grad()
            model.backward(dlogits)
        return value + adalora_regularizer(model, accumulate_grads=run_backward)

    return loss


def train(peft_model, steps, allocator=None, lr=1e-2, seed=0):
    """PEFT's order: backward (+ regulariser), step, update_and_allocate, then zero_grad."""
    optimizer = AdamW(peft_model.named_parameters(), lr=lr)
    idx, tgt = batch(seed, B=4, T=8)
    loss = total_loss(peft_model, idx, tgt)
    values = []
    for step in range(steps):
        values.append(loss(True))
        optimizer.step()
        if allocator is not None:
            allocator.update_and_allocate(peft_model, step)
    return values


# ------------------------------------------------------------------------------------------------
# The parametrization


@settings(max_examples=10, deadline=None)
@given(seeds, target_lists, st.integers(1, 4))
def test_adalora_at_init_gives_the_base_output(seed, targets, init_r):
    idx, _ = batch(seed)
    expected = tiny_model(seed).forward(idx)
    peft_model = adalora_model(seed, targets, randomize=False, init_r=init_r, target_r=1)
    for layer in layers(peft_model):
        np.testing.assert_array_equal(layer.lora_E.value, 0.0)
    np.testing.assert_array_equal(peft_model.forward(idx), expected)


def test_delta_weight_is_P_diag_lambda_Q_with_peft_scaling():
    """ΔW = s·(P·diag(λ)·Q)ᵀ in minift's [in, out] layout, s = α/(init_r + 1e-5) as PEFT."""
    peft_model = adalora_model(3, ["c_attn"], init_r=4, lora_alpha=6)
    layer = layers(peft_model)[0]
    P, lam, Q = layer.lora_B.value, layer.lora_E.value, layer.lora_A.value
    assert layer.scaling == 6 / (4 + 1e-5)
    expected = layer.scaling * sum(lam[i] * np.outer(P[:, i], Q[i, :]) for i in range(4)).T
    np.testing.assert_allclose(layer.delta_weight(), expected, rtol=1e-12, atol=1e-14)
    x = np.random.default_rng(0).standard_normal((5, D))
    base = layer.base_layer
    np.testing.assert_allclose(
        layer.forward(x), x @ (base.weight.value + expected) + base.bias.value, rtol=1e-12
    )
    assert adalora_model(3, ["c_attn"], init_r=4, lora_alpha=0).get_submodule(
        "h.0.attn.c_attn"
    ).scaling == pytest.approx(4 / (4 + 1e-5), rel=1e-15)


# ------------------------------------------------------------------------------------------------
# Gradients


@settings(max_examples=3, deadline=None)
@given(seeds, target_lists)
def test_every_adalora_parameter_matches_finite_differences(seed, targets):
    """P, λ, Q through the whole tiny GPT, with the regulariser in the loss."""
    peft_model = adalora_model(seed, targets)
    idx, tgt = batch(seed)
    params = trainable(peft_model)
    assert len(params) == 3 * len(layers(peft_model))
    report = check_gradients(total_loss(peft_model, idx, tgt), params)
    assert report.ok(TOL), str(report)


@settings(max_examples=20, deadline=None)
@given(
    seeds,
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(1, 4),
    st.floats(0.1, 0.7),
    st.booleans(),
)
def test_layer_gradients_with_dropout_on_match_finite_differences(
    seed, d_in, d_out, r, p, train_base
):
    """P, λ, Q with lora_dropout on (x_drop into Q only, dx back through the same mask), each
    mask held fixed across the probes; and dW₀, db when the base weight is left trainable."""
    r = min(r, d_in, d_out)
    rng = np.random.default_rng(seed)
    base = Linear(d_in, d_out, rng=rng, dtype=np.float64, std=0.5)
    base.weight.trainable = base.bias.trainable = train_base
    layer = SVDLinear(base, r, 4.0, p, rng=rng)
    randomize_params(layer.named_parameters(), seed, scale=0.5)  # λ ≠ 0
    report = check_module(layer, rng.standard_normal((2, 3, d_in)), rng, h=AFFINE_H)
    trained_base = {"base_layer.weight", "base_layer.bias"} if train_base else set()
    assert set(report.errors) == {"lora_A", "lora_E", "lora_B", "input"} | trained_base
    assert report.ok(TOL), str(report)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 5), st.integers(1, 7), st.booleans())
def test_the_orthogonality_penalty_gradient_matches_finite_differences(seed, r, n, squared):
    """‖M·Mᵀ − I‖_F (PEFT's) and its square (the paper's): the pure pair, gradchecked."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((r, n))
    value, cache = orth_deviation_forward(M, squared)
    expected = np.linalg.norm(M @ M.T - np.eye(r))
    assert value == pytest.approx(expected**2 if squared else expected, rel=1e-12)
    dout = float(rng.standard_normal())
    dM = orth_deviation_backward(dout, cache)
    numeric = numerical_gradient(lambda: dout * orth_deviation_forward(M, squared)[0], M)
    assert rel_error(dM, numeric) < TOL


def test_at_orthonormal_rows_the_paper_penalty_is_flat_and_peft_norm_has_a_kink():
    """Exactly orthonormal: both 0 with gradient 0. Orthonormal up to rounding: the squared
    form's gradient 4·C·M is rounding-sized; the norm's, 2·C·M/‖C‖_F, keeps a size up to 2·‖M‖₂
    (the kink of a norm at 0, as |x| at 0)."""
    for squared in (False, True):
        value, cache = orth_deviation_forward(np.eye(3, 7), squared)
        assert value == 0.0
        np.testing.assert_array_equal(orth_deviation_backward(1.0, cache), 0.0)
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((7, 3)))[0].T  # (3, 7)
    value, cache = orth_deviation_forward(Q, squared=True)
    assert value < 1e-28 and np.max(np.abs(orth_deviation_backward(1.0, cache))) < 1e-13
    value, cache = orth_deviation_forward(Q)
    assert 0 < value < 1e-14
    assert np.linalg.norm(orth_deviation_backward(1.0, cache)) <= 2.0 + 1e-12


def test_the_regulariser_is_peft_mean_of_norms_and_its_grads_match_finite_differences():
    """R = w/(2L)·Σ_layers (‖QQᵀ − I‖_F + ‖PᵀP − I‖_F), and it adds exactly ∂R/∂P, ∂R/∂Q."""
    peft_model = adalora_model(2, ["c_attn", "c_fc"], orth_reg_weight=0.7)
    svd = layers(peft_model)
    expected = sum(
        np.linalg.norm(m.lora_A.value @ m.lora_A.value.T - np.eye(3))
        + np.linalg.norm(m.lora_B.value.T @ m.lora_B.value - np.eye(3))
        for m in svd
    ) * (0.7 / (2 * len(svd)))
    assert adalora_regularizer(peft_model, accumulate_grads=False) == pytest.approx(expected)
    assert all(p.grad is None for p in trainable(peft_model).values())  # evaluating only

    def loss(run_backward):
        if run_backward:
            peft_model.zero_grad()
        return adalora_regularizer(peft_model, accumulate_grads=run_backward)

    report = check_gradients(loss, trainable(peft_model))
    assert report.ok(TOL), str(report)
    assert all(m.lora_E.grad is None for m in svd)  # λ is not in R


# ------------------------------------------------------------------------------------------------
# Importance and the budget


@settings(max_examples=20, deadline=None)
@given(
    st.integers(0, 10), st.integers(0, 10), st.integers(1, 40), st.integers(1, 5),
    st.integers(1, 8), st.integers(0, 8), st.integers(1, 6),
)  # fmt: skip
def test_budget_schedule_endpoints_and_monotonicity(tinit, tfinal, middle, deltaT, n, tr, extra):
    init_r, target_r = tr + extra, tr
    total_step = tinit + tfinal + middle
    init_bgt, target_bgt = init_r * n, target_r * n
    schedule = [
        budget_schedule(t, init_bgt, target_bgt, tinit, tfinal, total_step, deltaT)
        for t in range(total_step + 3)
    ]
    budgets = [b for b, _ in schedule]
    assert budgets[: tinit + 1] == [init_bgt] * (tinit + 1)
    assert budgets[total_step - tfinal :] == [target_bgt] * (tfinal + 3)
    assert all(a >= b for a, b in itertools.pairwise(budgets))
    for t in range(tinit + 1, total_step - tfinal):  # the cubic in between, rounded down
        progress = (t - tinit) / (total_step - tfinal - tinit)
        assert budgets[t] == int(target_bgt + (init_bgt - target_bgt) * (1 - progress) ** 3)
    assert all(not mask for _, mask in schedule[: tinit + 1])
    middle_masks = [mask for _, mask in schedule[tinit + 1 : total_step - tfinal + 1]]
    assert middle_masks == [t % deltaT == 0 for t in range(tinit + 1, total_step - tfinal + 1)]


def test_importance_scores_follow_the_smoothed_sensitivity_and_uncertainty():
    """Ī ← β1·Ī + (1−β1)·|w·g|, Ū ← β2·Ū + (1−β2)·| |w·g| − Ī |; Sᵢ = s(λᵢ) + means of P, Q."""
    peft_model = adalora_model(6, ["c_attn"], beta1=0.7, beta2=0.6)
    allocator = RankAllocator(peft_model)
    layer = layers(peft_model)[0]
    idx, tgt = batch(6)
    loss = total_loss(peft_model, idx, tgt)
    ipt_avg, unc_avg = {}, {}
    for _ in range(2):
        loss(True)
        allocator.update_ipt(peft_model)
        for attr in ("lora_A", "lora_E", "lora_B"):
            p = getattr(layer, attr)
            ipt = np.abs(p.value * p.grad)
            ipt_avg[attr] = 0.7 * ipt_avg.get(attr, 0) + 0.3 * ipt
            unc_avg[attr] = 0.6 * unc_avg.get(attr, 0) + 0.4 * np.abs(ipt - ipt_avg[attr])
            p.value += 0.1  # a different point for the second step
    s = {a: ipt_avg[a] * unc_avg[a] for a in ipt_avg}
    expected = s["lora_E"] + s["lora_A"].mean(axis=1) + s["lora_B"].mean(axis=0)
    score = allocator.triplet_scores(peft_model)["h.0.attn.c_attn"]
    np.testing.assert_allclose(score, expected, rtol=1e-12)


@pytest.mark.parametrize("budget", [0, 1, 4, 7, 12])
def test_after_allocation_the_nonzero_lambdas_are_the_budget_best(budget):
    peft_model = adalora_model(1, ["c_attn", "c_fc"], randomize=False, init_r=3)
    allocator = RankAllocator(peft_model)
    assert (allocator.init_bgt, allocator.target_bgt) == (12, 4)
    idx, tgt = batch(1)
    optimizer = AdamW(peft_model.named_parameters(), lr=1e-2)
    loss = total_loss(peft_model, idx, tgt)
    for _ in range(3):  # trained a little: every λ is nonzero, every score positive
        loss(True)
        optimizer.step()
        allocator.update_ipt(peft_model)
    scores = np.concatenate(list(allocator.triplet_scores(peft_model).values()))
    lam = np.concatenate([m.lora_E.value for m in layers(peft_model)])
    assert np.all(lam != 0) and len(set(scores.tolist())) == 12
    pattern = allocator.mask_to_budget(peft_model, budget)
    lam = np.concatenate([m.lora_E.value for m in layers(peft_model)])
    assert np.count_nonzero(lam) == budget
    kept = np.concatenate([pattern[k] for k in pattern])
    assert kept.sum() == budget
    np.testing.assert_array_equal(lam != 0, kept)
    assert budget in (0, 12) or scores[kept].min() > scores[~kept].max()  # the best are kept
    assert sorted(pattern) == [f"transformer.h.{i}.{t}.lora_E" for i in (0, 1) for t in
                               ("attn.c_attn", "mlp.c_fc")]  # fmt: skip


def test_the_final_allocation_is_kept_through_the_final_phase():
    """update_and_allocate: budget b(t), the final rank_pattern at T − tfinal, held afterwards."""
    peft_model = adalora_model(2, ["c_attn", "mlp.c_proj"], randomize=False, init_r=3)
    allocator = RankAllocator(peft_model)
    cfg = peft_model.peft_config
    optimizer = AdamW(peft_model.named_parameters(), lr=1e-2)
    idx, tgt = batch(2)
    loss = total_loss(peft_model, idx, tgt)
    final = cfg.total_step - cfg.tfinal
    for step in range(cfg.total_step):
        loss(True)
        optimizer.step()
        budget, pattern = allocator.update_and_allocate(peft_model, step)
        nonzero = sum(np.count_nonzero(m.lora_E.value) for m in layers(peft_model))
        expected_budget, mask_now = allocator.budget_schedule(step)
        assert budget == expected_budget
        if pattern is not None:  # a masking step: exactly the budget survives
            assert step == final or mask_now
            assert nonzero == budget == sum(sum(v) for v in pattern.values())
        if step == final:
            assert pattern is not None and cfg.rank_pattern is pattern
            assert budget == allocator.target_bgt == 4
        if step > final:  # the final pattern holds at every later step
            assert pattern is None and nonzero == allocator.target_bgt
            for m, kept in zip(layers(peft_model), cfg.rank_pattern.values(), strict=True):
                np.testing.assert_array_equal(m.lora_E.value[~np.asarray(kept)], 0.0)


# ------------------------------------------------------------------------------------------------
# Merging, training, counting, files


@settings(max_examples=10, deadline=None)
@given(seeds, target_lists)
def test_merged_model_equals_the_adapted_one_and_unmerge_restores_W0(seed, targets):
    peft_model = adalora_model(seed, targets)
    idx, _ = batch(seed)
    adapted = peft_model.forward(idx)
    for layer in layers(peft_model):
        W0 = layer.base_layer.weight.value.copy()
        layer.merge()
        layer.unmerge()
        assert np.max(np.abs(layer.base_layer.weight.value - W0)) <= 1e-12
    merged = peft_model.merge_and_unload()
    assert np.max(np.abs(merged.forward(idx) - adapted)) <= 1e-12


def test_frozen_parameters_are_bit_identical_after_20_adamw_steps():
    peft_model = adalora_model(1, ["c_attn", "mlp.c_proj"], randomize=False)
    frozen = {
        n: p.value.copy() for n, p in peft_model.named_parameters().items() if not p.trainable
    }
    before = {n: p.value.copy() for n, p in trainable(peft_model).items()}
    train(peft_model, 20, RankAllocator(peft_model))
    now = peft_model.named_parameters()
    for name, value in frozen.items():
        np.testing.assert_array_equal(now[name].value, value, err_msg=name)
    # P and Q all trained (λ of a whole matrix may be pruned to rank 0: AdaLoRA may do that)
    moved = [not np.array_equal(now[n].value, v) for n, v in before.items() if "lora_E" not in n]
    assert len(moved) == 8 and all(moved)
    assert any(np.any(m.lora_E.value != 0) for m in layers(peft_model))


@pytest.mark.parametrize("targets", [["c_attn"], ["c_attn", "c_fc", "mlp.c_proj"]])
@pytest.mark.parametrize("init_r", [1, 5])
def test_trainable_count_is_the_closed_form(targets, init_r):
    """Σ over targets of init_r·(d_in + d_out + 1), from the config's numbers."""
    expected = TINY.n_layer * sum(init_r * (SHAPES[t][0] + SHAPES[t][1] + 1) for t in targets)
    peft_model = adalora_model(0, targets, randomize=False, init_r=init_r, target_r=1)
    assert count_parameters(peft_model).trainable == expected


def test_adapter_file_has_peft_keys_and_shapes_and_round_trips(tmp_path):
    peft_model = adalora_model(3, ["c_attn"], init_r=3)
    idx, _ = batch(3)
    expected = peft_model.forward(idx)
    peft_model.save_pretrained(tmp_path / "full")
    tensors, _ = load_tensors(tmp_path / "full" / "adapter_model.safetensors")
    prefix = "base_model.model.transformer.h.0.attn.c_attn."
    assert tensors[prefix + "lora_A"].shape == (3, D)
    assert tensors[prefix + "lora_E"].shape == (3, 1)
    assert tensors[prefix + "lora_B"].shape == (3 * D, 3)
    assert len(tensors) == 3 * TINY.n_layer
    saved = json.loads((tmp_path / "full" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA" and saved["init_r"] == 3
    loaded = PeftModel.from_pretrained(tiny_model(3), tmp_path / "full")
    np.testing.assert_array_equal(loaded.forward(idx), expected)


def test_a_pruned_adapter_saves_only_the_kept_ranks_and_round_trips(tmp_path):
    peft_model = adalora_model(4, ["c_attn"], randomize=False, init_r=3, target_r=1)
    allocator = RankAllocator(peft_model)
    train(peft_model, peft_model.peft_config.total_step, allocator)
    idx, _ = batch(4)
    expected = peft_model.forward(idx)
    pattern = peft_model.peft_config.rank_pattern
    peft_model.save_pretrained(tmp_path)
    tensors, _ = load_tensors(tmp_path / "adapter_model.safetensors")
    for i in range(TINY.n_layer):
        kept = int(sum(pattern[f"transformer.h.{i}.attn.c_attn.lora_E"]))
        prefix = f"base_model.model.transformer.h.{i}.attn.c_attn."
        assert tensors[prefix + "lora_E"].shape == (kept, 1)
        assert tensors[prefix + "lora_A"].shape == (kept, D)
        assert tensors[prefix + "lora_B"].shape == (3 * D, kept)
    assert sum(t.shape[0] for k, t in tensors.items() if k.endswith("lora_E")) == 2
    loaded = PeftModel.from_pretrained(tiny_model(4), tmp_path)
    assert loaded.peft_config.rank_pattern == pattern
    np.testing.assert_array_equal(loaded.forward(idx), expected)


def test_a_few_dozen_adamw_steps_lower_the_loss_while_ranks_are_pruned():
    peft_model = adalora_model(
        5, ["c_attn", "c_fc"], np.float32, randomize=False, init_r=4, target_r=2, total_step=40
    )
    losses = train(peft_model, 40, RankAllocator(peft_model), lr=3e-2, seed=5)
    assert losses[-1] < 0.8 * losses[0], (losses[0], losses[-1])
    assert sum(np.count_nonzero(m.lora_E.value) for m in layers(peft_model)) == 2 * 4


# ------------------------------------------------------------------------------------------------
# Bad input


def test_a_missing_total_step_is_refused():
    with pytest.raises(ValueError, match="total_step: .* got None"):
        AdaLoraConfig(init_r=4, target_r=2)


def test_a_target_rank_above_the_initial_rank_is_refused():
    with pytest.raises(ValueError, match=r"target_r: expected a rank in \[0, init_r\] = \[0, 4\]"):
        AdaLoraConfig(init_r=4, target_r=5, total_step=10)


def test_a_schedule_without_a_budgeting_phase_is_refused():
    with pytest.raises(ValueError, match="tinit < total_step − tfinal.*tinit=6, tfinal=4"):
        AdaLoraConfig(total_step=10, tinit=6, tfinal=4)


def test_a_nan_lora_alpha_is_refused():
    with pytest.raises(ValueError, match="lora_alpha: expected a finite number, got nan"):
        AdaLoraConfig(total_step=10, lora_alpha=float("nan"))


def test_an_ema_rate_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match=r"beta2: expected a value in \(0, 1\), got 1.0"):
        AdaLoraConfig(total_step=10, beta2=1.0)


BAD_OPTIONS = [
    (dict(init_r=4.0), TypeError, "init_r: expected an integer, got 4.0"),
    (dict(deltaT=True), TypeError, "deltaT: expected an integer, got True"),
    (dict(init_r=0, target_r=0), ValueError, "init_r: expected a positive rank, got 0"),
    (dict(deltaT=0), ValueError, "expected tinit ≥ 0, tfinal ≥ 0, deltaT ≥ 1, got 0, 0, 0"),
    (dict(tfinal=-1), ValueError, "tinit, tfinal, deltaT: expected"),
    (dict(orth_reg_weight=-0.1), ValueError, "orth_reg_weight: expected a weight ≥ 0, got -0.1"),
    (dict(orth_reg_weight=float("inf")), ValueError, "orth_reg_weight: expected a weight ≥ 0"),
    (dict(lora_dropout=1.0), ValueError, "lora_dropout: expected a probability in [0, 1), got 1.0"),
    (dict(init_lora_weights="gaussian"), ValueError, "init_lora_weights: expected True"),
    (dict(bias="all"), ValueError, "bias: minift's AdaLoRA trains no biases"),
    (dict(fan_in_fan_out="yes"), TypeError, "fan_in_fan_out: expected True, False or None"),
    (dict(rank_pattern=[4, 4]), TypeError, "rank_pattern: expected a dict or None, got [4, 4]"),
]  # fmt: skip


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=lambda v: str(v)[:30])
def test_each_option_out_of_its_range_is_refused_naming_it(options, error, message):
    with pytest.raises(error, match=re.escape(message)):
        AdaLoraConfig(**{"total_step": 10, **options})
    AdaLoraConfig(total_step=10)  # the defaults are all in range


def test_an_initial_rank_larger_than_the_layer_is_refused():
    with pytest.raises(ValueError, match=r"r: expected a rank in \[1, min\(in, out\)\] = \[1, 8\]"):
        adalora_model(0, ["c_attn"], init_r=9, target_r=1)


def test_the_allocator_and_regulariser_refuse_a_model_without_adalora():
    peft_model = get_peft_model(tiny_model(0), LoraConfig(r=2))
    with pytest.raises(TypeError, match="RankAllocator: expected a PeftModel made with an Ada"):
        RankAllocator(peft_model)
    with pytest.raises(TypeError, match="adalora_regularizer: expected .* got PeftModel with Lora"):
        adalora_regularizer(peft_model)


def test_allocating_before_backward_or_with_a_float_step_is_refused():
    peft_model = adalora_model(0, ["c_attn"])
    allocator = RankAllocator(peft_model)
    with pytest.raises(
        RuntimeError, match=r"h.0.attn.c_attn.lora_A has no gradient; call it after"
    ):
        allocator.update_and_allocate(peft_model, 0)
    with pytest.raises(TypeError, match="global_step: expected an integer step, got 1.5"):
        allocator.update_and_allocate(peft_model, 1.5)


def _saved_hook_state():
    from minift.peft.adalora import AdaLoraTrainHook

    hook = AdaLoraTrainHook(adalora_model())
    key = "h.0.attn.c_attn.lora_E"
    hook.allocator.exp_avg_ipt[key] = np.ones(3)
    hook.allocator.exp_avg_unc[key] = np.full(3, 2.0)
    return hook, hook.state_dict()


def _pattern(kept):
    return {"transformer.h.0.attn.c_attn.lora_E": kept, "transformer.h.1.attn.c_attn.lora_E": kept}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda a, m: a.update({"exp_avg_ipt/h.9.attn.c_attn.lora_E": np.ones(3)}),
            "expected exp_avg_ipt/<param> and exp_avg_unc/<param>",
        ),
        (lambda a, m: a.pop("exp_avg_unc/h.0.attn.c_attn.lora_E"), "the same AdaLoRA parameters"),
        (lambda a, m: m.update(extra=1), 'expected the field "rank_pattern"'),
        (lambda a, m: m.update(rank_pattern=_pattern([True])), '"rank_pattern": expected null'),
        (lambda a, m: m.update(rank_pattern=_pattern([1, 0, 1])), '"rank_pattern": expected null'),
    ],
    ids=["unknown-param", "unpaired", "extra-field", "short-pattern", "not-booleans"],
)
def test_a_hook_state_that_does_not_fit_is_named_and_changes_nothing(edit, match):
    """What a resumed AdaLoRA run would load into its rank allocator is checked before use."""
    hook, (arrays, meta) = _saved_hook_state()
    arrays, meta = dict(arrays), dict(meta)
    edit(arrays, meta)
    other, _ = _saved_hook_state()
    before = other.state_dict()
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(arrays, meta)
    after = other.state_dict()
    assert after[1] == before[1] and after[0].keys() == before[0].keys()
    for key in before[0]:
        np.testing.assert_array_equal(after[0][key], before[0][key])


def test_a_saved_hook_state_loads_back_whole():
    hook, (arrays, meta) = _saved_hook_state()
    hook.allocator.config.rank_pattern = _pattern([True, False, True])
    arrays, meta = hook.state_dict()
    fresh, _ = _saved_hook_state()
    fresh.allocator.reset_ipt()
    fresh.load_state_dict(arrays, meta)
    assert fresh.allocator.config.rank_pattern == _pattern([True, False, True])
    np.testing.assert_array_equal(fresh.allocator.exp_avg_unc["h.0.attn.c_attn.lora_E"], 2.0)
