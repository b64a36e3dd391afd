"""Many training runs, two at a time in processes of their own: the notebooks' seed loops.

A notebook trains the same method on three seeds, or four methods on three seeds each; one run
at a time, each batch split over two threads (``minift.parallel``), gains little at these small
shapes, because the threads take turns at Python's interpreter lock between their many small
NumPy calls. Two runs side by side in two processes share nothing and keep both cores busy
(``python -m benchmarks.side_by_side`` times both ways on the machine it runs on).

Each run is the plain loop with one thread (and one BLAS thread), so a run here gives the same
model, bit for bit, as ``finetune`` (``finetune_many``) or ``Trainer.train`` (``train_many``) with
``threads=1`` under one BLAS thread in this process (tests/test_side_by_side.py). The models go
to the children and come back through ``multiprocessing``'s pipes (pickled in memory); nothing
is written to disk.

Children are started with "spawn", so they import minift afresh: a script that calls either at
its top level must do so under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from minift.data import Task
from minift.errors import check_int
from minift.nn import Module
from minift.parallel import default_threads, one_blas_thread_in_children
from minift.pipeline.finetuning import RunSettings, evaluate, finetune
from minift.train import TrainConfig, Trainer, TrainResult


@dataclass
class FinishedRun:
    model: Module  # the trained model: a copy, the one handed in stays as it was
    result: TrainResult
    scores: dict[str, float] | None  # evaluate(model, …, limit=score) when asked, else None


def finetune_many(
    runs: list[tuple[Module, str, int]],
    task: Task,
    tok,
    settings: RunSettings,
    *,
    score: int | None = None,
    workers: int | None = None,
    desc: str = "runs",
) -> list[FinishedRun]:
    """Train each (model, method, seed) of ``runs`` as ``finetune`` would, ``workers`` at a time.

    Returns one FinishedRun per run, in the order of ``runs``. ``score``: also evaluate each
    trained model on the first ``score`` test examples, in its process. ``workers``: None is 2
    where two cores are free (``default_threads``); 1 trains in this process, one after the other.
    """
    check_int("score", score, optional=True, what="a positive number of test examples")
    _check_runs(runs, "(model, method, seed)")
    one_thread = replace(settings, threads=1)
    jobs = [
        (
            i,
            _finetune,
            (model, method, seed, task, tok, one_thread, score),
            f"{method}, seed {seed}",
        )
        for i, (model, method, seed) in enumerate(runs)
    ]
    return _side_by_side(jobs, workers, desc)


def train_many(
    runs: list[tuple[Module, TrainConfig, Any]],
    *,
    workers: int | None = None,
    desc: str = "runs",
) -> list[FinishedRun]:
    """Train each (model, config, sample_batch) of ``runs`` as ``Trainer(...).train()`` would,
    with ``config.threads`` = 1, ``workers`` at a time; one FinishedRun per run, in order (its
    scores None). ``sample_batch`` must pickle, as minift's samplers do (``lm_sampler``,
    ``example_sampler``, ``wordpiece_sampler``); one that does not is refused before any run.
    """
    _check_runs(runs, "(model, TrainConfig, sample_batch)")
    for i, (_, config, sample_batch) in enumerate(runs):
        if not isinstance(config, TrainConfig):
            raise ValueError(f"runs[{i}]: expected a TrainConfig second, got {config!r:.80}")
        try:  # checked here, for every worker count, not as a child fails to receive it
            pickle.dumps(sample_batch)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise ValueError(
                f"runs[{i}]: sample_batch must pickle to go to another process (a closure does "
                f"not; minift's samplers do): {e}"
            ) from None
    jobs = [
        (i, _train, (model, replace(config, threads=1), sample_batch), f"seed {config.seed}")
        for i, (model, config, sample_batch) in enumerate(runs)
    ]
    return _side_by_side(jobs, workers, desc)


def _check_runs(runs, expected):
    for i, run in enumerate(runs):
        if not (isinstance(run, tuple) and len(run) == 3 and isinstance(run[0], Module)):
            raise ValueError(f"runs[{i}]: expected {expected}, got {run!r:.80}")


def _side_by_side(jobs, workers, desc) -> list[FinishedRun]:
    """Every job's FinishedRun, in the jobs' order, with one progress bar over them all."""
    if workers is None:
        workers = default_threads()
    workers = check_int("workers", workers)
    finished: list[Any] = [None] * len(jobs)
    tokens, start = 0, time.perf_counter()
    with tqdm(total=len(jobs), desc=desc, unit="run") as bar:
        for i, run in _results(jobs, workers):
            finished[i] = run
            tokens += run.result.tokens
            losses = run.result.losses
            bar.set_postfix(  # the run that just ended, and every run's tokens so far
                loss=f"{losses[-1]:.3f}" if losses else "-",
                tokens_per_s=f"{tokens / (time.perf_counter() - start):,.0f}",
            )
            bar.update(1)
    return finished


def _results(jobs, workers):
    """(index, FinishedRun) as each run ends."""
    if workers == 1 or len(jobs) <= 1:
        with threadpool_limits(1, user_api="blas"):
            # a copy as a child gets one, so the models handed in stay as they were here too
            yield from (_run(copy.deepcopy(job)) for job in jobs)
        return
    spawn = multiprocessing.get_context("spawn")
    with one_blas_thread_in_children():
        # An executor, not a Pool: when a run fails, the runs under way finish and the rest are
        # cancelled; a Pool's terminate can hang while a model is still half-sent down a pipe.
        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=spawn)
        try:
            for future in as_completed([pool.submit(_run, job) for job in jobs]):
                yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _run(job):
    i, train, args, name = job
    try:
        run = train(*args)
    except Exception as e:  # the same error, saying which run: the parent sees only this one
        if len(e.args) == 1 and isinstance(e.args[0], str):
            e.args = (f"runs[{i}] ({name}): {e.args[0]}",)
        raise
    run.model.zero_grad()  # the gradients of the last step would only weigh on the pipe
    return i, run


def _finetune(model, method, seed, task, tok, settings, score) -> FinishedRun:
    result, _ = finetune(model, task, method, seed, tok, settings, progress=False)
    scores = evaluate(model, task, tok, limit=score) if score is not None else None
    return FinishedRun(model, result, scores)


def _train(model, config, sample_batch) -> FinishedRun:
    return FinishedRun(model, Trainer(model, config, sample_batch, progress=False).train(), None)
