"""The pretraining corpus: big enough, deterministic, read without importing, inside ALPHABET."""

import hashlib
import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minift.data import corpus
from minift.data.corpus import (
    ALPHABET,
    corpus_stats,
    docstring_module_task,
    load_corpus,
    normalize_text,
    stdlib_docstrings,
)


def test_corpus_is_larger_than_200k_characters():
    # The exact size varies with the Python version (3.11.7: about 2.1 million characters).
    assert len(load_corpus()) > 200_000


def test_a_fresh_process_builds_the_same_corpus_without_importing_the_stdlib():
    # From scratch in a new interpreter: the same text, and none of the parsed modules imported
    # (`antigravity` would open a browser, `this` would print a poem).
    code = (
        "import hashlib, sys, minift.data as d; "
        "print(hashlib.sha256(d.load_corpus().encode()).hexdigest()); "
        "print(sorted({'antigravity', 'this', 'tkinter', 'asyncio'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    digest, imported = out.stdout.split()[0], out.stdout.split(maxsplit=1)[1].strip()
    assert digest == hashlib.sha256(load_corpus().encode()).hexdigest()
    assert imported == "[]"


def test_corpus_holds_the_help_topics_and_the_docstrings():
    from pydoc_data.topics import topics

    text = load_corpus()
    assert normalize_text(topics["assert"]).strip() in text
    assert "Shallow copy operation on arbitrary Python objects." in text  # copy.py's docstring


def test_skipped_folders_are_never_read():
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    files = corpus._stdlib_files(root)
    assert files == sorted(files)
    skipped = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
    assert not any(skipped & set(p.relative_to(root).parts[:-1]) for p in files)


def test_corpus_uses_only_the_alphabet():
    assert set(load_corpus()) <= set(ALPHABET)


def test_max_chars_keeps_the_beginning():
    assert load_corpus(max_chars=1000) == load_corpus()[:1000]


@pytest.mark.parametrize("bad", [0, -5, True])
def test_bad_max_chars_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="max_chars"):
        load_corpus(max_chars=bad)


def test_corpus_stats_describe_the_corpus():
    stats = corpus_stats()
    assert stats["n_chars"] == len(load_corpus())
    assert stats["n_help_topics"] > 50 and stats["n_docstrings"] > 1000
    assert stats["n_documents"] <= stats["n_help_topics"] + stats["n_docstrings"]
    assert stats["n_distinct_chars"] <= len(ALPHABET)


# -- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("a\tb", "a    b"),  # a tab is four spaces
        ("it\u2019s \u201cok\u201d", 'it\'s "ok"'),  # typographic quotes fold to ASCII
        ("señor", "senor"),  # an accent the alphabet lacks is stripped
        ("zéro, naïve, Ça", "zéro, naïve, Ça"),  # French accents are kept
        ("x\r\ny", "x\ny"),
        ("中文 ok 😀", " ok "),  # the rest is dropped
        ("cœur", "coeur"),
    ],
)
def test_normalize_text_keeps_folds_or_drops(raw, expected):
    assert normalize_text(raw) == expected


@given(st.text())
def test_normalize_text_lands_in_the_alphabet_and_is_idempotent(raw):
    once = normalize_text(raw)
    assert set(once) <= set(ALPHABET)
    assert normalize_text(once) == once


def _every_docstring_by_walking_every_node(tree):
    """The plain walk the corpus's pruned one must equal: every node, expressions included."""
    import ast

    found = []

    def visit(node):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(doc)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


NESTED = '''
"""module"""
@decorator(lambda: None)
class A:
    """A"""
    def f(self):
        """A.f"""
        class Inner:
            """Inner"""
try:
    def in_try(): "in try"
except ImportError:
    def in_except(): "in except"
else:
    def in_else(): "in else"
finally:
    def in_finally(): "in finally"
if x:
    async def in_if(): "in if"
elif y:
    def in_elif(): "in elif"
for i in range(3):
    def in_for(): "in for"
else:
    def in_for_else(): "in for-else"
while False:
    def in_while(): "in while"
with open(p) as f:
    def in_with(): "in with"
match command:
    case [x]:
        def in_case(): "in case"
def outer():
    """outer"""
    def inner():
        """inner"""
'''


def test_the_pruned_walk_finds_every_docstring_in_source_order():
    """The corpus's walk skips expressions (most of a file's nodes); it must find what a walk
    of every node finds, in the same order, wherever a def can hide."""
    import ast
    from pathlib import Path
    from sysconfig import get_paths

    tree = ast.parse(NESTED)
    expected = _every_docstring_by_walking_every_node(tree)
    assert len(expected) == 17
    assert corpus._docstrings_in_source_order(tree) == expected
    files = corpus._stdlib_files(Path(get_paths()["stdlib"]))
    for path in files[::15]:  # a sample of the stdlib, a few seconds
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        assert corpus._docstrings_in_source_order(tree) == (
            _every_docstring_by_walking_every_node(tree)
        ), path


# -- the stdlib classification task ------------------------------------------------------------


def test_docstring_module_task_has_k_public_modules_each_text_under_one_label():
    pairs = docstring_module_task(k=6)
    modules = list(dict.fromkeys(m for _, m in pairs))
    assert len(modules) == 6
    assert not any(m.startswith("_") for m in modules)
    texts = [t for t, _ in pairs]
    assert len(set(texts)) == len(texts)  # no summary repeated, so none under two labels
    assert pairs == docstring_module_task(k=6)


def test_docstring_module_task_label_is_the_module_that_wrote_the_docstring():
    written_in = {}
    for module, doc in stdlib_docstrings():
        written_in.setdefault(" ".join(doc.split("\n\n")[0].split()), set()).add(module)
    for summary, module in docstring_module_task(k=6):
        assert written_in[summary] == {module}


def test_docstring_module_task_needs_two_modules():
    with pytest.raises(ValueError, match="k"):
        docstring_module_task(k=1)


# -- the docstrings' cache -------------------------------------------------------------------


def _uncached_walk():
    root = corpus.Path(corpus.sysconfig.get_paths()["stdlib"])
    return corpus._walk_docstrings(root, corpus._stdlib_files(root))


def _cache_files(cache):
    return sorted((cache / "stdlib-docstrings").glob("*.json"))


def test_cached_docstrings_are_read_back_equal_to_the_walk_without_walking(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIFT_CACHE", str(tmp_path))
    walked = corpus.stdlib_docstrings.__wrapped__()  # past the per-process lru_cache
    assert walked == _uncached_walk() and len(_cache_files(tmp_path)) == 1

    def no_walk(*args):
        raise AssertionError("walked the stdlib although the cache holds its docstrings")

    monkeypatch.setattr(corpus, "_walk_docstrings", no_walk)
    assert corpus.stdlib_docstrings.__wrapped__() == walked


@pytest.mark.parametrize("damage", ["edited", "truncated", "not a list"])
def test_a_damaged_or_edited_cache_is_never_read_back(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("MINIFT_CACHE", str(tmp_path))
    walked = corpus.stdlib_docstrings.__wrapped__()
    (path,) = _cache_files(tmp_path)
    obj = json.loads(path.read_text())
    if damage == "edited":  # valid JSON, plausible content, another corpus
        obj["docstrings"][0][1] = "An edited docstring."
        path.write_text(json.dumps(obj))
    elif damage == "truncated":
        path.write_text(path.read_text()[:1000])
    else:
        obj["docstrings"] = {"email": "x"}
        path.write_text(json.dumps(obj))
    assert corpus.stdlib_docstrings.__wrapped__() == walked  # walked again, and written again
    assert json.loads(path.read_text())["docstrings"] == [list(p) for p in walked]


def test_the_cache_key_changes_with_any_file_of_the_stdlib_and_with_the_python(
    tmp_path, monkeypatch
):
    root = tmp_path / "lib"
    root.mkdir()
    (root / "a.py").write_text('"""A module."""\n')
    (root / "b.py").write_text('"""B module."""\n')
    files = corpus._stdlib_files(root)
    key = corpus._docstrings_key(root, files)
    assert corpus._docstrings_key(root, files) == key
    (root / "b.py").write_text('"""Another B module."""\n')
    edited = corpus._docstrings_key(root, files)
    (root / "c.py").write_text('"""C."""\n')
    added = corpus._docstrings_key(root, corpus._stdlib_files(root))
    monkeypatch.setattr(corpus.sys, "version", "3.99.0 (another Python)")
    other_python = corpus._docstrings_key(root, corpus._stdlib_files(root))
    assert len({key, edited, added, other_python}) == 4


def test_a_cache_that_cannot_be_written_costs_only_the_walk(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("MINIFT_CACHE", str(not_a_folder))
    assert corpus.stdlib_docstrings.__wrapped__() == _uncached_walk()
