"""Downloads against a local HTTP server that serves small files under the official names: checksums,
extraction, failures, and `load_dataset(..., download=True)` end to end through SSLAB_DOWNLOAD_MIRROR."""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import re
import socket
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from sslab.data import load_dataset
from sslab.data.download import MIRROR_ENV, SOURCES, Resource, download, fetch, source_url
from sslab.errors import DataError


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1, set as the download mirror; yields the folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{server.server_port}/mirror/")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (folder / "mirror").mkdir()
    yield folder / "mirror"
    server.shutdown()
    server.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".extract-")]


def cifar10_archive(per_batch: int = 2) -> tuple[bytes, np.ndarray]:
    """A cifar-10-python.tar.gz in the official layout; returns it and the training images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6 * per_batch, 3072), dtype=np.uint8)
    members = {f"cifar-10-batches-py/{name}": pickle.dumps({"data": images[b * per_batch:(b + 1) * per_batch],
                                                           "labels": [b] * per_batch}, protocol=2)
               for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])}
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(meta, protocol=2)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue(), images[: 5 * per_batch].reshape(-1, 3, 32, 32)


def test_mirror_replaces_everything_before_the_file_name(monkeypatch):
    resource = SOURCES["cifar10"][0]
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert source_url(resource) == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:8000/data")
    assert source_url(resource) == "http://127.0.0.1:8000/data/cifar-10-python.tar.gz"


def test_source_table_uses_official_hosts_and_md5s():
    hosts = {"www.cs.toronto.edu", "ai.stanford.edu", "ossci-datasets.s3.amazonaws.com",
             "fashion-mnist.s3-website.eu-central-1.amazonaws.com"}
    for name, resources in SOURCES.items():
        for r in resources:
            assert urlparse(r.url).hostname in hosts and re.fullmatch(r"[0-9a-f]{32}", r.md5), (name, r)
    assert SOURCES["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"  # as published on the CIFAR page


def test_fetch_success(served, tmp_path):
    payload = gzip.compress(b"idx bytes" * 1000)
    (served / "train-labels-idx1-ubyte.gz").write_bytes(payload)
    resource = Resource("https://example.org/x/train-labels-idx1-ubyte.gz", md5(payload))
    dest = tmp_path / "dest"
    path = fetch(resource, dest)
    assert path == dest / "train-labels-idx1-ubyte.gz" and path.read_bytes() == payload
    assert leftovers(dest) == []


def test_checksum_mismatch_raises_and_deletes(served, tmp_path):
    (served / "t10k-images-idx3-ubyte.gz").write_bytes(b"a corrupted download")
    resource = Resource("https://example.org/t10k-images-idx3-ubyte.gz", md5(b"the real file"))
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as e:
        download("mnist", dest, [resource])
    message = str(e.value)
    assert "checksum mismatch" in message and "t10k-images-idx3-ubyte.gz" in message and "\n" not in message
    assert list(dest.iterdir()) == []


def test_server_down_raises_data_error(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(DataError) as e:
        fetch(SOURCES["cifar10"][0], tmp_path)
    message = str(e.value)
    assert f"from http://127.0.0.1:{port}/cifar-10-python.tar.gz" in message and "\n" not in message
    assert "download it by hand and put it in " + str(tmp_path) in message and "check your connection" in message
    assert list(tmp_path.iterdir()) == []


def test_missing_file_on_server_raises(served, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(Resource("https://example.org/stl10_binary.tar.gz", "0" * 32), tmp_path)


def test_verified_file_is_not_fetched_again(served, tmp_path):
    payload = b"already here"
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(payload)  # the server does not have it
    download("mnist", tmp_path, [Resource("https://example.org/train-images-idx3-ubyte.gz", md5(payload))])
    assert (tmp_path / "train-images-idx3-ubyte.gz").read_bytes() == payload


def test_archive_with_unsafe_paths_is_refused(served, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (served / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        download("cifar10", dest, [Resource(SOURCES["cifar10"][0].url, md5(buffer.getvalue()))])
    assert not (tmp_path / "escaped.txt").exists() and leftovers(dest) == []


def test_load_cifar10_with_download_end_to_end(served, tmp_path, monkeypatch):
    archive, train_images = cifar10_archive()
    (served / "cifar-10-python.tar.gz").write_bytes(archive)
    monkeypatch.setitem(SOURCES, "cifar10", [Resource(SOURCES["cifar10"][0].url, md5(archive))])
    root = tmp_path / "data"
    with pytest.raises(DataError, match="pass --download"):
        load_dataset("cifar10", root)
    data = load_dataset("cifar10", root, download=True)
    assert torch.equal(data.train_x, torch.from_numpy(train_images)) and data.classes[3] == "c3"
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and data.test_y.tolist() == [5, 5]
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not (root / "cifar-10-python.tar.gz").exists() and leftovers(root) == []
    (served / "cifar-10-python.tar.gz").unlink()  # present now: no second download
    assert torch.equal(load_dataset("cifar10", root, download=True).train_x, data.train_x)


def test_load_fashion_mnist_with_download_keeps_gz(served, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.array([0, 1, 2, 9], np.uint8),
              rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), np.array([5, 6], np.uint8)]
    resources = []
    for official, array in zip(SOURCES["fashion-mnist"], arrays):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        payload = gzip.compress(header + array.tobytes())
        (served / official.filename).write_bytes(payload)
        resources.append(Resource(official.url, md5(payload)))
    monkeypatch.setitem(SOURCES, "fashion-mnist", resources)
    data = load_dataset("fashion-mnist", tmp_path / "data", download=True)
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(arrays[0])) and data.train_y.tolist() == [0, 1, 2, 9]
    assert data.classes[9] == "Ankle boot"
    assert sorted(p.name for p in (tmp_path / "data" / "FashionMNIST" / "raw").glob("*.gz")) == sorted(
        r.filename for r in resources)


def test_unwritable_destination_is_a_data_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match="cannot write to"):
        fetch(SOURCES["mnist"][0], tmp_path / "file" / "sub")
