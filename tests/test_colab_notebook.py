"""examples/colab.ipynb runs top to bottom in a real kernel, on the CPU with its small-data switch (the images
shipped inside sslab instead of a CIFAR-10 download), as CI runs examples/quickstart.ipynb; the README links it."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "examples" / "colab.ipynb"


def test_colab_notebook_installs_first_and_is_linked_from_the_readme():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert "%pip install" in code[0] and "SSLAB_SOURCE" in code[0]  # what a Colab user runs first
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    assert 'dataset="cifar10"' in "".join(code) and 'method="simclr"' in "".join(code)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"\]\((?:\S*/)?examples/colab\.ipynb\)", readme)  # a markdown link to it


def test_colab_notebook_runs_on_the_cpu_with_small_data(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("SSLAB_SOURCE", "installed")  # sslab is installed from this checkout
    monkeypatch.setenv("SSLAB_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU, even on a machine with a GPU
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "precision: fp32 (auto: fp32 on the CPU" in text  # the device cell says what it chose and why
    assert "kNN top-1: untrained" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the kNN curve, the t-SNE map, the attention figure(s)
    run = tmp_path / "runs" / "colab"
    assert (run / "eval.json").is_file() and (run / "analysis" / "tsne.png").is_file()
    assert (run / "export" / "simple-cnn-bn-sslab.safetensors").is_file()
    assert (tmp_path / "sslab-run.zip").is_file()
