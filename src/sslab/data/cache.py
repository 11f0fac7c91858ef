"""Decode each dataset once, into a cache that is memory-mapped when it is loaded.

Where: `cache_folder` (`--cache-dir`, else `$SSLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/sslab/cache`, else
`~/.cache/sslab/cache`), never beside the data unless asked there: data folders may be read-only or shared,
and users have disk quotas. An entry's name is a key made of the loader, its options, the data folder and the
source files' sizes and mtimes, so editing, adding or removing a file decodes again.

An entry is a folder of raw arrays and a small JSON header:

    <name>-<key>/header.json     format, shapes, classes, mean/std, warnings, each file's size and sha256
    <name>-<key>/train_x.u8      uint8 (N, C, H, W), C-contiguous; train_y.i64: int64 (N,); test_x.u8, test_y.i64

so loading maps the images (`torch.from_file`): nothing is unpickled, nothing is read until it is used, the
pages are the page cache's (file-backed, shared by every process on the machine, reclaimable), and a dataset
larger than memory can still be opened. Labels are read into memory (8 bytes an image).

Trust: an entry is used only when its header (written last) parses, every file has the size the header
says, and, for entries up to `VERIFY_MAX_BYTES`, the content hashes match. Anything else is decoded again.
A build writes into `<name>-<key>.partial/`, appending the arrays in order and recording how far it got in
`progress.json` every `CHECKPOINT_SECONDS` (after an fsync of the data), then writes the header and renames
the folder into place: a killed build is never mistaken for a cache, and the next build continues from its
last record. One process builds an entry at a time (`<name>-<key>.lock`, a file lock that works between the
processes of a machine and, on a shared file system with locking (NFSv4, Lustre with flock), between
machines); the others wait for it and then map what it wrote. Warnings logged while decoding (skipped
files, resized images) are stored in the header and logged again on every load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from sslab.data.base import ImageData
from sslab.errors import DataError

log = logging.getLogger("sslab.data")

CACHE_FORMAT = 2  # bump when the entry layout or a decoder's output changes
CACHE_ENV = "SSLAB_CACHE_DIR"
HEADER, PROGRESS = "header.json", "progress.json"
ARRAYS = {"train_x": ("train_x.u8", torch.uint8), "train_y": ("train_y.i64", torch.int64),
          "test_x": ("test_x.u8", torch.uint8), "test_y": ("test_y.i64", torch.int64)}
VERIFY_MAX_BYTES = 64 * 2**20  # entries up to this size have their content hashed on every load (< 0.1 s)
CHECKPOINT_SECONDS = 2.0  # a killed build loses at most this much decoding
LOCK_POLL_SECONDS = 5.0
LOCK_REPORT_SECONDS = 60.0  # a process waiting for another's build says so this often
DISK_MARGIN_BYTES = 256 * 2**20  # left free on the cache's disk besides the entry
READ_CHUNK_BYTES = 64 * 2**20


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


class Untrusted(Exception):
    """An entry that must not be used; the message says why."""


# ---- loading an entry -----------------------------------------------------------------------------------
def read_entry(path: Path, verify: bool | None = None) -> tuple[ImageData, list[str]]:
    """The dataset in the entry folder `path` (images memory-mapped) and its stored warnings, or `Untrusted`.
    `verify`: hash the content (None: when the entry is at most VERIFY_MAX_BYTES)."""
    try:
        header = json.loads((path / HEADER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Untrusted("it has no header (its build did not finish)") from None
    except (OSError, ValueError) as e:
        raise Untrusted(f"its header is unreadable ({type(e).__name__})") from None
    try:
        if header.get("format") != CACHE_FORMAT:
            raise Untrusted(f"it is in format {header.get('format')}, this sslab reads format {CACHE_FORMAT}")
        arrays = header["arrays"]
        total = sum(int(arrays[k]["bytes"]) for k in ARRAYS)
        verify = total <= VERIFY_MAX_BYTES if verify is None else verify
        tensors = {k: _open_array(path, k, arrays[k], verify) for k in ARRAYS}
        data = ImageData(str(header["name"]), tensors["train_x"], tensors["train_y"], tensors["test_x"],
                         tensors["test_y"], [str(c) for c in header["classes"]], tuple(header["mean"]),
                         tuple(header["std"]))
        return data, [str(w) for w in header["warnings"]]
    except Untrusted:
        raise
    except (KeyError, TypeError, ValueError, AssertionError, RuntimeError, OSError) as e:
        raise Untrusted(f"it does not match its header ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def _open_array(path: Path, key: str, meta: dict[str, Any], verify: bool) -> torch.Tensor:
    name, dtype = ARRAYS[key]
    file = path / name
    shape = [int(s) for s in meta["shape"]]
    nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
    size = file.stat().st_size
    if size != nbytes or int(meta["bytes"]) != nbytes:
        raise Untrusted(f"{name} holds {size} bytes where {nbytes} were written (truncated or replaced)")
    if verify and file_sha256(file) != meta["sha256"]:
        raise Untrusted(f"the content of {name} changed since it was written")
    if dtype == torch.int64:  # labels: small, read into memory
        return torch.from_numpy(np.fromfile(file, dtype=np.int64)).reshape(shape)
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    # shared=False: a private, read-only-in-practice mapping (the file is never written through it)
    return torch.from_file(str(file), shared=False, size=nbytes, dtype=dtype).view(shape)


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(READ_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


# ---- building an entry ----------------------------------------------------------------------------------
class DecodeSink:
    """Where a decoder puts its images, split by split and in order, and what it records on the way: its
    `plan` (decided before writing), how many images and source files of each split are done, the files it
    `skipped` (path, why) and the decoded sizes it saw ("HxW": count). Subclasses keep the images."""

    def __init__(self, state: dict[str, Any] | None = None):
        self.state = state or {"format": CACHE_FORMAT, "splits": {}, "plan": None, "skipped": [], "sizes": {}}

    @property
    def plan(self) -> Any:
        """What the decoder decided before writing (image size, channels, totals); kept for a resume."""
        return self.state["plan"]

    def set_plan(self, plan: Any) -> None:
        self.state["plan"] = plan

    def done(self, split: str) -> tuple[int, int]:
        """(images, source files) of `split` already written: where a resumed build continues."""
        s = self.state["splits"].get(split, {})
        return int(s.get("rows", 0)), int(s.get("files", 0))

    def reserve(self, total_bytes: int, what: str) -> None:
        """Raise when there is no room for `total_bytes` (memory is not checked ahead: numpy and torch fail)."""

    def start_split(self, split: str, image_shape: Sequence[int]) -> None:
        rows, files = self.done(split)
        self.state["splits"][split] = {"rows": rows, "files": files, "shape": [int(s) for s in image_shape]}

    def _count(self, split: str, images: int, files_done: int, skipped: Sequence[tuple[str, str]],
               sizes: dict[str, int] | None) -> None:
        s = self.state["splits"][split]
        s["rows"] += images
        s["files"] += files_done
        self.state["skipped"] += [list(item) for item in skipped]
        for size, n in (sizes or {}).items():
            self.state["sizes"][size] = self.state["sizes"].get(size, 0) + n


class EntryWriter(DecodeSink):
    """Writes a cache entry into `<entry>.partial/`: each split's images and labels appended in order, and
    `progress.json` (how many images and source files are written, plus the builder's own `plan` and notes)
    every CHECKPOINT_SECONDS after an fsync of the data, so a build stopped at any point continues from
    its last record. `finish()` writes the header and renames the folder into place."""

    def __init__(self, entry: Path, resume: bool = True):
        self.entry, self.path = entry, entry.with_name(entry.name + ".partial")
        self.path.mkdir(parents=True, exist_ok=True)
        super().__init__(self._read_progress() if resume else None)
        if self.state["splits"] and not self._files_hold_what_was_recorded():
            log.warning("the stopped cache build in %s lost data it had recorded; starting it again", self.path)
            super().__init__()
        self.state["owner"] = {"host": socket.gethostname(), "pid": os.getpid()}
        self._files: dict[str, Any] = {}
        self._last_checkpoint = time.monotonic()

    def _read_progress(self) -> dict[str, Any] | None:
        try:
            state = json.loads((self.path / PROGRESS).read_text(encoding="utf-8"))
            return state if state.get("format") == CACHE_FORMAT else None
        except (OSError, ValueError):
            return None

    def _files_hold_what_was_recorded(self) -> bool:
        """Every recorded image and label is still in its file (a file deleted or cut short by hand is not)."""
        for split, s in self.state["splits"].items():
            widths = {f"{split}_x": int(np.prod(s["shape"])), f"{split}_y": 8}
            for key, width in widths.items():
                file = self.path / ARRAYS[key][0]
                if (file.stat().st_size if file.exists() else -1) < int(s["rows"]) * width:
                    return False
        return True

    def set_plan(self, plan: Any) -> None:
        super().set_plan(plan)
        self.checkpoint(force=True)

    def reserve(self, total_bytes: int, what: str) -> None:
        """A one-line DataError when the cache's disk has no room for the rest of the entry."""
        written = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        free = shutil.disk_usage(self.path).free
        if free - DISK_MARGIN_BYTES < total_bytes - written:
            raise NoRoom(f"the decoded {what} needs {gib(total_bytes)} in {self.path.parent} "
                            f"({gib(written)} written so far) but only {gib(free)} are free; free some space there, "
                            f"or pass --cache-dir (or set {CACHE_ENV}) to a folder on a disk with room")

    def start_split(self, split: str, image_shape: Sequence[int]) -> None:
        """Open `split`'s files for appending, cut back to the last recorded image (a build stopped mid-chunk
        leaves a tail that was never recorded)."""
        super().start_split(split, image_shape)
        rows = self.done(split)[0]
        row_bytes = int(np.prod(image_shape))
        for key, width in ((f"{split}_x", row_bytes), (f"{split}_y", 8)):
            file = self.path / ARRAYS[key][0]
            f = open(file, "r+b") if file.exists() else open(file, "wb")
            f.truncate(rows * width)
            f.seek(rows * width)
            self._files[key] = f

    def append(self, split: str, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, files_done: int,
               skipped: Sequence[tuple[str, str]] = (), sizes: dict[str, int] | None = None) -> None:
        """Images (n, C, H, W) uint8 and labels (n,) int64 of the next `files_done` source files (some may
        have been `skipped`, with the reason; `sizes` counts the decoded sizes, "HxW": n)."""
        x, y = np.ascontiguousarray(np.asarray(x, dtype=np.uint8)), np.ascontiguousarray(np.asarray(y, dtype=np.int64))
        assert len(x) == len(y) and list(x.shape[1:]) == self.state["splits"][split]["shape"]
        self._files[f"{split}_x"].write(x.tobytes() if x.size == 0 else memoryview(x.reshape(-1)))
        self._files[f"{split}_y"].write(y.tobytes() if y.size == 0 else memoryview(y.view(np.uint8)))
        self._count(split, len(x), files_done, skipped, sizes)
        self.checkpoint()

    def write_data(self, data: ImageData) -> None:
        """A dataset decoded in memory, written split by split in chunks."""
        self.reserve(data.nbytes, data.name)
        for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
            self.state["splits"].pop(split, None)  # nothing to resume: the data is already decoded
            self.start_split(split, x.shape[1:])
            chunk = max(1, READ_CHUNK_BYTES // max(1, x[0].numel() if len(x) else 1))
            for i in range(0, len(x), chunk):
                self.append(split, x[i:i + chunk].numpy(), y[i:i + chunk].numpy(), len(x[i:i + chunk]))

    def checkpoint(self, force: bool = False) -> None:
        """fsync the data, then record how far it got (atomically): what a resumed build trusts."""
        if not force and time.monotonic() - self._last_checkpoint < CHECKPOINT_SECONDS:
            return
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        write_atomic(self.path / PROGRESS, json.dumps(self.state))
        self._last_checkpoint = time.monotonic()

    def finish(self, name: str, classes: Sequence[str], warnings: Sequence[str]) -> Path:
        """Hash every file, compute the train split's channel statistics, write the header, rename into place."""
        self.checkpoint(force=True)
        self.close()
        arrays, stats = {}, None
        image_shape = self.state["splits"].get("train", {}).get("shape", [1, 1, 1])
        for key, (file_name, dtype) in ARRAYS.items():
            split, file = key.split("_")[0], self.path / file_name
            file.touch()  # a split that was never started is empty
            shape = [self.done(split)[0]] + (list(self.state["splits"].get(split, {}).get("shape", image_shape))
                                             if dtype == torch.uint8 else [])
            sha, histograms = _hash_and_sums(file, shape if key == "train_x" else None)
            stats = histograms if key == "train_x" else stats
            arrays[key] = {"file": file_name, "shape": shape, "bytes": file.stat().st_size, "sha256": sha}
        mean, std = _mean_std(stats, arrays["train_x"]["shape"])
        header = {"format": CACHE_FORMAT, "name": name, "classes": list(classes), "mean": mean, "std": std,
                  "warnings": list(warnings), "arrays": arrays}
        write_atomic(self.path / HEADER, json.dumps(header, indent=1))
        os.replace(self.path, self.entry)
        _fsync_folder(self.entry.parent)
        return self.entry

    def close(self) -> None:
        for f in self._files.values():
            with suppress(OSError):
                f.close()
        self._files = {}

    def discard(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _hash_and_sums(file: Path, image_shape: list[int] | None) -> tuple[str, np.ndarray | None]:
    """sha256 of `file`; for images (N, C, H, W) also each channel's histogram of values (exact), in one pass."""
    digest = hashlib.sha256()
    histograms = None
    chunk = READ_CHUNK_BYTES
    if image_shape is not None:
        channels, per_image = image_shape[1], int(np.prod(image_shape[1:]))
        histograms = np.zeros((channels, 256), dtype=np.int64)
        chunk = max(1, READ_CHUNK_BYTES // max(1, per_image)) * per_image
    with open(file, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            if histograms is not None:
                x = np.frombuffer(block, dtype=np.uint8).reshape(-1, channels, per_image // channels)
                for c in range(channels):
                    histograms[c] += np.bincount(x[:, c].ravel(), minlength=256)
    return digest.hexdigest(), histograms


def _mean_std(histograms: np.ndarray | None, shape: list[int]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] from the value histograms, rounded as `data.base.channel_stats` does."""
    channels = shape[1]
    values = shape[0] * int(np.prod(shape[2:]))
    if histograms is None or values == 0:
        return [0.5] * channels, [0.25] * channels
    level = np.arange(256, dtype=np.float64) / 255.0
    mean = histograms @ level / values
    var = np.maximum(histograms @ level**2 / values - mean**2, 1e-12)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in np.sqrt(var)]


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path` via a temp file in the same folder, fsynced, renamed into place."""
    fd, tmp = create_temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    with suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create_temp_file(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty `.<name>.<random>.tmp` in `folder` (same filesystem, so os.replace is atomic), with the
    permissions the umask gives, for writing a file that is renamed into place when complete."""
    path = folder / f".{name}.{secrets.token_hex(6)}.tmp"
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


# ---- one process builds, the others wait ----------------------------------------------------------------
Build = Callable[[EntryWriter], tuple[str, list[str], list[str]]]  # writes the arrays -> (name, classes, warnings)


def load_or_build(entry: Path, build: Build, uncached: Callable[[], ImageData], resumable: bool) -> ImageData:
    """The dataset cached in the folder `entry` when it is trusted; else, holding `entry`'s lock, `build` it
    (continuing a stopped build when `resumable`) and map what was written. A cache folder that cannot be
    written is reported, and `uncached()` decodes the dataset in memory instead."""
    with suppress(Untrusted):
        return _loaded(entry)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = _file_lock(entry)
    except OSError as e:
        return _uncached_after(e, entry, uncached)
    with _holding(lock, entry):
        try:
            return _loaded(entry)
        except Untrusted as e:
            if entry.exists():
                log.warning("cache %s is not usable (%s); decoding the dataset again", entry, e)
                _remove_entry(entry)
        try:
            writer = EntryWriter(entry, resume=resumable)
        except OSError as e:
            return _uncached_after(e, entry, uncached)
        _build_entry(writer, build, entry, resumable)
    return _loaded(entry, quiet=True)  # the build logged its warnings as it went


def _build_entry(writer: EntryWriter, build: Build, entry: Path, resumable: bool) -> None:
    """Run `build`. A stop (Ctrl-C, a signal, a full disk, a vanished folder) keeps what was written for the next
    build to continue from, when `resumable`; a DataError about the data itself discards it."""
    try:
        name, classes, warnings = build(writer)
        writer.finish(name, classes, warnings)
        log.info("cached the decoded %s in %s", name, entry)
        return
    except BaseException as e:
        kept = resumable and not (isinstance(e, DataError) and not isinstance(e, NoRoom)) and _checkpoint_quietly(writer)
        if kept:
            _say_resumable(writer, e)
        else:
            writer.discard()
        if isinstance(e, OSError):
            raise _as_data_error(e, writer, kept) from None
        raise


class NoRoom(DataError):
    """The cache's disk cannot hold the entry (a build stopped by it can continue once there is room)."""


def _checkpoint_quietly(writer: EntryWriter) -> bool:
    """Record how far the build got; False when even that fails (the folder is gone, the disk is full)."""
    try:
        writer.checkpoint(force=True)
        return True
    except OSError:
        return writer.path.exists() and (writer.path / PROGRESS).exists()
    finally:
        writer.close()


def _say_resumable(writer: EntryWriter, error: BaseException) -> None:
    done = sum(int(s.get("files", 0)) for s in writer.state["splits"].values())
    if done and not isinstance(error, DataError):
        print(f"sslab: the cache build stopped ({type(error).__name__}) after {done:,} source files; they are kept in "
              f"{writer.path}, and the same command continues from there", file=sys.stderr, flush=True)


def _as_data_error(e: OSError, writer: EntryWriter, kept: bool) -> DataError:
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        kept_note = f"what was decoded is kept in {writer.path}; " if kept else ""
        return NoRoom(f"the disk of the cache folder {writer.entry.parent} is full ({e.strerror}); {kept_note}free some "
                      f"space, or pass --cache-dir (or set {CACHE_ENV}) to a folder on a disk with room, and run the "
                      "same command again")
    if not writer.entry.parent.exists() or not kept and not writer.path.exists():
        return DataError(f"the cache folder {writer.entry.parent} disappeared while the cache was being built; run the "
                         "same command again to build it anew")
    return DataError(f"could not write the cache in {writer.path} ({e.strerror or e}); check that folder, or pass "
                     f"--cache-dir (or set {CACHE_ENV}) to another one")


def _loaded(entry: Path, quiet: bool = False) -> ImageData:
    data, warnings = read_entry(entry)
    for message in warnings if not quiet else ():
        log.warning(message)
    log.debug("loaded %s from the cache %s", data.name, entry)
    return data


def _remove_entry(entry: Path) -> None:
    """Move an untrusted entry aside, then delete it (a process that still maps its files keeps them)."""
    aside = entry.with_name(f".{entry.name}.{secrets.token_hex(4)}.stale")
    with suppress(OSError):
        os.replace(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _uncached_after(error: OSError, entry: Path, uncached: Callable[[], ImageData]) -> ImageData:
    reason = error.strerror or str(error).splitlines()[0]
    data = uncached()
    log.warning("could not cache the decoded %s in %s (%s); it will be decoded again next time: pass --cache-dir or "
                "set %s to a writable folder", data.name, entry.parent, reason, CACHE_ENV)
    return data


def _file_lock(entry: Path) -> Any:
    from filelock import FileLock  # a dependency of torch: flock on POSIX, msvcrt locking on Windows

    lock = FileLock(str(entry.with_name(entry.name + ".lock")))
    # touch the lock file now: an unwritable cache folder shows here (OSError), before any decoding
    with open(lock.lock_file, "ab"):
        pass
    return lock


@contextmanager
def _holding(lock: Any, entry: Path) -> Iterator[None]:
    """Hold `lock`, saying every LOCK_REPORT_SECONDS who builds the entry meanwhile and how far it got."""
    from filelock import Timeout

    waited, reported = 0.0, 0.0
    while True:
        try:
            lock.acquire(timeout=LOCK_POLL_SECONDS)
            break
        except Timeout:
            waited += LOCK_POLL_SECONDS
            if waited - reported >= LOCK_REPORT_SECONDS or reported == 0:
                reported = waited
                print(f"sslab: waiting for {_builder_of(entry)} to finish the cache {entry.name} "
                      f"({waited:.0f} s so far)", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        lock.release()


def _builder_of(entry: Path) -> str:
    try:
        state = json.loads((entry.with_name(entry.name + ".partial") / PROGRESS).read_text(encoding="utf-8"))
        owner = state["owner"]
        files = sum(int(s.get("files", 0)) for s in state["splits"].values())
        total = (state.get("plan") or {}).get("files")
        done = f", {files:,} of {total:,} files decoded" if total else ""
        return f"process {owner['pid']} on {owner['host']}{done}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def in_memory_build(decode: Callable[[], ImageData]) -> Build:
    """The build of a source decoded in memory at once (CIFAR pickles, IDX, npz, STL-10 binaries): decode, then
    write in chunks. It starts over after a stop (decoding these takes seconds)."""

    def build(writer: EntryWriter) -> tuple[str, list[str], list[str]]:
        with collect_warnings() as warnings:
            data = decode()
        writer.write_data(data)
        return data.name, list(data.classes), warnings

    return build


class _WarningList(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """The warnings logged to "sslab.data" meanwhile (they are stored in the cache and logged on every load)."""
    handler = _WarningList()
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)
