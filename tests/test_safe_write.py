"""safe_write, the one module every writer goes through: atomic writes, no link followed inside a run folder,
unique write probes, appends that refuse links and hard links, the portable lock, errors that name the cause.
Each test plants what a careless or hostile user could leave in a run folder and checks that nothing outside
changed."""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslab import safe_write
from sslab.errors import RunFolderError
from sslab.safe_write import (
    append_bytes,
    check_writable,
    lock_file,
    open_lock_file,
    read_holder,
    read_inside,
    remove_temp_files,
    replacing_folder,
    write_bytes,
    write_error,
    write_holder,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def tree_hash(folder: Path) -> str:
    """Every file and link under `folder` with its bytes or target: what must not change."""
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes() if p.is_file() else b"<dir>")
    return h.hexdigest()


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside the run with a file and a folder a link could lead to."""
    w = tmp_path / "outside"
    (w / "folder").mkdir(parents=True)
    (w / "victim").write_text("precious")
    (w / "folder" / "kept").write_text("also precious")
    return w


@pytest.fixture
def run(tmp_path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    safe_write.add_boundary(path)
    return path


def test_a_link_at_the_file_or_at_a_folder_on_the_way_is_refused_and_nothing_outside_changes(run, outside):
    before = tree_hash(outside)
    (run / "loss.png").symlink_to(outside / "victim")
    with pytest.raises(RunFolderError, match=r"loss.png is a symbolic link; sslab does not write through links"):
        write_bytes(run / "loss.png", b"png")
    (run / "plots").symlink_to(outside / "folder", target_is_directory=True)
    with pytest.raises(RunFolderError, match=r"run/plots is a symbolic link; sslab"):
        write_bytes(run / "plots" / "knn.png", b"png")
    (run / "deep").mkdir()
    (run / "deep" / "er").symlink_to(outside / "folder", target_is_directory=True)
    with pytest.raises(RunFolderError, match="er is a symbolic link"):
        write_bytes(run / "deep" / "er" / "x" / "y.json", b"{}")
    assert tree_hash(outside) == before and not (outside / "folder" / "x").exists()
    for link in (run / "loss.png", run / "plots"):
        link.unlink()
    write_bytes(run / "plots" / "knn.png", b"png")
    assert (run / "plots" / "knn.png").read_bytes() == b"png" and not list(run.rglob("*.tmp"))


def test_outside_a_run_folder_the_folders_are_the_users_but_the_file_is_never_followed(tmp_path, outside):
    (tmp_path / "linked").symlink_to(outside / "folder", target_is_directory=True)
    write_bytes(tmp_path / "linked" / "preview.png", b"png")  # the user chose that folder
    assert (outside / "folder" / "preview.png").read_bytes() == b"png"
    (tmp_path / "out.png").symlink_to(outside / "victim")
    with pytest.raises(RunFolderError, match="is a symbolic link"):
        write_bytes(tmp_path / "out.png", b"png")
    assert (outside / "victim").read_text() == "precious"


def test_the_run_folder_itself_may_be_reached_through_a_link(tmp_path):
    real = tmp_path / "real-run"
    real.mkdir()
    (tmp_path / "run-link").symlink_to(real, target_is_directory=True)
    safe_write.add_boundary(tmp_path / "run-link")
    write_bytes(tmp_path / "run-link" / "eval" / "x.png", b"png")
    assert (real / "eval" / "x.png").read_bytes() == b"png"


def test_appends_refuse_links_and_hard_links(run, outside):
    (run / "metrics.jsonl").symlink_to(outside / "victim")
    with pytest.raises(RunFolderError, match="metrics.jsonl is a symbolic link"):
        append_bytes(run / "metrics.jsonl", b"{}\n")
    (run / "metrics.jsonl").unlink()
    os.link(outside / "victim", run / "metrics.jsonl")
    with pytest.raises(RunFolderError, match="has 2 names \\(a hard link\\)"):
        append_bytes(run / "metrics.jsonl", b"{}\n")
    assert (outside / "victim").read_text() == "precious"
    (run / "metrics.jsonl").unlink()
    append_bytes(run / "metrics.jsonl", b"a\n")
    append_bytes(run / "metrics.jsonl", b"b\n")
    assert (run / "metrics.jsonl").read_bytes() == b"a\nb\n"


def test_write_probes_have_new_names_and_leave_nothing(run, outside):
    for name in (f".write-test-{os.getpid()}", ".write-test"):  # the probe names of before: links there stay unused
        (run / name).symlink_to(outside / "victim")
    before = tree_hash(outside)
    check_writable(run / "eval")
    assert tree_hash(outside) == before
    assert sorted(p.name for p in run.rglob("*")) == [".write-test", f".write-test-{os.getpid()}", "eval"]
    (run / "scan").symlink_to(outside / "folder", target_is_directory=True)
    with pytest.raises(RunFolderError, match="scan is a symbolic link"):
        check_writable(run / "scan")
    blocker = run / "file"
    blocker.write_text("x")
    with pytest.raises(RunFolderError, match="run folder .*file is a file, not a folder; choose"):
        check_writable(blocker, what="run folder")


def test_the_lock_file_is_never_followed_nor_truncated(run, outside):
    (run / ".lock").symlink_to(outside / "victim")
    with pytest.raises(RunFolderError, match=r"\.lock is a symbolic link"):
        open_lock_file(run / ".lock")
    assert (outside / "victim").read_text() == "precious"
    (run / ".lock").unlink()
    (run / ".lock").write_text("12345678901234567890 and more")  # a longer, older content: never cut
    fd = open_lock_file(run / ".lock")
    try:
        assert lock_file(fd)
        write_holder(fd)
        assert read_holder(fd) == str(os.getpid())
        assert (run / ".lock").read_text().endswith(" and more")
    finally:
        os.close(fd)


LOCKER = """
import os, sys, time
if sys.argv[2] != "fcntl":  # as on Windows: no fcntl module
    sys.modules["fcntl"] = None
if sys.argv[2] == "msvcrt":  # Windows' msvcrt.locking (n bytes from the current position, no waiting), via lockf
    import types
    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_NBLCK, msvcrt.LK_UNLCK = 2, 0
    msvcrt.locking = lambda fd, mode, n: os.lockf(fd, os.F_TLOCK if mode == 2 else os.F_ULOCK, n)
    sys.modules["msvcrt"] = msvcrt
from sslab.safe_write import lock_file, open_lock_file
fd = open_lock_file(sys.argv[1])
print(lock_file(fd), "fcntl" in sys.modules and sys.modules["fcntl"] is not None, flush=True)
time.sleep(float(sys.argv[3]))
"""


def locker(lock: Path, how: str, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOCKER, str(lock), how, str(hold)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(SRC)})


@pytest.mark.parametrize("how", ["fcntl", "lockf", "msvcrt"])
def test_a_lock_held_by_another_process_is_refused_and_released_when_it_is_killed(run, how):
    holder = locker(run / ".lock", how, 60)
    try:
        assert holder.stdout.readline().split() == ["True", str(how == "fcntl")]
        second = locker(run / ".lock", how, 0)
        assert second.communicate(timeout=60)[0].split()[0] == "False"
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock, nothing stale is left
        holder.wait()
    third = locker(run / ".lock", how, 0)
    assert third.communicate(timeout=60)[0].split()[0] == "True"


def test_a_folder_replaced_by_a_library_is_all_or_nothing(run, outside):
    (run / "projector").mkdir()
    (run / "projector" / "old.tsv").write_text("old")
    with pytest.raises(RuntimeError), replacing_folder(run / "projector") as new:
        (new / "half.tsv").write_text("half")
        raise RuntimeError("the library failed")
    assert [p.name for p in (run / "projector").iterdir()] == ["old.tsv"] and not list(run.glob(".*tmp"))
    with replacing_folder(run / "projector") as new:
        (new / "new.tsv").write_text("new")
    assert [p.name for p in (run / "projector").iterdir()] == ["new.tsv"] and len(list(run.iterdir())) == 1
    (run / "other").symlink_to(outside / "folder", target_is_directory=True)
    with pytest.raises(RunFolderError, match="other is a symbolic link"), replacing_folder(run / "other"):
        pass
    assert tree_hash(outside) == tree_hash(outside) and (outside / "folder" / "kept").exists()


def test_reading_for_a_report_never_follows_a_link(run, outside):
    (run / "a.png").write_bytes(b"png")
    (run / "secret.png").symlink_to(outside / "victim")
    (run / "linked").symlink_to(outside / "folder", target_is_directory=True)
    assert read_inside(run / "a.png", run) == b"png"
    assert read_inside(run / "secret.png", run) is None
    assert read_inside(run / "linked" / "kept", run) is None
    assert read_inside(run / "linked", run) is None and read_inside(run / "missing.png", run) is None


def test_write_errors_give_the_advice_of_their_cause(tmp_path):
    path = tmp_path / "a" / "b.json"
    assert str(write_error(path, OSError(errno.ENOSPC, "No space left on device"), "and continue with --resume R")) == (
        f"could not write {path} (No space left on device); free disk space and continue with --resume R")
    assert "make the folder writable, or choose another place" in str(write_error(path, OSError(errno.EROFS, "Read-only")))
    (tmp_path / "a").write_text("a file")
    with pytest.raises(RunFolderError, match=r"could not make the folder .*a: a file has that name"):
        write_bytes(path, b"{}")
    with pytest.raises(RunFolderError, match=r"b.json: .*a is a file, not a folder"):
        raise write_error(path, OSError(errno.ENOTDIR, "Not a directory"))
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(RunFolderError, match="it is a folder; give a file name"):
        write_bytes(tmp_path / "dir.png", b"png")


def test_only_the_temp_files_of_the_named_writers_are_removed(tmp_path):
    for name in (".last.pt.0a1b.tmp", ".config.yaml.22.tmp", ".eval.json.33.tmp", "keep.tmp"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".metrics.jsonl.44.tmp").mkdir()  # a folder with a temp file's name: not ours
    remove_temp_files(tmp_path, ("config.yaml.", "metrics.jsonl.", "last.pt."))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".eval.json.33.tmp", ".metrics.jsonl.44.tmp", "keep.tmp"]
