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
