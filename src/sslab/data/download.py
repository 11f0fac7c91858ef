"""Fetch datasets from their official sources, checked against the md5 sums their authors publish
(the same sums torchvision checks).

`SSLAB_DOWNLOAD_MIRROR=http://host/prefix` replaces everything before the file name in every URL, so
`https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz` is fetched from
`http://host/prefix/cifar-10-python.tar.gz` (a local mirror, a proxy, or a test server).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

from tqdm import tqdm

from sslab.data.cache import create_temp_file
from sslab.errors import DataError

log = logging.getLogger("sslab.data")

MIRROR_ENV = "SSLAB_DOWNLOAD_MIRROR"
TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    url: str  # the official address
    md5: str  # as published

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_KRIZ = "https://www.cs.toronto.edu/~kriz/"
_STL10 = "http://ai.stanford.edu/~acoates/stl10/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SOURCES: dict[str, list[Resource]] = {
    "cifar10": [Resource(_KRIZ + "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")],
    "cifar100": [Resource(_KRIZ + "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")],
    "stl10": [Resource(_STL10 + "stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb")],
    "mnist": [
        Resource(_MNIST + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        Resource(_MNIST + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        Resource(_MNIST + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        Resource(_MNIST + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    "fashion-mnist": [
        Resource(_FASHION + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        Resource(_FASHION + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        Resource(_FASHION + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        Resource(_FASHION + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
}


def not_found(what: str, looked_in: Sequence[Path], to_put_there: str, missing: Sequence[str] = ()) -> DataError:
    """The error for missing data when --download was not given: where we looked and how to get it."""
    places = ", ".join(str(p) for p in looked_in[:-1]) + (" or " if len(looked_in) > 1 else "") + str(looked_in[-1])
    detail = f" (missing {', '.join(missing)})" if missing else ""
    return DataError(f"{what} not found in {places}{detail}; pass --download, or put {to_put_there} there, "
                     "or use --dataset folder --data-dir DIR for an image folder")


def download(name: str, dest: Path, resources: Sequence[Resource] | None = None) -> None:
    """Fetch dataset `name` (or the given `resources`) into `dest`; .tar.gz archives are extracted there
    and then deleted, .gz files are kept as they are. Files already there with the right md5 are kept."""
    for resource in SOURCES[name] if resources is None else resources:
        path = dest / resource.filename
        if not (path.is_file() and file_md5(path) == resource.md5):
            fetch(resource, dest)
        if resource.filename.endswith((".tar.gz", ".tgz", ".tar")):
            extract(path, dest)
            path.unlink()


def source_url(resource: Resource) -> str:
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{resource.filename}" if mirror else resource.url


def fetch(resource: Resource, dest: Path) -> Path:
    """Download one file to a temp file in `dest`, check its md5, then rename it into place."""
    url = source_url(resource)
    target = dest / resource.filename
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp_file(dest, resource.filename)
    except OSError as e:
        raise DataError(f"cannot write to {dest} ({e.strerror or e}); pass --data-dir with a writable folder") from None
    log.info("downloading %s from %s", resource.filename, url)
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=resource.filename,
                              disable=None) as bar:
                        for chunk in iter(lambda: response.read(_CHUNK), b""):
                            _write(out, chunk, target)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                raise DataError(f"could not download {resource.filename} from {url} ({_reason(e)}); download it by "
                                f"hand and put it in {dest}, or check your connection") from None
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != resource.md5:
            raise DataError(f"checksum mismatch for {resource.filename} from {url} (md5 {digest.hexdigest()}, expected "
                            f"{resource.md5}); the file was deleted: try again, or download it by hand into {dest}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def extract(archive: Path, dest: Path) -> None:
    """Unpack a tar archive into `dest`: into a staging folder first, then each file moved into place."""
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")  # refuses absolute paths, '..' and links leaving the folder
            else:
                _check_members(tar.getmembers(), archive)
                tar.extractall(staging)
        for src in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = dest / src.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, target)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"could not extract {archive} ({e}); delete it and pass --download again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write(out: BinaryIO, chunk: bytes, target: Path) -> None:
    try:
        out.write(chunk)
    except OSError as e:
        raise DataError(f"cannot write {target} ({e.strerror or e}); free some disk space or pass --data-dir "
                        "with another folder") from None


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    return str(getattr(e, "reason", None) or e) or type(e).__name__


def _check_members(members: Iterable[tarfile.TarInfo], archive: Path) -> None:
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or m.issym() or m.islnk() or m.isdev():
            raise DataError(f"{archive} holds an unsafe entry {m.name!r}; delete it and download it again")
