"""Every loop on the kit's epoch loop (SCAN's two stages, the standard probe, the semi-supervised fine-tune)
resumes exactly after SIGINT/SIGTERM (CPU, bitwise, in a real subprocess), stops cleanly on NaN and honours
--time-limit. Pretraining's own tests of the same behaviours are in test_reliability.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sslab import cli

SRC = Path(__file__).resolve().parents[1] / "src"
HOOKS = Path(__file__).resolve().parent / "hooks"  # the test signal hook (SSLAB_TEST_SIGNAL_AT_STEP)
TIMING = {"epoch_seconds", "seconds", "mine", "kmeans", "cluster", "selflabel"}

SCAN = ["--device", "cpu", "--heads", "2", "--cluster-epochs", "3", "--batch-size", "64", "--neighbors", "5",
        "--kmeans-init", "1", "--selflabel-epochs", "3", "--selflabel-batch-size", "128", "--confidence", "0.5",
        "--strong-ops", "1", "--eval-every", "0", "--no-progress"]
EVAL = ["--device", "cpu", "--protocol", "standard", "--probe-epochs", "3", "--probe-batch-size", "64"]
SEMI = ["--device", "cpu", "--protocol", "fast", "--semi", "--semi-fractions", "0.2", "--semi-epochs", "3",
        "--semi-batch-size", "32"]
# loop -> (commands run before, the command interrupted, the step it is interrupted after)
LOOPS = {
    "scan-cluster": ([["scan", "{run}", *SCAN, "--until", "mine"]], ["scan", "{run}", *SCAN, "--until", "cluster"], 10),
    "scan-selflabel": ([["scan", "{run}", *SCAN, "--until", "cluster"]], ["scan", "{run}", *SCAN], 5),
    "linear-standard": ([], ["eval", "{run}", *EVAL], 20),
    "semi": ([], ["eval", "{run}", *SEMI], 4),
}
SIGNALS = {"SIGINT": 2, "SIGTERM": 15}


def sslab(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HOOKS}", "OMP_NUM_THREADS": "1", **env}
    if "SSLAB_TEST_SIGNAL_AT_STEP" not in env:
        full_env.pop("SSLAB_TEST_SIGNAL_AT_STEP", None)
    return subprocess.run([sys.executable, "-m", "sslab", *args], env=full_env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-epoch SimSiam run on 8x8 digits (small: the loops, not the features, are under test)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("loops")
    d = load_digits()
    x = np.rint(d.images * (255 / 16)).astype(np.uint8)
    np.savez(root / "digits.npz", x_train=x[:1000], y_train=d.target[:1000], x_test=x[1000:1300],
             y_test=d.target[1000:1300])
    p = sslab(["train", "--method", "simsiam", "--dataset", "npz", "--data-dir", str(root / "digits.npz"),
               "--backbone", "simple-cnn", "--proj-hidden", "32", "--proj-dim", "32", "--pred-hidden", "8",
               "--batch-size", "100", "--epochs", "1", "--knn-k", "20", "--no-progress", "--device", "cpu",
               "--out", str(root), "--name", "pretext"])
    assert p.returncode == 0, p.stderr
    return root / "pretext"


def fresh_copy(trained: Path, name: str) -> Path:
    target = trained.parent / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(trained, target)
    return target


def outputs(run: Path) -> dict:
    """What a loop leaves, without wall-clock figures: scan.json and the stage metrics, or eval.json's results."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in TIMING}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj

    if (run / "scan" / "scan.json").exists():
        lines = {f.name: [json.loads(line) for line in f.read_text().splitlines()] for f in (run / "scan").glob("*.jsonl")}
        report = json.loads((run / "scan" / "scan.json").read_text())
        return strip({"report": {k: report[k] for k in ("kmeans", "scan", "selflabel", "scan_head_losses")},
                      "metrics": lines})
    return strip(json.loads((run / "eval.json").read_text())["results"])


# subprocess runs that take minutes on 2 cores: `-m slow`; the default suite checks eval's loops in-process
# (test_eval.py: signals inside the probes resume to the same eval.json) and SCAN's in test_scan.py
LOOP_CASES = [pytest.param(name, marks=pytest.mark.slow) for name in LOOPS]  # each a subprocess eval or scan pair


@pytest.mark.parametrize("loop", LOOP_CASES)
def test_interrupted_loop_resumes_to_the_uninterrupted_result(trained, loop):
    """Stopped by SIGINT and, separately, by SIGTERM mid-loop, then resumed: both end bitwise as the reference."""
    before, command, at_step = LOOPS[loop]
    start = fresh_copy(trained, f"{loop}-start")
    for args in before:  # once, then copied: the stages before are deterministic on the CPU (and resume-checked)
        assert sslab([a.format(run=start) for a in args]).returncode == 0
    runs = {name: fresh_copy(start, f"{loop}-{name}") for name in ("reference", *SIGNALS)}
    ref = sslab([a.format(run=runs["reference"]) for a in command])
    assert ref.returncode == 0, ref.stderr
    for sig, number in SIGNALS.items():
        args = [a.format(run=runs[sig]) for a in command]
        stopped = sslab(args, SSLAB_TEST_SIGNAL_AT_STEP=f"{at_step}:{sig}")
        assert stopped.returncode == 128 + number, stopped.stderr
        last = stopped.stderr.strip().splitlines()[-1]
        # eval's loops also say which stage stopped and what eval.json keeps, before the command that continues
        assert last.startswith(f"sslab: interrupted by {sig}; checkpoint saved") and "; continue with: sslab " in last, last
        resumed = sslab(args)
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming at epoch" in resumed.stdout
        assert outputs(runs[sig]) == outputs(runs["reference"]), sig  # bitwise on the CPU
        assert not list(runs[sig].rglob("*.tmp"))


@pytest.mark.parametrize("args, stage, flag", [
    (["scan", "{run}", *SCAN], "scan/cluster", "--lr"),
    (["scan", "{run}", *SCAN], "scan/selflabel", "--selflabel-lr"),
    (["eval", "{run}", *EVAL], "linear-standard", "learning rate"),
    (["eval", "{run}", *SEMI], "semi-20pct", "learning rate"),
])
def test_nan_stops_every_loop_in_one_line(trained, capsys, monkeypatch, args, stage, flag):
    """A weight that becomes NaN after the loop's second step (what a learning rate far too high does) stops the
    loop at the end of that epoch in one line naming what became non-finite and the flag to lower."""
    from sslab.kit import STEP_OBSERVERS

    def explode(loop, global_step: int) -> None:
        if loop.stage == stage and global_step == 2:
            with torch.no_grad():
                next(loop.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr("sslab.kit.loop.STEP_OBSERVERS", [*STEP_OBSERVERS, explode])
    run = fresh_copy(trained, "nan")
    code = cli.main([a.format(run=run) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "became" in err and "in epoch 1" in err and "stopped;" in err and flag in err, err


def test_time_limit_stops_a_probe_cleanly_with_a_checkpoint(trained):
    run = fresh_copy(trained, "limited")
    args = ["eval", str(run), *EVAL[:-4], "--probe-epochs", "400", "--probe-batch-size", "64"]
    first = sslab([*args, "--time-limit", "3"])
    assert first.returncode == 0, first.stderr
    assert "stopped at the --time-limit; checkpoint saved" in first.stderr
    assert (run / "eval" / "linear-standard.pt").exists()
    done = json.loads((run / "eval.json").read_text())["results"] if (run / "eval.json").exists() else []
    assert "linear-standard" not in [r["name"] for r in done]  # eval.json holds the protocols finished before
