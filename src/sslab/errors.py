"""User-facing errors: one line saying what went wrong and what to do, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (data, config, checkpoint, folder). The CLI prints it as one line."""

    exit_code = 2


class DataError(UserError):
    """A dataset is missing, in the wrong layout, or unreadable."""


class ConfigError(UserError):
    """A config value or flag is invalid."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, or belongs to another model."""


class RunFolderError(UserError):
    """A run folder cannot be created or written, or the disk is full."""
