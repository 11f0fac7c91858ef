"""User-facing errors: one line saying what went wrong and what to do, exit code 2, no traceback; and the stop of
a loop with a checkpoint (`Interrupted`), which says how to continue."""
from __future__ import annotations

from pathlib import Path

from sslab import portable


class UserError(Exception):
    """Bad input from the user (data, config, checkpoint, folder). The CLI prints it as one line: a line break
    inside the message (a YAML key or a file name holding one) is shown as `\\n`, so it cannot start a second."""

    exit_code = 2

    def __init__(self, message: object = "") -> None:
        super().__init__(message.translate(_LINE_BREAKS) if isinstance(message, str) else message)


# every character str.splitlines() breaks a line at -> its escape (\n, \x1c, \u2028, ...)
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class DataError(UserError):
    """A dataset is missing, in the wrong layout, or unreadable."""


class ConfigError(UserError):
    """A config value or flag is invalid."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, or belongs to another model."""


class RunFolderError(UserError):
    """A run folder cannot be created or written, or the disk is full."""


class Interrupted(Exception):
    """SIGINT/SIGTERM or the time limit: a checkpoint was written (or the loop had not started); running
    `resume` (a command line) continues."""

    def __init__(self, run_dir: Path | None, signum: int, resume: str | None = None):
        name = portable.signal_name(signum)
        resume = resume or f"sslab train --resume {run_dir}"
        if signum == portable.TIME_LIMIT and run_dir is not None:
            message = f"stopped at the --time-limit; checkpoint saved; continue with: {resume}"
        elif run_dir is None:
            message = f"interrupted by {name} before training started; no checkpoint was written"
        else:
            message = f"interrupted by {name}; checkpoint saved; continue with: {resume}"
        super().__init__(message)
        self.run_dir, self.signum = run_dir, signum

    @property
    def exit_code(self) -> int:
        return portable.exit_code(self.signum)  # 0 for the time limit: a planned stop
