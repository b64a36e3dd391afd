"""The notebooks run top to bottom in a fresh kernel, and are kept with the outputs of such a run.

Each notebook is executed with nbclient in the kernel named "python3" (the one ipykernel installs in
this environment: jupyter_client starts it with the interpreter running the tests). It runs in a
temporary directory, so the figures it writes land there and the committed PNGs under
notebooks/figures/ stay as they are. A cell that raises fails the test with the cell's traceback.

A notebook that needs an optional package names its import in the notebook's metadata,
``{"minift": {"requires": ["module_name"]}}``; without that package its run is skipped, not failed.

The first notebook run in a fresh environment pretrains the base model (about a minute on two
cores; cached under $MINIFT_CACHE or ~/.cache/minift afterwards); each notebook then takes a
minute or two. To refresh the committed outputs after changing a notebook:

    jupyter execute --inplace notebooks/NN-name.ipynb
"""

from pathlib import Path

import pytest
from helpers import EXTRA_OF, require

# nbmake brings these with the dev extra; the reference venv in CI runs without them
nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb"))
CELL_TIMEOUT = 900  # seconds; generous, for the pretraining a fresh environment does once


def test_the_notebooks_read_alongside_the_article_are_there():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert {"01", "02", "03", "04"} <= set(numbers), numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_kept_with_the_outputs_of_a_clean_top_to_bottom_run(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts}; run it top to bottom in a fresh kernel and save "
        "(jupyter execute --inplace)"
    )
    errors = [out.ename for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, f"{path.name}: saved with errors {errors}"
    assert any(out.output_type == "display_data" for cell in code for out in cell.outputs), (
        f"{path.name}: no figure in the saved outputs"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom_in_a_fresh_kernel(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    for module in nb.metadata.get("minift", {}).get("requires", []):
        require(module, EXTRA_OF[module])
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert figures, f"{path.name}: wrote no figure"
    if path.name.startswith("02-"):
        assert "parameter_counts.png" in figures  # the figure the README links
