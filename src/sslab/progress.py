"""One progress display for every long loop (training, SCAN stages, probes, fine-tuning), and a heartbeat for
the long calls that have no steps to count (k-means, t-SNE, a neighbour search).

On a terminal `Progress` is a tqdm bar. When stderr is not a terminal (a log file, a batch job, CI) a bar would
write thousands of carriage returns, so it prints a plain line instead, at most every `every` seconds:

    train epoch 3/100 step 120/390 2210 img/s loss 0.8123

The loss is read from the device only when something is shown, so the hot path has no host sync.

`Steps` is the same for a command made of a few long steps that are not epochs (`sslab analyze`: features,
PCA, t-SNE, k-means): each step is announced as it starts, and one that runs long says so every `every`
seconds (piped) or ticks its elapsed time (on a terminal), so no step is silent.

`Heartbeat` wraps one opaque call (`with Heartbeat("k-means, 10 clusters of 10000 x 576 features"): ...`) and
says that it is still running every `heartbeat_every()` seconds (30 by default; `sslab demo` sets 5), so a log
never looks hung:

    k-means, 10 clusters of 10000 x 576 features: still running, 10 s
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from typing import Any, Callable, Iterator, TextIO

import torch

DEFAULT_EVERY = 30.0  # seconds between plain lines (train.progress_every)
BAR_POSTFIX_EVERY = 10  # the bar shows the loss this many times per epoch


class Progress:
    """`update(loss)` after each step, `close()` at the end of the epoch (also a context manager).

    `stage`: what is running ("train", "scan/cluster", ...); `epoch`/`epochs` label the pass; `total` steps,
    `initial` the step a resumed epoch starts at; `batch_size` images per step (for images/s); `enabled`
    False shows nothing (rank > 0, `--no-progress`)."""

    def __init__(self, stage: str, total: int, *, epoch: int | None = None, epochs: int | None = None,
                 initial: int = 0, batch_size: int = 0, every: float = DEFAULT_EVERY, enabled: bool = True,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.perf_counter):
        self.stage, self.total, self.epoch, self.epochs = stage, total, epoch, epochs
        self.step, self.batch_size, self.every = initial, batch_size, every
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.enabled = enabled and total > 0
        self._start_step, self._start = initial, clock()
        self._last_line = self._start
        self._bar = None
        if self.enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=self.label(), leave=False, dynamic_ncols=True,
                             file=self.stream)

    def label(self) -> str:
        return self.stage + (f" epoch {self.epoch}/{self.epochs}" if self.epoch is not None else "")

    def update(self, loss: torch.Tensor | float | None = None, n: int = 1) -> None:
        self.step += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            spoke()
            if loss is not None and self.step % max(1, self.total // BAR_POSTFIX_EVERY) == 0:
                self._bar.set_postfix(loss=f"{_value(loss):.4f}")
            return
        now = self.clock()
        if now - self._last_line >= self.every and self.step < self.total:
            self._last_line = now
            self.stream.write(self.line(now, loss) + "\n")
            self.stream.flush()
            spoke()

    def line(self, now: float, loss: torch.Tensor | float | None = None) -> str:
        """The plain progress line."""
        parts = [self.label(), f"step {self.step}/{self.total}"]
        seconds = now - self._start
        if self.batch_size and seconds > 0:
            parts.append(f"{(self.step - self._start_step) * self.batch_size / seconds:.0f} img/s")
        if loss is not None:
            parts.append(f"loss {_value(loss):.4f}")
        return " ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Steps:
    """`with steps.step("t-SNE of 2000 images"): ...` for each of `total` steps of `command`. Piped:

        analyze 3/5: t-SNE of 2000 images
        analyze 3/5: t-SNE of 2000 images, 30 s so far

    (the second line every `every` seconds while the step runs); on a terminal one bar over the steps whose
    elapsed time ticks. `enabled` False shows nothing. `step()` yields a timer: `.seconds` after the block."""

    def __init__(self, command: str, total: int, *, every: float = DEFAULT_EVERY, enabled: bool = True,
                 stream: TextIO | None = None, tick: float = 1.0):
        self.command, self.total, self.every, self.tick = command, total, every, tick
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self._bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=command, leave=False, dynamic_ncols=True, file=self.stream)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator["StepTimer"]:
        label = f"{self.command} {min(self.done + 1, self.total)}/{self.total}: {what}"
        timer = StepTimer()
        stop = threading.Event()
        watcher = None
        if self.enabled:
            if self._bar is not None:
                self._bar.set_description_str(label)
            else:
                self._write(label)
            watcher = threading.Thread(target=self._watch, args=(label, timer, stop), daemon=True)
            watcher.start()
        try:
            yield timer
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
            timer.seconds = time.perf_counter() - timer.start
            self.done += 1
            if self._bar is not None:
                self._bar.update(1)

    def _watch(self, label: str, timer: "StepTimer", stop: threading.Event) -> None:
        """While a step runs: a line every `every` seconds (piped), the bar redrawn every `tick` (terminal)."""
        wait = self.tick if self._bar is not None else self.every
        while not stop.wait(wait):
            if self._bar is not None:
                self._bar.refresh()
            else:
                self._write(f"{label}, {time.perf_counter() - timer.start:.0f} s so far")

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class StepTimer:
    """When a step started, and (after it) how long it took."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds = 0.0
_HEARTBEAT_EVERY: contextvars.ContextVar[float | None] = contextvars.ContextVar("sslab_heartbeat_every",
                                                                               default=DEFAULT_EVERY)


def heartbeat_every() -> float | None:
    """Seconds between heartbeat lines in this context; None: heartbeats are off."""
    return _HEARTBEAT_EVERY.get()


@contextlib.contextmanager
def heartbeats(every: float | None) -> Iterator[None]:
    """Within the block, every `Heartbeat` speaks every `every` seconds (None: never)."""
    token = _HEARTBEAT_EVERY.set(every)
    try:
        yield
    finally:
        _HEARTBEAT_EVERY.reset(token)


_ACTIVE: list["Heartbeat"] = []  # entered and not yet left, innermost last: only the innermost speaks
_LAST_LINE = [float("-inf")]  # when a heartbeat, a progress line or a `spoke()` caller last showed something
_LOCK = threading.Lock()


def spoke() -> None:
    """Something was just shown (a log line, a progress line): heartbeats wait `every` seconds from now."""
    with _LOCK:
        _LAST_LINE[0] = time.perf_counter()


class Heartbeat:
    """`with Heartbeat(what): long_call()`: a line `<what>: still running, N s` whenever nothing was shown (no
    heartbeat, progress line or `spoke()`) for `every` seconds (default: `heartbeat_every()`), from a background thread, until the block ends; nothing
    when it ends sooner. Nested heartbeats (k-means inside a SCAN stage) take turns: only the innermost speaks.
    On a terminal the line is rewritten in place and cleared at the end. `enabled=False` (or `every` None)
    shows nothing."""

    def __init__(self, what: str, *, every: float | None = None, enabled: bool = True, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.what, self.clock = what, clock
        self.every = heartbeat_every() if every is None else every
        self.enabled = enabled and self.every is not None and self.every > 0
        self.stream = stream if stream is not None else sys.stderr
        self.lines = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def line(self, seconds: float) -> str:
        return f"{self.what}: still running, {seconds:.0f} s"

    def _beat(self, start: float) -> None:
        terminal = _is_terminal(self.stream)
        while not self._done.wait(min(self.every, 0.5)):  # look twice a second, speak once per `every`
            now = self.clock()
            with _LOCK:
                if _ACTIVE[-1] is not self or now - max(_LAST_LINE[0], start) < self.every:
                    continue
                _LAST_LINE[0] = now
            text = self.line(now - start)
            self.stream.write(f"\r{text}\x1b[K" if terminal else text + "\n")
            self.stream.flush()
            self.lines += 1

    def __enter__(self) -> "Heartbeat":
        if self.enabled:
            with _LOCK:
                _ACTIVE.append(self)
            self._thread = threading.Thread(target=self._beat, args=(self.clock(),), name="sslab-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is None:
            return
        self._done.set()
        self._thread.join()
        self._thread = None
        with _LOCK:
            _ACTIVE.remove(self)
        if self.lines and _is_terminal(self.stream):
            self.stream.write("\r\x1b[K")  # clear the rewritten line
            self.stream.flush()


def _value(loss: torch.Tensor | float) -> float:
    return float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


__all__ = ["DEFAULT_EVERY", "Heartbeat", "Progress", "Steps", "StepTimer", "heartbeat_every", "heartbeats", "spoke"]
