"""STL-10 from the official binaries: `root/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin,
class_names.txt` (`root` may also be `stl10_binary` itself). Each image is 3 x 96 x 96 bytes, every
channel stored column by column (Fortran order), so the last two axes are swapped on reading."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from sslab.data.base import ImageData
from sslab.data.download import download, not_found
from sslab.data.source import LoadRequest, Source
from sslab.errors import ConfigError, DataError
from sslab.registry import DATASETS

FOLDER = "stl10_binary"
TRAIN_SPLITS = ("train", "unlabeled", "train+unlabeled")
IMAGE_SHAPE = (3, 96, 96)
IMAGE_BYTES = 3 * 96 * 96
SPLIT_FILES: dict[str, tuple[str, str | None]] = {  # images, labels
    "train": ("train_X.bin", "train_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
    "test": ("test_X.bin", "test_y.bin"),
}
_CHUNK = 2048  # images copied (and transposed) at a time


@DATASETS.register("stl10")
def stl10(request: LoadRequest) -> Source:
    if request.train_split not in TRAIN_SPLITS:
        raise ConfigError(f"--train-split {request.train_split!r} is not an STL-10 split; choose one of "
                          f"{', '.join(TRAIN_SPLITS)}")
    parts = request.train_split.split("+")
    needed = [f for part in (*parts, "test") for f in SPLIT_FILES[part] if f] + ["class_names.txt"]
    folder = find_folder(request.root, needed)
    if folder is None and request.download:
        download("stl10", request.root)
        folder = find_folder(request.root, needed)
    if folder is None:
        expected = request.root / FOLDER
        missing = [f for f in needed if not (expected / f).is_file()] if expected.is_dir() else []
        raise not_found("STL-10", [expected], "the official stl10_binary.tar.gz contents", missing)
    return Source(decode=partial(decode, folder, parts), files=[folder / f for f in needed], files_base=folder,
                  cached=True, options={"train_split": request.train_split})


def find_folder(root: Path, needed: list[str]) -> Path | None:
    for folder in (root / FOLDER, root):
        if all((folder / f).is_file() for f in needed):
            return folder
    return None


def decode(folder: Path, train_parts: list[str]) -> ImageData:
    train_x, train_y = read_images(folder, [SPLIT_FILES[part] for part in train_parts])
    test_x, test_y = read_images(folder, [SPLIT_FILES["test"]])
    classes = [line.strip() for line in (folder / "class_names.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    return ImageData("stl10", train_x, train_y, test_x, test_y, classes)


def read_images(folder: Path, files: list[tuple[str, str | None]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 96, 96) and labels (0-based; -1 without a label file) of the files, concatenated."""
    counts = []
    for images, _ in files:
        size = (folder / images).stat().st_size
        if size % IMAGE_BYTES:
            raise DataError(f"{folder / images} is {size} bytes, not a whole number of 3x96x96 images: it is "
                            "truncated; replace it with the file from the official archive")
        counts.append(size // IMAGE_BYTES)
    x = torch.empty((sum(counts), *IMAGE_SHAPE), dtype=torch.uint8)
    y = torch.full((sum(counts),), -1, dtype=torch.int64)
    out = x.numpy()
    start = 0
    for (images, labels), n in zip(files, counts):
        if n:  # read in chunks (not np.memmap: the mapped file would count as a second copy in this process)
            with open(folder / images, "rb") as f:
                for i in range(0, n, _CHUNK):
                    k = min(_CHUNK, n - i)
                    stored = np.fromfile(f, dtype=np.uint8, count=k * IMAGE_BYTES).reshape(k, *IMAGE_SHAPE)  # k x C x W x H
                    out[start + i:start + i + k] = stored.transpose(0, 1, 3, 2)
        if labels is not None:
            y[start:start + n] = torch.from_numpy(read_labels(folder / labels, n))
        start += n
    return x, y


def read_labels(path: Path, n: int) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
    if len(labels) != n:
        raise DataError(f"{path} holds {len(labels)} labels for {n} images; replace it with the file from the "
                        "official archive")
    return labels
