"""CIFAR-10 and CIFAR-100 in the official python-pickle format, laid out as torchvision downloads them:
`root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`, `root/cifar-100-python/{train,test,meta}`.
`root` may also be the batches folder itself."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslab.data.base import ImageData
from sslab.data.download import download, not_found
from sslab.data.source import LoadRequest, Source
from sslab.errors import DataError
from sslab.registry import DATASETS


@dataclass(frozen=True)
class CifarLayout:
    name: str  # registry name
    title: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    class_names_key: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = CifarLayout("cifar10", "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                      "labels", "label_names")
CIFAR100 = CifarLayout("cifar100", "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
                       ("train",), "test", "meta", "fine_labels", "fine_label_names")


@DATASETS.register("cifar10")
def cifar10(request: LoadRequest) -> Source:
    return locate(CIFAR10, request)


@DATASETS.register("cifar100")
def cifar100(request: LoadRequest) -> Source:
    return locate(CIFAR100, request)


def locate(layout: CifarLayout, request: LoadRequest) -> Source:
    folder = find_folder(layout, request.root)
    if folder is None and request.download:
        download(layout.name, request.root)
        folder = find_folder(layout, request.root)
    if folder is None:
        expected = request.root / layout.folder
        missing = [f for f in layout.files if not (expected / f).is_file()] if expected.is_dir() else []
        raise not_found(layout.title, [expected], f"the official {layout.archive} contents", missing)
    return Source(decode=partial(decode, layout, folder), files=[folder / f for f in layout.files],
                  files_base=folder, cached=True)


def find_folder(layout: CifarLayout, root: Path) -> Path | None:
    for folder in (root / layout.folder, root):
        if all((folder / f).is_file() for f in layout.files):
            return folder
    return None


def decode(layout: CifarLayout, folder: Path) -> ImageData:
    train = [read_batch(folder / f, layout.label_key) for f in layout.train_files]
    test_x, test_y = read_batch(folder / layout.test_file, layout.label_key)
    meta = unpickle(folder / layout.meta_file)
    try:
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[layout.class_names_key]]
    except (KeyError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"{folder / layout.meta_file} has no list of class names ({type(e).__name__}); replace it "
                        "with the file from the official archive") from None
    for name, (_, labels) in zip([*layout.train_files, layout.test_file], [*train, (test_x, test_y)]):
        check_labels(folder / name, labels, len(classes))
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return ImageData(layout.name, torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                     torch.from_numpy(test_y), classes)


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> images uint8 (N, 3, 32, 32) and labels int64 (N,)."""
    batch = unpickle(path)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise ValueError(f"data {data.shape} with {len(labels)} labels, expected (N, 3072) with N labels")
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path} is not a CIFAR batch ({type(e).__name__}: {e}); replace it with the file from "
                        "the official archive") from None
    return data.reshape(-1, 3, 32, 32), labels  # rows hold the red, green, then blue 32x32 planes


def check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    """Every label names a class: an out-of-range one would index past the class list (or count as unlabelled)."""
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        shown = ", ".join(str(v) for v in np.unique(bad)[:5])
        raise DataError(f"{path} has {len(bad)} label(s) outside 0..{num_classes - 1} ({shown}); replace it with the "
                        "file from the official archive")


class _ArrayUnpickler(pickle.Unpickler):
    """Loads only what CIFAR files hold (dicts, lists, strings, numpy arrays): a pickle cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{module}", name) for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()  # latin1: the py2 byte strings of the originals
        if not isinstance(obj, dict):
            raise pickle.UnpicklingError(f"expected a dict, got {type(obj).__name__}")
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path} is not a readable CIFAR file ({type(e).__name__}: {e}); replace it with the file "
                        "from the official archive") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
