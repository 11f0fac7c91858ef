"""The Python API behind `import sslab`: the CLI's verbs as functions (docs/python-api.md shows each in use).

    summary = sslab.train(method="simsiam", dataset="digits", epochs=1)   # a run folder, as `sslab train`
    run = sslab.load(summary["run_dir"])                                  # its config, model and data
    features = sslab.embed(run, images)                                   # uint8 (N, C, H, W) -> (N, D)
    sslab.evaluate(run, protocol="fast")                                  # eval.json, as `sslab eval`
    sslab.export(run, "torchvision")                                      # files other code loads
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sslab.config import Config
from sslab.errors import ConfigError
from sslab.pretrain import fit
from sslab.pretrained import TrainedRun, load_trained

RunLike = str | Path | TrainedRun  # a run folder, a checkpoint file in one, or what load() returned


def make_config(cfg: Config | None = None, **settings: Any) -> Config:
    """A run spec with settings set by name (the flags of `sslab train --help` with `_` for `-`):
    `make_config(method="simsiam", epochs=5)`. Starts from a copy of `cfg` when given; the settings left out
    keep the method's recipe (adapted to the data when training starts: sslab/recipe.py)."""
    if cfg is None:
        return Config.from_values(settings, where="sslab.make_config()")
    return cfg.with_values("sslab.make_config()", **settings)


def train(cfg: Config | None = None, *, resume: str | Path | None = None, data: Any = None,
          log: Callable[[str], None] = print, **settings: Any) -> dict[str, Any]:
    """Train as `sslab train` does and return summary.json's dict (`run_dir`, `knn_top1`, `knn_top1_init`, ...).
    `settings` set by name on top of `cfg`: `train(method="byol", dataset="digits", epochs=2)`. `resume`: a run
    folder to continue with its own spec; then `settings` are the changes `--resume` allows (epochs, time_limit,
    device, ...)."""
    if resume is not None:
        if cfg is not None:
            raise ConfigError("resume= continues a run with the config saved in its folder; drop cfg")
        return fit(resume=resume, data=data, log=log, changes=settings)
    return fit(make_config(cfg, **settings), data=data, log=log)


def load(run: RunLike, device: str | torch.device = "auto") -> TrainedRun:
    """A run folder (or checkpoint file) -> TrainedRun: `.cfg`, `.model` (eval mode), `.backbone`, `.data_info`
    (channels, image_size, mean, std, classes) and `.load_data()` (the run's dataset as uint8 tensors)."""
    return run if isinstance(run, TrainedRun) else load_trained(run, device)


def embed(run: RunLike, images: torch.Tensor | np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """Backbone features (N, D) float32 on the CPU of uint8 images (N, C, H, W) shaped as the run's data;
    normalised here with the run's mean and std, as in training."""
    from sslab.eval.features import extract_features

    trained = load(run)
    images = torch.as_tensor(images)
    info = trained.data_info
    expected = (info["channels"], info["image_size"], info["image_size"])
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise ConfigError(f"embed takes uint8 images (N, {', '.join(map(str, expected))}) like the run's data; got "
                          f"{images.dtype} {tuple(images.shape)}")
    feats = extract_features(trained.backbone, images, info["mean"], info["std"], batch_size=batch_size, bf16=False)
    return feats.cpu()


def evaluate(run: RunLike, log: Callable[[str], None] = print, **options: Any) -> dict[str, Any]:
    """`sslab eval`: writes RUN/eval.json (and figures, probe.pt) and returns its dict. `options` are the fields of
    sslab.eval.evaluate.EvalOptions (the flags of `sslab eval --help`), e.g. `protocol="fast"`."""
    from dataclasses import fields as dataclass_fields

    from sslab.eval.evaluate import EvalOptions, evaluate_run

    known = {f.name for f in dataclass_fields(EvalOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown evaluate option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return evaluate_run(load(run), EvalOptions(**options), log)


def export(run: RunLike, format: str = "state-dict", out: str | Path | None = None) -> dict[str, Any]:
    """`sslab export`: the backbone as files (format state-dict, torchvision, timm or onnx) in `out` (default
    RUN/export/); returns the record written beside them: files, image_size, channels, mean, std, stem,
    feature_dim and `code`, the Python that loads them."""
    from sslab.backbone_export import export_run

    return export_run(run, format, out)
