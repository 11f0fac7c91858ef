"""Stopping a loop: SIGINT/SIGTERM (SIGBREAK on Windows) and the time limit become a flag checked between steps
(`StopFlag`); a stop with a checkpoint is `Interrupted`, a NaN/inf loss `NonFiniteLoss`.

The flag itself is sslab/portable.py's: no SIGALRM or `setitimer` (Windows has neither), the time limit is a
deadline read between steps, which is where a loop would have answered the timer signal anyway."""
from __future__ import annotations

from sslab import distributed as ddp
from sslab import portable
from sslab.errors import Interrupted, UserError


class NonFiniteLoss(UserError):
    """The loss (or a weight) became NaN or inf; the last good checkpoint is kept."""


def _stop_before_start(signum: int) -> None:
    raise Interrupted(None, signum)


class StopFlag(portable.StopFlag):
    """Turns the stop signals into a flag the loop checks between steps. Before `arm()` (no checkpoint yet)
    a signal stops at once with `Interrupted(None)`; after it, a second SIGINT aborts at once.
    `arm(time_limit)` also raises the flag after that many seconds (`--time-limit`; `signum` is then
    portable.TIME_LIMIT). Every rank stops after the same step (`ddp.any_rank`)."""

    def __init__(self) -> None:
        super().__init__(on_unarmed=_stop_before_start, agree=ddp.any_rank)


__all__ = ["NonFiniteLoss", "Interrupted", "StopFlag"]
