"""The pretraining corpus: English text that ships with Python itself.

Two sources, both already on every machine that runs minift, so nothing is downloaded or copied
into the repository:

1. ``pydoc_data.topics.topics`` — the help pages that ``help("with")`` prints, one per topic;
2. the docstrings of the standard library — module, class and function docstrings, read by
   PARSING each source file with ``ast``. The modules are never imported: importing
   ``antigravity`` opens a browser, ``this`` prints a poem, and some modules start threads.

The stdlib folder is ``sysconfig.get_paths()["stdlib"]``. Folders of tests and tools
(``test``, ``tests``, ``idlelib``, ``lib2to3``, ``turtledemo``) and installed packages
(``site-packages``) are skipped, and so is any file that fails to decode or parse. Files are read
in sorted path order and the nodes of a file in source order, so the corpus is the same on every
run of the same Python (its size varies between Python versions; a test checks > 200,000
characters, never an exact size).

Normalisation. A character-level model's vocabulary is the set of characters it can read, so the
text is mapped onto a fixed ``ALPHABET``: printable ASCII, the newline, and the accented letters
of French (the translation task needs them). ``normalize_text`` replaces a tab by four spaces,
folds typographic quotes and dashes to ASCII, strips accents that the alphabet lacks (``ñ`` → ``n``
through the Unicode NFKD decomposition), and DROPS every other character. The tokenizer is built
from the same fixed alphabet, so token ids do not change with the Python version.

Also here: ``docstring_module_task``, a classification task made of the same docstrings
(docstring → the top-level module it documents), so the tests never depend on an optional package.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import string
import sys
import sysconfig
import unicodedata
from collections import Counter
from pathlib import Path

from minift.errors import check_int
from minift.files import atomic_write_json, cache_dir

__all__ = [
    "ALPHABET",
    "normalize_text",
    "load_corpus",
    "corpus_stats",
    "stdlib_docstrings",
    "docstring_module_task",
]

FRENCH_LETTERS = "àâçéèêëîïôùûüÿÀÂÇÉÈÊËÎÏÔÙÛÜŸ"
# Printable ASCII without the rarer whitespace (\t \r \x0b \x0c), plus the newline and French.
ALPHABET = "\n" + "".join(ch for ch in string.printable if ch not in "\t\n\r\x0b\x0c")
ALPHABET += FRENCH_LETTERS

# Typographic characters that have a plain ASCII spelling.
_FOLD = {
    "\t": "    ",
    "\u2018": "'",  # ‘
    "\u2019": "'",  # ’
    "\u201c": '"',  # “
    "\u201d": '"',  # ”
    "\u2013": "-",  # – en dash
    "\u2014": "--",  # — em dash
    "\u2026": "...",  # …
    "\u00a0": " ",  # no-break space
    "æ": "ae",
    "Æ": "Ae",
    "œ": "oe",
    "Œ": "Oe",
}
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
_ALPHABET_SET = frozenset(ALPHABET)


def normalize_text(text: str) -> str:
    """Map ``text`` onto ALPHABET: keep what is in it, fold, strip accents, drop the rest.

    ``"naïve café\\t—"`` stays ``"naïve café    --"``; ``"señor"`` becomes ``"senor"``; an emoji
    or a Chinese character disappears.
    """
    out = []
    for ch in text:
        if ch in _ALPHABET_SET:
            out.append(ch)
        elif ch in _FOLD:
            out.append(_FOLD[ch])
        else:  # "ñ" decomposes to "n" + a combining tilde; keep the parts the alphabet has
            out.extend(c for c in unicodedata.normalize("NFKD", ch) if c in _ALPHABET_SET)
    return "".join(out)


# -- reading the standard library --------------------------------------------------------------


def _stdlib_files(root: Path) -> list[Path]:
    """Every .py file under the stdlib root, skipped folders pruned, in sorted path order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and d != "__pycache__"]
        files.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(files)


# What can hold a ``def`` or a ``class``: statements, and the except and case clauses whose bodies
# are statements. An expression never does (a lambda has no docstring), and expressions are most
# of a file's nodes, so the walk below does not enter them.
_HOLDS_STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)


def _docstrings_in_source_order(tree: ast.Module) -> list[str]:
    """The module's docstring, then each class's and function's, in the order they appear."""
    found = []

    def visit(node):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)  # clean: the common indentation removed
            if doc:
                found.append(doc)
        for name in node._fields:  # in field order: body, handlers, orelse, finalbody, …
            value = getattr(node, name, None)
            if isinstance(value, list):
                for child in value:
                    if isinstance(child, _HOLDS_STATEMENTS):
                        visit(child)

    visit(tree)
    return found


@functools.lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[tuple[str, str], ...]:
    """(top-level module, docstring) for every docstring of the stdlib, in a fixed order.

    ``email/mime/text.py`` belongs to ``email``; ``json/__init__.py`` to ``json``; ``abc.py`` to
    ``abc``. Texts are normalised (``normalize_text``) but not deduplicated.

    Parsing ~600 files takes seconds, and every process that builds the corpus or a task of it
    would pay them (``minift compare`` starts one per run), so the result is kept in the cache
    (``minift.files.cache_dir``) under a key of everything it depends on (``_docstrings_key``)
    and with a digest of its content: a file of another Python, another stdlib, another version
    of this module, or a damaged or edited file is never read back; the walk runs again instead.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _stdlib_files(root)
    path = cache_dir() / "stdlib-docstrings" / f"{_docstrings_key(root, files)}.json"
    cached = _read_cached_docstrings(path)
    if cached is not None:
        return cached
    found = _walk_docstrings(root, files)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"sha256": _docstrings_digest(found), "docstrings": found})
    except OSError:
        pass  # a cache that cannot be written: the walk runs again in the next process
    return found


def _walk_docstrings(root: Path, files: list[Path]) -> tuple[tuple[str, str], ...]:
    """``stdlib_docstrings`` without the cache: parse each file, walk its tree."""
    found = []
    for path in files:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, OSError):
            continue  # a template or a file of another Python version: not our corpus
        module = path.relative_to(root).parts[0].removesuffix(".py")
        for doc in _docstrings_in_source_order(tree):
            text = normalize_text(doc).strip()
            if text:
                found.append((module, text))
    return tuple(found)


def _docstrings_key(root: Path, files: list[Path]) -> str:
    """A hash of what the docstrings depend on: this module's source (the walk, the alphabet),
    the Python, the stdlib's folder, and each file's path, size and modification time."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"{sys.version}\0{root}\0".encode())
    for path in files:
        try:
            st = path.stat()
        except OSError:
            continue  # as the walk skips it
        h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def _docstrings_digest(docstrings) -> str:
    return hashlib.sha256(json.dumps(docstrings, ensure_ascii=False).encode()).hexdigest()


def _read_cached_docstrings(path: Path) -> tuple[tuple[str, str], ...] | None:
    """The cached docstrings, or None when the file is missing, damaged or not what it says."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        pairs = obj["docstrings"]
        if not (isinstance(pairs, list) and isinstance(obj.get("sha256"), str)):
            return None
        found = tuple((module, text) for module, text in pairs)
        if not all(isinstance(m, str) and isinstance(t, str) for m, t in found):
            return None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return found if _docstrings_digest(found) == obj["sha256"] else None


def _help_topics() -> list[str]:
    from pydoc_data.topics import topics  # a plain dict of strings: safe to import

    return [normalize_text(topics[key]).strip() for key in sorted(topics)]


@functools.lru_cache(maxsize=1)
def _documents() -> tuple[str, ...]:
    """The corpus as documents: help topics first, then the docstrings, each kept once."""
    seen = set()
    documents = []
    for text in [*_help_topics(), *(doc for _, doc in stdlib_docstrings())]:
        if text and text not in seen:  # "Return self." is not worth learning 40 times
            seen.add(text)
            documents.append(text)
    return tuple(documents)


def load_corpus(max_chars: int | None = None) -> str:
    """The whole corpus as one string, documents separated by a blank line.

    ``max_chars`` keeps only the first ``max_chars`` characters (for a quick run). The result is
    built once per process (``functools.lru_cache``) and is deterministic for a given Python.
    """
    check_int("max_chars", max_chars, optional=True)
    text = _joined_corpus()
    return text if max_chars is None else text[:max_chars]


@functools.lru_cache(maxsize=1)
def _joined_corpus() -> str:
    return "\n\n".join(_documents())


def corpus_stats() -> dict:
    """What the corpus is made of on this Python: sizes, sources, characters."""
    text = _joined_corpus()
    n_topics = len(_help_topics())
    return {
        "python": sys.version.split()[0],
        "n_chars": len(text),
        "n_documents": len(_documents()),
        "n_help_topics": n_topics,
        "n_docstrings": len(stdlib_docstrings()),
        "n_distinct_chars": len(set(text)),
        "most_common_chars": Counter(text).most_common(10),
    }


# -- a classification task made of the same text ----------------------------------------------


def docstring_module_task(k: int = 6, min_chars: int = 20) -> list[tuple[str, str]]:
    """(docstring summary, module) pairs for the k public modules with the most docstrings.

    The summary is the docstring's first paragraph with its whitespace collapsed. Modules whose
    name starts with "_" are skipped (``_pydecimal`` repeats ``decimal``). A summary shorter than
    ``min_chars`` ("Ditto.") or written in more than one module cannot be classified and is
    dropped. Modules are ranked by their count of usable summaries, ties broken by name; pairs
    come grouped by module in that order, each module's in source order.
    """
    if k < 2:
        raise ValueError(f"k: a classification task needs at least 2 modules, got {k}")
    by_module: dict[str, list[str]] = {}
    modules_of: dict[str, set[str]] = {}  # every module, private ones included, that wrote it
    for module, doc in stdlib_docstrings():
        summary = " ".join(doc.split("\n\n")[0].split())
        modules_of.setdefault(summary, set()).add(module)
        if len(summary) >= min_chars and not module.startswith("_"):
            by_module.setdefault(module, []).append(summary)
    for module, summaries in by_module.items():  # drop ambiguous and repeated summaries
        unique = [s for s in dict.fromkeys(summaries) if len(modules_of[s]) == 1]
        by_module[module] = unique
    ranked = sorted(by_module, key=lambda m: (-len(by_module[m]), m))
    if len(ranked) < k:
        raise ValueError(f"k: only {len(ranked)} modules have docstrings, got k={k}")
    return [(summary, module) for module in ranked[:k] for summary in by_module[module]]
