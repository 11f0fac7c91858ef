"""A new method is one file (README, "Add a method"): dropped into a copy of the package's methods/ folder, with
nothing else in src/ touched, it is listed by `sslab methods`, trains from the command line with its own flag, and
a flag of another method is refused in one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sslab import cli

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


# One Python process runs the four commands through sslab's entry point, as four `sslab ...` processes would
# (the entry point is what the console script calls): one interpreter start instead of four on a 2-core CI box.
DRIVER = """
import contextlib, io, json, sys

import sslab.cli

results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = sslab.cli.main(argv)
        except SystemExit as stop:  # argparse's --help and usage errors
            code = stop.code if isinstance(stop.code, int) else 1
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def sslab_commands(src: Path, *commands: list[str], cwd: Path) -> list[dict]:
    """Exit code, stdout and stderr of each command, run in order in one fresh Python that imports sslab from
    `src` only."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.splitlines()[-1])


def test_a_method_file_dropped_into_methods_is_listed_trains_and_owns_its_flags(package_copy, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    listed, helped, run, refused = sslab_commands(
        package_copy,
        ["methods"],
        ["train", "--help"],
        ["train", "--method", "toy", "--spread", "0.5", "--dataset", "digits", "--backbone", "simple-cnn",
         "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress", "--out", runs, "--name", "toy"],
        ["train", "--method", "toy", "--queue-size", "7", "--dataset", "digits", "--out", runs],
        cwd=tmp_path)
    assert listed["code"] == 0, listed["stderr"]
    assert "toy" in listed["stdout"].split()
    assert helped["code"] == 0 and "--spread" in helped["stdout"]
    assert "weight of the variance term" in " ".join(helped["stdout"].lower().split())
    assert run["code"] == 0, run["stderr"][-2000:]
    config = (tmp_path / "runs" / "toy" / "config.yaml").read_text()
    assert "method: toy" in config and "spread: 0.5" in config
    assert refused["code"] == 2
    assert refused["stderr"].startswith("sslab: error: --queue-size is not a setting of toy") and \
        refused["stderr"].count("\n") == 1 and "--spread" in refused["stderr"], refused["stderr"]
    # the copy really is the only place the method exists: the package under test (this process's) does not know it
    capsys.readouterr()
    assert cli.main(["methods"]) == 0
    listing = capsys.readouterr().out.split()
    assert "simsiam" in listing and "toy" not in listing


def test_simsiam_refuses_another_methods_setting_naming_its_own():
    from sslab.config import Config
    from sslab.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        Config.from_values({"method": "simsiam", "queue_size": 7}, "command line")
    text = str(e.value)
    assert text.startswith("--queue-size is not a setting of simsiam") and "simsiam's settings: " in text
    assert "--pred-hidden" in text and "\n" not in text
