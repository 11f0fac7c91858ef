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
    def create(cls, cfg: Config) -> "RunDir":
        """A new run folder under cfg.train.out, checked for writability and free space first."""
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
        run = cls(path)
        run.check_writable()
        cfg.save(run.config_path)
        return run

    def check_writable(self) -> None:
        try:
            for d in (self.path, self.plots_dir, self.checkpoints_dir):
                d.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise RunFolderError(f"cannot write to run folder {self.path} ({e.strerror or e}); "
                                 "choose a writable --out") from None
        free = shutil.disk_usage(self.path).free
        if free < MIN_FREE_BYTES:
            raise RunFolderError(f"only {free / 2**20:.0f} MiB free on the disk of {self.path}; "
                                 "free some space or choose another --out")

    # ---- metrics ----------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(_finite(record)) + "\n")
            f.flush()

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


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
