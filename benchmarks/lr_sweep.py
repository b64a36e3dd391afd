"""The learning rates ``minift compare`` uses, chosen on the validation split.

For each swept method (each registered with an ``lr_grid``: the learning rates to try, about 3x
apart, around its working range, widened where the best was an end) and each kind of task
(classification, generation), every learning rate of the grid fine-tunes the cached base on every
task of that kind (one seed, ``--steps`` steps) and is scored on the VALIDATION split (never the
test split, which the compare table reports). The kind's learning rate is the one with the best
mean of the tasks' main metric (accuracy; exact match, ties broken by the corpus chrF). Run from
the repo root:

    python -m benchmarks.lr_sweep                  # full, lora, sparse, bitfit: ~15 min on 2 cores
    python -m benchmarks.lr_sweep --methods lora --tasks stdlib-modules --lrs 3e-3 1e-2

It prints and writes (``--out``, default ``benchmarks/results``):

    lr_sweep.md     one row per (task, method, lr) with the validation metrics, and the chosen
                    learning rate per method and kind next to the one its registration holds
    lr_sweep.json   the same, as records; tests/test_pipeline.py holds the registered learning
                    rates (minift.peft.registry, each method's lr and classification_lr) to its
                    choices

Runs already in lr_sweep.json are not run again, and a new sweep's runs join the file's, so the
grid can grow (or a method be added) without redoing what is there. A generation run whose record
lacks ``"chrf_definition": "corpus"`` was scored when minift's chrF was the mean of sentence scores
(another number than the corpus chrF papers report): sweeping it again replaces it.

Runs go two at a time, each in a fresh process with one BLAS thread (two runs with two threads
each on two cores would slow both). Not a speed benchmark: no timing is compared here.
"""

import sys

from benchmarks._reexec import reexec_without_openblas_pins

if __name__ == "__main__":
    reexec_without_openblas_pins("benchmarks.lr_sweep")  # before anything imports numpy

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

DEFAULT_METHODS = ["full", "lora", "sparse", "bitfit"]
CHRF_DEFINITION = "corpus"  # what a record's "chrf" is: minift.data.corpus_chrf
TASKS = {
    "classification": ["stdlib-modules", "kjv-books"],
    "generation": ["en-fr-numbers", "babi-qa"],
}


def grid() -> dict[str, tuple[float, ...]]:
    """method -> the learning rates to try, as each method's registration gives them."""
    from minift.peft import METHODS

    return {name: m.lr_grid for name, m in METHODS.items() if m.lr_grid}


def _run(job):
    from minift.pipeline.comparison import run_one
    from minift.pipeline.finetuning import RunSettings
    from minift.pipeline.pretraining import BaseSpec

    task, method, lr, steps, seed = job
    # two runs share the cores: one training thread each
    settings = RunSettings(steps=steps, lr=lr, eval_split="val", threads=1)
    result = run_one(task, method, seed, settings, BaseSpec())
    values = {r["metric"]: r["value"] for r in result.records}
    if "chrf" in values:
        values["chrf_definition"] = CHRF_DEFINITION
    return {"task": task, "method": method, "lr": lr, "steps": steps, "seed": seed, **values}


def _stale(record) -> bool:
    """A run scored before "chrf" meant minift.data.corpus_chrf: its chrF is another metric."""
    return "chrf" in record and record.get("chrf_definition") != CHRF_DEFINITION


def _key(record) -> tuple:
    return (record["task"], record["method"], record["lr"], record["steps"], record["seed"])


def score(record) -> tuple:
    """What 'best' means: accuracy, or exact match with the corpus chrF as the tie-break."""
    if "accuracy" in record:
        return (record["accuracy"],)
    return (record["exact_match"], record["chrf"])


def choose(records) -> dict:
    """(method, kind) -> the learning rate with the best mean score over the kind's tasks."""
    from minift.data.tasks import TASK_KINDS

    kinds = {r["task"]: TASK_KINDS[r["task"]] for r in records}
    chosen = {}
    for method in sorted({r["method"] for r in records}):
        for kind in ("classification", "generation"):
            rows = [r for r in records if r["method"] == method and kinds[r["task"]] == kind]
            if not rows:
                continue
            by_lr = {}
            for r in rows:
                by_lr.setdefault(r["lr"], []).append(score(r))
            mean = {
                lr: tuple(sum(x) / len(x) for x in zip(*s, strict=True)) for lr, s in by_lr.items()
            }
            chosen[f"{method}/{kind}"] = max(mean, key=lambda lr: mean[lr])
    return chosen


def choices_resting_on_chrf(records, chosen) -> list[str]:
    """The generation choices that exact match alone does not decide (a tie at the top)."""
    resting = []
    for key, lr in chosen.items():
        method, kind = key.split("/")
        if kind != "generation":
            continue
        by_lr = {}
        for r in records:
            if r["method"] == method and "exact_match" in r:
                by_lr.setdefault(r["lr"], []).append(r["exact_match"])
        best = sum(by_lr[lr]) / len(by_lr[lr])
        if any(sum(v) / len(v) >= best for other, v in by_lr.items() if other != lr):
            resting.append(key)
    return resting


def choices_at_an_end(records, chosen) -> dict[str, str]:
    """key -> "lowest" or "highest": the choices at an end of the learning rates tried for their
    kind, where the best may lie beyond what was tried (widen that method's ``lr_grid``)."""
    from minift.data.tasks import TASK_KINDS

    ends = {}
    for key, lr in chosen.items():
        method, kind = key.split("/")
        tried = {
            r["lr"] for r in records if r["method"] == method and TASK_KINDS[r["task"]] == kind
        }
        if len(tried) > 1 and lr in (min(tried), max(tried)):
            ends[key] = "lowest" if lr == min(tried) else "highest"
    return ends


def markdown(records, chosen, commands, day: str | None = None) -> str:
    """The page; ``day`` is the day of the runs (today's by default)."""
    from minift.peft import get_method

    day = day or f"{datetime.now(timezone.utc):%Y-%m-%d}"

    made_by = " and ".join(f"`{c}`" for c in commands)
    lines = [
        "# Learning rates, chosen on the validation split",
        "",
        f"Made by {made_by}; one seed per run; {day}.",
        "",
        "| task | method | lr | validation metrics |",
        "|---|---|--:|---|",
    ]
    for r in records:
        metrics = ", ".join(
            f"{k}{'†' if k == 'chrf' and _stale(r) else ''} {r[k]:.3f}"
            for k in ("accuracy", "exact_match", "chrf")
            if k in r
        )
        lines.append(f"| {r['task']} | {r['method']} | {r['lr']:g} | {metrics} |")
    if any(_stale(r) for r in records):
        resting = choices_resting_on_chrf(records, chosen)
        lines += [
            "",
            "† scored when minift's chrF was the mean of sentence chrF, not the corpus chrF it "
            "is now (`python -m benchmarks.lr_sweep` runs these again). chrF only breaks ties of "
            "exact match: "
            + (
                "no choice below rests on it."
                if not resting
                else f"these choices rest on it: {', '.join(resting)}."
            ),
        ]
    ends = choices_at_an_end(records, chosen)
    lines += [
        "",
        "| method | kind | chosen lr | registered lr | end of the lrs tried |",
        "|---|---|--:|--:|---|",
    ]
    for key, lr in chosen.items():
        method, kind = key.split("/")
        registered = get_method(method).lr_for(kind)
        lines.append(f"| {method} | {kind} | {lr:g} | {registered:g} | {ends.get(key, '')} |")
    if ends:
        lines += [
            "",
            f"{len(ends)} of {len(chosen)} choices are the lowest or highest learning rate tried "
            "for their kind: the best may lie beyond, where that method's `lr_grid` stops.",
        ]
    return "\n".join(lines) + "\n"


def save(out: Path, previous: dict, records: list[dict], command: str):
    """Write lr_sweep.json and .md: ``previous``'s records with ``records`` in place of the runs
    they repeat, and the choices made on them all; returns (records, chosen)."""
    from minift.files import atomic_write_bytes, atomic_write_json

    new_keys = {_key(r) for r in records}
    # an earlier sweep's runs of other (task, method, lr) are kept: one file holds every choice
    merged = [r for r in previous["records"] if _key(r) not in new_keys] + records
    commands = [c for c in previous["commands"] if c != command] + [command]
    chosen = choose(merged)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "lr_sweep.json", {"commands": commands, "records": merged,
                                              "chosen": chosen})  # fmt: skip
    atomic_write_bytes(out / "lr_sweep.md", markdown(merged, chosen, commands).encode())
    return merged, chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(grid()))
    parser.add_argument("--tasks", nargs="+", default=[t for ts in TASKS.values() for t in ts])
    parser.add_argument("--lrs", nargs="+", type=float, default=None, help="instead of the grid")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--rewrite-markdown",
        action="store_true",
        help="only rewrite lr_sweep.md from lr_sweep.json",
    )
    args = parser.parse_args(argv)
    if args.rewrite_markdown:
        from minift.files import atomic_write_bytes

        sweep = json.loads((args.out / "lr_sweep.json").read_text())
        page = (args.out / "lr_sweep.md").read_text()
        day = re.search(r"one seed per run; (\d{4}-\d\d-\d\d)\.", page)  # the runs' day stays
        text = markdown(sweep["records"], sweep["chosen"], sweep["commands"], day and day[1])
        atomic_write_bytes(args.out / "lr_sweep.md", text.encode())
        return sweep["records"], sweep["chosen"]

    from minift.pipeline.pretraining import BaseSpec, load_base

    load_base(BaseSpec())  # pretrain once, before the workers need it
    jobs = [
        (task, method, lr, args.steps, args.seed)
        for task in args.tasks
        for method in args.methods
        for lr in (args.lrs or grid()[method])
    ]
    path = args.out / "lr_sweep.json"
    previous = json.loads(path.read_text()) if path.exists() else {"commands": [], "records": []}
    done = {_key(r) for r in previous["records"] if not _stale(r)}
    jobs = [job for job in jobs if job not in done]  # a run already in the file is not redone
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # for the workers, which start after this
    command = ("python -m benchmarks.lr_sweep " + " ".join(sys.argv[1:])).strip()
    records = []
    with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        for i, record in enumerate(pool.imap(_run, jobs), 1):
            records.append(record)
            print(f"[{i}/{len(jobs)}] {json.dumps(record)}", flush=True)
            # saved as each run ends: an interrupted sweep, started again, redoes only the rest
            save(args.out, previous, records, command)
    merged, chosen = save(args.out, previous, records, command)
    print((args.out / "lr_sweep.md").read_text())
    return merged, chosen


if __name__ == "__main__":
    main()
