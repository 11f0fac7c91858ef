"""The run folder, the contract other commands and users rely on:

    RUN/config.yaml          the resolved config
    RUN/metrics.jsonl        one JSON object per epoch
    RUN/summary.json         final figures
    RUN/tensorboard/         scalars
    RUN/plots/loss.png, knn.png
    RUN/checkpoints/last.pt  written atomically every epoch (and epoch_NNNN.pt every N epochs)
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from sslab.checkpoint import atomic_write_bytes
from sslab.config import Config
from sslab.errors import CheckpointError, RunFolderError
from sslab.jsonl import append_jsonl, finite

log = logging.getLogger("sslab.run")

MIN_FREE_BYTES = 200 * 2**20


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # ---- paths ------------------------------------------------------------------------------------
    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")
    plots_dir = property(lambda self: self.path / "plots")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        """A run folder to resume; CheckpointError when `path` is not one."""
        run = cls(Path(path))
        if not run.config_path.is_file():
            raise CheckpointError(f"{path} is not a run folder (no config.yaml); pass the folder `sslab train` made")
        return run

    @classmethod
    def create(cls, cfg: Config, need_bytes: int = 0) -> "RunDir":
        """A new run folder under cfg.train.out, checked for writability and free space (`need_bytes`: what
        the run's checkpoints will take, beyond MIN_FREE_BYTES) first, and locked (`lock`). Made atomically:
        two runs started at once never share a folder."""
        out = Path(cfg.train.out).expanduser()
        if cfg.train.name is not None:
            check_run_name(cfg.train.name)
        name = cfg.train.name or "-".join([cfg.method.method or "run", cfg.data.dataset, cfg.model.backbone,
                                           time.strftime("%Y%m%d-%H%M%S")])
        _check_free(_existing_parent(out / name), need_bytes)  # before the folder is made: a refused run leaves nothing
        run = cls(_make_folder(out, name, suffix=cfg.train.name is None))
        run.check_writable(need_bytes)
        try:
            cfg.save(run.config_path)
        except OSError as e:
            raise RunFolderError(f"cannot write {run.config_path} ({e.strerror or e}); choose a writable --out "
                                 "with free space") from None
        return run

    def lock(self) -> "RunDir":
        """Hold RUN/.lock until this process ends or `run_locks()` exits: a second process training the same
        folder (two `--resume` at once) gets one line. An flock, so the OS drops it when the process dies:
        a `kill -9` leaves no stale lock."""
        key = str(self.path.resolve())
        if key in _HELD:
            return self
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunFolderError(f"cannot write to run folder {self.path} ({e.strerror or e}); check its "
                                 "permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(f"run folder {self.path} is in use by another sslab process (pid {holder}); wait "
                                 "for it to finish or stop it, then try again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[key] = fd
        return self

    def check_writable(self, need_bytes: int = 0) -> None:
        _probe(self.path, [self.plots_dir, self.checkpoints_dir], "run folder")
        _check_free(self.path, need_bytes)

    def remove_temp_files(self) -> None:
        """Temp files of writes cut short (`kill -9` during a checkpoint); the files they replace are intact.
        Only files: a folder with a temp file's name is not ours to delete (and would stop `unlink`)."""
        for folder in (self.path, self.checkpoints_dir):
            for tmp in folder.glob(".*.tmp"):
                if tmp.is_file() or tmp.is_symlink():
                    tmp.unlink(missing_ok=True)

    # ---- metrics ----------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """One line, fsynced: the checkpoint written next covers it, so a power cut cannot lose it."""
        append_jsonl(self.metrics_path, record, resume_hint=f"--resume {self.path}")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The valid records of metrics.jsonl; a line that is torn, not a JSON object or missing fields is
        skipped with a warning (never an exception: a hand-edited or cut file must not stop a resume)."""
        try:
            lines = self.metrics_path.read_bytes().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RunFolderError(f"cannot read {self.metrics_path} ({e.strerror or e})") from None
        records = []
        for number, line in enumerate(lines, 1):
            problem = metrics_record_problem(line)
            if problem is None:
                records.append(json.loads(line))
            elif line.strip():
                log.warning("%s line %d %s; skipped", self.metrics_path, number, problem)
        return records

    def epoch_metrics(self) -> list[dict[str, Any]]:
        """The records of trained epochs (epoch >= 1), without the epoch-0 baseline record."""
        return [r for r in self.read_metrics() if r["epoch"] >= 1]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep the records up to `last_epoch` (on resume: drop what the checkpoint does not cover, and the lines
        `read_metrics` skips, so they do not trouble later resumes); warn about epochs with no record."""
        kept = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        missing = sorted(set(range(1, last_epoch + 1)) - {r["epoch"] for r in kept})
        if missing:
            log.warning("%s has no record of epoch(s) %s (lost or unreadable); the curves skip them",
                        self.metrics_path, ", ".join(map(str, missing)))
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.summary_path, (json.dumps(finite(summary), indent=2) + "\n").encode())

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        path = self.path / name
        atomic_write_bytes(path, (json.dumps(finite(data), indent=2) + "\n").encode())
        return path


LOCK_FILE = ".lock"
_HELD: dict[str, int] = {}  # run folders this process holds the lock of -> the lock file's descriptor


@contextlib.contextmanager
def run_locks() -> Iterator[None]:
    """Release, on exit, the run-folder locks taken inside (a run in a notebook frees its folder when fit()
    returns, not when the kernel stops)."""
    before = set(_HELD)
    try:
        yield
    finally:
        for key in set(_HELD) - before:
            os.close(_HELD.pop(key))


def check_run_name(name: str) -> None:
    """--name is one folder inside --out: no path separators, no '..', not absolute."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name or "\0" in name:
        raise RunFolderError(f"--name {name!r} must be a plain folder name (no '/', '\\' or '..'); the run folder "
                             "is made inside --out, so pass --out for another place")


def _make_folder(out: Path, name: str, suffix: bool) -> Path:
    """mkdir without exist_ok (atomic): a name taken meanwhile gets the next suffix (-2, -3, ...) when `suffix`;
    else an existing folder is taken only if it is empty and not locked by another run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot write to --out folder {out} ({e.strerror or e}); choose a writable --out") from None
    for i in range(1, 10_000):
        path = out / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            RunDir(path).lock()
            return path
        except FileExistsError:
            if suffix:
                continue
        except OSError as e:
            raise RunFolderError(f"cannot write to --out folder {out} ({e.strerror or e}); choose a writable --out") from None
        if path.is_dir() and not any(p.name != LOCK_FILE for p in path.iterdir()):
            RunDir(path).lock()  # then look again: another run may have filled it meanwhile
            if not any(p.name != LOCK_FILE for p in path.iterdir()):
                return path
        raise RunFolderError(f"run folder {path} already exists and is not empty; "
                             f"choose another --name, or continue it with --resume {path}")
    raise RunFolderError(f"could not make a new run folder {out / name}-N; choose another --name")


# what every record of an epoch >= 1 has (the curves need them); the epoch-0 record (before training) holds
# only kNN figures
METRICS_FIELDS = ("step", "loss", "lr")


def metrics_record_problem(line: str) -> str | None:
    """Why a metrics.jsonl line is not a usable record, or None when it is one."""
    try:
        record = json.loads(line)
    except ValueError:
        return "is not valid JSON (a write cut short?)"
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not a record"
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return "has no valid epoch number"
    missing = [k for k in METRICS_FIELDS if k not in record] if epoch > 0 else []
    if missing:
        return f"lacks {', '.join(missing)}"
    return None


def disk_free(path: Path) -> int:
    """Free bytes on the disk of `path` (a function, so tests can simulate a full disk)."""
    return shutil.disk_usage(path).free


def _probe(path: Path, subdirs: list[Path], what: str, advice: str = "choose a writable --out") -> None:
    try:
        for d in (path, *subdirs):
            d.mkdir(parents=True, exist_ok=True)
        for d in (path, *subdirs):
            probe = d / f".write-test-{os.getpid()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
            probe.unlink()
    except OSError as e:
        raise RunFolderError(f"cannot write to {what} {path} ({e.strerror or e}); {advice}") from None


def check_output_folder(run_dir: str | Path, subdir: str | None = None) -> None:
    """`eval`, `embed`, `analyze`, `attention` and `report` write into the run folder (and `subdir` of it):
    checked before any work, so a read-only folder costs a second, not the whole evaluation."""
    path = Path(run_dir)
    _probe(path, [path / subdir] if subdir else [], "run folder",
           "make it writable, or copy the run folder somewhere writable and pass that")


def check_out_dir(out: str | Path, need_bytes: int = 0) -> None:
    """--out is (or can be made) a writable folder on a disk with MIN_FREE_BYTES (+ `need_bytes`) free: checked
    before the data is loaded, so a bad --out fails in a second, not after a long load."""
    path = Path(out).expanduser()
    _probe(path, [], "--out folder")
    _check_free(path, need_bytes)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_free(path: Path, need_bytes: int) -> None:
    free = disk_free(path)
    if free < MIN_FREE_BYTES + need_bytes:
        need = (f"; the run's checkpoints need about {need_bytes / 2**20:.0f} MiB (plus {MIN_FREE_BYTES // 2**20} MiB "
                "to spare)" if need_bytes else "")
        raise RunFolderError(f"only {free / 2**20:.0f} MiB free on the disk of {path}{need}; free some space or "
                             "choose another --out")
