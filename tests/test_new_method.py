"""A new method is one file (README, "Add a method"): dropped into a copy of the package's methods/ folder, with
nothing else in src/ touched, it is listed by `sslab methods`, trains from the command line with its own flag, and
a flag of another method is refused in one line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# the README's example method, as a user writes it
TOY_METHOD = '''
"""Toy: the two views' embeddings pulled together, with a variance term against collapse."""
from dataclasses import dataclass

import torch

from sslab.methods.base import Method, MethodSettings, ProjectorSettings
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.settings import setting


@dataclass
class ToySettings(MethodSettings, ProjectorSettings):
    spread: float = setting(1.0, "weight of the variance term", ge=0, le=100)
    proj_dim: int = 64
    lr: float = 0.1


def toy_loss(z1: torch.Tensor, z2: torch.Tensor, spread: float) -> torch.Tensor:
    std = torch.sqrt(torch.cat([z1, z2]).var(dim=0) + 1e-4)
    return (z1 - z2).pow(2).mean() + spread * torch.relu(1 - std).mean()


@METHODS.register("toy")
class Toy(Method):
    Settings = ToySettings

    def __init__(self, backbone, cfg: ToySettings):
        super().__init__(backbone, cfg)
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden, cfg.proj_dim])

    def forward(self, views, clean=None):
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        return {"loss": toy_loss(z1, z2, self.cfg.spread), "z": z1.detach()}
'''


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("copy") / "src"
    shutil.copytree(SRC / "sslab", src / "sslab", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "sslab" / "methods" / "toy.py").write_text(TOY_METHOD)
    return src


def sslab(src: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sslab", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_a_method_file_dropped_into_methods_is_listed_trains_and_owns_its_flags(package_copy, tmp_path):
    listed = sslab(package_copy, "methods", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "toy" in listed.stdout
    helped = sslab(package_copy, "train", "--help", cwd=tmp_path)
    assert "--spread" in helped.stdout and "weight of the variance term" in " ".join(helped.stdout.lower().split())
    run = sslab(package_copy, "train", "--method", "toy", "--spread", "0.5", "--dataset", "digits", "--backbone",
                "simple-cnn", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
                "--out", str(tmp_path / "runs"), "--name", "toy", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    config = (tmp_path / "runs" / "toy" / "config.yaml").read_text()
    assert "method: toy" in config and "spread: 0.5" in config
    refused = sslab(package_copy, "train", "--method", "toy", "--queue-size", "7", "--dataset", "digits",
                    "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("sslab: error: --queue-size is not a setting of toy") and \
        refused.stderr.count("\n") == 1 and "--spread" in refused.stderr, refused.stderr
    # the copy really is the only place the method exists: the installed package does not know it
    assert "toy" not in subprocess.run([sys.executable, "-m", "sslab", "methods"], capture_output=True, text=True,
                                       env={**os.environ, "PYTHONPATH": str(SRC)}).stdout.split()


def test_simsiam_refuses_another_methods_setting_naming_its_own():
    from sslab.config import Config
    from sslab.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        Config.from_values({"method": "simsiam", "queue_size": 7}, "command line")
    text = str(e.value)
    assert text.startswith("--queue-size is not a setting of simsiam") and "simsiam's settings: " in text
    assert "--pred-hidden" in text and "\n" not in text
