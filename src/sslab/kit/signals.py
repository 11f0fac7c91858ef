"""Stopping a loop: SIGINT/SIGTERM and the time limit become a flag checked between steps (`StopFlag`); a stop
with a checkpoint is `Interrupted`, a NaN/inf loss `NonFiniteLoss`."""
from __future__ import annotations

import signal
import threading
from typing import Any

from sslab import distributed as ddp
from sslab.errors import Interrupted, UserError


class NonFiniteLoss(UserError):
    """The loss (or a weight) became NaN or inf; the last good checkpoint is kept."""


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps. Before `arm()` (no checkpoint yet)
    a signal stops at once with `Interrupted(None)`; after it, a second SIGINT aborts at once.
    `arm(time_limit)` also raises the flag (SIGALRM) after that many seconds: `--time-limit`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def arm(self, time_limit: float | None = None) -> None:
        self.armed = True
        if time_limit and signal.SIGALRM in self._old:
            signal.setitimer(signal.ITIMER_REAL, time_limit)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.armed:
            raise Interrupted(None, signum)
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def asked(self) -> bool:
        """Whether any rank was signalled (every rank then stops after the same step)."""
        return ddp.any_rank(self.signum is not None)

    def __exit__(self, *exc: Any) -> None:
        if signal.SIGALRM in self._old:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for s, old in self._old.items():
            signal.signal(s, old)


__all__ = ["NonFiniteLoss", "Interrupted", "StopFlag"]
