"""Shared by the evaluation, analysis and report tests: one tiny trained run per session (copied per test,
since the commands write into it) and a check that a PNG is a real picture."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

_TRAINED: dict[str, Path] = {}

TINY_RUN = {
    "data": {"dataset": "digits"},
    "model": {"backbone": "simple-cnn"},
    "method": {"method": "simsiam", "proj_hidden": 64, "proj_dim": 64, "pred_hidden": 16},
    "augment": {"crop_scale": (0.5, 1.0), "flip_p": 0.0},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "progress": False, "knn_k": 20, "name": "tiny"},
}


def trained_run(base: Path) -> Path:
    """Train the tiny run once per session (about 2 s on 2 cores)."""
    if "run" not in _TRAINED:
        from sslab.config import Config
        from sslab.pretrain import fit

        cfg = Config.from_dict(TINY_RUN).with_values(out=str(base))
        summary = fit(cfg, log=lambda message: None)
        _TRAINED["run"] = Path(summary["run_dir"])
    return _TRAINED["run"]


@pytest.fixture
def tiny_run(tmp_path_factory, tmp_path) -> Path:
    """A fresh copy of the session's tiny run folder (simple-cnn, SimSiam, digits, 1 epoch)."""
    source = trained_run(tmp_path_factory.mktemp("trained"))
    copy = tmp_path / "run"
    shutil.copytree(source, copy)
    return copy


def assert_png_not_blank(path: Path) -> np.ndarray:
    """The file exists, is non-empty, and the picture has more than one colour (pixel std > 0)."""
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.std() > 0, f"{path} is blank"
    assert len(np.unique(colour_codes(a))) > 1, f"{path} has one colour"
    return a


def colour_codes(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> one int per pixel (fast to count distinct colours)."""
    p = pixels.reshape(-1, 3).astype(np.int32)
    return (p[:, 0] << 16) | (p[:, 1] << 8) | p[:, 2]
