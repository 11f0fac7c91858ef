"""The run folder, the contract other commands and users rely on:

    RUN/config.yaml          the resolved config
    RUN/metrics.jsonl        one JSON object per epoch
    RUN/summary.json         final figures
    RUN/tensorboard/         scalars
    RUN/plots/loss.png, knn.png
    RUN/checkpoints/last.pt  written atomically every epoch (and epoch_NNNN.pt every N epochs)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from sslab.checkpoint import atomic_write_bytes
from sslab.config import Config
from sslab.errors import RunFolderError

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
    def create(cls, cfg: Config, need_bytes: int = 0) -> "RunDir":
        """A new run folder under cfg.train.out, checked for writability and free space (`need_bytes`: what
        the run's checkpoints will take, beyond MIN_FREE_BYTES) first."""
        out = Path(cfg.train.out).expanduser()
        name = cfg.train.name or "-".join([cfg.method.method or "run", cfg.data.dataset, cfg.model.backbone,
                                           time.strftime("%Y%m%d-%H%M%S")])
        path = out / name
        if path.exists() and any(path.iterdir()):
            if cfg.train.name is None:  # two runs in the same second: add a suffix
                i = 2
                while (out / f"{name}-{i}").exists():
                    i += 1
                path = out / f"{name}-{i}"
            else:
                raise RunFolderError(f"run folder {path} already exists and is not empty; "
                                     f"choose another --name, or continue it with --resume {path}")
        _check_free(_existing_parent(path), need_bytes)  # before the folder is made: a refused run leaves nothing
        run = cls(path)
        run.check_writable(need_bytes)
        try:
            cfg.save(run.config_path)
        except OSError as e:
            raise RunFolderError(f"cannot write {run.config_path} ({e.strerror or e}); choose a writable --out "
                                 "with free space") from None
        return run

    def check_writable(self, need_bytes: int = 0) -> None:
        _probe(self.path, [self.plots_dir, self.checkpoints_dir], "run folder")
        _check_free(self.path, need_bytes)

    def remove_temp_files(self) -> None:
        """Temp files of writes cut short (`kill -9` during a checkpoint); the files they replace are intact."""
        for folder in (self.path, self.checkpoints_dir):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    # ---- metrics ----------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(_finite(record)) + "\n")
                f.flush()
        except OSError as e:
            raise RunFolderError(f"could not write {self.metrics_path} ({e.strerror or e}); free disk space "
                                 f"and continue with --resume {self.path}") from None

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                break
        return records

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep the records up to `last_epoch` (on resume: drop what the checkpoint does not cover)."""
        kept = [r for r in self.read_metrics() if r.get("epoch", 0) <= last_epoch]
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.summary_path, (json.dumps(_finite(summary), indent=2) + "\n").encode())

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        path = self.path / name
        atomic_write_bytes(path, (json.dumps(_finite(data), indent=2) + "\n").encode())
        return path

    def config(self) -> Config:
        return Config.load(self.config_path)


def disk_free(path: Path) -> int:
    """Free bytes on the disk of `path` (a function, so tests can simulate a full disk)."""
    return shutil.disk_usage(path).free


def _probe(path: Path, subdirs: list[Path], what: str) -> None:
    try:
        for d in (path, *subdirs):
            d.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunFolderError(f"cannot write to {what} {path} ({e.strerror or e}); choose a writable --out") from None


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


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
