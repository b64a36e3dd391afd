"""One switch, ``minift.nn.clear_ops``, makes every layer run the clear pairs of functional.py.

What the tests prove: the switch decides which ops run (by default the fused variants, under the
switch only the clear pairs); a training step gives the same parameters either way; a backward
runs the pair its forward ran, whatever the switch says by then; ``MINIFT_CLEAR_OPS=1`` turns the
switch on at import; the worker threads of DataParallel follow their caller's setting.

Tolerance. The two families do the same multiplications and additions in another order, so in
float64 their gradients differ by rounding (tests/test_functional_fused.py holds each op to 1e-12),
and so do the parameters after an AdamW step: 1e-12 of the largest entry. One exception, derived:
the key bias b_k of ``c_attn`` adds q_i·b_k to every score of row i, which the softmax ignores,
so its exact gradient is 0 and both runs compute rounding noise g. AdamW's first step is
lr·g/(|g| + ε), which turns a gradient's rounding Δg into up to lr·ε·Δg/(|g| + ε)² of the step:
lr·Δg/ε at g = 0 (b_k), and a large share of Δg/g wherever |g| is near ε (``first_step_spread``).
Every test sets the switch explicitly, so each also passes with MINIFT_CLEAR_OPS=1 set.
"""

import functools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
from minift import functional as F
from minift import nn
from minift.gradcheck import check_gradients, randomize_params
from minift.optim import AdamW
from minift.peft import LoraConfig, PrefixTuningConfig, get_peft_model

ROOT = Path(__file__).resolve().parents[1]
TINY = minift.GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, d_model=8, dropout=0.1)
seeds = st.integers(0, 2**31 - 1)

# the ops each family runs; causal_mask is left out, as the cached mask is built from it once
CLEAR = {
    "embedding_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "gelu_forward",
    "gelu_backward",
    "softmax_forward",
    "softmax_backward",
    "attention_forward",
    "attention_backward",
    "mha_forward",
    "mha_backward",
}
FUSED = {
    "embedding_backward_sorted",
    "layer_norm_forward_fused",
    "layer_norm_backward_fused",
    "gelu_forward_fused",
    "gelu_backward_fused",
    "softmax_inplace",
    "softmax_backward_inplace",
    "mha_forward_fused",
    "mha_backward_fused",
}


@pytest.fixture
def ran(monkeypatch):
    """The names of the functional ops called, in order (the layers look them up at call time)."""
    calls = []
    for name in CLEAR | FUSED:

        def spy(*args, _op, _name=name, **kwargs):
            calls.append(_name)
            return _op(*args, **kwargs)

        monkeypatch.setattr(F, name, functools.partial(spy, _op=getattr(F, name)))
    return calls


def tiny(kind, seed, dropout=0.1):
    """A float64 GPT at a random point of order one, plain or with a method applied."""
    config = minift.GPTConfig(**{**vars(TINY), "dropout": dropout})
    model = minift.GPT(config, seed=seed, dtype=np.float64)
    if kind == "lora":
        lora = LoraConfig(
            r=2, lora_alpha=4, lora_dropout=dropout, target_modules=["c_attn", "c_fc"]
        )
        model = get_peft_model(model, lora, seed=seed)
    elif kind == "prefix":
        model = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=3), seed=seed)
    randomize_params(model.named_parameters(), seed)  # LoRA's B moves off 0, so dA is not 0
    return model


def generators(model):
    """Every random generator the model's dropouts draw from, each once."""
    found = {}
    for _, module in model.named_modules():
        for value in vars(module).values():
            if isinstance(value, np.random.Generator):
                found[id(value)] = value
    return list(found.values())


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, TINY.vocab_size, (B, T)), rng.integers(0, TINY.vocab_size, (B, T))


def training_step(model, idx, targets, lr, eps=1e-8):
    """Forward, cross-entropy, backward, one AdamW step; returns the loss and the gradients."""
    model.zero_grad()
    loss, dlogits = minift.cross_entropy(model.forward(idx), targets)
    model.backward(dlogits)
    params = model.named_parameters()
    grads = {n: p.grad.copy() for n, p in params.items() if p.trainable}
    AdamW(params, lr=lr, eps=eps).step()
    return loss, grads


def first_step_spread(g_a, g_b, lr, eps):
    """How far apart AdamW's first step u(g) = lr·g/(|g| + ε) may put two runs whose gradients
    are g_a and g_b: |u′(g)| = lr·ε/(|g| + ε)² at most between them (mean value theorem), largest
    at the smaller |g|, or at 0 where the signs differ. It is lr·|Δg|/ε where the exact gradient
    is 0 (the key bias: both runs hold rounding noise), and it is large where |g| is near ε (a
    LoRA B entry at 1.2e-8 turned a Δg of 8e-17 into 1.6e-12 of the step, seed 0)."""
    same_sign = np.sign(g_a) == np.sign(g_b)
    smaller = np.where(same_sign, np.minimum(np.abs(g_a), np.abs(g_b)), 0.0)
    return lr * eps * np.abs(g_a - g_b) / (smaller + eps) ** 2


@settings(max_examples=4, deadline=None)
@given(seeds, st.sampled_from(["gpt", "lora", "prefix"]))
def test_one_training_step_gives_the_same_parameters_on_clear_and_fused_ops(seed, kind):
    model = tiny(kind, seed)
    idx, targets = batch(seed)
    start = model.state_dict()
    rng_states = [g.bit_generator.state for g in generators(model)]
    assert rng_states, "the model has no dropout generator: the masks would not be tested"
    lr, eps = 1e-3, 1e-8
    after, losses, grads = {}, {}, {}
    for clear in (True, False):
        model.load_state_dict(start)
        for g, state in zip(generators(model), rng_states, strict=True):
            g.bit_generator.state = state  # the same dropout masks in both runs
        with nn.clear_ops(clear):
            losses[clear], grads[clear] = training_step(model.train(), idx, targets, lr, eps)
        after[clear] = model.state_dict()
    assert abs(losses[True] - losses[False]) <= 1e-12 * abs(losses[True])
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, g in grads[True].items():
        diff = np.abs(g - grads[False][name]).max()
        assert diff <= 1e-12 * np.abs(g).max(), f"{name}: gradients differ by {diff:.1e}"
        step = np.abs(after[False][name] - start[name]).max()
        assert step > 0.1 * lr, (
            f"{name}: did not move ({step:.1e}), so the test would prove nothing"
        )
    C = TINY.d_model
    for name in start:
        a, b = after[True][name], after[False][name]
        allowed = np.full(a.shape, 1e-12 * np.abs(a).max())
        if name.endswith("attn.c_attn.bias") and name in grads[True]:
            g_clear = grads[True][name][C : 2 * C]
            assert np.abs(g_clear).max() <= 1e-12 * np.abs(grads[True][name]).max()  # 0, exactly
        if name in grads[True]:
            allowed += first_step_spread(grads[True][name], grads[False][name], lr, eps)
        worst = np.argmax(np.abs(a - b) - allowed)
        assert np.all(np.abs(a - b) <= allowed), (name, worst, a.flat[worst] - b.flat[worst])


def test_the_switch_decides_which_functional_ops_every_layer_runs(ran):
    model = tiny("gpt", 0)
    idx, targets = batch(0)
    for clear, family in ((True, CLEAR), (False, FUSED)):
        ran.clear()
        with nn.clear_ops(clear):
            training_step(model, idx, targets, 1e-3)
        assert set(ran) == family, f"clear={clear}: ran {sorted(set(ran))}"


def test_attention_with_extra_key_rows_runs_the_clear_pair_either_way(ran):
    """The fused attention takes no prefix (or KV-cache) rows: with them, even the default runs
    the clear mha pair, and only that layer does."""
    model = tiny("prefix", 0)
    idx, targets = batch(0)
    with nn.clear_ops(False):
        training_step(model, idx, targets, 1e-3)
    assert "mha_forward" in ran and "mha_backward" in ran and "mha_forward_fused" not in ran
    assert "layer_norm_forward_fused" in ran and "layer_norm_forward" not in ran


def forward_then_backward(model, idx, targets, forward_clear, backward_clear, ran=None):
    """The loss; fills Param.grad. ``ran`` (if given) keeps only the ops the backward called."""
    with nn.clear_ops(forward_clear):
        loss, dlogits = minift.cross_entropy(model.forward(idx), targets)
    if ran is not None:
        ran.clear()
    with nn.clear_ops(backward_clear):
        model.zero_grad()
        model.backward(dlogits)
    return loss


@pytest.mark.parametrize("kind", ["gpt", "lora", "prefix"])
@pytest.mark.parametrize("forward_clear", [True, False])
def test_a_backward_runs_the_pair_its_forward_ran_whatever_the_switch_says_by_then(
    kind, forward_clear, ran
):
    model = tiny(kind, 3, dropout=0.0)
    params = model.named_parameters()
    idx, targets = batch(3)
    forward_then_backward(model, idx, targets, forward_clear, forward_clear)
    same = {n: p.grad.copy() for n, p in params.items() if p.trainable}
    forward_then_backward(model, idx, targets, forward_clear, not forward_clear, ran)
    assert ran, "the spies saw no backward op"
    other = FUSED if forward_clear else CLEAR
    if kind == "prefix" and not forward_clear:  # with P > 0, mha_backward_fused is mha_backward
        other = other - {"mha_backward", "attention_backward", "softmax_backward"}
    assert not set(ran) & other, f"the backward ran {sorted(set(ran) & other)}"
    assert same
    for name, grad in same.items():  # bit for bit: the very same ops ran
        np.testing.assert_array_equal(params[name].grad, grad, err_msg=name)

    def loss_fn(run_backward):
        if run_backward:
            return forward_then_backward(model, idx, targets, forward_clear, not forward_clear)
        with nn.clear_ops(forward_clear):
            return minift.cross_entropy(model.forward(idx), targets)[0]

    report = check_gradients(loss_fn, params, max_entries=20)
    assert report.ok(1e-7), str(report)


def test_clear_ops_restores_the_previous_setting_and_nests():
    with nn.clear_ops(False):
        assert nn.clear_ops_enabled() is False
        with nn.clear_ops():
            assert nn.clear_ops_enabled() is True
            with nn.clear_ops(False):
                assert nn.clear_ops_enabled() is False
            assert nn.clear_ops_enabled() is True
        assert nn.clear_ops_enabled() is False
        with pytest.raises(RuntimeError), nn.clear_ops():
            raise RuntimeError  # an error inside the block restores the setting too
        assert nn.clear_ops_enabled() is False


@pytest.mark.parametrize("enabled", [1, "yes", None, np.True_])
def test_clear_ops_names_a_value_that_is_not_a_bool(enabled):
    with pytest.raises(TypeError, match=r"enabled: expected True or False, got"):
        with nn.clear_ops(enabled):
            pass


def switch_in_a_fresh_process(value):
    env = {k: v for k, v in os.environ.items() if k != "MINIFT_CLEAR_OPS"}
    if value is not None:
        env["MINIFT_CLEAR_OPS"] = value
    code = "import minift.nn; print(minift.nn.clear_ops_enabled())"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(("value", "expected"), [("1", "True"), ("0", "False"), (None, "False")])
def test_MINIFT_CLEAR_OPS_in_the_environment_sets_the_switch_at_import(value, expected):
    done = switch_in_a_fresh_process(value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_a_MINIFT_CLEAR_OPS_that_is_not_0_or_1_is_named_at_import():
    done = switch_in_a_fresh_process("yes")
    assert done.returncode != 0
    assert "MINIFT_CLEAR_OPS: expected 0 or 1 (or unset), got 'yes'" in done.stderr


def test_worker_threads_read_the_setting_of_their_caller(ran):
    """One process-wide flag, not a per-thread one: a thread started inside the block sees it,
    so DataParallel's replicas run the clear pairs too."""
    from minift.parallel import DataParallel

    with nn.clear_ops(), ThreadPoolExecutor(1) as pool:
        assert pool.submit(nn.clear_ops_enabled).result() is True
    model = tiny("gpt", 0, dropout=0.0)
    idx, targets = batch(0, B=4)
    with nn.clear_ops():
        model.zero_grad()
        DataParallel(model, 2).forward_backward(idx, targets)
    assert set(ran) == CLEAR
