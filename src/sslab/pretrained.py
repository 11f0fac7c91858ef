"""Load what a training run produced: its config, its trained method (backbone + heads) and its data.

Every command that works on a run folder (`eval`, `embed`, `analyze`, `attention`, `scan`, `report`) starts
here, so a folder without a checkpoint gives the same one-line error everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dataclasses

import torch

from sslab.checkpoint import load_checkpoint
from sslab.config import Config
from sslab.data import load_from_config
from sslab.data.base import ImageData
from sslab.device import pick_device
from sslab.errors import CheckpointError
from sslab.methods import Method
from sslab.methods.build import build_method
from sslab.resume import trained_spec


@dataclass
class TrainedRun:
    run_dir: Path  # where outputs of later commands go (the run folder, or the checkpoint's folder)
    cfg: Config
    model: Method  # in eval mode, on `device`
    state: dict[str, Any]  # the raw checkpoint
    device: torch.device

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model.backbone

    @property
    def data_info(self) -> dict[str, Any]:
        return self.state["data"]

    def load_data(self, **changes: Any) -> ImageData:
        """The run's dataset (same folder, split and size), optionally with DataConfig fields changed."""
        return load_from_config(dataclasses.replace(self.cfg.data, **changes), self.cfg.train.seed)


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder, or of a checkpoint file inside one (RUN/checkpoints/last.pt -> RUN)."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_trained(path: str | Path, device: str | torch.device = "auto") -> TrainedRun:
    """A run folder (or a checkpoint file inside one) -> its trained model. CheckpointError if there is none."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder made by `sslab train` or `sslab demo`")
    state = load_checkpoint(path)
    run_dir = run_folder(path)
    cfg, info = trained_spec(state, path)
    dev = pick_device(str(device))
    model = build_method(cfg, int(info["channels"]), int(info["image_size"]))
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match its own config ({str(e).splitlines()[0][:100]})") from None
    model.to(dev).eval()
    return TrainedRun(run_dir, cfg, model, state, dev)
