"""Decode each dataset once. The uint8 tensors are saved with `torch.save` in the user's cache folder
(`cache_folder`: `--cache-dir`, else `$SSLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/sslab/cache`, else
`~/.cache/sslab/cache`), never beside the data unless asked there: data folders may be read-only or shared,
and users have disk quotas. The file name is a key made of the loader, its options, the data folder and
the source files' sizes and mtimes, so editing, adding or removing a file decodes again.

Writes are atomic (temp file in the same folder, fsync, rename); an unreadable cache file is decoded
again and rewritten. Warnings logged while decoding (skipped files, resized images) are stored with the
tensors and logged again on every load, so a cached dataset still says what was left out.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from sslab.data.base import ImageData

log = logging.getLogger("sslab.data")

CACHE_FORMAT = 1  # bump when the payload layout or a decoder's output changes
CACHE_ENV = "SSLAB_CACHE_DIR"


def cache_folder(configured: str | Path | None = None) -> Path:
    """Where decoded datasets are kept: `configured` (--cache-dir), else $SSLAB_CACHE_DIR, else
    $XDG_CACHE_HOME/sslab/cache, else ~/.cache/sslab/cache."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: absolute only
    return base / "sslab" / "cache"


def cache_key(loader: str, options: dict[str, Any], files: Sequence[Path], base: Path) -> str:
    """Hash of the loader name, its content-changing options, the data folder and the sorted
    (relpath, size, mtime) of `files` (one cache folder serves every data folder)."""
    prefix = str(base) + os.sep
    entries = []
    for f in files:
        st = os.stat(f)
        name = str(f)
        entries.append((name[len(prefix):] if name.startswith(prefix) else name, st.st_size, st.st_mtime_ns))
    entries.sort()
    blob = json.dumps({"format": CACHE_FORMAT, "loader": loader, "options": options, "files": entries,
                       "base": str(Path(base).resolve())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_decode(filename: str, folder: Path, decode: Callable[[], ImageData]) -> ImageData:
    """The dataset cached as `folder/filename` if it is readable, else `decode()` it and save it there
    (a folder that cannot be written is reported, and the data is used uncached)."""
    path = folder / filename
    if path.exists():
        cached = _read(path)
        if cached is not None:
            data, warnings = cached
            for message in warnings:
                log.warning(message)
            log.debug("loaded %s from the cache %s", data.name, path)
            return data
        log.warning("cache file %s is unreadable; decoding the dataset again and rewriting it", path)
    with _collect_warnings() as warnings:
        data = decode()
    _write(path, data, warnings)
    return data


def _payload(data: ImageData, warnings: list[str]) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "name": data.name, "train_x": data.train_x, "train_y": data.train_y,
            "test_x": data.test_x, "test_y": data.test_y, "classes": list(data.classes),
            "mean": list(data.mean), "std": list(data.std), "warnings": warnings}


def _read(path: Path) -> tuple[ImageData, list[str]] | None:
    try:
        # mmap: the tensors are pages of the file, shared by every process that loads it (torchrun's ranks
        # on one machine hold one copy between them, in the page cache)
        p = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        images_ok = all(p[k].dtype == torch.uint8 and p[k].ndim == 4 for k in ("train_x", "test_x"))
        labels_ok = all(p[k].dtype == torch.int64 and p[k].ndim == 1 for k in ("train_y", "test_y"))
        if p["format"] != CACHE_FORMAT or not images_ok or not labels_ok:
            return None
        data = ImageData(p["name"], p["train_x"], p["train_y"], p["test_x"], p["test_y"], list(p["classes"]),
                         tuple(p["mean"]), tuple(p["std"]))
        return data, [str(w) for w in p["warnings"]]
    except Exception:  # any damage to the file (truncated, garbage, wrong layout) means: decode again
        return None


def _write(path: Path, data: ImageData, warnings: list[str]) -> bool:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp_file(path.parent, path.name)
        with os.fdopen(fd, "wb") as f:
            torch.save(_payload(data, warnings), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        log.info("cached the decoded %s in %s", data.name, path)
        return True
    except (OSError, RuntimeError) as e:  # read-only folder, disk full: go on uncached
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        log.warning("could not cache the decoded %s in %s (%s); it will be decoded again next time: pass "
                    "--cache-dir or set %s to a writable folder", data.name, path.parent, reason, CACHE_ENV)
        return False


def create_temp_file(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty `.<name>.<random>.tmp` in `folder` (same filesystem, so os.replace is atomic), with the
    permissions the umask gives, for writing a file that is renamed into place when complete."""
    path = folder / f".{name}.{secrets.token_hex(6)}.tmp"
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path


class _WarningList(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    handler = _WarningList()
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)
