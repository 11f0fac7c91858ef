"""One progress display for every long loop (training, SCAN stages, probes, fine-tuning).

On a terminal it is a tqdm bar. When stderr is not a terminal (a log file, a batch job, CI) a bar would
write thousands of carriage returns, so it prints a plain line instead, at most every `every` seconds:

    train epoch 3/100 step 120/390 2210 img/s loss 0.8123

The loss is read from the device only when something is shown, so the hot path has no host sync.

`Steps` is the same for a command made of a few long steps that are not epochs (`sslab analyze`: features,
PCA, t-SNE, k-means): each step is announced as it starts, and one that runs long says so every `every`
seconds (piped) or ticks its elapsed time (on a terminal), so no step is silent.
"""
from __future__ import annotations

import contextlib
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
            if loss is not None and self.step % max(1, self.total // BAR_POSTFIX_EVERY) == 0:
                self._bar.set_postfix(loss=f"{_value(loss):.4f}")
            return
        now = self.clock()
        if now - self._last_line >= self.every and self.step < self.total:
            self._last_line = now
            self.stream.write(self.line(now, loss) + "\n")
            self.stream.flush()

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


def _value(loss: torch.Tensor | float) -> float:
    return float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


__all__ = ["Progress", "Steps", "StepTimer", "DEFAULT_EVERY"]
