"""Every file sslab writes goes through this module, so that a run folder is a boundary: nothing sslab writes
follows a symbolic link out of it, and a cut write never leaves half a file.

How to write a file (new code: use these, never `open(path, "w")`, `Path.write_text/write_bytes`,
`fig.savefig(path)`, `np.save(path)` or `torch.save(obj, path)`):

- bytes or text: `write_bytes(path, data)`, `write_text(path, text)`. The data goes to a new temporary file
  beside `path` (created with O_EXCL | O_NOFOLLOW, so it never opens an existing file or link), is fsynced
  (`durable=False` skips that for figures and pages that can be redrawn), and is renamed over `path`: a
  reader sees the old file or the new one, never half of one.
- numpy / torch / other libraries that write to a file: `write_stream(path, lambda f: torch.save(obj, f))`, or
  write into `io.BytesIO()`, then `write_bytes`.
- a matplotlib figure: `plots.save_figure(fig, path)` (it renders into memory, then calls `write_bytes`).
- one more line of a log (metrics.jsonl): `append_bytes(path, data)` (O_APPEND | O_NOFOLLOW).
- a folder: `make_folder(path)`; a probe that a folder is writable: `check_writable(folder)`.
- a folder a library fills itself: `make_folder` first (it refuses a linked folder; TensorBoard's event files get
  new names), or let the library write into the new folder of `with replacing_folder(path) as new:`.

Inside a run folder (registered with `add_boundary`, which `RunDir`, `run.check_output_folder` and the run-folder
commands do) a symbolic link at the path written, or at any folder between the run folder and it, is refused
with one line (`RunFolderError`): writing through it could overwrite a file anywhere. The path of the run folder
itself, and the folders above it, are the user's choice and may be links. Outside every run folder (an `--out`
file the user names) only the file itself is never followed. Errors are one line whose advice follows the cause
(a full disk, a read-only folder, a file where a folder should be).

`lock_file` and `unlock_file` are the one portable file lock (the run folder's `.lock`): `fcntl.flock` on
POSIX, `msvcrt.locking` on Windows, `os.lockf` where neither module exists; all are dropped by the OS when the
process dies, so a `kill -9` leaves no stale lock.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from sslab.errors import RunFolderError

# flags that exist only on some systems: 0 elsewhere (Windows has no O_NOFOLLOW; there the lstat checks guard)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
TEMP_SUFFIX = ".tmp"

_BOUNDARIES: set[str] = set()  # absolute paths of the run folders this process writes into
_LOCK = threading.Lock()
# test hook: called with (path, boundary) for every file and folder this module is asked to write
on_write: Callable[[Path, Path | None], None] | None = None


# ---- where the boundary is --------------------------------------------------------------------------------------
def add_boundary(folder: str | os.PathLike) -> Path:
    """Mark `folder` as a run folder: below it, no link is followed. Returns it as a Path."""
    with _LOCK:
        _BOUNDARIES.add(os.path.abspath(folder))
    return Path(folder)


def boundary_of(path: str | os.PathLike) -> Path | None:
    """The outermost registered run folder that holds `path` (by name: links are not resolved), or None."""
    full = os.path.abspath(path)
    with _LOCK:
        inside = [b for b in _BOUNDARIES if full.startswith(b.rstrip(os.sep) + os.sep)]
    return Path(min(inside, key=len)) if inside else None


def _steps(path: Path, root: Path | None) -> list[Path]:
    """The paths from the first one below `root` down to `path` itself (just `path` without a root)."""
    if root is None:
        return [path]
    parts = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).parts
    return [Path(root, *parts[:i + 1]) for i in range(len(parts) - 1)] + [path] if parts else []


def _is_link(path: Path) -> bool | None:
    """True for a symbolic link (or a Windows junction), False for anything else, None when nothing is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a file on the way: the write fails with its own message
        return None
    return stat.S_ISLNK(st.st_mode) or bool(getattr(os.path, "isjunction", lambda p: False)(path))


def refuse_links(path: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """RunFolderError when `path`, or a folder between the run folder holding it and `path`, is a symbolic link
    (`root`: that run folder; default: the registered one, else only `path` itself is checked)."""
    path = Path(path)
    top = Path(root) if root is not None else boundary_of(path)
    for step in _steps(path, top):
        found = _is_link(step)
        if found is None:
            return
        if found:
            raise RunFolderError(f"{step} is a symbolic link; sslab does not write through links inside a run folder "
                                 "(that could overwrite a file elsewhere); remove the link and run again")


def read_inside(path: str | os.PathLike, root: str | os.PathLike) -> bytes | None:
    """The bytes of `path` when it is a regular file inside the folder `root` reached without a link (what a
    report may embed), else None: nothing a link points at is read."""
    path = Path(path)
    try:
        if any(_is_link(step) is not False for step in _steps(path, Path(root))):
            return None
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_BINARY)
    except (OSError, ValueError):  # ValueError: `path` is not inside `root`
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


# ---- folders ----------------------------------------------------------------------------------------------------
def make_folder(path: str | os.PathLike, root: str | os.PathLike | None = None, hint: str = "") -> Path:
    """`path` as a folder, made if missing, without following a link inside the run folder."""
    path = Path(path)
    try:
        _make_folder(path, root)
    except OSError as e:
        raise write_error(path, e, hint) from None
    return path


def _make_folder(path: Path, root: str | os.PathLike | None) -> None:
    """make_folder's work: OSError as it comes (RunFolderError for a link)."""
    top = Path(root) if root is not None else boundary_of(path)
    if on_write is not None:
        on_write(path, top)
    if top is None:
        os.makedirs(path, exist_ok=True)
        return
    os.makedirs(top, exist_ok=True)  # the run folder itself, and the folders above it: the user's
    for step in _steps(path, top):
        refuse_links(step, top)
        try:
            os.mkdir(step)
        except FileExistsError:
            refuse_links(step, top)  # made meanwhile: look again
            if not step.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(step)) from None


def check_writable(folder: str | os.PathLike, root: str | os.PathLike | None = None, what: str = "folder",
                   advice: str = "choose another place") -> None:
    """`folder` exists (made if missing) and a file can be created in it: a probe with a new unique name
    (O_EXCL | O_NOFOLLOW, so never an existing file or link), removed at once."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{what} {folder} is a file, not a folder; {advice}")
    try:
        _make_folder(folder, root)
        probe = folder / f".write-test-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY, 0o666))
        os.unlink(probe)
    except RunFolderError:
        raise
    except OSError as e:
        raise RunFolderError(f"cannot write to {what} {folder} ({e.strerror or e}); {advice}") from None


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder beside `path` for a library that writes several files itself (TensorBoard's
    projector); when the block ends it replaces `path` (a link there is removed, never followed; an old folder is
    deleted), and when the block fails it is deleted and `path` is left as it was."""
    path = Path(path)
    make_folder(path.parent)
    refuse_links(path)
    fresh = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        os.mkdir(fresh)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield fresh
        if path.is_dir():
            old = path.parent / f".{path.name}.{secrets.token_hex(6)}.old{TEMP_SUFFIX}"
            os.replace(path, old)
            shutil.rmtree(old)
        os.replace(fresh, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        shutil.rmtree(fresh, ignore_errors=True)  # gone already when it replaced `path`


# ---- files ------------------------------------------------------------------------------------------------------
def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True, hint: str = "") -> None:
    """Write `data` to `path` atomically (a new temp file, fsynced, renamed over `path`), never through a link
    inside the run folder. `hint`: words to add to the error's advice ("and continue with --resume RUN")."""
    write_stream(path, lambda f: f.write(data), durable, hint)


def write_stream(path: str | os.PathLike, write: Callable[[BinaryIO], object], durable: bool = True,
                 hint: str = "") -> None:
    """`write_bytes` for data too big to hold twice in memory: `write(file)` writes it (`torch.save(obj, f)`)."""
    path = Path(path)
    if on_write is not None:
        on_write(path, boundary_of(path))
    make_folder(path.parent, hint=hint)
    refuse_links(path)
    if path.is_dir():
        raise write_error(path, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path)), hint)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk, KeyboardInterrupt, a signal's exception: leave no temp file behind
            _remove(tmp)
            raise
    except OSError as e:
        raise write_error(path, e, hint) from None
    if durable:
        _sync_folder(path.parent)


def write_text(path: str | os.PathLike, text: str, durable: bool = True, hint: str = "") -> None:
    write_bytes(path, text.encode("utf-8"), durable, hint)


def append_bytes(path: str | os.PathLike, data: bytes, durable: bool = True, hint: str = "") -> None:
    """Append `data` to `path` (made if missing), never through a link, never into a file with other names (a
    hard link): the one file written in place."""
    path = Path(path)
    if on_write is not None:
        on_write(path, boundary_of(path))
    make_folder(path.parent, hint=hint)
    refuse_links(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | O_NOFOLLOW | O_BINARY, 0o666)
    except OSError as e:
        raise _link_or_write_error(path, e, hint) from None
    try:
        _check_own_file(fd, path)
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    except OSError as e:
        raise write_error(path, e, hint) from None
    finally:
        os.close(fd)


def _check_own_file(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        what = "is not a regular file" if not stat.S_ISREG(st.st_mode) else f"has {st.st_nlink} names (a hard link)"
        raise RunFolderError(f"{path} {what}; sslab writes only into a file of its own there; move it away and run "
                             "again")


def remove_temp_files(folder: str | os.PathLike, prefixes: tuple[str, ...] = ("",)) -> None:
    """Temp files of writes cut short (a `kill -9` during a write) in `folder` whose name starts with `.` + one of
    `prefixes`; the files they were to replace are intact. Only files and links: a folder with a temp file's name
    is not ours to delete."""
    folder = Path(folder)
    if _is_link(folder) or not folder.is_dir():
        return
    for tmp in folder.iterdir():
        if tmp.name.endswith(TEMP_SUFFIX) and any(tmp.name.startswith("." + p) for p in prefixes):
            if tmp.is_symlink() or tmp.is_file():
                _remove(tmp)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX; Windows cannot open a folder, and needs no such step)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_or_write_error(path: Path, e: OSError, hint: str) -> RunFolderError:
    if e.errno == errno.ELOOP or _is_link(path):
        return RunFolderError(f"{path} is a symbolic link; sslab does not write through links inside a run folder "
                              "(that could overwrite a file elsewhere); remove the link and run again")
    return write_error(path, e, hint)


def write_error(path: Path, e: OSError, hint: str = "") -> RunFolderError:
    """One line for a failed write, with the advice its cause calls for."""
    if isinstance(e, RunFolderError):
        return e
    code, reason = e.errno, e.strerror or str(e)
    then = f" {hint}" if hint else ""
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return RunFolderError(f"could not write {path} ({reason}); free disk space{then}")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return RunFolderError(f"could not write {path} ({reason}); make the folder writable, or choose another "
                              f"place{then}")
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if code in (errno.ENOTDIR, errno.EEXIST) and blocker == path:
        return RunFolderError(f"could not make the folder {path}: a file has that name; move it away, or choose "
                              f"another place{then}")
    if code in (errno.ENOTDIR, errno.EEXIST) and blocker is not None:
        return RunFolderError(f"could not write {path}: {blocker} is a file, not a folder; move it away, or choose "
                              f"another place{then}")
    if code == errno.EISDIR:
        return RunFolderError(f"could not write {path}: it is a folder; give a file name, or move the folder away")
    if code == errno.ENAMETOOLONG:
        return RunFolderError(f"could not write {path}: the name is too long for the file system; use a shorter one")
    if code == errno.ELOOP:
        return RunFolderError(f"could not write {path} (a symbolic link loop on the way); remove the link")
    return RunFolderError(f"could not write {path} ({reason}){';' + then if then else ''}")


# ---- the one file lock ------------------------------------------------------------------------------------------
LOCK_OFFSET = 1024  # msvcrt locks a byte range, which others cannot read: lock a byte past the holder's pid
PID_WIDTH = 16  # the holder's pid, padded: written over the start of the file, which is never truncated


def open_lock_file(path: str | os.PathLike) -> int:
    """A descriptor of the lock file `path` (made if missing), never through a link, never truncated; OSError
    when it cannot be opened, RunFolderError for a link or a file that is not the run's own."""
    path = Path(path)
    refuse_links(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_BINARY, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP or _is_link(path):
            raise _link_or_write_error(path, e, "") from None
        raise
    try:
        _check_own_file(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_file(fd: int) -> bool:
    """Take an exclusive lock on the open file `fd` without waiting: True when taken, False when another
    process holds it. Dropped by `unlock_file`, by closing `fd`, or by the OS when the process ends."""
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            import msvcrt
        except ImportError:
            os.lockf(fd, os.F_TLOCK, 1)  # POSIX without the fcntl module: a record lock on one byte
            return True
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def unlock_file(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            import msvcrt
        except ImportError:
            os.lockf(fd, os.F_ULOCK, 1)
            return
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass


def write_holder(fd: int) -> None:
    """This process's pid at the start of the lock file (padded, so nothing is truncated)."""
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, str(os.getpid()).ljust(PID_WIDTH).encode())


def read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, PID_WIDTH).decode(errors="replace").strip() or "unknown"


__all__ = ["add_boundary", "boundary_of", "refuse_links", "read_inside", "make_folder", "check_writable", "replacing_folder", "write_bytes", "write_stream", "write_text", "append_bytes", "remove_temp_files", "write_error",
           "open_lock_file", "lock_file", "unlock_file", "write_holder", "read_holder"]
