"""The article's claims that no table of minift's tested, measured over seeds with intervals.

    python -m benchmarks.article_claims                      # all four parts: ~25 min on 2 cores
    python -m benchmarks.article_claims --parts lora-mlp --seeds 0 1 2

Four parts, each a small grid of fine-tuning runs on the cached base, every run scored on the
task's TEST split (the settings are the compare's; nothing here is chosen on these scores):

    data-size   §3.3.1 "supervised fine-tuning is weaker on little data" and §8/§9 "PEFT and LoRA
                suit little data": full, LoRA, sparse (A4) and head-only on stdlib-modules with
                the first n_train training examples, n_train from 24 to all 720, the same 300 steps
    sharing     §2.2's parameter sharing (A3) trained: does tying every block's MLP to the first
                block's "throw away" what the other blocks learned? Against full, all the data
    adalora     AdaLoRA (rank 12 → 8 on average) on stdlib-modules: which matrices keep their
                ranks (the rank allocation the article's "adaptively adjusts" would be)
    lora-mlp    the README's guess for LoRA's weak translation: LoRA r=8 on attention only (the
                default: c_attn, attn.c_proj) against attention and MLP (+ c_fc, mlp.c_proj),
                on en-fr-numbers

It writes (``--out``, default ``benchmarks/results/article_claims``):

    results.json    one record per run (task, method, variant, n_train, seed, metrics, trainable
                    parameters; AdaLoRA's kept ranks per matrix), the commands and the machine
    results.md      per part a table of means with 95 % intervals (Student t over the seeds)
    data_size.png   the test metric against n_train per method, with the intervals

Runs already in results.json are not run again (each is written as it ends), so an interrupted
sweep resumes, and a part or a seed can be added later. Runs go
``--workers`` at a time, each in a fresh process with one BLAS thread. Not a speed benchmark:
no timing is compared here, so a loaded machine changes no number (float32 rounding, set by the
BLAS kernel, does: that is why the notebooks assert only what the intervals carry).
"""

import sys

from benchmarks._reexec import reexec_without_openblas_pins

if __name__ == "__main__":
    reexec_without_openblas_pins("benchmarks.article_claims")  # before anything imports numpy

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

PARTS = ("data-size", "sharing", "adalora", "lora-mlp")
DATA_SIZE_TASK, DATA_SIZE_METHODS = "stdlib-modules", ("full", "lora", "sparse", "head")
N_TRAIN = (24, 72, 240, None)  # None: the whole training split (720 examples)
ATTENTION = ["c_attn", "attn.c_proj"]
ATTENTION_AND_MLP = ATTENTION + ["c_fc", "mlp.c_proj"]
OUT = Path("benchmarks/results/article_claims")


def jobs_for(part: str, seeds, steps: int) -> list[tuple]:
    """(part, task, method, variant, n_train, seed, steps) of every run of one part."""
    if part == "data-size":
        return [(part, DATA_SIZE_TASK, m, "", n, s, steps)
                for m in DATA_SIZE_METHODS for n in N_TRAIN for s in seeds]  # fmt: skip
    if part == "sharing":
        return [(part, DATA_SIZE_TASK, m, "", None, s, steps)
                for m in ("full", "sharing") for s in seeds]  # fmt: skip
    if part == "adalora":
        return [(part, DATA_SIZE_TASK, "adalora", "", None, s, steps) for s in seeds]
    if part == "lora-mlp":
        return [(part, "en-fr-numbers", "lora", v, None, s, steps)
                for v in ("attention", "attention+mlp") for s in seeds]  # fmt: skip
    raise ValueError(f"part: expected one of {PARTS}, got {part!r}")


def run(job) -> dict:
    """Fine-tune and score one run on the test split: its record."""
    from minift.data import standard_tokenizer
    from minift.peft import count_parameters
    from minift.peft.registry import method_config
    from minift.pipeline.finetuning import RunSettings, evaluate, finetune, prepare_model
    from minift.pipeline.pretraining import BaseSpec, load_base
    from minift.pipeline.tasks import get_task

    part, task_name, method, variant, n_train, seed, steps = job
    task = get_task(task_name)
    if n_train is not None:
        task = dataclasses.replace(task, train=task.train[:n_train])
    tok, base = standard_tokenizer(), load_base(BaseSpec())
    config = None
    if variant:
        targets = ATTENTION if variant == "attention" else ATTENTION_AND_MLP
        config = method_config(method, task.kind, steps, target_modules=targets)
    model = prepare_model(base, task, method, seed, tok, steps, config=config)
    trainable = count_parameters(model).trainable
    settings = RunSettings(steps=steps, threads=1)  # the workers share the cores: one thread each
    finetune(model, task, method, seed, tok, settings, progress=False)
    record = {"part": part, "task": task_name, "method": method, "variant": variant,
              "n_train": len(task.train), "seed": seed, "steps": steps, "trainable": trainable,
              **evaluate(model, task, tok, "test")}  # fmt: skip
    if method == "adalora":  # the allocator's last word: which of init_r ranks each matrix kept
        pattern = model.peft_config.rank_pattern or {}
        record["kept_ranks"] = {key: int(sum(mask)) for key, mask in pattern.items()}
    return record


def key(record_or_job) -> tuple:
    if isinstance(record_or_job, dict):
        r = record_or_job
        return (
            r["part"],
            r["task"],
            r["method"],
            r["variant"],
            r["n_train"],
            r["seed"],
            r["steps"],
        )
    part, task, method, variant, n_train, seed, steps = record_or_job
    n = n_train if n_train is not None else _train_size(task)
    return (part, task, method, variant, n, seed, steps)


def _train_size(task_name: str) -> int:
    from minift.pipeline.tasks import get_task

    return len(get_task(task_name).train)


def main_metric(record) -> str:
    return "accuracy" if "accuracy" in record else "exact_match"


def groups(records, part: str, steps: int) -> dict[tuple, list[dict]]:
    """(method, variant, n_train) -> the part's records of it at ``steps``, one per seed."""
    out: dict[tuple, list[dict]] = {}
    for r in records:
        if r["part"] == part and r["steps"] == steps:
            out.setdefault((r["method"], r["variant"], r["n_train"]), []).append(r)
    return out


def markdown(records, commands, machine: str, steps: int) -> str:
    from minift.stats import mean_ci

    lines = ["# The article's untested claims, measured", "",
             "Made by " + " and ".join(f"`{c}`" for c in commands) + f"; {machine}.",
             f"Each cell: the mean over seeds ± the half width of its 95 % interval (Student t), "
             f"on the task's test split, after {steps} steps."]  # fmt: skip
    for part in PARTS:
        by = groups(records, part, steps)
        if not by:
            continue
        metrics = [
            m for m in ("accuracy", "exact_match", "chrf") if m in next(iter(by.values()))[0]
        ]
        lines += ["", f"## {part}", "",
                  "| method | variant | n_train | seeds | trainable | "
                  + " | ".join(metrics) + " |",
                  "|---|---|--:|--:|--:|" + "--:|" * len(metrics)]  # fmt: skip
        for (method, variant, n), rs in by.items():
            cells = [mean_ci([r[m] for r in rs]).format() for m in metrics]
            lines.append(f"| {method} | {variant or '—'} | {n} | {len(rs)} | "
                         f"{rs[0]['trainable']:,} | " + " | ".join(cells) + " |")  # fmt: skip
        if part == "adalora":
            lines += ["", "Ranks kept per matrix (of init_r = 12), one column per seed:", "",
                      "| matrix | " + " | ".join(f"seed {r['seed']}" for r in rs) + " |",
                      "|---|" + "--:|" * len(rs)]  # fmt: skip
            for matrix in rs[0]["kept_ranks"]:
                kept = " | ".join(str(r["kept_ranks"][matrix]) for r in rs)
                lines.append(f"| {matrix} | {kept} |")
    return "\n".join(lines) + "\n"


def plot_data_size(records, path, steps: int):
    """The test accuracy against n_train, one line per method, with 95 % intervals."""
    from minift import plots
    from minift.stats import mean_ci

    by = groups(records, "data-size", steps)
    curves = {}
    for (method, _, n), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        ci = mean_ci([r["accuracy"] for r in rs])
        xs, ys, hw = curves.setdefault(method, ([], [], []))
        xs.append(n)
        ys.append(ci.mean)
        hw.append(ci.half_width)
    return plots.plot_lines_with_intervals(
        curves, path, xlabel="training examples (n_train, log scale)",
        ylabel=f"test accuracy on {DATA_SIZE_TASK}",
        title=f"Fine-tuning on little data: {steps} steps, mean and 95 % interval over seeds",
    )  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)  # the compare's
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if len(args.seeds) < 3:
        parser.error(f"--seeds: an interval a claim can rest on needs >= 3 seeds, got {args.seeds}")

    from minift.files import atomic_write_bytes, atomic_write_json
    from minift.machine import blas_info, blas_line, cpu_line, source_line
    from minift.pipeline.pretraining import BaseSpec, load_base

    load_base(BaseSpec())  # pretrain once, before the workers need it
    path = args.out / "results.json"
    previous = json.loads(path.read_text()) if path.exists() else {"commands": [], "records": []}
    done = {key(r) for r in previous["records"]}
    jobs = [
        j for p in args.parts for j in jobs_for(p, args.seeds, args.steps) if key(j) not in done
    ]
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # for the workers, which start after this
    command = ("python -m benchmarks.article_claims " + " ".join(sys.argv[1:])).strip()
    commands = [c for c in previous["commands"] if c != command] + [command]
    machine = f"{cpu_line()}; {blas_line(blas_info())}; {source_line()}"
    args.out.mkdir(parents=True, exist_ok=True)
    records = list(previous["records"])
    with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        for i, record in enumerate(pool.imap(run, jobs), 1):
            records.append(record)
            print(f"[{i}/{len(jobs)}] {json.dumps(record)}", flush=True)
            # each run kept as it ends: an interrupted sweep resumes where it stopped
            atomic_write_json(path, {"commands": commands, "machine": machine, "records": records})
    atomic_write_json(path, {"commands": commands, "machine": machine, "records": records})
    text = markdown(records, commands, machine, args.steps)
    atomic_write_bytes(args.out / "results.md", text.encode())
    if groups(records, "data-size", args.steps):
        plot_data_size(records, args.out / "data_size.png", args.steps)
    print(text)
    return records


if __name__ == "__main__":
    main()
