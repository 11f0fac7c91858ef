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
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from sslab import safe_write
from sslab.config import Config
from sslab.errors import CheckpointError, RunFolderError
from sslab.jsonl import append_jsonl, finite
from sslab.safe_write import write_bytes
from sslab.settings import dump_yaml

log = logging.getLogger("sslab.run")

MIN_FREE_BYTES = 200 * 2**20


class RunDir:
    def __init__(self, path: Path):
        self.path = safe_write.add_boundary(path)  # nothing is written through a link inside it

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
        """A run folder to resume; CheckpointError when `path` is not one, RunFolderError when a link sits where
        training writes (refused before anything is read through it)."""
        run = cls(Path(path))
        if run.path.is_dir():
            run.refuse_links()
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
        write_bytes(run.config_path, dump_yaml(cfg.to_dict()), hint="or choose another --out")
        return run

    def lock(self, announce: bool = True) -> "RunDir":
        """Hold RUN/.lock until this process ends or `run_locks()` exits: a second process training the same
        folder (two `--resume` at once) gets one line. The OS drops the lock when the process dies (a `kill -9`
        leaves no stale lock); the file is never truncated nor opened through a link (`safe_write.lock_file`).
        `announce`: write this process's pid into the lock file now; a resume does it (`announce()`) only once
        it is accepted, so that a refused one leaves every byte of the folder as it was.
        Temp files of writes a dead holder cut short are removed once the lock is held."""
        key = str(self.path.resolve())
        if key in _HELD:
            return self
        try:
            fd = safe_write.open_lock_file(self.path / LOCK_FILE)
        except OSError as e:
            raise RunFolderError(f"cannot write to run folder {self.path} ({e.strerror or e}); check its "
                                 "permissions") from None
        if not safe_write.lock_file(fd):
            holder = safe_write.read_holder(fd)
            os.close(fd)
            raise RunFolderError(f"run folder {self.path} is in use by another sslab process (pid {holder}); wait "
                                 "for it to finish or stop it, then try again")
        if announce:
            safe_write.write_holder(fd)
        _HELD[key] = fd
        self.refuse_links()  # before anything is read or written: a link where train writes is refused at once
        self.remove_temp_files()
        return self

    def announce(self) -> None:
        """Write this process's pid into the lock it holds (what a second process's "in use by pid N" reads)."""
        safe_write.write_holder(_HELD[str(self.path.resolve())])

    def refuse_links(self) -> None:
        """RunFolderError for a link at any file train writes, or anywhere in plots/, checkpoints/, tensorboard/."""
        refuse_links_in(self.path, [name.rstrip(".") for name in TRAIN_FILES], ["plots", "checkpoints", "tensorboard"])

    def check_writable(self, need_bytes: int = 0) -> None:
        """Before training (and before the data loads): the folders train writes can be written, none of its
        files is a link (refused in one line, not after an epoch's work), and the disk has room."""
        for folder in (self.path, self.plots_dir, self.checkpoints_dir, self.tensorboard_dir):
            safe_write.check_writable(folder, what="run folder", advice="choose a writable --out")
        self.refuse_links()
        _check_free(self.path, need_bytes)

    def remove_temp_files(self) -> None:
        """Temp files of writes cut short (`kill -9` during a checkpoint, even the first); the files they replace
        are intact. Only train's own (another command may be writing its files meanwhile), and only files: a
        folder with a temp file's name is not ours to delete."""
        safe_write.remove_temp_files(self.path, TRAIN_FILES)
        safe_write.remove_temp_files(self.checkpoints_dir)

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
        write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_bytes(self.summary_path, (json.dumps(finite(summary), indent=2) + "\n").encode())

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        path = self.path / name
        write_bytes(path, (json.dumps(finite(data), indent=2) + "\n").encode())
        return path


LOCK_FILE = ".lock"
TRAIN_FILES = ("config.yaml.", "metrics.jsonl.", "summary.json.")  # what train writes at the top of a run folder
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
            fd = _HELD.pop(key)
            safe_write.unlock_file(fd)
            os.close(fd)


def check_run_name(name: str) -> None:
    """--name is one folder inside --out: no path separators, no '..', not absolute."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name or "\0" in name:
        raise RunFolderError(f"--name {name!r} must be a plain folder name (no '/', '\\' or '..'); the run folder "
                             "is made inside --out, so pass --out for another place")


def _make_folder(out: Path, name: str, suffix: bool) -> Path:
    """mkdir without exist_ok (atomic): a name taken meanwhile gets the next suffix (-2, -3, ...) when `suffix`;
    else an existing folder is taken only if it is empty, not locked by another run, and a real folder inside
    --out (not a link to a folder elsewhere)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot write to --out folder {out} ({e.strerror or e}); choose a writable --out") from None
    for i in range(1, 10_000):
        path = out / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            _check_inside(out, path)
            RunDir(path).lock()
            return path
        except FileExistsError:
            if suffix:
                continue
        except OSError as e:
            raise RunFolderError(f"cannot write to --out folder {out} ({e.strerror or e}); choose a writable --out") from None
        _check_inside(out, path)
        if path.is_dir() and not any(p.name != LOCK_FILE for p in path.iterdir()):
            RunDir(path).lock()  # then look again: another run may have filled it meanwhile
            if not any(p.name != LOCK_FILE for p in path.iterdir()):
                return path
        raise RunFolderError(f"run folder {path} already exists and is not empty; "
                             f"choose another --name, or continue it with --resume {path}")
    raise RunFolderError(f"could not make a new run folder {out / name}-N; choose another --name")


def _check_inside(out: Path, path: Path) -> None:
    """The run folder `path` is a real folder right inside --out: not a link, not somewhere else."""
    if path.is_symlink() or path.resolve().parent != out.resolve():
        raise RunFolderError(f"{path} is a symbolic link (to {path.resolve()}); a run folder is made inside --out, "
                             "never through a link; choose another --name, or remove the link")


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


# what each command writes at the top of a run folder, by the subfolder it writes into (None: `report`)
OUTPUT_FILES = {"eval": ("eval.json", "probe.pt", "kmeans-cache.npz"), "projector": ("embeddings.npz",),
                "analysis": ("analysis.json", "embeddings.npz", "kmeans-cache.npz"), "attention": (),
                "scan": ("kmeans-cache.npz",), "export": (), None: ("report.html",)}


def check_output_folder(run_dir: str | Path, subdir: str | None = None) -> None:
    """`eval`, `embed`, `analyze`, `attention`, `scan`, `export` and `report` write into the run folder (files
    `OUTPUT_FILES[subdir]` at its top, and anything in `subdir`): checked before any work, so a read-only folder
    or a link where the command writes costs a second, not the whole evaluation. Marks the folder as a run
    folder (`safe_write.add_boundary`): nothing written inside it follows a link."""
    path = safe_write.add_boundary(run_dir)
    advice = "make it writable, or copy the run folder somewhere writable and pass that"
    safe_write.check_writable(path, what="run folder", advice=advice)
    if subdir:
        safe_write.check_writable(path / subdir, what="run folder", advice=advice)
    refuse_links_in(path, OUTPUT_FILES.get(subdir, ()), [subdir] if subdir else [])


def refuse_links_in(run_dir: Path, files: tuple[str, ...] | list[str], folders: list[str]) -> None:
    """RunFolderError (one line) for a link at any of `files`, or anywhere in `folders`, of the run folder: the
    places a command will write, checked before it starts."""
    for name in files:
        safe_write.refuse_links(run_dir / name)
    for name in folders:
        safe_write.refuse_links(run_dir / name)
        if (run_dir / name).is_dir() and not (run_dir / name).is_symlink():
            link = next((p for p in (run_dir / name).rglob("*") if p.is_symlink()), None)
            if link is not None:
                safe_write.refuse_links(link)


def check_out_dir(out: str | Path, need_bytes: int = 0) -> None:
    """--out is (or can be made) a writable folder on a disk with MIN_FREE_BYTES (+ `need_bytes`) free: checked
    before the data is loaded, so a bad --out fails in a second, not after a long load."""
    path = Path(out).expanduser()
    base = _existing_parent(path)  # probed, not made: a command that fails later leaves no empty --out folder
    safe_write.check_writable(base, what="--out folder" if base == path else f"--out folder {path}: its folder",
                              advice="choose a writable --out")
    _check_free(base, need_bytes)


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
