"""Every notebook in notebooks/ executes top to bottom (small budgets), so none of them rots."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebooks need the dev extra (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="notebooks need the dev extra (nbclient)")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {
        "quickstart.ipynb",
        "diagnostics.ipynb",
        "vae_mnist.ipynb",
        "density_estimation.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("PYROFLOWS_NOTEBOOK_CI", "1")
    monkeypatch.setenv("PYROFLOWS_NOTEBOOK_STEPS", "800")
    monkeypatch.setenv("PYROFLOWS_NOTEBOOK_TRAIN_IMAGES", "4000")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
