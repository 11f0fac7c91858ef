"""The progress display: plain lines off a terminal, at most one per `every` seconds, with the figures."""
from __future__ import annotations

import io

import torch

from sslab.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_most_every_n_seconds_with_stage_epoch_step_speed_loss():
    out, clock = io.StringIO(), FakeClock()
    bar = Progress("train", 100, epoch=2, epochs=5, batch_size=64, every=30, stream=out, clock=clock)
    for step in range(1, 100):
        clock.now = step * 1.0  # one step per second
        bar.update(torch.tensor(0.5))
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at 30, 60 and 90 s of 99
    assert lines[0] == "train epoch 2/5 step 30/100 64 img/s loss 0.5000"
    assert lines[2].startswith("train epoch 2/5 step 90/100")


def test_disabled_or_resumed_progress():
    out, clock = io.StringIO(), FakeClock()
    bar = Progress("scan/cluster", 10, every=1, enabled=False, stream=out, clock=clock)
    for step in range(10):
        clock.now = step * 5.0
        bar.update(1.0)
    assert out.getvalue() == ""
    resumed = Progress("train", 10, initial=6, batch_size=10, every=1, stream=out, clock=clock)
    clock.now += 2.0
    resumed.update()
    assert out.getvalue() == "train step 7/10 5 img/s\n"  # images/s counts this session's steps only


def test_train_redirected_to_a_file_writes_plain_progress_lines(tmp_path):
    """`sslab train ... > log 2>&1` (no terminal): plain progress lines during the epoch, not only at its end."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    log = tmp_path / "log"
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, "-m", "sslab", "train", "--method", "simsiam", "--dataset", "digits",
                            "--backbone", "simple-cnn", "--proj-hidden", "32", "--proj-dim", "32", "--pred-hidden", "8",
                            "--batch-size", "64", "--epochs", "1", "--knn-every", "0", "--device", "cpu",
                            "--progress-every", "0.001", "--out", str(tmp_path), "--name", "run"],
                           stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"})
    text = log.read_text()
    assert p.returncode == 0, text
    steps = [line for line in text.splitlines() if line.startswith("train epoch 1/1 step ")]
    assert len(steps) >= 10, text  # 1,437 train images / 64 = 22 steps, a line after (nearly) each
    assert "\r" not in text and "it/s" not in text  # no terminal bar in a file
