"""Rebuild sslab's bundled Fashion-MNIST mini (src/sslab/data/fashion_mnist_mini/) from the original IDX files.

train = the first TRAIN_PER_CLASS training images of each class, test = the first TEST_PER_CLASS test images
of each class, in their original order; written as gzip'd IDX files with a zero timestamp, so the output is
byte-for-byte reproducible. Images are split into parts of at most PART_IMAGES images
(`train-images-idx3-ubyte.part1.gz`, ...: each a complete IDX file, rows in order) so that no file is over
2 MB; sslab's loader concatenates them.

    python tools/make_fashion_mnist_mini.py ../shared/data/FashionMNIST/raw
"""
from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sslab.data.idx import read_idx  # noqa: E402  (sslab's reader, which checks each header against the size)

TRAIN_PER_CLASS, TEST_PER_CLASS = 1000, 200
PART_IMAGES = 4000  # 4,000 gzip'd 28x28 images are about 1.7 MB
OUT = Path(__file__).resolve().parents[1] / "src" / "sslab" / "data" / "fashion_mnist_mini"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first `n` images of each class, in the original order."""
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:n]] = True
    return np.flatnonzero(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path, help="folder with the four original Fashion-MNIST IDX .gz files")
    ap.add_argument("--out", type=Path, default=OUT, help="where to write the four files (default: the package)")
    ap.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    ap.add_argument("--test-per-class", type=int, default=TEST_PER_CLASS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", args.train_per_class), ("t10k", args.test_per_class)):
        images = read_idx(args.raw / f"{split}-images-idx3-ubyte.gz")
        labels = read_idx(args.raw / f"{split}-labels-idx1-ubyte.gz")
        keep = first_per_class(labels, per_class)
        for stale in args.out.glob(f"{split}-images-idx3-ubyte*.gz"):  # a previous layout's parts
            stale.unlink()
        chunks = [keep[i:i + PART_IMAGES] for i in range(0, len(keep), PART_IMAGES)]
        for i, chunk in enumerate(chunks, 1):
            part = f".part{i}" if len(chunks) > 1 else ""
            write_idx(args.out / f"{split}-images-idx3-ubyte{part}.gz", images[chunk])
        write_idx(args.out / f"{split}-labels-idx1-ubyte.gz", labels[keep])
        print(f"{split}: {len(keep)} images -> {args.out}")


if __name__ == "__main__":
    main()
