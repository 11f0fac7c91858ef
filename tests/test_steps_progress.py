"""`progress.Steps`: the long steps of a command (analyze, ...) are announced and, when they run long, say so
while they run, piped (plain lines) as on a terminal (a bar whose elapsed time ticks)."""
import io
import time

import pytest

from sslab.progress import Steps


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def wait_for(condition, seconds: float = 20.0) -> None:
    """Poll until `condition()` (a heartbeat thread on a loaded machine may be late, never absent)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_piped_steps_are_announced_and_a_long_one_reports_while_it_runs():
    stream = io.StringIO()
    with Steps("analyze", 2, every=0.02, stream=stream) as steps:
        with steps.step("PCA of 100 features") as timer:
            pass
        assert timer.seconds >= 0
        with steps.step("t-SNE of 100 features"):
            wait_for(lambda: "so far" in stream.getvalue())
    lines = stream.getvalue().splitlines()
    assert lines[0] == "analyze 1/2: PCA of 100 features"
    assert lines[1] == "analyze 2/2: t-SNE of 100 features"
    assert all(line.startswith("analyze 2/2: t-SNE of 100 features, ") and line.endswith(" s so far")
               for line in lines[2:]) and len(lines) > 2
    assert steps.done == 2


def test_quiet_steps_write_nothing_and_still_time():
    stream = io.StringIO()
    with Steps("analyze", 1, every=0.01, stream=stream, enabled=False) as steps:
        with steps.step("k-means") as timer:
            time.sleep(0.05)
    assert stream.getvalue() == "" and timer.seconds >= 0.05


def test_on_a_terminal_the_bar_names_the_running_step_and_ticks():
    pytest.importorskip("tqdm")
    stream = Terminal()
    with Steps("analyze", 2, stream=stream, tick=0.01) as steps:
        with steps.step("k-means (k=10)"):
            wait_for(lambda: stream.getvalue().count("analyze 1/2: k-means (k=10)") >= 2)  # redrawn while running
    assert "so far" not in stream.getvalue()  # no plain lines on a terminal
