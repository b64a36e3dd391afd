"""One measured run, and many: methods × tasks × seeds, each run in a fresh process if asked.

Every run of ``compare`` happens in a fresh process (unless ``isolate=False``), so that
``peak_rss_mb`` is the peak resident memory of the process that ran THAT method and seed.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from minift.data import standard_tokenizer
from minift.data.tasks import TASK_KINDS
from minift.errors import check_int
from minift.machine import rss_mb
from minift.parallel import one_blas_thread_in_children
from minift.peft import count_parameters
from minift.peft.registry import get_method
from minift.pipeline.finetuning import (
    RunSettings,
    baseline_metrics,
    evaluate,
    finetune,
    prepare_model,
)
from minift.pipeline.pretraining import BaseSpec, load_base
from minift.pipeline.tasks import BASELINES, check_task, get_task


@dataclass
class RunResult:
    records: list[dict[str, Any]]  # one per metric, in the results.json format
    losses: list[float] = field(default_factory=list)


def run_one(task_name, method, seed, settings: RunSettings, base_spec: BaseSpec, progress=False):
    """Fine-tune and evaluate one (task, method, seed); the records of results.json."""
    tok = standard_tokenizer()
    task = get_task(task_name)
    base = load_base(base_spec, progress=progress)
    common = {"task": task_name, "method": method, "seed": seed}
    if method in BASELINES.values():
        if BASELINES[task.kind] != method:
            raise ValueError(f"method: {method!r} is no baseline for a {task.kind} task")
        values = baseline_metrics(task, settings.eval_split, settings.eval_examples)
        return RunResult([{**common, "trainable_params": 0, "total_params": 0, "train_seconds": 0.0,
                           "peak_rss_mb": rss_mb("VmHWM"), "optimizer_state_bytes": 0,
                           "metric": k, "value": v} for k, v in values.items()])  # fmt: skip
    model = prepare_model(base, task, method, seed, tok, settings.steps)
    counts = count_parameters(model)
    losses, seconds, state_bytes = [], 0.0, 0
    if get_method(method).trains:
        result, trainer = finetune(model, task, method, seed, tok, settings, progress=progress)
        losses, seconds = result.losses, result.seconds
        state_bytes = trainer.optimizer.state_bytes()
    values = evaluate(model, task, tok, settings.eval_split, settings.eval_examples)
    record = {
        **common,
        "trainable_params": counts.trainable if get_method(method).trains else 0,
        "total_params": counts.total,
        "train_seconds": seconds,
        "peak_rss_mb": rss_mb("VmHWM"),
        "optimizer_state_bytes": state_bytes,
    }
    return RunResult([{**record, "metric": k, "value": v} for k, v in values.items()], losses)


def _run_in_child(args):
    return run_one(*args)


def compare(
    tasks,
    methods,
    seeds,
    settings: RunSettings,
    base_spec=None,
    isolate=True,
    out=None,
    workers: int = 1,
):
    """Every (task, method, seed): records, loss curves; each run in a fresh process if isolate.

    ``out`` (default: standard error) shows one progress bar over all the runs, with the time
    left, and a line as each run ends.

    ``workers`` > 1 (with isolate) runs that many at a time, each process with ONE BLAS thread
    and, unless ``settings.threads`` says otherwise, one training thread (two runs with two
    threads each on two cores slow each other down many times over); their train_seconds are
    then those of runs sharing the machine (results.md shows the command).
    """
    workers = check_int("workers", workers)
    base_spec = base_spec or BaseSpec()
    for name in tasks:
        check_task(name)
    for name in methods:
        if name not in BASELINES.values():
            get_method(name)
    load_base(base_spec)  # pretrain once, here, before any child needs it
    kinds = {t: TASK_KINDS[t] for t in tasks}  # without building them: children build their own
    runs = [
        (t, m, s)
        for t in tasks
        for m in methods
        if m not in BASELINES.values() or BASELINES[kinds[t]] == m  # each task its own baseline
        for s in (seeds[:1] if m in BASELINES.values() else seeds)  # a baseline has no seed
    ]
    run_settings = worker_settings(settings, workers if isolate else 1)
    jobs = [(t, m, s, run_settings, base_spec, False) for t, m, s in runs]
    if isolate and workers > 1:
        finished = _in_parallel_children(jobs, workers)
    else:
        finished = enumerate(_run_isolated(job) if isolate else run_one(*job) for job in jobs)
    out = out if out is not None else sys.stderr
    results: dict[int, RunResult] = {}
    with tqdm(total=len(runs), desc="all runs", unit="run", file=out, mininterval=0) as bar:
        for done, (i, result) in enumerate(finished, 1):
            t, m, s = runs[i]
            bar.write(f"[{done}/{len(runs)}] {t} / {m} / seed {s}", file=out)
            bar.update(1)
            results[i] = result
    records, curves = [], {}
    for i, (t, m, _) in enumerate(runs):  # in the order of the runs, whatever order they ended in
        records.extend(results[i].records)
        if results[i].losses:
            curves.setdefault(t, {}).setdefault(m, []).append(results[i].losses)
    return records, curves


def worker_settings(settings: RunSettings, workers: int) -> RunSettings:
    """The settings of a run that shares the cores with ``workers - 1`` others: one training
    thread each unless ``settings.threads`` names a count."""
    if workers > 1 and settings.threads is None:
        return dataclasses.replace(settings, threads=1)
    return settings


def _run_isolated(job) -> RunResult:
    """One run in a fresh process of its own (so its peak memory is its own)."""
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_run_in_child, (job,))


def _in_parallel_children(jobs, workers):
    """(index, result) of every job as it ends, ``workers`` fresh processes at a time, one BLAS
    thread each, started in ``start_order``."""
    order = start_order([job[1] for job in jobs])
    with one_blas_thread_in_children():
        with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            yield from pool.imap_unordered(_indexed_run_in_child, [(i, jobs[i]) for i in order])


def start_order(methods: list[str]) -> list[int]:
    """The order in which parallel workers start the runs of ``methods``: those that train
    first, those that only evaluate (the base, the baselines) after them, each in its given
    order. Short runs at the end leave no worker idle long while the other finishes."""

    def only_evaluates(i):
        return methods[i] in BASELINES.values() or not get_method(methods[i]).trains

    return sorted(range(len(methods)), key=only_evaluates)


def _indexed_run_in_child(indexed_job):
    i, job = indexed_job
    return i, run_one(*job)
