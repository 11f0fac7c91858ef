"""Keras-style arrays in a .npz file: `x_train, y_train` and optionally `x_test, y_test` and `classes`.
Images may be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; uint8, or integers in 0..255, or
floats in [0, 1] or [0, 255]. `root` is the .npz file or a folder holding exactly one."""
from __future__ import annotations

import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from sslab.data.base import ImageData
from sslab.data.source import LoadRequest, Source
from sslab.errors import DataError
from sslab.registry import DATASETS

MAX_UNNAMED_CLASSES = 100_000  # more classes than any image benchmark: a larger label is a damaged file
LAYOUT_HINT = "a .npz file with x_train, y_train, x_test, y_test (Keras style)"


@DATASETS.register("npz")
def npz_arrays(request: LoadRequest) -> Source:
    path = find_file(request.root)
    return locate_file(path, "npz")


def find_file(root: Path) -> Path:
    if root.is_file():
        return root
    if not root.is_dir():
        raise DataError(f"{root} not found; pass --data-dir with {LAYOUT_HINT}, or a folder holding one")
    found = sorted(root.glob("*.npz"))
    if len(found) != 1:
        what = "no .npz file" if not found else f"{len(found)} .npz files ({', '.join(p.name for p in found)})"
        raise DataError(f"{root} holds {what}; pass --data-dir with {LAYOUT_HINT}, or a folder holding exactly one")
    return found[0]


def locate_file(path: Path, name: str) -> Source:
    return Source(decode=partial(decode, path, name), files=[path], files_base=path.parent, cached=True)


def decode(path: Path, name: str) -> ImageData:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            found = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} as a .npz file ({e}); it must be {LAYOUT_HINT}") from None
    missing = [k for k in ("x_train", "y_train") if k not in found]
    if ("x_test" in found) != ("y_test" in found):
        missing.append("y_test" if "x_test" in found else "x_test")
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)} (it holds {', '.join(sorted(found)) or 'nothing'}); "
                        f"it must be {LAYOUT_HINT}")
    train_x = to_images(found["x_train"], f"{path}: x_train")
    train_y = to_labels(found["y_train"], len(train_x), f"{path}: y_train")
    if "x_test" in found:
        test_x = to_images(found["x_test"], f"{path}: x_test")
        test_y = to_labels(found["y_test"], len(test_x), f"{path}: y_test")
        if test_x.shape[1:] != train_x.shape[1:]:
            raise DataError(f"{path}: x_test images are {tuple(test_x.shape[1:])} but x_train images are "
                            f"{tuple(train_x.shape[1:])} (C, H, W)")
    else:  # no test split shipped: load_dataset holds out a stratified share
        test_x, test_y = train_x[:0], train_y[:0]
    n_classes = int(max(train_y.max(initial=-1), test_y.max(initial=-1))) + 1
    lowest = int(min(train_y.min(initial=0), test_y.min(initial=0)))
    if lowest < -1:
        raise DataError(f"{path}: a label is {lowest}; labels are class numbers 0..K-1 (-1: unlabelled)")
    if "classes" not in found and n_classes > MAX_UNNAMED_CLASSES:
        raise DataError(f"{path}: a label is {n_classes - 1}; labels are class numbers 0..K-1, at most "
                        f"{MAX_UNNAMED_CLASSES - 1:,} without a 'classes' array naming them; fix the labels")
    classes = [str(c) for c in found["classes"].tolist()] if "classes" in found else [str(c) for c in range(n_classes)]
    if len(classes) < n_classes:
        raise DataError(f"{path}: labels go up to {n_classes - 1} but 'classes' names only {len(classes)}")
    return ImageData(name, torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                     torch.from_numpy(test_y), classes)


def to_images(x: np.ndarray, what: str) -> np.ndarray:
    """Any supported layout -> uint8 (N, C, H, W), C-contiguous."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise DataError(f"{what} has shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3")
    if x.dtype != np.uint8:
        x = _to_uint8(x, what)
    return np.ascontiguousarray(x)


def _to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    if x.size == 0:
        return x.astype(np.uint8)
    if x.dtype.kind not in "iuf":
        raise DataError(f"{what} has dtype {x.dtype}; expected uint8, integers in 0..255 or floats")
    lo, hi = float(x.min()), float(x.max())
    if x.dtype.kind == "f" and 0.0 <= lo and hi <= 1.0:
        x = x * 255.0
    elif not (0.0 <= lo and hi <= 255.0):
        raise DataError(f"{what} values span {lo:g}..{hi:g}; expected 0..255 (or floats in 0..1)")
    return np.rint(x).astype(np.uint8) if x.dtype.kind == "f" else x.astype(np.uint8)


def to_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # Keras CIFAR stores (N, 1)
    if y.ndim != 1 or len(y) != n or (y.size and (y.dtype.kind not in "iuf" or not np.all(np.mod(y, 1) == 0))):
        raise DataError(f"{what} has shape {y.shape} and dtype {y.dtype}; expected {n} integer labels")
    return y.astype(np.int64)
