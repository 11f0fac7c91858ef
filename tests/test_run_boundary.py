"""A run folder is a boundary (issue #22): no command writes through a symbolic link planted in it, and `report`
embeds nothing from outside it. The paths come from the code, not from a list kept by hand: every command runs
once on a tiny run while `safe_write` records each file and folder it is asked to write (and the test checks
that nothing else in the run folder changed, so every write went through it); then, for each recorded path and
each folder on the way to it, a fresh copy of the run gets a link there to a folder outside, the command runs
again, and must end in one `sslab: error:` line naming the link (exit 2, before any work: the data is never
loaded) or succeed, with every file outside unchanged."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from sslab import cli, safe_write
from test_bad_input import tiny_run

# folders a library fills itself (TensorBoard): checked before the command starts, not written file by file
LIBRARY_FOLDERS = ("tensorboard", "projector", "scan/tensorboard")
COMMANDS = {  # in the order they run on the recorded copy (report last: it reads what the others wrote)
    "train": ["train", "--resume", "{run}", "--epochs", "2"],
    "eval": ["eval", "{run}", "--device", "cpu", "--protocol", "fast"],
    "embed": ["embed", "{run}", "--device", "cpu"],
    "analyze": ["analyze", "{run}", "--device", "cpu", "--max-points", "20", "--map-size", "200", "--n-init", "1"],
    "attention": ["attention", "{run}", "--device", "cpu", "-n", "1"],
    "scan": ["scan", "{run}", "--device", "cpu", "--heads", "1", "--cluster-epochs", "1", "--selflabel-epochs", "1",
             "--batch-size", "32", "--selflabel-batch-size", "32"],
    "export": ["export", "{run}"],
    "report": ["report", "{run}"],
}


def tree_hash(folder: Path) -> dict[str, str]:
    """relative path -> sha1 of the bytes (or the link's target) of every file and link under `folder`."""
    found = {}
    for p in folder.rglob("*"):
        if p.is_symlink():
            found[str(p.relative_to(folder))] = "link:" + os.readlink(p)
        elif p.is_file():
            found[str(p.relative_to(folder))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return found


def run_command(name: str, run: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([a.format(run=run) for a in COMMANDS[name]])
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(the run folder after every command, {command: the paths inside the run it wrote, relative})."""
    root = tmp_path_factory.mktemp("boundary")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    written: dict[str, list[str]] = {}
    try:
        run = tiny_run(root)
        for name in COMMANDS:
            written[name] = record_one(name, run)
    finally:
        torch.set_num_threads(threads)
        safe_write.on_write = None
    return run, written


def record_one(name: str, run: Path) -> list[str]:
    """Run `name` on `run`, recording what it asks safe_write to write; check nothing else changed in the run."""
    seen: list[Path] = []
    safe_write.on_write = lambda path, boundary: seen.append(Path(os.path.abspath(path)))
    before = tree_hash(run)
    code = cli.main([a.format(run=run) for a in COMMANDS[name]])
    safe_write.on_write = None
    assert code == 0, name
    inside = sorted({str(p.relative_to(run)) for p in seen if run in p.parents})
    after = tree_hash(run)
    changed = [p for p in after if after[p] != before.get(p)]
    unrecorded = [p for p in changed if p not in inside and p != ".lock"
                  and not any(p.startswith(folder + "/") for folder in LIBRARY_FOLDERS)]
    assert not unrecorded, f"{name} wrote {unrecorded} without safe_write"
    return inside


def places(paths: list[str]) -> list[str]:
    """Every recorded path and every folder on the way to one (relative to the run folder)."""
    found = set(paths)
    for p in paths:
        parts = Path(p).parts
        found.update(str(Path(*parts[:i])) for i in range(1, len(parts)))
    return sorted(found)


@pytest.fixture
def outside(tmp_path) -> Path:
    w = tmp_path / "outside"
    (w / "folder").mkdir(parents=True)
    (w / "folder" / "kept.txt").write_text("precious")
    (w / "victim").write_text("precious")
    return w


def test_every_command_writes_through_safe_write(recorded):
    run, written = recorded
    assert {"config.yaml", "metrics.jsonl", "checkpoints/last.pt", "plots/loss.png"} <= set(written["train"])
    assert "eval.json" in written["eval"] and "report.html" in written["report"]
    assert all(written.values())


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_link_at_any_path_a_command_writes_is_refused_before_any_work(command, recorded, outside, tmp_path,
                                                                        capsys, monkeypatch):
    import sslab.pretrain
    import sslab.pretrained

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the link was refused")

    monkeypatch.setattr(sslab.pretrained.TrainedRun, "load_data", no_data)
    monkeypatch.setattr(sslab.pretrain, "load_from_config", no_data)
    source, written = recorded
    before = tree_hash(outside)
    for place in places(written[command]):
        run = tmp_path / "runs" / place.replace("/", "_")
        shutil.copytree(source, run, symlinks=True)
        target = run / place
        is_folder = target.is_dir()
        shutil.rmtree(target) if is_folder else target.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(outside / ("folder" if is_folder else "victim"), target_is_directory=is_folder)
        code, err = run_command(command, run, capsys)
        assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, (place, err)
        assert err.startswith(f"sslab: error: {target} is a symbolic link; sslab does not write through links"), (
            place, err)
        assert tree_hash(outside) == before, place


def test_report_embeds_no_file_from_outside_the_run(recorded, outside, tmp_path, capsys):
    source, written = recorded
    run = tmp_path / "run"
    shutil.copytree(source, run, symlinks=True)
    secret = b"\x89PNG\r\n\x1a\n secret bytes from elsewhere"
    (outside / "secret.png").write_bytes(secret)
    read_by_report = [p for name in COMMANDS if name != "report" for p in written[name]
                      if p.endswith((".png", ".json")) and not p.startswith(("checkpoints", "export"))]
    assert len(read_by_report) > 15
    for place in read_by_report + ["augment-preview.png"]:
        (run / place).unlink(missing_ok=True)
        (run / place).symlink_to(outside / "secret.png")
    (run / "scan" / "linked").symlink_to(outside / "folder", target_is_directory=True)
    shutil.copy(outside / "secret.png", outside / "folder" / "also-secret.png")
    code, err = run_command("report", run, capsys)
    assert code == 0, err
    page = (run / "report.html").read_text()
    import base64

    assert base64.b64encode(secret).decode()[:40] not in page and "<img" not in page
