"""MNIST and Fashion-MNIST from the original IDX files (gzipped or not), laid out as torchvision downloads
them (`root/MNIST/raw/`, `root/FashionMNIST/raw/`) or directly in `root`. MNIST may also be a Keras
`mnist.npz` in `root`; without `--data-dir`, Fashion-MNIST is also looked for where Debian's
`dataset-fashion-mnist` package puts it."""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from sslab.data import npz
from sslab.data.base import ImageData
from sslab.data.download import download, not_found
from sslab.data.source import LoadRequest, Source
from sslab.errors import DataError
from sslab.registry import DATASETS

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILE_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MINI_DIR = Path(__file__).resolve().parent / "fashion_mnist_mini"  # shipped in the package


@dataclass(frozen=True)
class IdxDataset:
    name: str
    title: str
    torchvision_folder: str
    classes: tuple[str, ...]


MNIST = IdxDataset("mnist", "MNIST", "MNIST", tuple(str(d) for d in range(10)))
FASHION_MNIST = IdxDataset("fashion-mnist", "Fashion-MNIST", "FashionMNIST",
                           ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                            "Ankle boot"))


FASHION_MNIST_MINI = IdxDataset("fashion-mnist-mini", "Fashion-MNIST mini", "FashionMNIST", FASHION_MNIST.classes)


@DATASETS.register("mnist")
def mnist(request: LoadRequest) -> Source:
    return locate(MNIST, request)


@DATASETS.register("fashion-mnist")
def fashion_mnist(request: LoadRequest) -> Source:
    return locate(FASHION_MNIST, request)


@DATASETS.register("fashion-mnist-mini")
def fashion_mnist_mini(request: LoadRequest) -> Source:
    """10,000 train + 2,000 test Fashion-MNIST images inside the package (MIT licence: see the LICENSE and
    README.md next to them); `--data-dir` is not needed and not read. Decoding takes milliseconds: not cached."""
    files = [sorted(FASHION_MNIST_MINI_DIR.glob(f"{stem}*.gz")) for stem in FILE_STEMS]  # the images in parts
    if not all(files):
        raise DataError(f"the bundled Fashion-MNIST mini files are missing from {FASHION_MNIST_MINI_DIR}; "
                        "reinstall sslab")
    return Source(decode=partial(decode, FASHION_MNIST_MINI, files))


def locate(dataset: IdxDataset, request: LoadRequest) -> Source:
    raw = request.root / dataset.torchvision_folder / "raw"
    folders = [raw, request.root]
    if dataset is FASHION_MNIST and not request.root_given:
        folders.append(DEBIAN_FASHION_MNIST)
    files = find_files(folders)
    keras_file = request.root if request.root.suffix == ".npz" else request.root / "mnist.npz"
    if files is None and dataset is MNIST and keras_file.is_file():
        return npz.locate_file(keras_file, "mnist")
    if files is None and request.download:
        download(dataset.name, raw)
        files = find_files([raw])
    if files is None:
        to_put = f"the four IDX files ({', '.join(s + '.gz' for s in FILE_STEMS)})"
        if dataset is MNIST:
            to_put += " or a Keras mnist.npz"
        raise not_found(dataset.title, folders, to_put)
    return Source(decode=partial(decode, dataset, files), files=files, files_base=files[0].parent, cached=True)


def find_files(folders: list[Path]) -> list[Path] | None:
    """The four IDX files, from the first folder holding all of them (plain preferred over .gz; the
    '-idx' or '.idx' spelling)."""
    for folder in folders:
        found = [_find_one(folder, stem) for stem in FILE_STEMS]
        if all(found):
            return found  # type: ignore[return-value]
    return None


def _find_one(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def decode(dataset: IdxDataset, files: list[Path] | list[list[Path]]) -> ImageData:
    """The four IDX files; each may also be a list of IDX files whose rows follow one another (parts)."""
    parts = [f if isinstance(f, list) else [f] for f in files]
    train_x, train_y, test_x, test_y = (read_idx(p[0]) if len(p) == 1 else np.concatenate([read_idx(f) for f in p])
                                        for p in parts)
    for images, labels, path in ((train_x, train_y, parts[0][0]), (test_x, test_y, parts[2][0])):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{path}: images {images.shape} with labels {labels.shape}; expected (N, H, W) images "
                            "and N labels: replace the files with the official ones")
        outside = np.unique(labels[(labels < 0) | (labels >= len(dataset.classes))])
        if len(outside):
            label_path = parts[1 if path == parts[0][0] else 3][0]
            shown = ", ".join(str(v) for v in outside[:5]) + (", ..." if len(outside) > 5 else "")
            raise DataError(f"{label_path} has labels outside 0..{len(dataset.classes) - 1} ({shown}); replace it with "
                            "the official file")
    return ImageData(dataset.name, _images(train_x), _labels(train_y), _images(test_x), _labels(test_y),
                     list(dataset.classes))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file: magic (0, 0, type code, number of dims), then each dim as big-endian uint32, then data."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path} ({e}); replace it with the official file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); replace it with the "
                        "official file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)) if len(raw) >= header else ()
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: a damaged header cannot overflow
    if len(dims) != ndim or len(raw) != expected:
        raise DataError(f"{path} is {len(raw)} bytes but its header says {expected} (dims {dims}): it is truncated "
                        "or damaged; replace it with the official file")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _images(x: np.ndarray) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise DataError(f"IDX images must be unsigned bytes, got {x.dtype}")
    return torch.from_numpy(x.copy()).unsqueeze(1)  # N x 1 x H x W


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(y.astype(np.int64))
