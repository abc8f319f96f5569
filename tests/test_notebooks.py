"""The notebooks run top to bottom with their tiny parameters on a CPU, and are stored without
outputs."""
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "world_model_tour.ipynb",
                                         "model_based_classics.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_tiny_parameters(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    (index,) = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    # Like papermill: a cell right after the parameters cell overrides them.
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(
        f"TINY = True\nLOGDIR = {str(tmp_path / 'run')!r}"))
    # The kernel is this interpreter, which has the package and its dependencies.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= (1 if path.stem == "quickstart" else 3)
    if path.stem == "quickstart":
        assert any("video" in str(o.get("data", {}).get("text/html", "")) for o in outputs)
        assert (tmp_path / "run" / "imagination.mp4").stat().st_size > 0
