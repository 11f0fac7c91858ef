import json
import os

import pytest
import torch

from sslab.checkpoint import load_checkpoint, save_checkpoint
from sslab.config import Config
from sslab.errors import CheckpointError, RunFolderError
from sslab.run import RunDir


def test_checkpoint_round_trip_and_atomic_replace(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"x": torch.arange(5)}, path)
    save_checkpoint({"x": torch.arange(6)}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(6))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left behind


def test_truncated_foreign_and_missing_checkpoints_are_one_line_errors(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"x": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(path)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an sslab checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "empty_run")
    for err in (CheckpointError,):
        try:
            load_checkpoint(tmp_path / "nope.pt")
        except err as e:
            assert "\n" not in str(e)


def test_failed_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"x": 1}, path)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(RunFolderError, match="free disk space"):
        save_checkpoint({"x": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_run_folder_layout_metrics_and_truncation(tmp_path):
    cfg = Config.from_values({"out": str(tmp_path), "name": "r1", "method": "simsiam"})
    run = RunDir.create(cfg)
    assert Config.load(run.config_path) == cfg
    for e in range(1, 5):
        run.append_metrics({"epoch": e, "step": 10 * e, "loss": float("nan") if e == 2 else 1.0 / e, "lr": 0.1})
    assert run.read_metrics()[1]["loss"] is None  # NaN written as null, the file stays valid JSON lines
    run.truncate_metrics(2)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 3, "lo')  # a line cut by a crash
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    with pytest.raises(RunFolderError, match="already exists"):
        RunDir.create(cfg)
    run.write_summary({"a": 1})
    assert json.loads(run.summary_path.read_text()) == {"a": 1}


def test_unwritable_run_folder_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = Config.from_values({"out": str(blocker), "name": "r", "method": "simsiam"})
    with pytest.raises(RunFolderError, match="cannot write to --out folder"):
        RunDir.create(cfg)


def test_a_command_that_fails_after_the_out_check_leaves_no_empty_folder(tmp_path, capsys):
    from sslab import cli

    out = tmp_path / "new" / "runs"
    code = cli.main(["train", "--method", "simclr", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"),
                     "--out", str(out)])
    assert code == 2 and "sslab: error:" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
