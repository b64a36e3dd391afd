"""minift.pipeline.side_by_side: runs in processes of their own are the plain loop's runs.

The wordpiece sampler pickles too: tests/test_classify.py."""

import copy
import dataclasses
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from minift import pipeline
from minift.data import Example, Task, example_sampler, lm_sampler, standard_tokenizer
from minift.pipeline.finetuning import evaluate, finetune, prepare_model
from minift.pipeline.side_by_side import finetune_many, train_many
from minift.train import TrainConfig, Trainer

TINY = pipeline.BaseSpec(d_model=32, n_layer=1, n_head=2, steps=2)
SETTINGS = pipeline.RunSettings(steps=3, batch_size=4)


@pytest.fixture(autouse=True)
def _use_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MINIFT_CACHE", str(tmp_path_factory.getbasetemp() / "side-by-side"))


def toy_task():
    examples = [Example(f"one {i}", f"un {i}") for i in range(12)]
    return Task("toy", "generation", examples, examples[:3], examples[:5])


def runs_of(seeds):
    base, task, tok = pipeline.load_base(TINY), toy_task(), standard_tokenizer()
    methods = ["lora", "full"]
    return [
        (prepare_model(base, task, m, s, tok, SETTINGS.steps), m, s) for m in methods for s in seeds
    ]


@pytest.mark.parametrize("workers", [1, 2])
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=2, unique=True))
@settings(max_examples=3, deadline=None)
def test_each_run_is_the_plain_loops_run_bit_for_bit(workers, seeds):
    task, tok = toy_task(), standard_tokenizer()
    runs = runs_of(seeds)
    handed_in = [model.state_dict() for model, _, _ in runs]
    finished = finetune_many(runs, task, tok, SETTINGS, score=4, workers=workers)
    assert len(finished) == len(runs)
    plain = dataclasses.replace(SETTINGS, threads=1)
    for (model, method, seed), before, run in zip(runs, handed_in, finished, strict=True):
        # the models handed in stay as they were
        assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())
        expected = copy.deepcopy(model)
        with threadpool_limits(1, user_api="blas"):
            result, _ = finetune(expected, task, method, seed, tok, plain, progress=False)
            scores = evaluate(expected, task, tok, limit=4)
        assert run.result.losses == result.losses, (method, seed)
        got, want = run.model.state_dict(), expected.state_dict()
        assert got.keys() == want.keys()
        for name in want:
            assert np.array_equal(got[name], want[name]), (method, seed, name)
        assert run.scores == scores


def test_without_score_no_evaluation():
    (run,) = finetune_many(runs_of([0])[:1], toy_task(), standard_tokenizer(), SETTINGS, workers=1)
    assert run.scores is None and len(run.result.losses) == SETTINGS.steps


def test_an_error_in_a_child_names_the_run():
    runs = runs_of([0, 1])
    model, _, _ = runs[1]
    for p in model.parameters():
        p.trainable = False  # nothing to train: the optimizer refuses
    with pytest.raises(ValueError, match=r"runs\[1\] \(lora, seed 1\): model: no trainable"):
        finetune_many(runs, toy_task(), standard_tokenizer(), SETTINGS, workers=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(workers=0), "workers: expected a positive integer, got 0"),
        (dict(workers=True), "workers: expected a positive integer, got True"),
        (dict(score=0), "score: expected a positive number of test examples or None, got 0"),
        (dict(score=2.5), "score: expected a positive number of test examples or None, got 2.5"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        finetune_many(runs_of([0])[:1], toy_task(), standard_tokenizer(), SETTINGS, **kwargs)


def test_a_run_not_a_model_method_seed_triple_is_refused():
    model, method, seed = runs_of([0])[0]
    with pytest.raises(ValueError, match=r"runs\[1\]: expected \(model, method, seed\)"):
        finetune_many(
            [(model, method, seed), (method, seed)], toy_task(), standard_tokenizer(), SETTINGS
        )


@pytest.mark.parametrize("workers", [1, 2])
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=2, unique=True))
@settings(max_examples=3, deadline=None)
def test_train_many_is_the_trainers_plain_loop_bit_for_bit(workers, seeds):
    task, tok = toy_task(), standard_tokenizer()
    sample_batch = example_sampler(tok, task.train, 64, task.kind, groups=2)
    runs = [
        (model, TrainConfig(steps=3, batch_size=4, seed=seed, threads=2), sample_batch)
        for model, _, seed in runs_of(seeds)
    ]
    finished = train_many(runs, workers=workers)
    for (model, config, _), run in zip(runs, finished, strict=True):
        expected = copy.deepcopy(model)
        plain = dataclasses.replace(config, threads=1)  # what train_many runs, whatever asked
        with threadpool_limits(1, user_api="blas"):
            result = Trainer(expected, plain, sample_batch, progress=False).train()
        assert run.result.losses == result.losses and run.scores is None
        got, want = run.model.state_dict(), expected.state_dict()
        assert all(np.array_equal(got[name], want[name]) for name in want), config.seed


def test_train_many_refuses_a_run_without_a_train_config():
    model, _, _ = runs_of([0])[0]
    with pytest.raises(ValueError, match=r"runs\[0\]: expected a TrainConfig second, got"):
        train_many([(model, pipeline.RunSettings(), None)], workers=1)


def test_train_many_refuses_a_sampler_that_does_not_pickle_before_any_run():
    model, _, _ = runs_of([0])[0]
    inner = example_sampler(standard_tokenizer(), toy_task().train, 64, "generation")

    def closure(rng, batch_size):  # what a sampler written as a nested function is
        return inner(rng, batch_size)

    config = TrainConfig(steps=1, batch_size=2)
    for workers in (1, 2):
        with pytest.raises(ValueError, match=r"runs\[0\]: sample_batch must pickle"):
            train_many([(model, config, closure)], workers=workers)


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=10, deadline=None)
def test_the_lm_sampler_pickles_and_draws_the_same_windows(seed):
    sampler = lm_sampler(np.arange(50) % 7, 8)
    copied = pickle.loads(pickle.dumps(sampler))
    (idx_a, targets_a), (idx_b, targets_b) = [
        s(np.random.default_rng(seed), 3) for s in (sampler, copied)
    ]
    assert np.array_equal(idx_a, idx_b) and np.array_equal(targets_a, targets_b)
    assert np.array_equal(targets_a[:, :-1], idx_a[:, 1:])  # the next token, everywhere


def test_samplers_pickle_and_draw_the_same_batches():
    """A run goes to another process with its sampler: the samplers are partials, not closures."""
    task, tok = toy_task(), standard_tokenizer()
    sampler = example_sampler(tok, task.train, 64, task.kind, groups=2)
    copied = pickle.loads(pickle.dumps(sampler))
    a = sampler(np.random.default_rng(5), 4)
    b = copied(np.random.default_rng(5), 4)
    assert len(a) == len(b) == 2
    assert all(
        np.array_equal(x, y)
        for pa, pb in zip(a, b, strict=True)
        for x, y in zip(pa, pb, strict=True)
    )
