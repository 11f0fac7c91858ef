"""Checkpoints written atomically (temp file, fsync, rename) and read back with clear errors."""
from __future__ import annotations

import io
import os
import secrets
from pathlib import Path
from typing import Any

import torch

from sslab.errors import CheckpointError, RunFolderError

FORMAT = "sslab-checkpoint-1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half of one: a temp
    file in the same folder, fsynced, then renamed over `path`. Permissions follow the umask (as open())."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise RunFolderError(f"could not write {path} ({e.strerror or e}); free disk space or choose another --out") from None
    except BaseException:  # KeyboardInterrupt, a signal's exception: leave no temp file behind
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def first_line(e: BaseException, limit: int = 160) -> str:
    """An exception as one short line (for a one-line error message): its text with the line breaks folded."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict; CheckpointError (one line) when it is missing, truncated or not ours."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "checkpoints" / "last.pt", path / "last.pt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path} (looked for checkpoints/last.pt); "
                                  "train first with `sslab train`, or pass a checkpoint file")
        path = found
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a run folder or a .pt file written by sslab")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({type(e).__name__}); "
                              "use another checkpoint (checkpoints/epoch_*.pt) or retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an sslab checkpoint; pass a file written by `sslab train`")
    return state
