"""docs/python-api.md and examples/quickstart.ipynb run as they are: every ```python block of the page, in
order, in one namespace; every notebook cell, in a real kernel (nbclient + ipykernel)."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(markdown: str) -> list[str]:
    return PYTHON_BLOCK.findall(markdown)


def test_python_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```text\nnot run\n```\n```python\nb = a\n```\n")
    assert blocks == ["a = 1\n", "b = a\n"]


def test_every_example_of_the_python_api_page_runs(tmp_path, monkeypatch, capsys):
    """A block whose first line is `# needs: MODULE` is skipped where MODULE does not import."""
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks((ROOT / "docs" / "python-api.md").read_text())
    assert len(blocks) >= 8
    namespace: dict = {}
    for i, block in enumerate(blocks):
        needs = re.match(r"# needs: (\S+)", block)
        if needs:
            try:
                importlib.import_module(needs.group(1))
            except Exception:
                continue
        exec(compile(block, f"docs/python-api.md block {i + 1}", "exec"), namespace)
    assert namespace["summary"]["knn_top1"] is not None
    assert (tmp_path / "runs" / "api-example" / "eval.json").is_file()
    assert (tmp_path / "runs" / "api-example" / "export" / "simple-cnn.onnx").is_file()
    out = capsys.readouterr().out
    assert "linear-fast" in out and "load_state_dict" in out


@pytest.mark.slow  # minutes of the default suite on 2 cores (CI's 10-minute budget); run with -m slow
def test_quickstart_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the PCA figure was drawn
    text = "".join(o.get("text", "") for o in outputs)
    assert "the exported backbone gives the same features" in text
    assert (tmp_path / "runs" / "quickstart" / "export" / "simple-cnn-sslab.safetensors").is_file()


def test_readme_opens_with_demo_and_test_commands_and_ci_runs_the_test_command_as_written():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^    (python -m pip install .*)$", readme, re.MULTILINE)
    demo, tests = commands[:2]
    assert "sslab demo" in demo and "pytest" in tests
    assert "torch==" not in demo + tests  # a user's machine takes the torch build it needs, not our CI's pin
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines
