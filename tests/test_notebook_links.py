"""The notebooks' links lead somewhere: every relative link in a Markdown cell names a file of the
repository, and every ``#anchor`` names a heading of its target as GitHub slugs it.

The links run both ways: a notebook section links the derivation of what it runs, and every
derivation links a notebook that runs it; derivations 02, 03, 04, 08 and 10 (the engine and the
optimizer, which the article never writes down) must each be reachable from some notebook.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
DERIVATIONS = sorted(p for p in (ROOT / "derivations").glob("[0-9][0-9]-*.md"))

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def markdown_of(notebook: Path) -> str:
    """The notebook's Markdown cells, joined; fenced code removed (a link in code is not a link)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return FENCE.sub("", text)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, every character that is not a
    letter, digit, underscore, hyphen or space dropped, each space a hyphen. The Markdown marks
    around code, emphasis and links are not part of the rendered text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("*", "")
    text = text.lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in "_- ")
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, repeats numbered as GitHub numbers them (-1, -2).
    A heading with math ($...$) gets none: GitHub's anchor for it depends on how the math
    renders, so a link to one could not be checked here and may break; link a plain heading."""
    seen: set[str] = set()
    slugs: set[str] = set()
    for _, heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(heading)
        base, n = slug, 0
        while slug in seen:
            n += 1
            slug = f"{base}-{n}"
        seen.add(slug)
        if "$" not in heading:
            slugs.add(slug)
    return slugs


def links_of(notebook: Path) -> list[tuple[str, str]]:
    return [
        (text, target)
        for text, target in LINK.findall(markdown_of(notebook))
        if not re.match(r"[a-z]+:", target)  # a web address
    ]


by_notebook = pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)


def test_the_slugs_are_githubs():
    assert github_slug("7. LoRA (A5, A6, A10, A11)") == "7-lora-a5-a6-a10-a11"
    assert github_slug("Cross-entropy with `ignore_index`") == "cross-entropy-with-ignore_index"
    assert github_slug("1. LoRA as published, in the code's layout") == (
        "1-lora-as-published-in-the-codes-layout"
    )
    assert github_slug("A2: gradient descent, exactly") == "a2-gradient-descent-exactly"


@by_notebook
def test_every_relative_link_names_a_file_of_the_repository(notebook):
    broken = []
    for text, target in links_of(notebook):
        path = target.split("#", 1)[0]
        resolved = (notebook.parent / path).resolve() if path else notebook
        if not resolved.exists() or not resolved.is_relative_to(ROOT):
            broken.append(f"[{text}]({target})")
    assert not broken, f"{notebook.name}: links to nothing in the repository: {broken}"


@by_notebook
def test_every_anchor_names_a_heading_of_its_target(notebook):
    broken = []
    for text, target in links_of(notebook):
        if "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        file = (notebook.parent / path).resolve() if path else notebook
        if file.suffix == ".ipynb":
            headings = {
                github_slug(h) for _, h in HEADING.findall(markdown_of(file)) if "$" not in h
            }
        elif file.suffix == ".md" and file.exists():
            headings = anchors_of(file)
        else:
            broken.append(f"[{text}]({target}): an anchor into a file with no headings")
            continue
        if anchor not in headings:
            close = sorted(h for h in headings if h[:6] == anchor[:6])
            broken.append(f"[{text}]({target}): no such heading (alike: {close})")
    assert not broken, f"{notebook.name}:\n" + "\n".join(broken)


@by_notebook
def test_every_notebook_links_the_derivations_and_the_code(notebook):
    targets = [target for _, target in links_of(notebook)]
    assert any("../derivations/" in t for t in targets), f"{notebook.name} links no derivation"
    assert any("../minift/" in t for t in targets), f"{notebook.name} links no code file"


def test_every_derivation_is_reachable_from_a_notebook():
    linked = {
        Path(target.split("#", 1)[0]).name
        for notebook in NOTEBOOKS
        for _, target in links_of(notebook)
        if "../derivations/" in target
    }
    missing = [p.name for p in DERIVATIONS if p.name not in linked]
    assert not missing, f"no notebook links {missing}"
    assert {"02", "03", "04", "08", "10"} <= {p.name[:2] for p in DERIVATIONS}


@pytest.mark.parametrize("derivation", DERIVATIONS, ids=lambda p: p.name)
def test_every_derivation_links_a_notebook_that_runs_it(derivation):
    text = FENCE.sub("", derivation.read_text(encoding="utf-8"))
    notebooks = [t for _, t in LINK.findall(text) if t.startswith("../notebooks/")]
    assert notebooks, f"{derivation.name} links no notebook (../notebooks/NN-....ipynb)"
    for target in notebooks:
        assert (derivation.parent / target.split("#", 1)[0]).resolve().exists(), target
