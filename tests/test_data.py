"""Dataset loaders: tiny files written in each official format must decode to the exact pixels, labels and
class names; the folder loader's modes, sizes and errors; the cache; splits and limits; the real data in
../shared when it is there."""
from __future__ import annotations

import gzip
import json
import logging
import math
import os
import pickle
import struct
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import needs_dataset, shared_dataset_root
from PIL import Image

import sslab.data
from sslab.config import DataConfig
from sslab.data import ImageRows, cache, cifar, folder, idx, load_dataset, load_from_config
from sslab.data.prepare import resize_images, stratified_split, stratified_subset
from sslab.errors import ConfigError, DataError, UserError
from sslab.registry import DATASETS

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


def needs_shared(relpath: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SHARED_DATA / relpath).exists(), reason=f"{SHARED_DATA / relpath} is absent")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch) -> Path:
    """Default data and cache folders go to a temp HOME (beside tmp_path, which tests use as a data
    folder), never the real one."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSLAB_DATA", raising=False)
    monkeypatch.delenv("SSLAB_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("SSLAB_DOWNLOAD_MIRROR", raising=False)
    return home


@pytest.fixture
def home_cache(isolated_home) -> Path:
    """The default cache folder in these tests."""
    return isolated_home / ".cache" / "sslab" / "cache"


def entries(folder: Path, name: str) -> list[Path]:
    """The complete cache entries of dataset `name` in `folder` (data/cache.py)."""
    return sorted(p for p in folder.glob(f"{name}-*") if (p / "header.json").is_file())


def one_line_data_error(excinfo: pytest.ExceptionInfo) -> str:
    assert isinstance(excinfo.value, UserError)
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ---- writers of the official formats ------------------------------------------------------------------
def write_py2_pickle(path: Path, obj: dict) -> None:
    """Protocol 2 with numpy's pre-2.0 module names, as in the archives made with Python 2."""
    path.write_bytes(pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def write_cifar10(root: Path, per_batch: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The official layout with 5 training batches and a test batch; returns train x, y, test x, y."""
    rng = np.random.default_rng(seed)
    folder_ = root / "cifar-10-batches-py"
    folder_.mkdir(parents=True)
    images = rng.integers(0, 256, (6 * per_batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 6 * per_batch)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        write_py2_pickle(folder_ / name, {"batch_label": name, "data": images[rows].reshape(per_batch, 3072),
                                          "labels": labels[rows].tolist(), "filenames": ["x.png"] * per_batch})
    write_py2_pickle(folder_ / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_vis": 3072})
    n_train = 5 * per_batch
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_stl10(root: Path, n_train: int = 4, n_test: int = 3, n_unlabeled: int = 5) -> dict[str, np.ndarray]:
    """Images whose pixel (row r, column c) of channel k is a distinct function of (i, k, r, c), stored as the
    format says: channel after channel, each one column by column."""
    folder_ = root / "stl10_binary"
    folder_.mkdir(parents=True)
    arrays = {}
    offset = 0
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        i, k, r, c = np.meshgrid(np.arange(n) + offset, np.arange(3), np.arange(96), np.arange(96), indexing="ij")
        images = ((i * 31 + k * 80 + r * 3 + c) % 256).astype(np.uint8)  # N x 3 x H x W, as it should load
        offset += n
        arrays[split] = images
        column_major = b"".join(img[ch].ravel(order="F").tobytes() for img in images for ch in range(3))
        (folder_ / f"{split}_X.bin").write_bytes(column_major)
        if split != "unlabeled":
            labels = (np.arange(n) % 10 + 1).astype(np.uint8)  # stored 1..10
            (folder_ / f"{split}_y.bin").write_bytes(labels.tobytes())
            arrays[split + "_labels"] = labels.astype(np.int64) - 1
    (folder_ / "class_names.txt").write_text("\n".join(CIFAR10_CLASSES[:9] + ["monkey"]) + "\n")
    return arrays


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    return struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_set(folder_: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder_.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 7).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3).astype(np.uint8)}
    for name, array in arrays.items():
        if gz:
            with gzip.open(folder_ / (name + ".gz"), "wb") as f:
                f.write(idx_bytes(array))
        else:
            (folder_ / name).write_bytes(idx_bytes(array))
    return arrays


def save_image(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode and image.mode != mode else image).save(path)


def colour_folder(root: Path, per_class: int = 3, size: int = 8) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    images: dict[str, list[np.ndarray]] = {}
    for name, ext in (("cat", "png"), ("dog", "bmp")):
        images[name] = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(per_class)]
        for j, a in enumerate(images[name]):
            save_image(root / name / f"{j:02d}.{ext}", a)
    return images


# ---- CIFAR ----------------------------------------------------------------------------------------------
def test_cifar10_round_trip(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert torch.equal(data.train_x, torch.from_numpy(train_x)) and data.train_y.tolist() == train_y.tolist()
    assert torch.equal(data.test_x, torch.from_numpy(test_x)) and data.test_y.tolist() == test_y.tolist()
    assert data.classes == CIFAR10_CLASSES
    # the batches folder itself is accepted too
    again = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", cache=False)
    assert torch.equal(again.train_x, data.train_x)


def test_cifar_row_is_red_then_green_then_blue_planes(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path)
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.arange(1024) % 256]).astype(np.uint8)
    write_py2_pickle(root / "test_batch", {"data": row[None], "labels": [4]})
    x = load_dataset("cifar10", tmp_path, cache=False).test_x[0]
    assert (x[0] == 10).all() and (x[1] == 20).all()
    assert x[2, 0, :5].tolist() == [0, 1, 2, 3, 4] and x[2, 1, 0] == 32  # row-major 32x32 planes


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    splits = {}
    for split, n in (("train", 6), ("test", 4)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        splits[split] = (x, fine)
        write_py2_pickle(root / split, {"data": x, "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()})
    fine_names = [f"class{i}" for i in range(100)]
    write_py2_pickle(root / "meta", {"fine_label_names": fine_names, "coarse_label_names": ["c"] * 20})
    data = load_dataset("cifar100", tmp_path)
    assert data.classes == fine_names and data.num_classes == 100
    assert data.train_y.tolist() == splits["train"][1].tolist()
    assert torch.equal(data.test_x, torch.from_numpy(splits["test"][0].reshape(-1, 3, 32, 32)))


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "owned"
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(f"cposix\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path, cache=False)
    assert "data_batch_2" in one_line_data_error(e) and not marker.exists()


def test_cifar_missing_names_path_and_remedies(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    message = one_line_data_error(e)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "--download" in message and "cifar-10-python.tar.gz" in message and "--dataset folder" in message


# ---- STL-10 ---------------------------------------------------------------------------------------------
def test_stl10_column_major_images_load_upright(tmp_path):
    arrays = write_stl10(tmp_path)
    data = load_dataset("stl10", tmp_path)
    assert data.train_x.shape == (4, 3, 96, 96) and data.test_x.shape == (3, 3, 96, 96)
    assert torch.equal(data.train_x, torch.from_numpy(arrays["train"]))
    assert torch.equal(data.test_x, torch.from_numpy(arrays["test"]))
    assert data.train_y.tolist() == arrays["train_labels"].tolist() and data.train_y.min() == 0
    assert data.classes[-1] == "monkey" and len(data.classes) == 10
    assert data.train_x[0, 0, 0, 1] - data.train_x[0, 0, 0, 0] == 1  # along a row: +1 per column
    assert data.train_x[0, 0, 1, 0] - data.train_x[0, 0, 0, 0] == 3  # down a column: +3 per row


def test_stl10_unlabeled_splits(tmp_path):
    arrays = write_stl10(tmp_path)
    unlabeled = load_dataset("stl10", tmp_path, train_split="unlabeled")
    assert torch.equal(unlabeled.train_x, torch.from_numpy(arrays["unlabeled"]))
    assert (unlabeled.train_y == -1).all() and len(unlabeled.test_x) == 3
    both = load_dataset("stl10", tmp_path, train_split="train+unlabeled")
    assert torch.equal(both.train_x, torch.from_numpy(np.concatenate([arrays["train"], arrays["unlabeled"]])))
    assert both.train_y.tolist() == arrays["train_labels"].tolist() + [-1] * 5
    with pytest.raises(ConfigError):
        load_dataset("stl10", tmp_path, train_split="extra")


def test_stl10_truncated_file(tmp_path):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as e:
        load_dataset("stl10", tmp_path)
    assert "train_X.bin" in one_line_data_error(e)


# ---- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_round_trip(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=gz)
    data = load_dataset("fashion-mnist", tmp_path)
    assert data.train_x.shape == (7, 1, 28, 28) and data.test_x.shape == (3, 1, 28, 28)
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"


def test_mnist_files_directly_in_root(tmp_path):
    arrays = write_idx_set(tmp_path, gz=True, seed=3)
    data = load_dataset("mnist", tmp_path)
    assert torch.equal(data.test_x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.classes == [str(d) for d in range(10)]


def test_idx_header_is_checked(tmp_path):
    write_idx_set(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, np.uint8))[:-2])  # truncated
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path)
    assert "train-labels-idx1-ubyte" in one_line_data_error(e) and "truncated" in str(e.value)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x08\x03\x00\x00" + bytes(7))  # bad magic
    with pytest.raises(DataError, match="magic"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(6, np.uint8)))  # 6 labels, 7 images
    with pytest.raises(DataError, match="labels"):
        load_dataset("mnist", tmp_path)


def test_fashion_mnist_found_where_debian_puts_it_only_without_a_root(tmp_path, monkeypatch):
    arrays = write_idx_set(tmp_path / "debian", gz=True)
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    data = load_dataset("fashion-mnist")
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path / "mine")
    assert str(tmp_path / "mine" / "FashionMNIST" / "raw") in one_line_data_error(e)
    assert "debian" not in str(e.value)


def test_mnist_keras_npz_in_root(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=np.arange(5), x_test=x[:2], y_test=np.arange(2))
    data = load_dataset("mnist", tmp_path)
    assert data.name == "mnist" and torch.equal(data.train_x[:, 0], torch.from_numpy(x))


# ---- npz ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    channels = 1 if layout == "NHW" else 3
    x = rng.integers(0, 256, (6, channels, 5, 7), dtype=np.uint8)  # the expected N x C x H x W
    stored = {"NHW": x[:, 0], "NHWC": x.transpose(0, 2, 3, 1), "NCHW": x}[layout]
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "set.npz", x_train=stored, y_train=y[:, None], x_test=stored[:2], y_test=y[:2],
             classes=np.array(["a", "b", "c"]))
    data = load_dataset("npz", tmp_path)  # the folder holding one .npz
    assert torch.equal(data.train_x, torch.from_numpy(x)) and data.train_y.tolist() == y.tolist()
    assert data.classes == ["a", "b", "c"] and data.test_x.shape == (2, channels, 5, 7)


def test_npz_floats_and_missing_test_split(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 4, 4)).astype(np.uint8)
    np.savez(tmp_path / "f.npz", x_train=x.astype(np.float32) / 255.0, y_train=np.arange(40) % 4)
    data = load_dataset("npz", tmp_path / "f.npz", test_fraction=0.25)
    assert data.classes == ["0", "1", "2", "3"]
    assert len(data.train_x) == 30 and len(data.test_x) == 10
    assert torch.equal(torch.sort(torch.cat([data.train_x, data.test_x]).flatten(1).sum(1)).values,
                       torch.sort(torch.from_numpy(x).flatten(1).long().sum(1)).values)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="y_train"):
        load_dataset("npz", tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2))
    with pytest.raises(DataError) as e:
        load_dataset("npz", tmp_path)
    assert "a.npz" in one_line_data_error(e) and "b.npz" in str(e.value)
    np.savez(tmp_path / "a.npz", x_train=np.full((2, 4, 4), 300, np.int32), y_train=np.zeros(2))
    with pytest.raises(DataError, match="values span"):
        load_dataset("npz", tmp_path / "a.npz")


# ---- digits, splits and limits --------------------------------------------------------------------------
def test_digits_split_is_stratified_and_seeded():
    data = load_dataset("digits")
    assert data.train_x.shape[1:] == (1, 8, 8) and len(data.train_x) + len(data.test_x) == 1797
    assert data.train_x.max() == 255 and data.train_x.min() == 0
    all_counts = torch.bincount(torch.cat([data.train_y, data.test_y]))
    test_counts = torch.bincount(data.test_y, minlength=10)
    assert ((test_counts - 0.2 * all_counts).abs() <= 0.5).all()
    same = load_dataset("digits")
    other = load_dataset("digits", seed=1)
    assert torch.equal(same.test_x, data.test_x) and not torch.equal(other.test_x, data.test_x)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=200), st.floats(0.05, 0.9), st.integers(0, 3))
def test_stratified_split_partitions_each_class(labels, fraction, seed):
    y = torch.tensor(labels)
    train, test = stratified_split(y, fraction, seed)
    assert sorted(torch.cat([train, test]).tolist()) == list(range(len(y)))
    assert len(test) == math.floor(len(y) * fraction + 0.5)
    for c in set(labels):
        share = labels.count(c) * len(test) / len(y)
        assert math.floor(share) <= (y[test] == c).sum().item() <= math.ceil(share)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1, 5), min_size=1, max_size=200), st.integers(1, 220), st.integers(0, 3))
def test_stratified_subset_keeps_class_shares(labels, n, seed):
    y = torch.tensor(labels)
    keep = stratified_subset(y, n, seed)
    assert len(keep) == min(n, len(y)) and len(set(keep.tolist())) == len(keep)
    for c in set(labels):
        assert abs((y[keep] == c).sum().item() - n * labels.count(c) / len(y)) < 1 or n >= len(y)
    assert torch.equal(keep, stratified_subset(y, n, seed))


def test_limits_are_stratified_and_deterministic():
    data = load_dataset("digits", limit_train=100, limit_test=50)
    assert len(data.train_x) == 100 and len(data.test_x) == 50
    assert (torch.bincount(data.train_y, minlength=10) - 10).abs().max() <= 1
    again = load_dataset("digits", limit_train=100, limit_test=50)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.train_y, data.train_y)
    assert data.mean != load_dataset("digits").mean  # statistics describe the kept images


def test_load_from_config_maps_fields():
    data = load_from_config(DataConfig(dataset="digits", test_fraction=0.5, limit_train=60, image_size=16), seed=3)
    assert data.train_x.shape == (60, 1, 16, 16) and abs(len(data.test_x) - 1797 / 2) <= 5


def test_resize_keeps_constant_images_and_scales_shape():
    x = torch.full((3, 3, 10, 14), 77, dtype=torch.uint8)
    assert (resize_images(x, 32) == 77).all() and resize_images(x, 5).shape == (3, 3, 5, 5)
    ramp = torch.arange(64, dtype=torch.uint8).repeat(64, 1)[None, None] * 4
    small = resize_images(ramp, 16)
    assert (small[0, 0, :, 1:].int() - small[0, 0, :, :-1].int() > 0).all()  # order is kept


def test_unknown_dataset_and_train_split_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="choose one of"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="train-split"):
        load_dataset("cifar10", tmp_path, train_split="unlabeled")


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if n not in ("digits", "fashion-mnist-mini")])  # bundled
def test_every_dataset_reports_missing_data_in_one_line(tmp_path, name):
    with pytest.raises(DataError) as e:
        load_dataset(name, tmp_path / "nothing")
    assert str(tmp_path / "nothing") in one_line_data_error(e)


def test_default_root_follows_sslab_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLAB_DATA", str(tmp_path))
    write_cifar10(tmp_path / "cifar10")
    assert len(load_dataset("cifar10").train_x) == 15


# ---- image folders --------------------------------------------------------------------------------------
def test_folder_round_trip_lossless_formats(tmp_path):
    images = colour_folder(tmp_path)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    data = load_dataset("folder", tmp_path, test_fraction=0)
    assert data.classes == ["cat", "dog"] and data.train_x.shape == (6, 3, 8, 8) and len(data.test_x) == 0
    expected = torch.from_numpy(np.stack(images["cat"] + images["dog"])).permute(0, 3, 1, 2)
    assert torch.equal(data.train_x, expected) and data.train_y.tolist() == [0, 0, 0, 1, 1, 1]


def test_folder_train_test_and_case_insensitive_extensions(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("a", "b"):
            for j in range(n):
                save_image(tmp_path / split / cls / f"{j}.JPG", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    save_image(tmp_path / "train" / "a" / "x.Jpeg", np.full((6, 6, 3), 200, np.uint8))
    data = load_dataset("folder", tmp_path)
    assert data.train_x.shape == (9, 3, 6, 6) and data.test_x.shape == (4, 3, 6, 6)
    assert data.test_y.tolist() == [0, 0, 1, 1]
    flat = data.train_x[data.train_y == 0].flatten(1).float().std(1)
    assert (flat < 3).sum() == 1  # the flat 200-grey JPEG decoded (nearly) flat


def test_folder_grey_stays_one_channel(tmp_path):
    save_image(tmp_path / "a" / "0.png", np.full((4, 4), 9, np.uint8))  # L
    save_image(tmp_path / "a" / "1.png", np.eye(4, dtype=bool))  # 1 (bilevel)
    save_image(tmp_path / "b" / "2.png", np.full((4, 4), 4112, np.uint16))  # 16-bit: 4112 / 257 = 16
    grey_alpha = np.stack([np.full((4, 4), 100, np.uint8), np.zeros((4, 4), np.uint8)], axis=-1)
    save_image(tmp_path / "b" / "3.png", grey_alpha, "LA")  # transparent: white
    data = load_dataset("folder", tmp_path, test_fraction=0)
    assert data.channels == 1 and data.train_x.shape == (4, 1, 4, 4)
    assert data.train_x[0].unique().tolist() == [9]
    assert torch.equal(data.train_x[1, 0], torch.eye(4, dtype=torch.uint8) * 255)
    assert data.train_x[2].unique().tolist() == [16] and data.train_x[3].unique().tolist() == [255]


def test_folder_modes_convert_to_rgb(tmp_path):
    save_image(tmp_path / "a" / "grey.png", np.full((2, 2), 50, np.uint8))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 0, 0, 255)  # opaque red
    rgba[0, 1] = (200, 0, 0, 0)  # fully transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black: mid grey
    save_image(tmp_path / "a" / "rgba.png", rgba)
    palette = Image.new("P", (2, 2))
    palette.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "a" / "palette.png")
    data = load_dataset("folder", tmp_path, test_fraction=0)  # sorted: grey, palette, rgba
    grey, pal, composited = data.train_x
    assert data.channels == 3 and (grey == 50).all()
    assert pal[:, 0, 0].tolist() == [10, 20, 30] and pal[:, 1, 1].tolist() == [40, 50, 60]
    assert composited[:, 0, 0].tolist() == [200, 0, 0] and composited[:, 0, 1].tolist() == [255, 255, 255]
    assert composited[:, 1, 0].tolist() == [127, 127, 127]


def test_folder_mixed_sizes_resized_to_most_common_with_warning(tmp_path, caplog):
    for j, size in enumerate([(8, 8), (8, 8), (8, 8), (16, 12)]):
        save_image(tmp_path / "a" / f"{j}.png", np.full((*size, 3), 60 + j, np.uint8))
    with caplog.at_level(logging.WARNING, logger="sslab.data"):
        data = load_dataset("folder", tmp_path, test_fraction=0)
    assert data.train_x.shape == (4, 3, 8, 8) and (data.train_x[3] == 63).all()
    assert "resized 1 of them to 8x8" in caplog.text
    sized = load_dataset("folder", tmp_path, test_fraction=0, image_size=10)
    assert sized.train_x.shape == (4, 3, 10, 10) and (sized.train_x[0] == 60).all()


def test_folder_corrupt_files_skipped_and_listed_or_strict(tmp_path, caplog):
    colour_folder(tmp_path)
    png = (tmp_path / "cat" / "00.png").read_bytes()
    (tmp_path / "cat" / "zz_truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "dog" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    with caplog.at_level(logging.WARNING, logger="sslab.data"):
        data = load_dataset("folder", tmp_path, test_fraction=0)
    assert len(data.train_x) == 6
    assert "left out 2 of the 8 files" in caplog.text and "unreadable (2): cat/zz_truncated.png (" in caplog.text
    assert "dog/garbage.jpg (" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sslab.data"):
        load_dataset("folder", tmp_path, test_fraction=0)  # from the cache: still reported
    assert "left out 2 of the 8 files" in caplog.text
    with pytest.raises(DataError) as e:
        load_dataset("folder", tmp_path, strict=True)
    message = one_line_data_error(e)
    assert "zz_truncated.png" in message and "remove it" in message and "--strict" in message


def test_folder_nested_subfolders_tiff_gif_and_every_left_out_file_listed(tmp_path, caplog):
    rng = np.random.default_rng(1)
    pictures = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(4)]
    save_image(tmp_path / "cat" / "a.png", pictures[0])
    save_image(tmp_path / "cat" / "2024" / "june" / "b.tif", pictures[1])  # nested: still a cat
    frames = [Image.fromarray(pictures[2]).convert("P", palette=Image.Palette.ADAPTIVE),
              Image.fromarray(pictures[3]).convert("P", palette=Image.Palette.ADAPTIVE)]
    (tmp_path / "dog").mkdir()
    frames[0].save(tmp_path / "dog" / "anim.gif", save_all=True, append_images=frames[1:])
    save_image(tmp_path / "dog" / "deep" / "c.TIFF", pictures[3])
    (tmp_path / "dog" / "deep" / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "dog", tmp_path / "dog" / "deep" / "again")  # a loop through a folder link
    os.symlink("self.png", tmp_path / "cat" / "self.png")  # a link to itself
    os.symlink(tmp_path / "gone.png", tmp_path / "cat" / "dangling.png")
    with caplog.at_level(logging.WARNING, logger="sslab.data"):
        data = load_dataset("folder", tmp_path, test_fraction=0)
    assert data.classes == ["cat", "dog"] and data.train_y.tolist() == [0, 0, 1, 1]
    x = data.train_x.permute(0, 2, 3, 1).numpy()
    # sorted paths: cat/2024/june/b.tif, cat/a.png, dog/anim.gif, dog/deep/c.TIFF
    assert np.array_equal(x[0], pictures[1]) and np.array_equal(x[1], pictures[0]) and np.array_equal(x[3], pictures[3])
    assert np.array_equal(x[2], np.asarray(frames[0].convert("RGB")))  # the GIF's first frame
    message = caplog.text
    assert "left out 4 of the 8 files" in message
    assert "not an image (.txt) (1): dog/deep/notes.txt" in message
    assert "symlink loop (2): " in message and "cat/self.png" in message and "dog/deep/again" in message
    assert "dangling symlink (1): cat/dangling.png" in message
    with pytest.raises(DataError) as e:
        load_dataset("folder", tmp_path, strict=True, cache=False)
    assert "symlink" in one_line_data_error(e)


def test_large_images_decode_reduced_to_the_training_size(tmp_path, monkeypatch):
    big = np.zeros((400, 600, 3), np.uint8)
    big[:, :300] = (200, 40, 40)
    save_image(tmp_path / "a" / "big.png", big)
    Image.fromarray(big).save(tmp_path / "a" / "big.jpg", quality=95)
    sizes = []
    real_to_array = folder._to_array
    monkeypatch.setattr(folder, "_to_array", lambda im: sizes.append(im.size) or real_to_array(im))
    data = load_dataset("folder", tmp_path, test_fraction=0, image_size=32, cache=False)
    assert data.train_x.shape == (2, 3, 32, 32)
    assert all(32 <= min(s) < 64 for s in sizes), sizes  # decoded at 50-75 px, not 400x600
    left, right = data.train_x[:, :, :, :12].float().mean((0, 2, 3)), data.train_x[:, :, :, -12:].float().mean((0, 2, 3))
    assert abs(left[0].item() - 200) < 8 and right.max().item() < 8  # the picture survives the reduction
    sizes.clear()
    assert load_dataset("folder", tmp_path, test_fraction=0, cache=False).train_x.shape == (2, 3, 400, 600)
    assert sorted(sizes) == [(600, 400), (600, 400)]  # without --image-size: full size


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("folder", tmp_path / "missing")
    assert str(tmp_path / "missing") in one_line_data_error(e) and "<class>" in str(e.value)

    save_image(tmp_path / "flat" / "0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError) as e:
        load_dataset("folder", tmp_path / "flat")
    assert "no class subfolders" in one_line_data_error(e)

    colour_folder(tmp_path / "empty")
    (tmp_path / "empty" / "zebra").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("folder", tmp_path / "empty")
    assert "zebra" in one_line_data_error(e)

    colour_folder(tmp_path / "split" / "train")
    colour_folder(tmp_path / "split" / "test")
    os.rename(tmp_path / "split" / "test" / "dog", tmp_path / "split" / "test" / "wolf")
    with pytest.raises(DataError) as e:
        load_dataset("folder", tmp_path / "split")
    message = one_line_data_error(e)
    assert "only in train: dog" in message and "only in test: wolf" in message

    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "0.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 images"):
        load_dataset("folder", tmp_path / "bad")


@needs_shared("cifar10-jpeg.tar.gz")
def test_real_cifar10_jpeg_folder_subset(tmp_path):
    wanted = {f"cifar10-jpeg/{split}/{c}/{i:04d}.jpg" for split, n in (("train", 8), ("test", 2))
              for c in CIFAR10_CLASSES for i in range(n)}
    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz") as tar:
        members = [m for m in tar if m.name.lstrip("./") in wanted]
        tar.extractall(tmp_path, members=members, filter="data")
    assert len(members) == len(wanted), "the tarball layout changed"
    data = load_dataset("folder", tmp_path / "cifar10-jpeg")
    assert data.classes == CIFAR10_CLASSES
    assert data.train_x.shape == (80, 3, 32, 32) and data.test_x.shape == (20, 3, 32, 32)
    assert 0.35 < data.mean[0] < 0.65  # natural images, not garbage


@pytest.mark.slow
@needs_shared("cifar10-jpeg.tar.gz")
def test_real_cifar10_jpeg_folder_second_load_is_fast(tmp_path):
    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    first = load_dataset("folder", tmp_path / "cifar10-jpeg")
    assert first.train_x.shape == (50000, 3, 32, 32) and first.test_x.shape == (10000, 3, 32, 32)
    assert first.mean == (0.4913, 0.4821, 0.4465)  # the README's statistics of this JPEG copy
    start = time.perf_counter()
    second = load_dataset("folder", tmp_path / "cifar10-jpeg")
    assert time.perf_counter() - start < 3.0 and torch.equal(second.train_x, first.train_x)


# ---- cache ----------------------------------------------------------------------------------------------
def test_cache_second_load_does_not_decode(tmp_path, monkeypatch, home_cache):
    write_cifar10(tmp_path)
    first = load_dataset("cifar10", tmp_path)
    assert len(entries(home_cache, "cifar10")) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(cifar, "decode", no_decoding)
    second = load_dataset("cifar10", tmp_path)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert first.classes == second.classes and first.mean == second.mean
    os.utime(tmp_path / "cifar-10-batches-py" / "test_batch", ns=(0, 0))  # a changed source file: decode again
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("cifar10", tmp_path)


def test_folder_cache_tracks_added_files(tmp_path, monkeypatch):
    colour_folder(tmp_path)
    first = load_dataset("folder", tmp_path, test_fraction=0)
    monkeypatch.setattr(folder, "read_image", lambda path: pytest.fail("decoded again"))
    assert torch.equal(load_dataset("folder", tmp_path, test_fraction=0).train_x, first.train_x)
    monkeypatch.undo()
    save_image(tmp_path / "cat" / "new.png", np.zeros((8, 8, 3), np.uint8))
    assert len(load_dataset("folder", tmp_path, test_fraction=0).train_x) == 7


@pytest.mark.parametrize("damage", ["truncated", "changed", "no header", "garbage header", "old format"])
def test_damaged_cache_is_rebuilt(tmp_path, caplog, home_cache, damage):
    write_cifar10(tmp_path)
    first = load_dataset("cifar10", tmp_path).train_x.clone()  # a copy: the damage below is done to the mapped file
    (entry,) = entries(home_cache, "cifar10")
    images, header = entry / "train_x.u8", entry / "header.json"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:1000])
    elif damage == "changed":  # same size, other bytes: caught by the content hash (a small cache is hashed on load)
        images.write_bytes(bytes(255 - b for b in images.read_bytes()))
    elif damage == "no header":  # what a build killed before its end leaves (it never renames it into place)
        header.unlink()
    elif damage == "garbage header":
        header.write_text("{not json")
    else:
        header.write_text(header.read_text().replace('"format": 2', '"format": 1'))
    with caplog.at_level(logging.WARNING, logger="sslab.data"):
        second = load_dataset("cifar10", tmp_path)
    assert "is not usable" in caplog.text and torch.equal(first, second.train_x)
    assert entries(home_cache, "cifar10") == [entry] and json.loads(header.read_text())["format"] == 2  # rewritten
    assert sorted(p.name for p in home_cache.iterdir()) == [entry.name, entry.name + ".lock"]  # nothing left over


def test_cache_goes_to_the_user_cache_folder_never_the_data_folder(tmp_path, monkeypatch, home_cache):
    write_cifar10(tmp_path / "data")
    before = sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*"))
    load_dataset("cifar10", tmp_path / "data")  # a read-only data folder works: nothing is written there
    assert sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*")) == before
    assert len(entries(home_cache, "cifar10")) == 1

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_dataset("cifar10", tmp_path / "data", image_size=16)
    assert len(entries(tmp_path / "xdg" / "sslab" / "cache", "cifar10")) == 1
    monkeypatch.setenv("SSLAB_CACHE_DIR", str(tmp_path / "env"))
    load_dataset("cifar10", tmp_path / "data", image_size=16)
    assert len(entries(tmp_path / "env", "cifar10")) == 1
    load_dataset("cifar10", tmp_path / "data", image_size=16, cache_dir=tmp_path / "data" / "asked")  # --cache-dir
    assert len(entries(tmp_path / "data" / "asked", "cifar10")) == 1


def test_unwritable_cache_folder_warns_and_loads_uncached(tmp_path, caplog):
    write_cifar10(tmp_path / "data")
    (tmp_path / "blocked").write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING, logger="sslab.data"):
        data = load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "blocked")
    assert len(data.train_x) > 0
    assert "could not cache the decoded cifar10 in" in caplog.text and "--cache-dir" in caplog.text


def test_config_records_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLAB_CACHE_DIR", str(tmp_path / "env"))
    cfg = DataConfig(dataset="digits")
    load_from_config(cfg, seed=0)
    assert cfg.cache_dir == str(tmp_path / "env")


def test_config_records_the_data_folder_found_without_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLAB_DATA", str(tmp_path))
    write_cifar10(tmp_path / "cifar10")
    cfg = DataConfig(dataset="cifar10")
    load_from_config(cfg, seed=0)
    assert cfg.data_dir is not None and len(load_dataset("cifar10", cfg.data_dir).train_x) == 15  # finds it again
    assert Path(cfg.data_dir) in (tmp_path / "cifar10", *(tmp_path / "cifar10").rglob("*"))
    bundled = DataConfig(dataset="digits")
    load_from_config(bundled, seed=0)
    assert bundled.data_dir is None  # inside the package: nothing to record
    given = DataConfig(dataset="cifar10", data_dir=str(tmp_path / "cifar10"))
    load_from_config(given, seed=0)
    assert given.data_dir == str(tmp_path / "cifar10")


def test_cache_key_includes_image_size(tmp_path, home_cache):
    write_cifar10(tmp_path)
    assert load_dataset("cifar10", tmp_path, image_size=16).train_x.shape[-1] == 16
    assert load_dataset("cifar10", tmp_path).train_x.shape[-1] == 32
    assert len(entries(home_cache, "cifar10")) == 2


# ---- the cache is memory-mapped, built chunk by chunk, resumable, locked ------------------------------------
def test_loading_a_cache_maps_the_images_and_unpickles_nothing(tmp_path, monkeypatch, home_cache):
    write_cifar10(tmp_path)
    first = load_dataset("cifar10", tmp_path)
    (entry,) = entries(home_cache, "cifar10")
    header = json.loads((entry / "header.json").read_text())
    assert header["arrays"]["train_x"]["shape"] == [15, 3, 32, 32] and header["classes"] == CIFAR10_CLASSES
    assert (entry / "train_x.u8").stat().st_size == 15 * 3072  # raw uint8, nothing else

    def refuse(*args, **kwargs):
        raise AssertionError("a cache load must not unpickle")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (np, "load"), (cifar, "decode")):
        monkeypatch.setattr(module, name, refuse)
    second = load_dataset("cifar10", tmp_path)
    assert torch.equal(second.train_x, first.train_x) and second.classes == first.classes
    if sys.platform.startswith("linux"):  # the images are pages of the cache file, not a copy
        assert str(entry / "train_x.u8") in Path("/proc/self/maps").read_text()


def test_a_stopped_folder_build_continues_where_it_stopped(tmp_path, monkeypatch, home_cache, capsys):
    colour_folder(tmp_path / "data", per_class=40)  # 80 images, decoded 8 to a task
    reference = load_dataset("folder", tmp_path / "data", test_fraction=0, cache=False)
    monkeypatch.setattr(folder, "_FILES_PER_TASK", 8)
    monkeypatch.setattr(cache, "CHECKPOINT_SECONDS", 0)  # a record after every chunk
    real_task, decoded = folder._decode_task, []

    def ctrl_c_after_four_tasks(task):
        if len(decoded) == 4:
            raise KeyboardInterrupt
        decoded.append(len(task[0]))
        return real_task(task)

    monkeypatch.setattr(folder, "_decode_task", ctrl_c_after_four_tasks)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("folder", tmp_path / "data", test_fraction=0)
    assert entries(home_cache, "folder") == []  # a stopped build is never taken for a cache
    assert "after 32 source files" in capsys.readouterr().err
    (partial,) = home_cache.glob("folder-*.partial")
    assert json.loads((partial / "progress.json").read_text())["splits"]["train"]["files"] == 32
    with open(partial / "train_x.u8", "ab") as f:  # a chunk written but not recorded before the stop: cut away
        f.write(b"\x07" * 1000)
    decoded.clear()
    monkeypatch.setattr(folder, "_decode_task", lambda task: decoded.append(len(task[0])) or real_task(task))
    data = load_dataset("folder", tmp_path / "data", test_fraction=0)
    assert sum(decoded) == 80 - 32  # only what was missing
    assert torch.equal(data.train_x, reference.train_x) and torch.equal(data.train_y, reference.train_y)
    assert np.allclose(data.mean, reference.mean, atol=1e-4) and not list(home_cache.glob("*.partial"))


def test_a_stopped_build_whose_files_lost_recorded_images_starts_again(tmp_path, monkeypatch, home_cache, caplog):
    colour_folder(tmp_path, per_class=12)
    monkeypatch.setattr(folder, "_FILES_PER_TASK", 8)
    monkeypatch.setattr(cache, "CHECKPOINT_SECONDS", 0)
    real_task, decoded = folder._decode_task, []

    def stop_after_two(task):
        if len(decoded) == 2:
            raise KeyboardInterrupt
        decoded.append(len(task[0]))
        return real_task(task)

    monkeypatch.setattr(folder, "_decode_task", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("folder", tmp_path, test_fraction=0)
    (partial,) = home_cache.glob("folder-*.partial")
    (partial / "train_x.u8").write_bytes(b"")  # cut below what progress.json recorded: it cannot be trusted
    decoded.clear()
    monkeypatch.setattr(folder, "_decode_task", lambda task: decoded.append(len(task[0])) or real_task(task))
    with caplog.at_level(logging.WARNING, logger="sslab.data"):
        data = load_dataset("folder", tmp_path, test_fraction=0)
    assert "lost data it had recorded; starting it again" in caplog.text and sum(decoded) == 24
    assert torch.equal(data.train_x, load_dataset("folder", tmp_path, test_fraction=0, cache=False).train_x)


SLOW_DECODE = """
import time
import sslab.data.folder as folder

real = folder._read_or_reason


def slow(path, image_size):
    time.sleep(0.01)
    return real(path, image_size)


folder._read_or_reason = slow
"""


@pytest.mark.slow  # about 15 s on 2 quiet cores: a child process and its two workers each import torch
def test_a_killed_parallel_build_resumes_to_the_same_cache(tmp_path, home_cache):
    """kill -9 of a build on two worker processes (each image slowed to 10 ms by a sitecustomize that every
    process of the child imports), then the rest decoded here: the result is the folder, bit for bit."""
    colour_folder(tmp_path / "data", per_class=150)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_DECODE)
    src = Path(__file__).resolve().parents[1] / "src"
    code = ("import sslab.data.cache as c, sslab.data.folder as f, sslab.data as d; c.CHECKPOINT_SECONDS = 0; "
            f"f.PROCESS_MIN_FILES = 0; f._FILES_PER_TASK = 8; d.load_dataset('folder', {str(tmp_path / 'data')!r}, "
            "test_fraction=0, workers=2)")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{src}", "SSLAB_CACHE_DIR": str(home_cache)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    progress, done = None, 0
    deadline = time.monotonic() + 120
    while done < 40 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        progress = next(home_cache.glob("folder-*.partial/progress.json"), None)
        with_files = json.loads(progress.read_text()).get("splits", {}) if progress else {}
        done = with_files.get("train", {}).get("files", 0)
    child.kill()  # SIGKILL: no handler runs
    child.wait()
    assert 40 <= done < 300, (done, child.stderr.read()[-2000:])
    assert entries(home_cache, "folder") == []
    data = load_dataset("folder", tmp_path / "data", test_fraction=0)  # continues, in this process
    reference = load_dataset("folder", tmp_path / "data", test_fraction=0, cache=False)
    assert torch.equal(data.train_x, reference.train_x) and torch.equal(data.train_y, reference.train_y)


def test_decoding_on_worker_processes_gives_the_same_images(tmp_path, monkeypatch):
    colour_folder(tmp_path, per_class=12)
    save_image(tmp_path / "cat" / "grey.png", np.full((6, 5), 90, np.uint8))  # another size and mode: resized, RGB
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    here = load_dataset("folder", tmp_path, test_fraction=0, cache=False, workers=1)
    monkeypatch.setattr(folder, "PROCESS_MIN_FILES", 0)
    monkeypatch.setattr(folder, "_FILES_PER_TASK", 4)
    spread = load_dataset("folder", tmp_path, test_fraction=0, workers=2)  # 7 tasks on 2 processes, into the cache
    assert torch.equal(spread.train_x, here.train_x) and torch.equal(spread.train_y, here.train_y)
    assert spread.train_x.shape == (25, 3, 8, 8)


def test_no_room_for_the_cache_is_one_line_and_the_build_continues_once_there_is(tmp_path, monkeypatch, home_cache):
    colour_folder(tmp_path / "data", per_class=20)
    reference = load_dataset("folder", tmp_path / "data", test_fraction=0, cache=False)
    full_disk = shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000)
    with monkeypatch.context() as patch:
        patch.setattr(cache.shutil, "disk_usage", lambda path: full_disk)
        with pytest.raises(DataError) as e:
            load_dataset("folder", tmp_path / "data", test_fraction=0)
    message = one_line_data_error(e)
    assert "needs" in message and "only 0.0 MiB are free" in message and "--cache-dir" in message

    monkeypatch.setattr(cache, "CHECKPOINT_SECONDS", 0)
    monkeypatch.setattr(folder, "_FILES_PER_TASK", 8)
    real_append, appended = cache.EntryWriter.append, []

    def disk_fills_up(self, *args, **kwargs):  # ENOSPC in the middle of the build
        appended.append(1)
        if len(appended) == 3:
            raise OSError(28, "No space left on device")
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(cache.EntryWriter, "append", disk_fills_up)
    with pytest.raises(DataError) as e:
        load_dataset("folder", tmp_path / "data", test_fraction=0)
    message = one_line_data_error(e)
    assert "is full" in message and "kept in" in message and "run the same command again" in message
    monkeypatch.setattr(cache.EntryWriter, "append", real_append)
    data = load_dataset("folder", tmp_path / "data", test_fraction=0)  # room again: it continues
    assert torch.equal(data.train_x, reference.train_x)

    write_cifar10(tmp_path / "cifar")  # a dataset decoded in memory: no room is the same one line
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: full_disk)
    with pytest.raises(DataError, match="only 0.0 MiB are free"):
        load_dataset("cifar10", tmp_path / "cifar")
    assert not list(home_cache.glob("cifar10-*.partial"))  # nothing to continue: its partial entry is gone


def test_a_cache_folder_that_vanishes_during_the_build_is_one_line(tmp_path, monkeypatch, home_cache):
    colour_folder(tmp_path / "data", per_class=20)
    monkeypatch.setattr(cache, "CHECKPOINT_SECONDS", 0)
    monkeypatch.setattr(folder, "_FILES_PER_TASK", 8)
    real_append = cache.EntryWriter.append

    def folder_removed(self, *args, **kwargs):
        shutil.rmtree(home_cache)  # another user, a cleanup job
        return real_append(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(cache.EntryWriter, "append", folder_removed)
        with pytest.raises(DataError) as e:
            load_dataset("folder", tmp_path / "data", test_fraction=0)
    assert "disappeared while the cache was being built" in one_line_data_error(e)
    assert len(load_dataset("folder", tmp_path / "data", test_fraction=0).train_x) == 40  # built anew
    assert len(entries(home_cache, "folder")) == 1


def test_a_second_loader_waits_for_the_build_and_maps_it(tmp_path, monkeypatch, home_cache, capsys):
    """Two loaders of one dataset (torchrun's ranks, two jobs on a shared cache): one decodes, the other waits
    on the entry's file lock, then maps what the first wrote."""
    colour_folder(tmp_path / "data", per_class=10)
    monkeypatch.setattr(cache, "LOCK_POLL_SECONDS", 0.05)
    building, release, decoded = threading.Event(), threading.Event(), []
    real_task = folder._decode_task

    def held_up(task):
        decoded.append(len(task[0]))
        building.set()
        release.wait(30)
        return real_task(task)

    monkeypatch.setattr(folder, "_decode_task", held_up)
    loaded = {}

    def load(name):
        loaded[name] = load_dataset("folder", tmp_path / "data", test_fraction=0)

    first = threading.Thread(target=load, args=("first",))
    first.start()
    assert building.wait(30)
    second = threading.Thread(target=load, args=("second",))
    second.start()
    time.sleep(0.5)
    assert second.is_alive() and "waiting for process" in capsys.readouterr().err  # it says whom it waits for
    release.set()
    first.join(30)
    second.join(30)
    assert sum(decoded) == 20  # decoded once
    assert torch.equal(loaded["first"].train_x, loaded["second"].train_x)


def test_a_split_of_a_cache_too_large_to_copy_stays_rows_of_the_map(tmp_path, monkeypatch):
    colour_folder(tmp_path, per_class=10)
    copied = load_dataset("folder", tmp_path, test_fraction=0.3, limit_train=9)
    full = load_dataset("folder", tmp_path, test_fraction=0)
    monkeypatch.setattr(sslab.data, "COPY_MAX_BYTES", 0)
    rows = load_dataset("folder", tmp_path, test_fraction=0.3, limit_train=9)
    assert isinstance(rows.train_x, ImageRows) and isinstance(rows.test_x, ImageRows)
    assert rows.train_x.base.data_ptr() == rows.test_x.base.data_ptr()  # both index the one mapped cache
    assert torch.equal(rows.train_x.to("cpu"), copied.train_x) and torch.equal(rows.test_x[:], copied.test_x)
    assert torch.equal(rows.train_y, copied.train_y) and rows.mean == full.mean  # the statistics of the split
    assert rows.to("cpu").train_x.shape == (9, 3, 8, 8)


def test_store_size_keeps_the_images_larger_than_the_training_size(tmp_path):
    write_cifar10(tmp_path)
    stored = load_dataset("cifar10", tmp_path, image_size=16, store_size=24)
    assert stored.train_x.shape[-1] == 24 and stored.train_size == 16 and stored.to("cpu").crop_size == 16
    plain = load_dataset("cifar10", tmp_path, image_size=16)
    assert plain.train_x.shape[-1] == 16 and plain.crop_size is None and plain.train_size == 16
    with pytest.raises(ConfigError, match="--store-size 8 is smaller than --image-size 16"):
        load_dataset("cifar10", tmp_path, image_size=16, store_size=8)


# ---- ImageNet-style folders -------------------------------------------------------------------------------
def test_train_and_val_folders_are_a_split_and_other_top_level_entries_are_reported(tmp_path, caplog):
    colour_folder(tmp_path / "train")
    colour_folder(tmp_path / "val", per_class=2)
    save_image(tmp_path / "test" / "ILSVRC2012_test_00000001.png", np.zeros((8, 8, 3), np.uint8))  # no classes
    (tmp_path / "extra").mkdir()
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench\n")
    with caplog.at_level(logging.WARNING, logger="sslab.data"):
        data = load_dataset("folder", tmp_path)
    assert data.train_x.shape == (6, 3, 8, 8) and data.test_x.shape == (4, 3, 8, 8) and data.test_y.tolist() == [0, 0, 1, 1]
    assert "using train/ and val/ as the test split" in caplog.text
    assert "LOC_synset_mapping.txt, extra/, test/" in caplog.text

    shutil.rmtree(tmp_path / "val")
    colour_folder(tmp_path / "validation", per_class=1)
    assert len(load_dataset("folder", tmp_path).test_x) == 2  # validation/ too


def test_val_without_train_is_read_as_a_class_and_said_so(tmp_path, caplog):
    colour_folder(tmp_path)
    colour_folder(tmp_path / "val" / "x", per_class=1)
    with caplog.at_level(logging.WARNING, logger="sslab.data"):
        data = load_dataset("folder", tmp_path, test_fraction=0)
    assert data.classes == ["cat", "dog", "val"] and "has val/ but no train/" in caplog.text


def test_imagenet100_is_made_of_links_to_the_cmc_classes(tmp_path, capsys):
    from sslab import cli
    from sslab.data import imagenet100

    assert len(imagenet100.CLASSES) == len(set(imagenet100.CLASSES)) == 100
    assert imagenet100.CLASSES[:2] == ["n02869837", "n01749939"] and imagenet100.CLASSES[-1] == "n02090622"
    imagenet = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in imagenet100.CLASSES + ["n99999999"]:  # one class more: ImageNet-1k has 900 more
            save_image(imagenet / split / wnid / f"{split}.png", np.full((4, 4, 3), int(wnid[-2:]), np.uint8))
    assert cli.main(["imagenet100", "--imagenet", str(imagenet), "--out", str(tmp_path / "in100")]) == 0
    assert "100 class folders in train/" in capsys.readouterr().out
    assert all((tmp_path / "in100" / "train" / wnid).is_symlink() for wnid in imagenet100.CLASSES)  # no copies
    data = load_dataset("folder", tmp_path / "in100", cache=False)
    assert data.classes == sorted(imagenet100.CLASSES) and data.train_x.shape == (100, 3, 4, 4) and len(data.test_x) == 100
    assert cli.main(["imagenet100", "--imagenet", str(imagenet), "--out", str(tmp_path / "in100")]) == 0  # again: kept

    shutil.rmtree(imagenet / "val")
    save_image(imagenet / "val" / "ILSVRC2012_val_00000001.png", np.zeros((4, 4, 3), np.uint8))  # the raw, flat val/
    assert cli.main(["imagenet100", "--imagenet", str(imagenet), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sslab: error: ") and "sort them into val/<wnid>/" in err


# ---- the real data in ../shared -------------------------------------------------------------------------
@needs_dataset("fashion-mnist")
def test_real_fashion_mnist():
    data = load_dataset("fashion-mnist", shared_dataset_root("fashion-mnist"), cache=False)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert round(data.mean[0], 3) == 0.286 and round(data.std[0], 3) == 0.353
    assert torch.bincount(data.train_y).tolist() == [6000] * 10


@needs_shared("mnist.npz")
def test_real_mnist_npz():
    data = load_dataset("mnist", SHARED_DATA, cache=False)
    assert data.train_x.shape == (60000, 1, 28, 28) and len(data.test_x) == 10000
    assert round(data.mean[0], 4) == 0.1307 and data.classes == [str(d) for d in range(10)]


def test_registry_lists_every_loader():
    expected = {"cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "digits", "folder", "npz"}
    assert expected <= set(DATASETS.names())


def test_fashion_mnist_mini_ships_inside_the_package_with_its_licence():
    from sslab.data.idx import FASHION_MNIST_MINI_DIR

    data = load_dataset("fashion-mnist-mini", cache=False)
    assert tuple(data.train_x.shape) == (10000, 1, 28, 28) and tuple(data.test_x.shape) == (2000, 1, 28, 28)
    assert data.train_y.bincount().tolist() == [1000] * 10 and data.test_y.bincount().tolist() == [200] * 10
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert 0.25 < data.mean[0] < 0.32  # Fashion-MNIST's train mean is 0.2860
    assert "Zalando SE" in (FASHION_MNIST_MINI_DIR / "LICENSE").read_text()
    assert all(f.stat().st_size < 2 * 2**20 for f in FASHION_MNIST_MINI_DIR.iterdir())  # the repo's file limit
