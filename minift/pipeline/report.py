"""Results: a table with confidence intervals, next to what the article claims, and plots.

The article's §5.4 prints a table that no code produced (PEFT 10 minutes / 95 %, LoRA 20 minutes /
90 %, "LoRA trains slowest"); ``compare`` measures the same things, and this module shows them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minift.checkpoint import atomic_write_bytes, atomic_write_json
from minift.errors import FileFormatError
from minift.files import read_json
from minift.machine import describe_markdown
from minift.stats import mean_ci

ARTICLE_CLAIMS = """\
The article's §5.4 prints, without code that could produce it:

| | article | |
| --- | --- | --- |
| SFT | "shortest training time, relatively high performance" | loss 0.5 → 0.0 in 10 epochs |
| PEFT | 10 minutes, accuracy 95.00 % | "moderate time, slightly lower performance" |
| LoRA | 20 minutes, accuracy 90.00 % | "longest training time, lowest performance" |
"""

# The same rows: the article's name, the minift method that is what it describes, its claims
ARTICLE_ROWS = [
    ("SFT", "full", '"shortest training time, relatively high performance"; loss 0.5 → 0.0'),
    ("PEFT", "sparse", '10 minutes, accuracy 95.00 %; "moderate time, slightly lower performance"'),
    ("LoRA", "lora", '20 minutes, accuracy 90.00 %; "longest training time, lowest performance"'),
]


def article_comparison_markdown(rows: list[dict]) -> str:
    """The article's §5.4 claims, each beside what its method measured here: every task's main
    metric and the training seconds (mean ± 95 % CI over seeds). A method not in ``rows`` (not
    run) shows as "not run"."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    main = {
        (r["task"], r["method"]): r for r in rows if r["metric"] == main_metric(rows, r["task"])
    }
    header = "".join(
        f" {t} ({main_metric(rows, t).replace('_', ' ')}) | {t} train s |" for t in tasks
    )
    lines = [
        "The article's §5.4 prints a table that no code produced; here each of its rows stands "
        "beside what the method it describes measured in this run:",
        "",
        f"| article | the article claims | minift method |{header}",
        "| --- | --- | --- |" + " --- | --- |" * len(tasks),
    ]
    for name, method, claim in ARTICLE_ROWS:
        cells = ""
        for t in tasks:
            r = main.get((t, method))
            cells += f" {r['value']} | {r['train_seconds']} |" if r else " not run | |"
        lines.append(f"| {name} | {claim} | `{method}` |{cells}")
    return "\n".join(lines) + "\n"


def main_metric(rows: list[dict], task: str) -> str:
    """The task's headline metric among ``summarize``'s rows: accuracy or exact match."""
    metrics = {r["metric"] for r in rows if r["task"] == task}
    return next(m for m in MAIN_METRIC.values() if m in metrics)


MAIN_METRIC = {"classification": "accuracy", "generation": "exact_match"}


def summarize(records: list[dict]) -> list[dict]:
    """One row per (task, method, metric): mean ± 95 % CI of value and of train_seconds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["method"], r["metric"]), []).append(r)
    rows = []
    for (task, method, metric), rs in groups.items():
        value = mean_ci([r["value"] for r in rs])
        seconds = mean_ci([r["train_seconds"] for r in rs])
        rows.append({
            "task": task, "method": method, "metric": metric, "n": value.n,
            "mean": value.mean, "half_width": value.half_width, "value": value.format(3),
            "train_seconds": seconds.format(1), "seconds_mean": seconds.mean,
            "trainable_params": rs[0]["trainable_params"], "total_params": rs[0]["total_params"],
            "optimizer_state_bytes": rs[0]["optimizer_state_bytes"],
            "peak_rss_mb": float(np.mean([r["peak_rss_mb"] for r in rs])),
        })  # fmt: skip
    return rows


def overview_markdown(rows: list[dict]) -> str:
    """One table: a row per method, a column per task with its main metric, mean ± 95 % CI, and
    in brackets that mean as a share of full fine-tuning's; "trainable" is the method's largest
    share of the model's parameters over the tasks (a classifier's new head adds to it). The
    README shows this table."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    metric = {t: main_metric(rows, t) for t in tasks}
    main = {(r["task"], r["method"]): r for r in rows if r["metric"] == metric[r["task"]]}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    header = " | ".join(f"{t} ({metric[t].replace('_', ' ')})" for t in tasks)
    lines = [
        f"| method | trainable (most) | {header} |",
        "| --- | ---: |" + " --- |" * len(tasks),
    ]
    for method in methods:
        cells, shares = [], []
        for t in tasks:
            r, full = main.get((t, method)), main.get((t, "full"))
            if r is None:
                cells.append("")
                continue
            if r["total_params"] and r["trainable_params"]:
                shares.append(r["trainable_params"] / r["total_params"])
            of_full = f" ({100 * r['mean'] / full['mean']:.0f} %)" if full and full["mean"] else ""
            spread = f" ± {r['half_width']:.3f}" if r["n"] > 1 else ""  # one run: no interval
            cells.append(f"{r['mean']:.3f}{spread}{of_full}")
        share = f"{100 * max(shares):.2f} %" if shares else ""  # the most over the tasks
        lines.append(f"| {method} | {share} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(rows: list[dict], command: str, machine: dict | None = None) -> str:
    """The whole results page; ``machine`` (``minift.machine.describe``'s record) names what the
    times and memory were measured on."""
    lines = [
        "# minift compare: measured results",
        "",
        f"Made by `{command}`. Each value is the mean over seeds ± the half-width of a 95 % "
        "Student-t confidence interval (n = number of seeds). Trainable parameters are counted by "
        "`minift.peft.count_parameters`; times are wall-clock seconds of training.",
        "",
        describe_markdown(machine),
        "",
        "## Overview: each task's main metric (in brackets: as a share of full fine-tuning's)",
        "",
        overview_markdown(rows),
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += [
            f"## {task}",
            "",
            "| method | metric | value | of full's | trainable params | % of total | train s "
            "| optimizer state | peak RSS MB |",
            "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        full = {r["metric"]: r["mean"] for r in rows if r["task"] == task and r["method"] == "full"}
        for r in (r for r in rows if r["task"] == task):
            share = 100 * r["trainable_params"] / r["total_params"] if r["total_params"] else 0.0
            # the mean as a share of full fine-tuning's mean on the same metric (seeds' CIs apart)
            of_full = (
                f"{100 * r['mean'] / full[r['metric']]:.0f} %" if full.get(r["metric"]) else ""
            )
            lines.append(
                f"| {r['method']} | {r['metric']} | {r['value']} | {of_full} | "
                f"{r['trainable_params']:,} | {share:.2f} % | {r['train_seconds']} | "
                f"{r['optimizer_state_bytes']:,} B | {r['peak_rss_mb']:.0f} |"
            )
        lines.append("")
    lines += [
        "## What the article claims, beside what was measured",
        "",
        article_comparison_markdown(rows),
    ]
    return "\n".join(lines)


def write_results(records, curves, out_dir, command: str, machine: dict | None = None):
    """results.json, results.md, curves.json, machine.json (when ``machine`` is given) and the
    plots; every file written whole or not at all. Returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(records)
    atomic_write_json(out_dir / "results.json", records)
    atomic_write_bytes(out_dir / "results.md", results_markdown(rows, command, machine).encode())
    atomic_write_json(out_dir / "curves.json", curves)
    written = [out_dir / "results.json", out_dir / "results.md", out_dir / "curves.json"]
    if machine:
        atomic_write_json(out_dir / "machine.json", machine)
        written.append(out_dir / "machine.json")
    return written + _plots(rows, curves, out_dir)


def write_plots(out_dir) -> list[Path]:
    """Draw a results folder's plots again from its results.json and curves.json alone, with
    the figure code as it is now: no run repeated."""
    out_dir = Path(out_dir)
    records = read_json(out_dir / "results.json", "results.json", expect=list)
    curves = read_json(out_dir / "curves.json", "curves.json")
    for i, record in enumerate(records):
        missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
        if missing:
            raise FileFormatError(out_dir / "results.json", f"missing {missing}", f"[{i}]")
    return _plots(summarize(records), curves, out_dir)


# the fields of a record that the tables and plots read (compare writes a few more)
RECORD_KEYS = ("task", "method", "metric", "value", "train_seconds", "trainable_params",
               "total_params", "optimizer_state_bytes", "peak_rss_mb")  # fmt: skip


def _plots(rows: list[dict], curves: dict, out_dir: Path) -> list[Path]:
    """Score against trainable parameters, a loss plot per task, and training time per run."""
    from minift import plots  # matplotlib, loaded only when there is something to draw

    written = []
    main = [r for r in rows if r["metric"] in MAIN_METRIC.values()]
    trained = [r for r in main if r["trainable_params"] > 0]
    if trained:
        # each panel names its task's metric: accuracy and exact match share no axis
        panels = [{**r, "task": f"{r['task']} ({r['metric'].replace('_', ' ')})"} for r in trained]
        plots.plot_metric_vs_params(panels, out_dir / "metric_vs_params.png", "score")
        written.append(out_dir / "metric_vs_params.png")
    for task, by_method in curves.items():
        path = out_dir / f"loss_{task}.png"
        plots.plot_loss_curves(by_method, path, title=f"training loss, {task}")
        written.append(path)
    times = {f"{r['task']}\n{r['method']}": r["seconds_mean"] for r in trained}
    if times:
        plots.plot_bars(
            times,
            out_dir / "train_seconds.png",
            ylabel="training seconds, mean over seeds",
            title="training time per run",
        )
        written.append(out_dir / "train_seconds.png")
    return written
