"""Stopping `sslab eval` at any stage, keeping what it finished.

SIGINT and SIGTERM (and SIGBREAK on Windows) are answered everywhere in `eval`:

- inside a training loop (the standard probe, a baseline's standard probe, a semi-supervised fine-tune, the
  transfer probe: `EvalStop.looping()`), they raise a flag the kit's loop checks after every step, so it
  writes its checkpoint first and a rerun resumes it exactly;
- anywhere else (feature extraction, kNN, the fast probe's L-BFGS: seconds, with nothing worth a checkpoint)
  they stop at once.

`--time-limit` is a deadline (no SIGALRM: Windows has none) checked where a checkpoint can be written, after
each step of a training loop, like `train`'s; the stages between take seconds. A stop at the limit exits 0.

Either way every finished result is already in eval.json and every finished baseline in the store, and the
one-line message says where it stopped, what is kept and the command that continues.
"""
from __future__ import annotations

import contextlib
import shlex
import signal
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterator

from sslab import portable
from sslab.kit import Interrupted


class EvalInterrupted(Interrupted):
    """`eval` stopped by a signal or its time limit; the message says what is kept and how to continue."""

    def __init__(self, signum: int, message: str):
        super().__init__(None, signum)
        self.args = (message,)


class EvalStop:
    """The stop of one `eval` (a context manager installing the handlers, in the main thread only); passed to
    the kit's loops as their stop flag (`asked()`, `signum`). `stage` and `checkpoint` say where eval is
    (set by eval as it goes); `kept()` lists the finished results."""

    def __init__(self, time_limit: float | None, resume: str, kept: Callable[[], list[str]] = list):
        self.time_limit, self.resume, self.kept = time_limit, resume, kept
        self.signum: int | None = None
        self.deadline: float | None = None
        self.stage = "loading the run"
        self.checkpoint: Path | None = None
        self._looping = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "EvalStop":
        if threading.current_thread() is threading.main_thread():
            for s in portable.stop_signals():
                self._old[s] = signal.signal(s, self._handle)
        if self.time_limit:
            self.deadline = time.monotonic() + self.time_limit
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        if not self._looping:
            raise self.interrupted(signum, checkpoint=False)

    def asked(self) -> bool:
        """A signal came, or the time limit passed (checked here: after every step of a loop)."""
        if self.signum is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.signum = portable.TIME_LIMIT
        return self.signum is not None

    @contextlib.contextmanager
    def looping(self) -> Iterator[None]:
        """While a kit loop runs: a signal waits for the end of the step (the loop checkpoints, then raises)."""
        self._looping += 1
        try:
            yield
        finally:
            self._looping -= 1
        if self.signum is not None:  # the signal came after the loop's last check: its final checkpoint is kept
            raise self.interrupted(self.signum, checkpoint=True)

    def stage_is(self, stage: str, checkpoint: Path | None = None) -> None:
        self.stage, self.checkpoint = stage, checkpoint

    def interrupted(self, signum: int, checkpoint: bool) -> EvalInterrupted:
        """The exception to stop with: one line saying where, what is kept, and how to continue."""
        name = portable.signal_name(signum)
        parts = ["stopped at the --time-limit" if signum == portable.TIME_LIMIT else f"interrupted by {name}"]
        if checkpoint and self.checkpoint is not None:  # the words of every other loop's stop, then eval's own
            parts.append(f"checkpoint saved ({self.stage}: {self.checkpoint})")
        else:
            parts[0] += f" during {self.stage} (nothing to checkpoint: it takes seconds)"
        kept = self.kept()
        parts.append(f"kept in eval.json: {', '.join(kept)}" if kept else "no result was finished yet")
        parts.append(f"continue with: {self.resume}")
        return EvalInterrupted(signum, "; ".join(parts))


def resume_command(run_dir: Path, opts: Any, device: str | None = None) -> str:
    """The `sslab eval` command line that repeats `opts` (an EvalOptions: every field that differs from its
    default, as its flag), so a rerun continues the same eval."""
    defaults = type(opts)()
    words = ["sslab", "eval", str(run_dir)]
    if device and device != "auto":
        words += ["--device", device]
    for f in fields(opts):
        value = getattr(opts, f.name)
        if value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (tuple, list)):
            words += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
        else:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


__all__ = ["EvalInterrupted", "EvalStop", "resume_command"]
