"""A test hook: rank 0 of any sslab loop sends itself a signal after a chosen global step, so a test can stop
training, SCAN, a probe or a fine-tune at an exact step (the production loop only calls its step observers).

In a subprocess: put this folder on PYTHONPATH and set SSLAB_TEST_SIGNAL_AT_STEP to "N", "N:SIGTERM" or
"N:SIGKILL" (SIGINT by default; N counted from 1); sitecustomize.py installs the hook at start-up. In this
process: `with signal_at_step(N, signal.SIGINT): ...`.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

ENV = "SSLAB_TEST_SIGNAL_AT_STEP"
HOOKS = os.path.dirname(os.path.abspath(__file__))  # this folder: add it to PYTHONPATH


def parse(value: str) -> tuple[int, int]:
    step, _, name = value.partition(":")
    return int(step), int(getattr(signal, name or "SIGINT"))


def observer(at_step: int, signum: int):
    def observe(loop, global_step: int) -> None:
        if loop.rank == 0 and global_step == at_step:
            os.kill(os.getpid(), signum)

    return observe


def install_from_environment() -> None:
    value = os.environ.get(ENV)
    if value:
        from sslab.kit import STEP_OBSERVERS

        STEP_OBSERVERS.append(observer(*parse(value)))


@contextlib.contextmanager
def signal_at_step(at_step: int, signum: int = signal.SIGINT) -> Iterator[None]:
    from sslab.kit import STEP_OBSERVERS

    observe = observer(at_step, signum)
    STEP_OBSERVERS.append(observe)
    try:
        yield
    finally:
        STEP_OBSERVERS.remove(observe)
