"""examples/quickstart.ipynb runs from top to bottom in a fresh kernel (nbclient), as a newcomer would run it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs_without_error(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()  # raises CellExecutionError on the first cell that fails
    text = "\n".join(str(o.get("data", {}).get("text/plain", o.get("text", ""))) for c in nb.cells
                     if c.cell_type == "code" for o in c.outputs)
    assert "<filterlens Analysis: ResNet on your data (3 labels), 9 layer(s)>" in text
    assert "<AfccResult layer4.1" in text and "dilution of the masked weights" in text
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs)
    assert "<table>" in html and "layer4.1" in html  # the notebook shows the analysis as a table
