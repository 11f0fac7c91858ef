"""What differs between Linux, macOS and Windows, in one place (and without importing torch).

- Stop signals: SIGINT everywhere; SIGTERM where the OS delivers it; SIGBREAK (Ctrl-Break) on Windows. Windows
  has no SIGALRM and no `setitimer`, so `--time-limit` is a deadline read between steps (`StopFlag`), the same
  on every OS: a loop checks the flag after every step anyway, so it stops at the same step boundary a timer
  signal would have stopped it at.
- Apple GPUs: PyTorch runs an operator that MPS lacks on the CPU only when PYTORCH_ENABLE_MPS_FALLBACK=1 is set
  before torch is imported (`enable_mps_fallback`).
- Paths written on another OS: `folder_name` reads both separators.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable

TIME_LIMIT = -1  # StopFlag.signum when the --time-limit deadline passed (no signal number is negative)
MPS_FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (Linux), else every core (macOS,
    Windows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def stop_signals() -> tuple[int, ...]:
    """The signals that ask a run to stop with a checkpoint, those this OS has: SIGINT, SIGTERM, SIGBREAK."""
    names = ("SIGINT", "SIGTERM", "SIGBREAK")
    return tuple(int(getattr(signal, n)) for n in names if hasattr(signal, n))


def signal_name(signum: int) -> str:
    """"SIGTERM", "the --time-limit" for TIME_LIMIT, or "signal 7" for a number this OS does not name."""
    if signum == TIME_LIMIT:
        return "the --time-limit"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_number(name: str) -> int:
    """"SIGTERM" -> its number on this OS; ValueError when the OS has no such signal (SIGKILL on Windows)."""
    value = getattr(signal, name, None)
    if not name.startswith("SIG") or not isinstance(value, int):
        raise ValueError(f"this OS has no signal {name}")
    return int(value)


def exit_code(signum: int) -> int:
    """The exit code of a run stopped by `signum`: 0 for the time limit (a planned stop), else 128 + signum."""
    return 0 if signum == TIME_LIMIT else 128 + signum


def raise_signal(signum: int) -> None:
    """Send this process `signum` (the tests' stop hook); portable where os.kill is not (Windows)."""
    signal.raise_signal(signum)


class StopFlag:
    """Turns the stop signals and the time limit into a flag that a loop checks between steps.

    Before `arm()` (no checkpoint yet) a signal stops at once through `on_unarmed(signum)` (which raises);
    after it, a second SIGINT aborts at once (KeyboardInterrupt). `arm(time_limit)` also starts the deadline:
    after that many seconds `asked()` is true and `signum` is TIME_LIMIT. `agree(flag)` makes several
    processes stop after the same step (the distributed "any rank" vote); alone it is the flag itself.
    Handlers are installed only from the main thread (Python allows no other)."""

    def __init__(self, on_unarmed: Callable[[int], None], agree: Callable[[bool], bool] = bool,
                 clock: Callable[[], float] = time.monotonic):
        self.signum: int | None = None
        self.armed = False
        self.deadline: float | None = None
        self._on_unarmed, self._agree, self._clock = on_unarmed, agree, clock
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in stop_signals():
                self._old[s] = signal.signal(s, self._handle)
        return self

    def arm(self, time_limit: float | None = None) -> None:
        self.armed = True
        self.deadline = self._clock() + time_limit if time_limit else None

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.armed:
            self._on_unarmed(signum)
            return
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def asked(self) -> bool:
        """Whether a stop was asked for (on any process, through `agree`)."""
        if self.signum is None and self.deadline is not None and self._clock() >= self.deadline:
            self.signum = TIME_LIMIT
        return self._agree(self.signum is not None)

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


def enable_mps_fallback() -> bool:
    """On macOS, let PyTorch run the operators MPS lacks on the CPU (slower, instead of an error), unless the
    user set PYTORCH_ENABLE_MPS_FALLBACK. Only effective before torch is imported: True when it was set now."""
    if sys.platform != "darwin" or MPS_FALLBACK_ENV in os.environ or "torch" in sys.modules:
        return False
    os.environ[MPS_FALLBACK_ENV] = "1"
    return True


WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
WINDOWS_FORBIDDEN = '<>:"/\\|?*'


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file or folder name on every OS (None when it can): Windows forbids
    <>:"/\\|?* and control characters, names such as CON or NUL (with any extension), and a trailing dot or space."""
    if not name or name in (".", ".."):
        return "it is empty, '.' or '..'"
    bad = sorted({c for c in name if c in WINDOWS_FORBIDDEN or ord(c) < 32})
    if bad:
        return "it contains " + " ".join(repr(c) for c in bad)
    if name.split(".")[0].upper() in WINDOWS_RESERVED:
        return f"{name.split('.')[0]} is a device name on Windows"
    if name[-1] in ". ":
        return "it ends with a dot or a space (Windows drops them)"
    return None


def tolerant_console(streams: tuple[Any, ...] | None = None) -> None:
    """Make stdout/stderr write any character: a class name in Chinese printed to a pipe on Windows (whose
    pipes use the cp1252 code page) would otherwise end the command with UnicodeEncodeError. UTF-8 streams
    and streams without `reconfigure` are left as they are."""
    for stream in streams if streams is not None else (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def folder_name(path: str) -> str:
    """The last component of a path written with '/' or '\\' (a config written on Windows, read on Linux)."""
    parts = [p for p in re.split(r"[\\/]+", path) if p]
    return parts[-1] if parts else path


__all__ = ["TIME_LIMIT", "StopFlag", "stop_signals", "signal_name", "signal_number", "exit_code", "raise_signal",
           "enable_mps_fallback", "folder_name", "name_problem", "tolerant_console",
           "MPS_FALLBACK_ENV"]
