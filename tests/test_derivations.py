"""derivations/: the Markdown that explains the math cannot drift from the code and the tests.

What a derivation may write, and what is checked here:

- a verdict on an article equation is a line ``**Verdict (A7): wrong.** ...``: every label A1…A11
  has exactly one, with one of the words right / wrong / garbled, and the index agrees with it;
- a link ``[`name`](../minift/peft/lora.py)`` names something defined in that file (a function, a
  class, a constant, or ``Class.member``); a link ``[`test_name`](../tests/test_lora.py)`` names a
  test defined there; ``tests/test_x.py::test_name`` in the text is checked the same way; every
  relative link resolves to a file or folder of the repository;
- display math ``$$`` comes in pairs, inline ``$`` in pairs on each line, and nothing GitHub's
  MathJax renders badly (``\\newcommand``, ``\\operatorname``);
- a ```` ```python ```` block followed by a ```` ```text ```` block is run, and prints that text;
- every chapter ends with "In the code" and "Checked by", and the index links every chapter.
"""

import ast
import contextlib
import io
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DERIVATIONS = ROOT / "derivations"
INDEX = DERIVATIONS / "README.md"
FILES = sorted(DERIVATIONS.glob("*.md"))
CHAPTERS = [path for path in FILES if path != INDEX]
LABELS = [f"A{i}" for i in range(1, 12)]

VERDICT = re.compile(r"Verdict \((A\d+)\): (right|wrong|garbled)\b")
INDEX_VERDICT = re.compile(r"\b(A\d+) (right|wrong|garbled)\b")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
TEST_REF = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
CODE_NAME = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)(?:\(\))?`")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
SNIPPET = re.compile(r"^```python\n(.*?)^```[ \t]*\n\s*^```text\n(.*?)^```[ \t]*$", re.S | re.M)

by_name = pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def without_code(text: str) -> str:
    """The prose and math of a file: fenced blocks removed, so code cannot pass for prose."""
    return FENCE.sub("", text)


def verdicts(paths) -> dict[str, list[tuple[str, str]]]:
    """label -> [(verdict, file name), ...] over the verdict lines of the given files."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in paths:
        for label, verdict in VERDICT.findall(without_code(text_of(path))):
            found.setdefault(label, []).append((verdict, path.name))
    return found


@cache
def defined_names(path: Path) -> dict[str, set[str]]:
    """Top-level names of a Python file -> the names defined in their body (classes only)."""

    def assigned(node) -> list[str]:
        if isinstance(node, ast.Assign):
            return [t.id for t in node.targets if isinstance(t, ast.Name)]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            return [node.target.id]
        return []

    names: dict[str, set[str]] = {}
    for node in ast.parse(text_of(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    members.add(item.name)
                members.update(assigned(item))
            names[node.name] = members
        for name in assigned(node):
            names.setdefault(name, set())
    return names


def missing_name(dotted: str, path: Path) -> str | None:
    """None if ``name`` or ``Class.member`` is defined in ``path``, else what is wrong."""
    names = defined_names(path)
    top, _, member = dotted.partition(".")
    rel = path.relative_to(ROOT)
    if top not in names:
        close = sorted(n for n in names if n.startswith(top[:4]))[:5]
        return f"{dotted!r} is not defined in {rel} (names starting alike: {close})"
    if member and member not in names[top]:
        return f"{dotted!r}: {top} in {rel} has no member {member!r}"
    return None


# -- the article's equations: a verdict for each -------------------------------------------------


def test_every_article_label_has_exactly_one_verdict():
    found = verdicts(CHAPTERS)
    missing = [label for label in LABELS if label not in found]
    assert not missing, f"no line 'Verdict (A…): right|wrong|garbled' for {missing}"
    repeated = {label: v for label, v in found.items() if len(v) > 1}
    assert not repeated, f"a label judged more than once (keep one verdict): {repeated}"
    unknown = sorted(set(found) - set(LABELS))
    assert not unknown, f"verdicts for labels the article README does not define: {unknown}"


def test_the_index_states_the_same_verdicts_as_the_chapters():
    in_chapters = {label: v[0][0] for label, v in verdicts(CHAPTERS).items()}
    table = [line for line in text_of(INDEX).splitlines() if line.startswith("|")]
    in_index = dict(INDEX_VERDICT.findall("\n".join(table)))
    assert in_index == in_chapters, (
        f"index table says {in_index}, the chapters' verdict lines say {in_chapters}"
    )


# -- links, functions and tests ------------------------------------------------------------------


@by_name
def test_every_relative_link_resolves_inside_the_repository(path):
    broken = []
    for text, target in LINK.findall(without_code(text_of(path))):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or an anchor in this page
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if not resolved.exists() or not resolved.is_relative_to(ROOT):
            broken.append(f"[{text}]({target})")
    assert not broken, f"{path.name}: links that resolve to nothing in the repository: {broken}"


@by_name
def test_every_linked_function_and_test_exists_in_the_linked_file(path):
    problems = []
    for text, target in LINK.findall(without_code(text_of(path))):
        target = target.split("#", 1)[0]
        name = CODE_NAME.fullmatch(text)
        if not name or not target.endswith(".py") or name.group(1) == Path(target).name:
            continue  # not a code name, not a Python file, or the file's own name
        file = (path.parent / target).resolve()
        if file.exists():
            problem = missing_name(name.group(1), file)
            if problem:
                problems.append(problem)
    for rel, test in TEST_REF.findall(without_code(text_of(path))):
        file = ROOT / rel
        problem = missing_name(test, file) if file.exists() else f"{rel} does not exist"
        if problem:
            problems.append(problem)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_names_its_code_and_its_tests(path):
    text = without_code(text_of(path))
    assert "\n## In the code\n" in text, f"{path.name}: no '## In the code' section"
    assert "\n## Checked by\n" in text, f"{path.name}: no '## Checked by' section"
    checked_by = text.split("\n## Checked by\n", 1)[1]
    tests = [t for text_, t in LINK.findall(checked_by) if CODE_NAME.fullmatch(text_)]
    assert any("tests/test_" in t for t in tests), f"{path.name}: 'Checked by' links no test"


def test_the_index_links_every_chapter():
    linked = {target.split("#", 1)[0] for _, target in LINK.findall(text_of(INDEX))}
    missing = [path.name for path in CHAPTERS if path.name not in linked]
    assert not missing, f"derivations/README.md does not link {missing}"
    assert CHAPTERS, "derivations/ has no chapters"


# -- the math renders ----------------------------------------------------------------------------


@by_name
def test_display_and_inline_math_are_balanced(path):
    text = without_code(text_of(path))
    assert text.count("$$") % 2 == 0, f"{path.name}: an odd number of $$ (a display block open)"
    outside_display = text.split("$$")[::2]
    for part in outside_display:
        for line in part.splitlines():
            prose = re.sub(r"`[^`]*`", "", line)  # a $ inside inline code is not math
            assert prose.count("$") % 2 == 0, f"{path.name}: unbalanced inline $ in: {line}"


@by_name
def test_no_latex_that_github_renders_badly(path):
    text = without_code(text_of(path))
    bad = re.search(r"\\(newcommand|operatorname|def)\b", text)
    assert not bad, f"{path.name}: {bad and bad.group(0)} does not render well on GitHub"


# -- the worked examples print what the text says ------------------------------------------------


SNIPPETS = [
    pytest.param(code, expected, id=f"{path.name}-{i}")
    for path in FILES
    for i, (code, expected) in enumerate(SNIPPET.findall(text_of(path)))
]


def test_there_are_worked_examples_to_run():
    assert SNIPPETS, "no ```python block followed by its ```text output in derivations/"


@pytest.mark.parametrize("code, expected", SNIPPETS)
def test_worked_example_prints_its_stated_output(code, expected):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<derivation>", "exec"), {"__name__": "__derivation__"})
    got = [line.rstrip() for line in out.getvalue().strip().splitlines()]
    assert got == [line.rstrip() for line in expected.strip().splitlines()]
