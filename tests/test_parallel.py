"""DataParallel gives the gradient of the single-thread step, and leaves nothing changed behind.

Tolerances, and why. The threads compute the same products as one thread, but each shard's dW
is a sum over its own rows, then the shards' dW are added: the same terms summed in another
order. Each shard's dlogits is also multiplied by N_i/N (its share of the kept targets). So in
float64 the gradients agree to 1e-12 relative to the largest entry (rounding errors of 1e-16,
summed over at most a few hundred terms), and in float32 to 1e-5 (rounding errors of 1e-7).
"""

import os

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import minift
from minift.functional import cross_entropy
from minift.optim import AdamW
from minift.parallel import DataParallel, one_blas_thread_in_children, replicate
from minift.peft import LoraConfig, get_peft_model

CFG = minift.GPTConfig(vocab_size=13, block_size=9, n_layer=2, n_head=2, d_model=8)
RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def model_and_batch(seed=0, dtype=np.float64, B=5, T=7, cls=minift.GPT, **kw):
    model = cls(CFG, seed=seed, dtype=dtype, **kw)
    rng = np.random.default_rng(seed)
    for p in model.parameters():  # away from the init, so no gradient is trivially 0
        p.value[...] += (0.2 * rng.standard_normal(p.shape)).astype(dtype)
    idx = rng.integers(0, CFG.vocab_size, (B, T))
    targets = rng.integers(0, CFG.vocab_size, (B, T))
    return model, idx, targets


def move_lora_weights(peft, seed=0):
    """B starts at 0, so dA would be 0: move every LoRA weight to a random point (not by a
    constant: the residual stream's gradient sums to 0 over channels, LayerNorm sees to it)."""
    rng = np.random.default_rng(seed)
    for p in peft.parameters():
        if p.trainable:
            p.value[...] += 0.1 * rng.standard_normal(p.shape)


def single_thread(model, idx, targets):
    """(loss, {name: grad}) of the plain step."""
    model.zero_grad()
    loss, dlogits = cross_entropy(model.forward(idx), targets)
    model.backward(dlogits)
    return loss, {k: p.grad.copy() for k, p in model.named_parameters().items() if p.trainable}


def assert_same_grads(model, expected, dtype):
    params = model.named_parameters()
    assert sorted(k for k, p in params.items() if p.grad is not None) == sorted(expected)
    for name, want in expected.items():
        got = params[name].grad
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= RTOL[dtype], f"{name}: relative error {err:.2e} > {RTOL[dtype]:.0e}"


def assert_two_threads_match_one(model, idx, targets, dp=None):
    """Same loss and same float64 gradients from DataParallel as from the plain step."""
    loss, expected = single_thread(model, idx, targets)
    model.zero_grad()
    dp = DataParallel(model, 2) if dp is None else dp
    assert dp.forward_backward(idx, targets) == pytest.approx(loss, rel=1e-12)
    assert_same_grads(model, expected, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_threads, B", [(1, 4), (2, 4), (2, 5), (3, 5), (4, 3)])
def test_gradients_equal_the_single_thread_step(dtype, n_threads, B):
    model, idx, targets = model_and_batch(dtype=dtype, B=B)
    targets[0, :3] = -100  # a masked prompt: shards hold different numbers of kept targets
    loss, expected = single_thread(model, idx, targets)
    model.zero_grad()
    dp = DataParallel(model, n_threads)
    got = dp.forward_backward(idx, targets)
    dp.close()
    assert got == pytest.approx(loss, rel=RTOL[dtype])
    assert_same_grads(model, expected, dtype)


def test_a_shard_with_no_kept_target_is_skipped():
    model, idx, targets = model_and_batch(B=4)
    targets[:2] = -100  # the whole first shard is ignored
    assert_two_threads_match_one(model, idx, targets)


def test_lora_and_a_classifier_work_too():
    model, idx, targets = model_and_batch()
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn", "attn.c_proj"]))
    move_lora_weights(peft)
    assert_two_threads_match_one(peft, idx, targets)

    clf, idx, _ = model_and_batch(cls=minift.GPTForSequenceClassification, num_labels=3)
    labels = np.array([0, 2, 1, 1, 0])
    assert_two_threads_match_one(clf, idx, labels)


def test_grads_accumulate_into_the_model_as_backward_does():
    model, idx, targets = model_and_batch()
    _, once = single_thread(model, idx, targets)
    dp = DataParallel(model, 2)
    dp.forward_backward(idx, targets)  # on top of the single-thread grads already there
    for name, p in model.named_parameters().items():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=1e-12, atol=1e-15)


def test_training_with_dataparallel_follows_the_single_thread_run():
    a, idx, targets = model_and_batch()
    b, _, _ = model_and_batch()
    opt_a = AdamW(a.named_parameters(), lr=1e-2)
    opt_b = AdamW(b.named_parameters(), lr=1e-2)
    dp = DataParallel(b, 2)
    for _ in range(5):
        opt_a.zero_grad()
        loss, dlogits = cross_entropy(a.forward(idx), targets)
        a.backward(dlogits)
        opt_a.step()
        opt_b.zero_grad()
        assert dp.forward_backward(idx, targets) == pytest.approx(loss, rel=1e-10)
        opt_b.step()
    for name, p in a.named_parameters().items():
        np.testing.assert_allclose(b.named_parameters()[name].value, p.value, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_step_on_the_threads_is_bit_identical(dtype):
    a, idx, targets = model_and_batch(dtype=dtype)
    b, _, _ = model_and_batch(dtype=dtype)
    opt_a = AdamW(a.named_parameters(), lr=1e-2, weight_decay=0.1)
    opt_b = AdamW(b.named_parameters(), lr=1e-2, weight_decay=0.1)
    dp = DataParallel(b, 3)
    for _ in range(3):
        for model, opt, run in ((a, opt_a, None), (b, opt_b, dp.run_tasks)):
            model.zero_grad()
            loss, dlogits = cross_entropy(model.forward(idx), targets)
            model.backward(dlogits)  # the same single-thread gradient for both
            opt.step(run)
    for name, p in a.named_parameters().items():
        assert np.array_equal(b.named_parameters()[name].value, p.value), name


def test_an_error_in_a_thread_reaches_the_caller():
    dp = DataParallel(model_and_batch()[0], 2)

    def fail():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        dp.run_tasks([(1, fail), (1, lambda: None)])


def test_replicas_share_values_but_not_params_or_grads():
    model, idx, targets = model_and_batch()
    replica = replicate(model)
    for (name, p), (rname, rp) in zip(
        model.named_parameters().items(), replica.named_parameters().items(), strict=True
    ):
        assert name == rname and rp is not p and rp.value is p.value
    # the tied LM head stays tied inside the replica
    assert replica.wte.weight is replica.named_parameters()["wte.weight"]


def test_blas_threads_are_restored_after_the_call():
    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    model, idx, targets = model_and_batch()
    DataParallel(model, 2).forward_backward(idx, targets)
    assert blas_threads() == before


def test_a_changed_module_tree_rebuilds_the_replicas():
    model, idx, targets = model_and_batch()
    dp = DataParallel(model, 2)
    dp.forward_backward(idx, targets)
    peft = get_peft_model(model, LoraConfig(r=2))  # wraps c_attn in place: a new tree
    move_lora_weights(peft)
    assert_two_threads_match_one(peft, idx, targets, dp)


@pytest.mark.parametrize("n_threads", [0, -1, 1.5, True])
def test_bad_thread_counts_are_refused(n_threads):
    with pytest.raises(ValueError, match="n_threads"):
        DataParallel(model_and_batch()[0], n_threads)


@pytest.mark.parametrize("before", [None, "4"])
def test_children_get_one_blas_thread_and_the_environment_comes_back(before, monkeypatch):
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    for name in names:
        if before is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, before)
    with pytest.raises(RuntimeError, match="inside"):
        with one_blas_thread_in_children():
            assert all(os.environ[name] == "1" for name in names)
            raise RuntimeError("inside")  # restored on the way out all the same
    assert all(os.environ.get(name) == before for name in names)
