"""minift's shape as a reader meets it: no import ring, no module past 600 lines, no chapter of
minift/peft/ past 350 (a method's file is its method; loralib's 311-line layers.py is the size
to beat)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "minift"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _imported(name: str, source: str, is_package: bool, modules) -> set[str]:
    """The ``modules`` that module ``name``'s import statements name, at any depth of the file.

    ``from minift.peft import lora`` names the module minift.peft.lora; ``from minift.peft
    import LoraConfig`` names the package minift.peft, whose __init__ provides the name. The
    parent packages Python runs on the way in are not counted: every module would then import
    minift/__init__.py, which imports most of minift, and every file would sit on a ring.
    """
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from this package, or level - 1 packages up
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found & set(modules) - {name}


def _find_ring(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the path that closes it (a, b, …, a), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once left
    path: list[str] = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (ring := visit(nxt)):
                return ring
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (ring := visit(start)):
            return ring
    return None


def test_the_ring_finder_names_a_ring_and_passes_a_tree():
    assert _find_ring({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_ring({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_function_level_and_submodule_imports_name_the_modules_they_import():
    source = (
        "import minift.nn\n"
        "from minift.peft import LoraConfig\n"
        "def f():\n"
        "    from . import lora\n"
        "    from .base import PeftConfig\n"
        "    from .. import files\n"
    )
    modules = ["minift", "minift.nn", "minift.files", "minift.peft", "minift.peft.base"]
    modules += ["minift.peft.lora", "minift.peft.dora"]
    found = _imported("minift.peft.dora", source, False, modules)
    expected = {"minift.nn", "minift.peft", "minift.peft.lora", "minift.peft.base", "minift.files"}
    assert found == expected
    assert _imported("minift.peft", "from . import lora", True, modules) == {"minift.peft.lora"}


def test_no_two_modules_of_minift_import_each_other_even_through_others():
    graph = {
        name: _imported(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", MODULES)
        for name, path in MODULES.items()
    }
    # the graph is read, not empty: base.py's own imports are in it
    assert {"minift.peft.targets", "minift.peft.peft_files"} <= graph["minift.peft.base"]
    ring = _find_ring(graph)
    assert ring is None, "an import ring: " + " -> ".join(ring)


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_of_minift_passes_600_lines():
    long = {str(p.relative_to(ROOT)): _lines(p) for p in MODULES.values() if _lines(p) > 600}
    assert not long, f"modules over 600 lines: {long}"


def test_no_file_of_minift_peft_passes_350_lines():
    long = {p.name: _lines(p) for p in (ROOT / "peft").glob("*.py") if _lines(p) > 350}
    assert not long, f"minift/peft/ files over 350 lines: {long}"
