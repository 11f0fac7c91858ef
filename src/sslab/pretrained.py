"""Load what a training run produced: its config, its trained method (backbone + heads) and its data.

Every command that works on a run folder (`eval`, `embed`, `analyze`, `attention`, `scan`, `report`) starts
here, so a folder without a checkpoint gives the same one-line error everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslab.checkpoint import load_checkpoint
from sslab.config import Config
from sslab.data import load_from_config
from sslab.data.base import ImageData
from sslab.errors import CheckpointError
from sslab.methods import Method


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
        data_cfg = Config.from_dict(self.cfg.to_dict()).data
        for k, v in changes.items():
            setattr(data_cfg, k, v)
        return load_from_config(data_cfg, self.cfg.train.seed)


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder, or of a checkpoint file inside one (RUN/checkpoints/last.pt -> RUN)."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_trained(path: str | Path, device: str | torch.device = "auto") -> TrainedRun:
    """A run folder (or a checkpoint file inside one) -> its trained model. CheckpointError if there is none."""
    from sslab.device import pick_device
    from sslab.methods.build import build_method

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder made by `sslab train` or `sslab demo`")
    state = load_checkpoint(path)
    run_dir = run_folder(path)
    try:
        cfg = Config.from_dict(state["config"])
        info = state["data"]
        channels, image_size = int(info["channels"]), int(info["image_size"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"checkpoint {path} lacks its config or data description; pass a checkpoint written "
                              "by `sslab train`") from None
    dev = pick_device(str(device))
    model = build_method(cfg, channels, image_size)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match its own config ({str(e).splitlines()[0][:100]})") from None
    model.to(dev).eval()
    return TrainedRun(run_dir, cfg, model, state, dev)
