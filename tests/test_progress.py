"""The progress display: plain lines off a terminal, at most one per `every` seconds, with the figures."""
from __future__ import annotations

import io
import threading
import time

import torch

from sslab.progress import Heartbeat, Progress, heartbeat_every, heartbeats, spoke


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


class TerminalBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_heartbeat_speaks_while_a_long_call_runs_and_never_for_a_short_one():
    out = io.StringIO()
    with Heartbeat("k-means", every=0.05, stream=out) as beat:
        time.sleep(0.4)  # about 8 beats
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) == beat.lines, lines
    assert all(line.startswith("k-means: still running, ") and line.endswith(" s") for line in lines)
    count = len(lines)
    time.sleep(0.15)  # the thread stopped with the block: no line after it
    assert len(out.getvalue().splitlines()) == count
    assert not any(t.name == "sslab-heartbeat" for t in threading.enumerate())
    quiet = io.StringIO()
    with Heartbeat("fast", every=5.0, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_heartbeat_stops_on_an_exception_and_can_be_switched_off():
    out = io.StringIO()
    try:
        with Heartbeat("failing", every=0.02, stream=out):
            time.sleep(0.1)
            raise KeyError("boom")
    except KeyError:
        pass
    assert not any(t.name == "sslab-heartbeat" for t in threading.enumerate())
    off = io.StringIO()
    with heartbeats(None):
        assert heartbeat_every() is None
        with Heartbeat("silent", stream=off):
            time.sleep(0.1)
    with Heartbeat("disabled", every=0.02, enabled=False, stream=off):
        time.sleep(0.1)
    assert off.getvalue() == ""
    assert heartbeat_every() == 30.0  # the context restored the default


def test_heartbeat_interval_comes_from_the_context_and_a_terminal_gets_one_rewritten_line():
    out = TerminalBuffer()
    with heartbeats(0.03):
        with Heartbeat("t-SNE", stream=out) as beat:
            time.sleep(0.2)
    text = out.getvalue()
    assert beat.every == 0.03 and beat.lines >= 2
    assert "\n" not in text and text.count("\r") == beat.lines + 1 and text.endswith("\r\x1b[K")


def test_nested_heartbeats_take_turns_so_only_the_innermost_speaks():
    out = io.StringIO()
    with Heartbeat("scan/mine", every=0.05, stream=out) as outer:
        with Heartbeat("k-means", every=0.05, stream=out) as inner:
            time.sleep(0.3)
        inner_lines = inner.lines
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert inner_lines >= 2 and outer.lines >= 2, lines
    assert all(line.startswith("k-means") for line in lines[:inner_lines])  # the outer kept quiet meanwhile
    assert all(line.startswith("scan/mine") for line in lines[inner_lines:])


def test_a_heartbeat_keeps_quiet_while_other_lines_are_shown():
    out, shown = io.StringIO(), io.StringIO()
    with Heartbeat("demo step eval", every=0.3, stream=out):
        for _ in range(10):  # a log line every 0.03 s: never 0.3 s of silence
            time.sleep(0.03)
            shown.write("a log line\n")
            spoke()
        quiet_so_far = out.getvalue()
        time.sleep(0.8)  # then silence: the heartbeat speaks
    assert quiet_so_far == "" and out.getvalue().startswith("demo step eval: still running")
