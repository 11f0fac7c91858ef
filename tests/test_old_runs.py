"""A run folder made by sslab 0.1.0 (before the settings redesign: its config.yaml in the old layout, one shared
MethodConfig, sections optim/train) still resumes, evaluates and exports, to the figures that code gave
(tests/fixtures/run-sslab-0.1.0-simsiam-digits.json records them and the command that made the run)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from sslab import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORD = json.loads((FIXTURES / "run-sslab-0.1.0-simsiam-digits.json").read_text())


@pytest.fixture
def old_run(tmp_path) -> Path:
    with zipfile.ZipFile(FIXTURES / "run-sslab-0.1.0-simsiam-digits.zip") as z:
        z.extractall(tmp_path)
    run = next(p.parent for p in tmp_path.rglob("config.yaml"))
    assert "optim" in yaml.safe_load((run / "config.yaml").read_text())  # really the old layout
    return run


def test_an_old_run_resumes_to_what_the_old_code_gave(old_run, capsys):
    assert cli.main(["train", "--resume", str(old_run), "--epochs", "2"]) == 0, capsys.readouterr().err
    last = json.loads((old_run / "metrics.jsonl").read_text().splitlines()[-1])
    expected = RECORD["resumed_epochs_2"]
    assert (last["epoch"], last["step"]) == (expected["epoch"], expected["step"])
    assert last["lr"] == pytest.approx(expected["lr"], rel=1e-9)
    assert last["loss"] == pytest.approx(expected["loss"], rel=1e-4, abs=1e-6)
    assert last["knn_top1"] == pytest.approx(expected["knn_top1"], abs=1e-6)
    assert "method: simsiam" in (old_run / "config.yaml").read_text()  # rewritten in today's layout on acceptance


def test_an_old_run_evaluates_and_exports(old_run, capsys):
    assert cli.main(["eval", str(old_run), "--device", "cpu", "--protocol", "fast", "--c-grid", "1"]) == 0
    results = {r["name"]: r["accuracy"] for r in json.loads((old_run / "eval.json").read_text())["results"]}
    assert results["knn"] == pytest.approx(RECORD["eval_fast"]["knn"], abs=1e-9)
    assert results["linear-fast"] == pytest.approx(RECORD["eval_fast"]["linear-fast"], abs=1e-9)
    assert cli.main(["export", str(old_run)]) == 0, capsys.readouterr().err
    assert any(p.suffix == ".safetensors" for p in (old_run / "export").iterdir())
