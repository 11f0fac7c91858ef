"""Decoding on every core: an ordered map over worker processes, and the progress line of a long decode.

PIL holds the GIL in parts of decoding, so threads of one process use about one core; worker processes use
them all. They are forked from a fork server (Linux, macOS) that imported the decoding modules once, so a
worker starts in milliseconds instead of importing torch again; where there is none (Windows) they are
spawned. Neither forks the training process itself, whose threads make a plain fork unsafe. Results come back in
task order with at most `window` tasks in flight, so the parent can append them to the cache as they arrive
and its memory follows the window, not the dataset. Workers ignore SIGINT: Ctrl-C reaches the parent, which
records how far it got (data/cache.py) and stops them.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
import multiprocessing
from typing import Any, Callable, Iterable, Iterator, TextIO

from sslab.portable import usable_cores

WORKERS_ENV = "SSLAB_DECODE_WORKERS"
PLAIN_EVERY_SECONDS = 30.0


def default_workers() -> int:
    """$SSLAB_DECODE_WORKERS, else the cores this process may run on."""
    value = os.environ.get(WORKERS_ENV)
    if value and value.isdigit() and int(value) >= 1:
        return int(value)
    return usable_cores()


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)  # one core per worker: the processes are the parallelism


def _context(fn: Callable[[Any], Any]) -> multiprocessing.context.BaseContext:
    """A fork server that has imported `fn`'s module (and with it torch), else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([fn.__module__])
    return context


def ordered_map(fn: Callable[[Any], Any], tasks: Iterable[Any], workers: int, window: int | None = None) -> Iterator[Any]:
    """`fn(task)` for every task, yielded in task order. `workers` <= 1: in this process; otherwise that many
    spawned processes (`fn` must be a module-level function) with at most `window` (default 2 x workers)
    tasks submitted and not yet consumed."""
    if workers <= 1:
        yield from map(fn, tasks)
        return
    window = window or 2 * workers
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(fn), initializer=_worker_init)
    pending: deque[Future] = deque()
    remaining = iter(tasks)
    finished = False
    try:
        for task in remaining:
            pending.append(pool.submit(fn, task))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            for task in remaining:
                pending.append(pool.submit(fn, task))
                break
            yield result
        finished = True
    finally:
        pool.shutdown(wait=finished, cancel_futures=True)  # stopped early: do not wait for the tasks in flight


class BuildProgress:
    """Files decoded so far, with the rate and the time left: a tqdm bar on a terminal, else a plain line every
    PLAIN_EVERY_SECONDS ("decoding imagenet: 120,000/1,281,167 files (9%), 1850 files/s, about 10 min left")."""

    def __init__(self, what: str, total: int, initial: int = 0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.done = what, total, initial
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self._start_done, self._start = initial, clock()
        self._last_line = self._start
        self._bar = None
        if total > 0 and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=what, unit="file", leave=False, dynamic_ncols=True,
                             file=self.stream)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self.clock()
        if now - self._last_line >= PLAIN_EVERY_SECONDS and self.done < self.total:
            self._last_line = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        rate = (self.done - self._start_done) / max(now - self._start, 1e-9)
        parts = [f"{self.what}: {self.done:,}/{self.total:,} files ({100 * self.done / max(self.total, 1):.0f}%)",
                 f"{rate:.0f} files/s"]
        if rate > 0:
            parts.append(f"about {_duration((self.total - self.done) / rate)} left")
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "BuildProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
