"""The one training loop: exact resume, accumulation, divergence, logs, atomic checkpoints."""

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

import minift
from minift.parallel import DataParallel
from minift.peft import LoraConfig, get_peft_model
from minift.train import CHECKPOINT_FILES, TrainConfig, Trainer, TrainHook, TrainingDivergedError

CFG = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8, dropout=0.1)


def sample_batch(rng, batch_size):
    """Counting modulo 11 from a random start: the next token is learnable from the current."""
    idx = (rng.integers(0, 11, (batch_size, 1)) + np.arange(8)) % 11
    return idx, (idx + 1) % 11


def lora_model(seed=0):
    model = minift.GPT(CFG, seed=seed)
    return get_peft_model(
        model, LoraConfig(r=2, lora_dropout=0.2, target_modules=["c_attn", "c_fc"])
    )


def params_of(model):
    return {n: p.value.copy() for n, p in model.named_parameters().items()}


def test_resume_continues_bit_exactly(tmp_path):
    """N steps in one go == N/2 steps, a checkpoint, fresh objects (a new process), N/2 more."""
    config = TrainConfig(steps=8, batch_size=4, grad_accum=2, lr=1e-2, warmup_steps=3, seed=1)
    straight = Trainer(lora_model(), config, sample_batch, progress=False)
    straight.train()

    first = Trainer(lora_model(), config, sample_batch, checkpoint_dir=tmp_path, progress=False)
    first.train(stop_at=4)
    assert first.step == 4
    resumed = Trainer(lora_model(), config, sample_batch, checkpoint_dir=tmp_path, progress=False)
    resumed.train(resume=True)

    assert resumed.step == straight.step == 8
    a, b = params_of(straight.model), params_of(resumed.model)
    assert any(not np.array_equal(a[n], params_of(lora_model())[n]) for n in a)  # it trained
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    ta, _ = straight.optimizer.state_dict()
    tb, _ = resumed.optimizer.state_dict()
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)


def test_gradient_accumulation_equals_one_big_batch():
    """Two micro-batches of 4 (grads added, each scaled by 1/2) == one batch of 8, for SGD."""
    small = TrainConfig(
        steps=1, batch_size=4, grad_accum=2, optimizer="sgd", lr=0.1, grad_clip=None
    )
    big = TrainConfig(steps=1, batch_size=8, grad_accum=1, optimizer="sgd", lr=0.1, grad_clip=None)
    no_dropout = CFG.__class__(**{**CFG.to_dict(), "dropout": 0.0})

    def run(config):
        model = minift.GPT(no_dropout, seed=0, dtype=np.float64)
        Trainer(model, config, sample_batch, progress=False).train()
        return params_of(model)

    a, b = run(small), run(big)
    moved = 0
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-15, err_msg=name)
        moved += not np.array_equal(
            a[name], params_of(minift.GPT(no_dropout, seed=0, dtype=np.float64))[name]
        )
    assert moved > 0


def test_training_lowers_the_loss_and_leaves_frozen_params_alone():
    model = lora_model()
    frozen = {n: p.value.copy() for n, p in model.named_parameters().items() if not p.trainable}
    config = TrainConfig(steps=60, batch_size=8, lr=3e-2, warmup_steps=5)
    result = Trainer(model, config, sample_batch, progress=False).train()
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    for name, value in frozen.items():
        np.testing.assert_array_equal(model.named_parameters()[name].value, value, err_msg=name)


def test_nan_loss_stops_training_with_a_message():
    model = minift.GPT(CFG, seed=0)
    model.h[0].mlp.c_fc.weight.value[0, 0] = np.nan
    trainer = Trainer(model, TrainConfig(steps=5, batch_size=2), sample_batch, progress=False)
    with pytest.raises(TrainingDivergedError, match="step 1: the loss became nan"):
        trainer.train()
    assert trainer.step == 0


def test_infinite_gradient_stops_before_the_weights_change():
    class Poison(TrainHook):
        def after_backward(self, step, model):
            if step == 2:
                model.wte.weight.grad[0, 0] = np.inf
            return 0.0

    model = minift.GPT(CFG, seed=0)
    trainer = Trainer(
        model, TrainConfig(steps=5, batch_size=2), sample_batch, hooks=[Poison()], progress=False
    )
    with pytest.raises(TrainingDivergedError, match="step 3: the gradient norm became inf"):
        trainer.train()
    assert trainer.step == 2
    assert all(np.isfinite(p.value).all() for p in model.parameters())


def test_log_and_evaluation_every_n_steps(tmp_path):
    calls = []

    def evaluate(model):
        calls.append(model.training)
        return {"accuracy": 0.5}

    log = tmp_path / "log.jsonl"
    config = TrainConfig(steps=6, batch_size=2, eval_every=2)
    result = Trainer(
        minift.GPT(CFG), config, sample_batch, evaluate, log_path=log, progress=False
    ).train()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(lines[0])
    assert [e["step"] for e in result.evals] == [2, 4, 6]
    assert calls == [False, False, False]  # evaluation runs in eval mode


def test_a_failed_checkpoint_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    import minift.train_checkpoint as train_module

    config = TrainConfig(steps=2, batch_size=2, checkpoint_every=1)
    trainer = Trainer(
        minift.GPT(CFG), config, sample_batch, checkpoint_dir=tmp_path, progress=False
    )
    trainer._train_step()
    trainer.save_checkpoint()
    real = train_module.save_tensors

    def fail_on_optimizer(path, *args, **kwargs):
        if path.name == "optimizer.safetensors":
            raise OSError("disk full")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_tensors", fail_on_optimizer)
    trainer._train_step()
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert json.loads((tmp_path / "latest.json").read_text())["checkpoint"] == "step-0000001"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-0000001"]


def test_resuming_with_another_method_is_refused(tmp_path):
    config = TrainConfig(steps=1, batch_size=2)
    Trainer(lora_model(), config, sample_batch, checkpoint_dir=tmp_path, progress=False).train()
    full = minift.GPT(CFG)
    with pytest.raises(ValueError, match="trains other parameters than this model"):
        Trainer(full, config, sample_batch, checkpoint_dir=tmp_path, progress=False).train(
            resume=True
        )


def test_corrupted_checkpoint_is_refused_and_nothing_changes(tmp_path):
    config = TrainConfig(steps=1, batch_size=2)
    Trainer(lora_model(), config, sample_batch, checkpoint_dir=tmp_path, progress=False).train()
    weights = tmp_path / "step-0000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    model = lora_model(seed=3)
    before = params_of(model)
    trainer = Trainer(model, config, sample_batch, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="model.safetensors: its SHA-256 differs"):
        trainer.load_checkpoint()
    for name, value in before.items():
        np.testing.assert_array_equal(model.named_parameters()[name].value, value)


def test_a_model_with_nothing_to_train_is_refused():
    model = minift.GPT(CFG)
    for p in model.parameters():
        p.trainable = False
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(model, TrainConfig(), sample_batch)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, r"lr: expected a finite learning rate >= 0, got -1.0"),
        ({"lr": float("nan")}, "lr: expected a finite"),
        ({"steps": 0}, "steps: expected a positive integer, got 0"),
        ({"grad_accum": 0}, "grad_accum: expected a positive integer"),
        ({"threads": 0}, "threads: expected a positive integer, got 0"),
        ({"optimizer": "adam"}, r"optimizer: expected one of \('adamw', 'sgd'\), got 'adam'"),
        ({"grad_clip": 0}, "grad_clip: expected > 0 or None"),
        ({"layerwise_lr_decay": 1.5}, r"layerwise_lr_decay: expected a factor in \(0, 1\]"),
        ({"batch_size": 2.0}, "batch_size: expected a positive integer, got 2.0"),
        ({"warmup_steps": -1}, "warmup_steps: expected an integer >= 0, got -1"),
        ({"eval_every": 1.5}, "eval_every: expected an integer >= 0, got 1.5"),
        ({"checkpoint_every": True}, "checkpoint_every: expected an integer >= 0, got True"),
        ({"weight_decay": -0.1}, "weight_decay: expected >= 0, got -0.1"),
        ({"weight_decay": float("nan")}, "weight_decay: expected >= 0, got nan"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio: expected a number in \[0, 1\], got 1.5"),
    ],
)
def test_bad_training_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_layerwise_decay_and_trust_ratio_train():
    config = TrainConfig(steps=3, batch_size=2, layerwise_lr_decay=0.5, trust_ratio=True)
    trainer = Trainer(minift.GPT(CFG), config, sample_batch, progress=False)
    trainer.train()
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["h.0"] == pytest.approx(lrs["h.1"] / 2) and lrs["embeddings"] < lrs["h.0"]


def test_adalora_trains_through_the_one_loop_and_ends_at_its_budget():
    """The method brings its own hooks (regulariser, rank allocator); the loop is unchanged."""
    from minift.peft.adalora import AdaLoraConfig, svd_layers

    config = AdaLoraConfig(init_r=4, target_r=2, tinit=2, tfinal=2, total_step=10)
    model = get_peft_model(minift.GPT(CFG, seed=0), config)
    Trainer(
        model, TrainConfig(steps=10, batch_size=4, lr=1e-2), sample_batch, progress=False
    ).train()
    layers = svd_layers(model)
    assert len(layers) == CFG.n_layer
    kept = sum(int(np.count_nonzero(layer.lora_E.value)) for layer in layers.values())
    assert kept == 2 * len(layers)  # target_r per target, as a whole budget
    with pytest.raises(ValueError, match="total_step: the budget schedule was set for 10 steps"):
        Trainer(model, TrainConfig(steps=20, batch_size=4), sample_batch, progress=False)


def adalora_model(steps):
    from minift.peft.adalora import AdaLoraConfig

    config = AdaLoraConfig(
        init_r=4, target_r=2, tinit=1, tfinal=2, total_step=steps, lora_dropout=0.1,
        target_modules=["c_attn", "c_fc"],
    )  # fmt: skip
    return get_peft_model(minift.GPT(CFG, seed=0), config)


def allocator_state(trainer):
    arrays, meta = trainer.hooks[0].state_dict()
    return {k: v.copy() for k, v in arrays.items()}, meta


@pytest.mark.parametrize("stop_at", [2, 11], ids=["while-budgeting", "after-final-allocation"])
def test_adalora_resumes_bit_exactly_with_its_scores_and_rank_pattern(tmp_path, stop_at):
    """The rank allocator's smoothed scores Ī, Ū and the rank pattern travel in the checkpoint:
    a run stopped while ranks are being allocated (or after the last allocation) continues as if
    it had never stopped. Without them, the resumed run ranks on fresh averages."""
    config = TrainConfig(steps=12, batch_size=4, lr=1e-2, seed=1)
    straight = Trainer(adalora_model(12), config, sample_batch, progress=False)
    straight.train(stop_at=4)
    mid_straight = allocator_state(straight)
    straight.train()

    first = Trainer(
        adalora_model(12), config, sample_batch, checkpoint_dir=tmp_path, progress=False
    )
    first.train(stop_at=stop_at)
    resumed = Trainer(
        adalora_model(12), config, sample_batch, checkpoint_dir=tmp_path, progress=False
    )
    if stop_at < 4:
        resumed.train(resume=True, stop_at=4)
        arrays, meta = allocator_state(resumed)
        assert arrays.keys() == mid_straight[0].keys() and len(arrays) > 0
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, mid_straight[0][key], err_msg=key)
        assert meta == mid_straight[1]
        resumed.train()
    else:
        resumed.train(resume=True)
    assert resumed.model.peft_config.rank_pattern == straight.model.peft_config.rank_pattern
    a, b = params_of(straight.model), params_of(resumed.model)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_an_adalora_state_that_does_not_fit_is_refused_and_changes_nothing(tmp_path):
    from minift.files import load_tensors, save_tensors

    config = TrainConfig(steps=12, batch_size=4, lr=1e-2, seed=1)
    Trainer(adalora_model(12), config, sample_batch, checkpoint_dir=tmp_path, progress=False).train(
        stop_at=3
    )
    step_dir = tmp_path / "step-0000003"
    arrays, _ = load_tensors(step_dir / "hooks.safetensors")
    key = next(k for k in arrays if k.endswith("lora_E"))
    arrays[key] = np.zeros(7, dtype=arrays[key].dtype)  # r is 4
    save_tensors(step_dir / "hooks.safetensors", arrays)
    reseal(step_dir)
    trainer = Trainer(adalora_model(12), config, sample_batch, progress=False)
    trainer.train(stop_at=1)  # some state of its own to keep
    before, params_before = allocator_state(trainer), params_of(trainer.model)
    with pytest.raises(ValueError, match=r"hooks\.safetensors.*lora_E: expected float32 \(4,\)"):
        trainer.load_checkpoint(step_dir)
    after = allocator_state(trainer)
    assert after[1] == before[1] and after[0].keys() == before[0].keys()
    for key in before[0]:
        np.testing.assert_array_equal(after[0][key], before[0][key])
    for name, value in params_before.items():
        np.testing.assert_array_equal(params_of(trainer.model)[name], value)


# -- two threads (minift.parallel.DataParallel through TrainConfig.threads) ------------------------


@pytest.mark.parametrize(("cores", "threads"), [({0}, 1), ({0, 1}, 2), ({0, 1, 2, 3}, 2)])
def test_the_default_is_two_threads_where_two_cores_are_free(monkeypatch, cores, threads):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: cores, raising=False)
    assert TrainConfig().threads == threads


def test_by_default_the_loop_trains_on_the_fast_path_and_threads_1_is_the_plain_loop(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    fast = Trainer(lora_model(), TrainConfig(steps=1, batch_size=4), sample_batch, progress=False)
    fast.train()
    assert isinstance(fast._parallel, DataParallel) and fast._parallel.n_threads == 2
    plain = TrainConfig(steps=1, batch_size=4, threads=1)
    plain = Trainer(lora_model(), plain, sample_batch, progress=False)
    plain.train()
    assert plain._parallel is None


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_on_the_fast_path_every_thread_takes_a_share_of_each_batch(groups):
    """A batch (rows shared out) or a batch in groups (groups shared out): each replica runs
    a forward on every step, so two threads do the work of two."""
    rows_seen = {}

    def counted(replica, i):
        forward = replica.forward

        def forward_counted(idx):
            rows_seen[i] = rows_seen.get(i, 0) + idx.shape[0]
            return forward(idx)

        replica.forward = forward_counted

    def grouped(rng, batch_size):
        idx, targets = sample_batch(rng, batch_size)
        parts = np.array_split(np.arange(batch_size), groups)
        return [(idx[p], targets[p]) for p in parts] if groups > 1 else (idx, targets)

    config = TrainConfig(steps=1, batch_size=6, threads=2)
    trainer = Trainer(lora_model(), config, grouped, progress=False)
    for i, replica in enumerate(trainer._data_parallel().replicas):
        counted(replica, i)
    trainer.train()
    assert sorted(rows_seen) == [0, 1] and sum(rows_seen.values()) == 6


def test_on_the_fast_path_the_whole_step_runs_with_one_blas_thread_and_restores_it():
    """The threads are the parallelism: BLAS calls between the shares (the gradient norm, a
    hook) on BLAS's own threads would leave those spinning on the cores the shares need."""
    seen = []

    class Watch(TrainHook):
        def after_backward(self, step, model):
            seen.append(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))
            return 0.0

    before = threadpool_info()
    config = TrainConfig(steps=2, batch_size=4, threads=2)
    Trainer(lora_model(), config, sample_batch, hooks=[Watch()], progress=False).train()
    assert seen == [1, 1]
    assert threadpool_info() == before


def test_two_threads_train_to_the_one_thread_weights_up_to_rounding():
    """Without dropout, threads=2 is the same training, the sums in another order: float64
    weights after 3 steps of AdamW with accumulation agree to 1e-10."""
    no_dropout = CFG.__class__(**{**CFG.to_dict(), "dropout": 0.0})

    def run(threads):
        model = minift.GPT(no_dropout, seed=0, dtype=np.float64)
        config = TrainConfig(steps=3, batch_size=5, grad_accum=2, lr=1e-2, threads=threads)
        Trainer(model, config, sample_batch, progress=False).train()
        return params_of(model)

    start = params_of(minift.GPT(no_dropout, seed=0, dtype=np.float64))
    one, two = run(1), run(2)
    assert any(not np.array_equal(one[n], start[n]) for n in one)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_two_threads_with_dropout_resume_bit_exactly(tmp_path):
    """Each thread's replica draws its own dropout masks; the checkpoint keeps their RNGs too."""
    config = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup_steps=2, seed=2, threads=2)
    straight = Trainer(lora_model(), config, sample_batch, progress=False)
    straight.train()
    first = Trainer(lora_model(), config, sample_batch, checkpoint_dir=tmp_path, progress=False)
    first.train(stop_at=3)
    resumed = Trainer(lora_model(), config, sample_batch, checkpoint_dir=tmp_path, progress=False)
    resumed.train(resume=True)
    a, b = params_of(straight.model), params_of(resumed.model)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resuming_with_another_thread_count_is_refused(tmp_path):
    config = TrainConfig(steps=2, batch_size=4, threads=2)
    Trainer(lora_model(), config, sample_batch, checkpoint_dir=tmp_path, progress=False).train()
    one = TrainConfig(steps=4, batch_size=4, threads=1)
    again = Trainer(lora_model(), one, sample_batch, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="saved with threads=2, resumed with threads=1"):
        again.train(resume=True)


# -- a verified training checkpoint: damage is a ValueError naming the file, never another resume --

STEP_FILES = (*CHECKPOINT_FILES, "manifest.json")
DAMAGEABLE = (*STEP_FILES, "latest.json")
RESUME_CONFIG = TrainConfig(steps=3, batch_size=2, checkpoint_every=1, seed=5)


def full_state(trainer):
    """Everything a resume continues from: the steps after it are a function of this alone."""
    tensors, meta = trainer.optimizer.state_dict()
    return {
        "params": params_of(trainer.model),
        "optimizer": tensors,
        "optimizer_meta": meta,
        "scheduler": trainer.scheduler.state_dict(),
        "data_rng": trainer.data_rng.bit_generator.state,
        "dropout_rngs": [g.bit_generator.state for g in trainer.dropout_generators()],
        "step": trainer.step,
    }


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key in ("params", "optimizer"):
            assert a[key].keys() == b[key].keys(), key
            for name in a[key]:
                assert a[key][name].dtype == b[key][name].dtype, (key, name)
                np.testing.assert_array_equal(a[key][name], b[key][name], err_msg=f"{key} {name}")
        else:
            assert a[key] == b[key], key


def fresh_trainer(root):
    """A Trainer whose every piece of state differs from the saved one's (other weights, step 0,
    empty optimizer state, unstarted RNGs): a partial load would show."""
    return Trainer(
        lora_model(seed=3), RESUME_CONFIG, sample_batch, checkpoint_dir=root, progress=False
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(checkpoint directory, the state the saving Trainer ended in): 3 steps, step-0000002 and
    step-0000003 kept, latest.json naming step-0000003."""
    root = tmp_path_factory.mktemp("resume")
    trainer = Trainer(
        lora_model(), RESUME_CONFIG, sample_batch, checkpoint_dir=root, progress=False
    )
    trainer.train()
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-0000002", "step-0000003"]
    assert sorted(p.name for p in (root / "step-0000003").iterdir()) == sorted(STEP_FILES)
    return root, full_state(trainer)


def checkpoint_file(root, name):
    return root / name if name == "latest.json" else root / "step-0000003" / name


def same_json(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def load_damaged(saved, name, damaged: bytes) -> str:
    """Load with ``name`` replaced by ``damaged``: "refused" (a ValueError naming the file, the
    Trainer untouched) or "resumed" (exactly the saved state); anything else fails the test."""
    root, expected = saved
    file = checkpoint_file(root, name)
    original = file.read_bytes()
    file.write_bytes(damaged)
    try:
        trainer = fresh_trainer(root)
        before = full_state(trainer)
        try:
            trainer.load_checkpoint()
        except ValueError as e:
            assert str(file) in str(e)
            assert_same_state(full_state(trainer), before)
            return "refused"
        assert_same_state(full_state(trainer), expected)
        return "resumed"
    finally:
        file.write_bytes(original)


def test_the_intact_checkpoint_resumes_to_the_saved_state(saved):
    assert (
        load_damaged(saved, "trainer.json", checkpoint_file(saved[0], "trainer.json").read_bytes())
        == "resumed"
    )


@pytest.mark.parametrize("name", DAMAGEABLE)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_a_truncated_checkpoint_file_is_refused_naming_it(saved, name, data):
    """The digests cover every byte of the step directory (latest.json covers the manifest), so
    any cut there is refused; latest.json itself may only resume when it still says the same."""
    blob = checkpoint_file(saved[0], name).read_bytes()
    damaged = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    outcome = load_damaged(saved, name, damaged)
    assert outcome == "refused" or (name == "latest.json" and same_json(damaged, blob))


@pytest.mark.parametrize("name", DAMAGEABLE)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_a_bit_flipped_checkpoint_file_is_refused_naming_it(saved, name, data):
    """Refused, but for one flip: latest.json naming a step that is not there (step-1000003)
    falls back to the newest complete step, which load_damaged proves is the saved state."""
    blob = checkpoint_file(saved[0], name).read_bytes()
    position = data.draw(st.integers(0, len(blob) - 1), label="position")
    damaged = bytearray(blob)
    damaged[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = load_damaged(saved, name, bytes(damaged))
    fell_back = any("the newest complete checkpoint" in str(w.message) for w in caught)
    assert outcome == "refused" or (name == "latest.json" and fell_back)


def test_only_latest_json_may_lose_its_final_newline(saved):
    """The one damage that can keep the content the same. The step directory's bytes are all
    covered, so it is refused there; latest.json still says the same, and resumes exactly."""
    root, _ = saved
    outcomes = {
        name: load_damaged(saved, name, checkpoint_file(root, name).read_bytes()[:-1])
        for name in DAMAGEABLE
    }
    assert outcomes == {**dict.fromkeys(STEP_FILES, "refused"), "latest.json": "resumed"}


def reseal(step_dir):
    """Rewrite manifest.json and latest.json for the files as they are now: a hand edit that the
    checksums no longer catch, so that the field checks must."""
    digests = {
        name: hashlib.sha256((step_dir / name).read_bytes()).hexdigest()
        for name in CHECKPOINT_FILES
    }
    (step_dir / "manifest.json").write_text(json.dumps({"sha256": digests}))
    manifest = hashlib.sha256((step_dir / "manifest.json").read_bytes()).hexdigest()
    (step_dir.parent / "latest.json").write_text(
        json.dumps({"checkpoint": step_dir.name, "manifest_sha256": manifest})
    )


def _rng_state(state, value):
    state["data_rng"]["state"]["state"] = value


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.pop("step"), '"step": expected an integer >= 0, got nothing'),
        (lambda s: s.update(step="3"), "\"step\": expected an integer >= 0, got '3'"),
        (lambda s: s.update(train_config=None), '"train_config": expected an object'),
        (lambda s: s["optimizer"].update(groups=[[]]), '"optimizer": expected an object'),
        (lambda s: s["scheduler"].update(t=2), r'"scheduler": expected \{"t": 3 \(the step\)'),
        (lambda s: s.update(data_rng={"bit_generator": "PCG64"}), '"data_rng": expected a PCG64'),
        (lambda s: _rng_state(s, -1), '"data_rng": not a valid PCG64 state'),
        (  # the model's two dropout RNGs, and each further training thread's replica's two
            lambda s: s.update(dropout_rngs=[]),
            f'"dropout_rngs": expected {2 * RESUME_CONFIG.threads} states',
        ),
        (lambda s: s.update(trainable="all"), '"trainable": expected a list of parameter names'),
        # these two pass the type checks and fail only after the weights were loaded: rolled back
        (lambda s: s["optimizer"].update(type="SGD"), "optimizer type: this is AdamW"),
        (lambda s: s["scheduler"].update(base_lrs=[-1.0]), '"scheduler": base_lr'),
    ],
    ids=[
        "no-step",
        "step-str",
        "train_config",
        "groups",
        "t",
        "rng-keys",
        "rng-value",
        "dropout",
        "trainable",
        "optimizer-type",
        "base_lrs",
    ],
)
def test_a_hand_edited_trainer_json_names_the_field_and_changes_nothing(
    saved, tmp_path, edit, match
):
    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    path = root / "step-0000003" / "trainer.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    reseal(path.parent)
    trainer = fresh_trainer(root)
    before = full_state(trainer)
    with pytest.raises(ValueError, match=match) as error:
        trainer.load_checkpoint()
    assert "trainer.json" in str(error.value)
    assert_same_state(full_state(trainer), before)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (
            lambda r: (r / "latest.json").write_text(
                json.dumps(
                    {**json.loads((r / "latest.json").read_text()), "checkpoint": "step-0000002"}
                )
            ),
            "step-0000002/manifest.json: its SHA-256 differs from the one .*latest.json records",
        ),
        (
            lambda r: (r / "latest.json").write_text(json.dumps({"checkpoint": "../step-0000003"})),
            '"checkpoint": expected a step directory',
        ),
        (
            lambda r: (r / "latest.json").write_text(json.dumps({"checkpoint": "step-0000003"})),
            '"manifest_sha256": expected 64 lowercase hex digits, got nothing',
        ),
        (lambda r: (r / "step-0000003" / "manifest.json").unlink(), "manifest.json: missing"),
        (
            lambda r: (r / "step-0000003" / "optimizer.safetensors").unlink(),
            "optimizer.safetensors: missing, though manifest.json lists it",
        ),
    ],
    ids=["older-step", "outside", "old-format", "no-manifest", "no-optimizer"],
)
def test_latest_json_pointing_to_a_missing_or_other_checkpoint_is_named(
    saved, tmp_path, damage, match
):
    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    damage(root)
    trainer = fresh_trainer(root)
    before = full_state(trainer)
    with pytest.raises(ValueError, match=match):
        trainer.load_checkpoint()
    assert_same_state(full_state(trainer), before)


def test_an_explicit_step_directory_is_verified_too(saved, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    trainer = fresh_trainer(root)
    trainer.load_checkpoint(root / "step-0000002")  # the older one: no latest.json involved
    assert trainer.step == 2
    path = root / "step-0000002" / "trainer.json"
    path.write_bytes(path.read_bytes().replace(b'"step": 2', b'"step": 3'))
    with pytest.raises(ValueError, match="trainer.json: its SHA-256 differs"):
        fresh_trainer(root).load_checkpoint(root / "step-0000002")


def _drop_one_digest(manifest: Path):
    obj = json.loads(manifest.read_text())
    obj["sha256"].pop("trainer.json")
    manifest.write_text(json.dumps(obj))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: shutil.rmtree(d), "step-0000002: training checkpoint: no such directory"),
        (
            lambda d: (d / "manifest.json").write_bytes(b"\xff{"),
            "manifest.json: checkpoint manifest is not UTF-8 JSON",
        ),
        (
            lambda d: (d / "manifest.json").write_text("[]"),
            "manifest.json: checkpoint manifest must be a JSON object, got list",
        ),
        (
            lambda d: _drop_one_digest(d / "manifest.json"),
            r'manifest.json.*"sha256".*expected \{file: 64 lowercase hex digits\} for exactly',
        ),
    ],
    ids=["missing", "not-json", "not-an-object", "a-digest-dropped"],
)
def test_an_explicit_step_folder_whose_manifest_cannot_vouch_for_it_is_refused(
    saved, tmp_path, damage, match
):
    """Given a step folder by hand, no latest.json vouches for its manifest: the manifest's own
    form is all that stands between a hand-edited folder and a resume."""
    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    damage(root / "step-0000002")
    trainer = fresh_trainer(root)
    before = full_state(trainer)
    with pytest.raises(ValueError, match=match):
        trainer.load_checkpoint(root / "step-0000002")
    assert_same_state(full_state(trainer), before)


# -- every way a step folder can be damaged: one class each, refused naming file and field ----


def _rewrite_tensors(step_dir, file, edit):
    """Rewrite one of the step's safetensors files with ``edit`` applied, every checksum (its
    own, the manifest's, latest.json's) valid again: only the loader's own checks can catch it."""
    from minift.files import load_tensors, save_tensors

    tensors, metadata = load_tensors(step_dir / file)
    edit(tensors)
    save_tensors(step_dir / file, tensors, metadata)
    reseal(step_dir)


def _first_entry(tensors, prefix, value):
    name = next(n for n in sorted(tensors) if n.startswith(prefix))
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = value


def _other_float(tensors, name):
    other = np.float64 if tensors[name].dtype == np.float32 else np.float32
    tensors[name] = tensors[name].astype(other)


def _rename_digest_key(step_dir, file):
    path = step_dir / file
    blob = path.read_bytes()
    assert blob.count(b'"minift_sha256"') == 1
    path.write_bytes(blob.replace(b'"minift_sha256"', b'"minift_sha257"'))
    reseal(step_dir)


def _folder_instead(path):
    path.unlink()
    path.mkdir()


def _link_to_a_folder_instead(path):
    path.unlink()
    (path.parent.parent / "elsewhere").mkdir()
    path.symlink_to(path.parent.parent / "elsewhere")


def _file_instead(path):
    shutil.rmtree(path)
    path.write_text("not a folder")


# damage to step-0000003, the file the error names, a fragment of the message
STEP_DAMAGE = {
    "model-a-folder": (
        lambda d: _folder_instead(d / "model.safetensors"),
        "step-0000003/model.safetensors",
        "a folder, expected a file",
    ),
    "optimizer-a-link-to-a-folder": (
        lambda d: _link_to_a_folder_instead(d / "optimizer.safetensors"),
        "step-0000003/optimizer.safetensors",
        "a folder, expected a file",
    ),
    "manifest-a-folder": (
        lambda d: _folder_instead(d / "manifest.json"),
        "step-0000003/manifest.json",
        "a folder, expected a file",
    ),
    "step-a-file": (
        _file_instead,
        "latest.json",
        "points to step-0000003, which is not a directory",
    ),
    "model-nan": (
        lambda d: _rewrite_tensors(
            d, "model.safetensors", lambda t: _first_entry(t, "h.1.attn.c_proj.weight", np.nan)
        ),
        "step-0000003/model.safetensors",
        "h.1.attn.c_proj.weight: holds nan at (0, 0)",
    ),
    "optimizer-inf": (
        lambda d: _rewrite_tensors(
            d, "optimizer.safetensors", lambda t: _first_entry(t, "exp_avg_sq/", np.inf)
        ),
        "step-0000003/optimizer.safetensors",
        "holds inf at",
    ),
    "model-another-dtype": (
        lambda d: _rewrite_tensors(d, "model.safetensors", lambda t: _other_float(t, "wpe.weight")),
        "step-0000003/model.safetensors",
        "wpe.weight: expected dtype",
    ),
    "optimizer-another-dtype": (
        lambda d: _rewrite_tensors(
            d,
            "optimizer.safetensors",
            lambda t: _other_float(t, next(n for n in sorted(t) if n.startswith("exp_avg/"))),
        ),
        "step-0000003/optimizer.safetensors",
        "expected dtype",
    ),
    "model-a-shape-that-broadcasts": (
        lambda d: _rewrite_tensors(
            d, "model.safetensors", lambda t: t.update({"ln_f.weight": t["ln_f.weight"][:1]})
        ),
        "step-0000003/model.safetensors",
        "ln_f.weight: expected shape (8,), got (1,)",
    ),
    "model-digest-key-renamed": (
        lambda d: _rename_digest_key(d, "model.safetensors"),
        "step-0000003/model.safetensors",
        "no minift_sha256 in its header",
    ),
    "hooks-digest-key-renamed": (
        lambda d: _rename_digest_key(d, "hooks.safetensors"),
        "step-0000003/hooks.safetensors",
        "no minift_sha256 in its header",
    ),
}


def _on_disk(root):
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[path] = ("link", str(path.readlink()))
        elif path.is_dir():
            out[path] = ("folder",)
        else:
            out[path] = ("file", path.read_bytes())
    return out


@pytest.mark.parametrize("damage", list(STEP_DAMAGE))
def test_a_damaged_step_folder_is_refused_naming_file_and_field(saved, tmp_path, damage):
    from minift.errors import FileFormatError

    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    apply, file, fragment = STEP_DAMAGE[damage]
    apply(root / "step-0000003")
    on_disk = _on_disk(tmp_path)
    trainer = fresh_trainer(root)
    before = full_state(trainer)
    with pytest.raises(FileFormatError) as error:
        trainer.load_checkpoint()
    assert str(root / file) in str(error.value)
    assert fragment in str(error.value)
    assert_same_state(full_state(trainer), before)
    assert _on_disk(tmp_path) == on_disk


def test_a_file_given_as_the_step_folder_or_the_checkpoint_folder_is_refused(saved, tmp_path):
    from minift.errors import FileFormatError

    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    trainer = fresh_trainer(root)
    before = full_state(trainer)
    file = root / "step-0000003" / "trainer.json"
    with pytest.raises(FileFormatError, match=f"{file}: a file, expected a training checkpoint"):
        trainer.load_checkpoint(file)
    elsewhere = Trainer(
        lora_model(seed=3), RESUME_CONFIG, sample_batch, checkpoint_dir=file, progress=False
    )
    with pytest.raises(FileFormatError, match=f"{file}: a file, expected a checkpoint folder"):
        elsewhere.load_checkpoint()
    assert_same_state(full_state(trainer), before)


def test_extra_state_may_not_overwrite_the_trainers_fields():
    with pytest.raises(ValueError, match=r"extra_state: the keys \['step'\] are trainer.json's"):
        Trainer(minift.GPT(CFG), TrainConfig(), sample_batch, extra_state={"step": 0, "x": 1})


def test_read_checkpoint_state_verifies_before_it_returns(saved, tmp_path):
    """What a caller reads before loading a model (the CLI's resume check) is verified too."""
    from minift.train import read_checkpoint_state

    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    state = read_checkpoint_state(root)
    assert state == json.loads((root / "step-0000003" / "trainer.json").read_text())
    path = root / "step-0000003" / "trainer.json"
    path.write_text(path.read_text().replace('"step": 3', '"step": 2'))
    with pytest.raises(ValueError, match="trainer.json: its SHA-256 differs"):
        read_checkpoint_state(root)
    with pytest.raises(FileNotFoundError):
        read_checkpoint_state(tmp_path / "nothing-here")


def test_the_progress_bar_shows_loss_tokens_per_second_and_eta(capsys):
    config = TrainConfig(steps=3, batch_size=2)
    Trainer(lora_model(), config, sample_batch, progress=True, desc="lora").train()
    bar = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]
    # e.g. "lora: 100%|██████████| 3/3 [00:00<00:00, 41.2step/s, loss=2.4012, tok_s=1,311]"
    assert bar.startswith("lora: 100%") and " 3/3 [" in bar, bar
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, ", bar), bar  # elapsed < remaining (the ETA)
    assert re.search(r"loss=\d+\.\d{4}, tok_s=[\d,]+\]$", bar), bar


# ------------------------------------------------------------------------------------------------
# No kill leaves a run stuck: every moment of the save sequence resumes, or refuses with a way out


def test_resume_without_latest_json_takes_the_newest_complete_step_saying_so(saved, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    (root / "latest.json").unlink()
    trainer = fresh_trainer(root)
    with pytest.warns(UserWarning, match="latest.json is missing.*resuming from step-0000003"):
        trainer.load_checkpoint()
    assert_same_state(full_state(trainer), saved[1])


def test_resume_takes_the_step_a_killed_save_set_aside(saved, tmp_path):
    """Killed between setting step-0000003 aside and renaming its replacement in."""
    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    (root / "step-0000003").rename(root / ".set-aside.step-0000003-k1ll3d")
    trainer = fresh_trainer(root)
    with pytest.warns(UserWarning, match="names step-0000003, which a killed save set aside"):
        trainer.load_checkpoint()
    assert_same_state(full_state(trainer), saved[1])


def test_latest_json_naming_a_missing_step_takes_the_newest_complete_step_saying_so(
    saved, tmp_path
):
    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    shutil.rmtree(root / "step-0000003")
    trainer = fresh_trainer(root)
    with pytest.warns(UserWarning, match="names step-0000003, which is not in .*step-0000002"):
        trainer.load_checkpoint()
    assert trainer.step == 2


def test_resume_with_no_complete_step_refuses_and_names_the_way_out(saved, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(saved[0], root)
    (root / "latest.json").unlink()
    for step in ("step-0000002", "step-0000003"):
        (root / step / "manifest.json").unlink()
    trainer = fresh_trainer(root)
    before = full_state(trainer)
    with pytest.raises(ValueError, match=r"no step directory verifies .*delete .*run"):
        trainer.load_checkpoint()
    assert_same_state(full_state(trainer), before)


def test_the_end_of_run_save_is_skipped_when_its_step_is_saved(tmp_path, monkeypatch):
    saves = []
    real = Trainer.save_checkpoint
    monkeypatch.setattr(
        Trainer, "save_checkpoint", lambda self: saves.append(self.step) or real(self)
    )
    config = TrainConfig(steps=4, batch_size=2, checkpoint_every=2)
    Trainer(lora_model(), config, sample_batch, checkpoint_dir=tmp_path, progress=False).train()
    assert saves == [2, 4]
    saves.clear()
    config = TrainConfig(steps=5, batch_size=2, checkpoint_every=2)
    Trainer(
        lora_model(), config, sample_batch, checkpoint_dir=tmp_path / "b", progress=False
    ).train()
    assert saves == [2, 4, 5]


def test_a_save_removes_what_killed_saves_left(tmp_path):
    config = TrainConfig(steps=1, batch_size=2)
    (tmp_path / ".step-0000007-abc123").mkdir(parents=True)
    (tmp_path / ".step-0000007-abc123" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".set-aside.step-0000003-xyz").mkdir()
    (tmp_path / ".latest.json.q1w2e3.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("the user's own file stays")
    Trainer(lora_model(), config, sample_batch, checkpoint_dir=tmp_path, progress=False).train()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest.json",
        "notes.txt",
        "step-0000001",
    ]


KILL_CONFIG = TrainConfig(steps=4, batch_size=2, checkpoint_every=1, seed=5)


def _interrupted_run(root: Path, kill_at: int | None, count_file: Path) -> None:
    """In a forked child: resume the run in ``root`` and die (os._exit, as SIGKILL would: no
    cleanup runs) just before its ``kill_at``-th write; with None, count the writes instead."""
    import os

    import minift.train_checkpoint as train_module

    writes = 0

    def counted(real):
        def write(*args, **kwargs):
            nonlocal writes
            if writes == kill_at:
                os._exit(0)
            writes += 1
            return real(*args, **kwargs)

        return write

    train_module.save_tensors = counted(train_module.save_tensors)
    train_module.atomic_write_json = counted(train_module.atomic_write_json)
    os.rename = counted(os.rename)
    shutil.rmtree = counted(shutil.rmtree)
    trainer = Trainer(lora_model(), KILL_CONFIG, sample_batch, checkpoint_dir=root, progress=False)
    trainer.train(resume=True)
    count_file.write_text(str(writes))
    os._exit(0)


def _in_a_child(*args) -> None:
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=_interrupted_run, args=args)
    child.start()
    child.join(60)
    assert child.exitcode == 0


def test_a_run_killed_at_any_write_of_a_save_resumes_to_the_same_weights(tmp_path):
    """The run starts from a checkpoint directory whose latest.json names step 2 while a step 3
    of an earlier attempt is also there, so that its saves pass every path: a step saved again
    (set aside, then replaced), a new step, the removal of old ones."""
    straight = Trainer(lora_model(), KILL_CONFIG, sample_batch, progress=False)
    straight.train()
    start = tmp_path / "start"
    Trainer(lora_model(), KILL_CONFIG, sample_batch, checkpoint_dir=start, progress=False).train(
        stop_at=3
    )
    manifest = hashlib.sha256((start / "step-0000002" / "manifest.json").read_bytes()).hexdigest()
    (start / "latest.json").write_text(
        json.dumps({"checkpoint": "step-0000002", "manifest_sha256": manifest})
    )
    count = tmp_path / "count"
    _in_a_child(shutil.copytree(start, tmp_path / "counting"), None, count)
    n_writes = int(count.read_text())
    assert n_writes >= 12  # two saves of four files, a manifest, a rename, latest.json, removals
    for kill_at in range(n_writes):
        root = shutil.copytree(start, tmp_path / f"killed-{kill_at}")
        _in_a_child(root, kill_at, count)
        resumed = Trainer(
            lora_model(), KILL_CONFIG, sample_batch, checkpoint_dir=root, progress=False
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fallback says which step it took
            resumed.train(resume=True)
        assert resumed.step == 4, kill_at
        a, b = params_of(straight.model), params_of(resumed.model)
        for name in a:
            np.testing.assert_array_equal(
                a[name], b[name], err_msg=f"killed at write {kill_at}: {name}"
            )
        Trainer(
            lora_model(), KILL_CONFIG, sample_batch, checkpoint_dir=root, progress=False
        ).save_checkpoint()
        assert all(p.name == "latest.json" or p.name.startswith("step-") for p in root.iterdir()), (
            kill_at,
            sorted(p.name for p in root.iterdir()),
        )


def test_a_directory_with_only_a_step_directory_has_a_checkpoint_to_resume(saved, tmp_path):
    from minift.train import has_checkpoint

    root = tmp_path / "run"
    assert not has_checkpoint(tmp_path)
    shutil.copytree(saved[0], root)
    (root / "latest.json").unlink()
    assert has_checkpoint(root)  # a run killed before its first latest.json: --resume takes it


# -- a batch in length groups (example_sampler(groups=k)) -----------------------------------------


def _words(seed, n=12):
    """Examples of lengths 1 to 7 in a 10-letter alphabet: classification (label: the first
    letter's parity) and generation (the word reversed)."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghij"), int(rng.integers(1, 8)))) for _ in range(n)]
    return words


def _grouped_and_padded(kind, seed, groups):
    from minift.data import Example, example_sampler, standard_tokenizer

    tok = standard_tokenizer()
    words = _words(seed)
    if kind == "classification":
        examples = [Example(w, int(w[0] in "aceg")) for w in words]
    else:
        examples = [Example(w, w[::-1]) for w in words]
    cfg = minift.GPTConfig(
        vocab_size=tok.vocab_size, block_size=20, n_layer=2, n_head=2, d_model=8, dropout=0.0
    )
    lm = minift.GPT(cfg, seed=seed, dtype=np.float64)
    model = (
        minift.GPTForSequenceClassification.from_lm(lm, 2, seed=seed, pad_token_id=tok.pad_id)
        if kind == "classification"
        else lm
    )
    rng = np.random.default_rng(seed)
    for p in model.parameters():  # away from the init, so no gradient is trivially 0
        p.value[...] += 0.2 * rng.standard_normal(p.shape)
    padded = example_sampler(tok, examples, 20, kind)(np.random.default_rng(seed), 9)
    grouped = example_sampler(tok, examples, 20, kind, groups=groups)(
        np.random.default_rng(seed), 9
    )
    return model, padded, grouped


def _loss_and_grads(model, groups, threads):
    model.zero_grad()
    trainer = Trainer(model, TrainConfig(steps=1, threads=threads), sample_batch, progress=False)
    if threads == 1:
        loss = trainer._forward_backward(groups)
    else:
        loss = trainer._data_parallel().forward_backward_groups(groups)
    return loss, {n: p.grad.copy() for n, p in model.named_parameters().items() if p.trainable}


@pytest.mark.parametrize("kind", ["classification", "generation"])
@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), groups=st.integers(2, 5))
def test_a_batch_in_length_groups_has_the_loss_and_gradient_of_the_padded_batch(
    kind, threads, seed, groups
):
    """Causal attention: a position never sees the padding after it, so cutting a group's
    padding changes nothing the loss reads; each group weighted by its share of the targets,
    the groups' loss and gradient are the padded batch's (float64, up to the order of sums)."""
    model, padded, grouped = _grouped_and_padded(kind, seed, groups)
    assert sum(idx.size for idx, _ in grouped) <= padded[0].size
    want_loss, want = _loss_and_grads(model, [padded], threads=1)
    got_loss, got = _loss_and_grads(model, grouped, threads)
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-13, err_msg=name)
