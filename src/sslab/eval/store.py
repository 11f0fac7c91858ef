"""Baseline accuracies computed once and kept across runs.

A raw-pixel baseline depends only on the data and the protocol's settings, an untrained-network baseline only
on the untrained weights, their input normalisation, the data and the settings. `sslab eval` keys each
baseline by exactly that and keeps it in the cache folder the datasets use (`sslab.data.cache.cache_folder`),
under `baselines/`, so a second run on the same data pays nothing for its baselines.

- The key is a JSON object: the protocol's settings and fingerprints (SHA-256 of the bytes, shapes and dtypes)
  of the data tensors and of the untrained weights. Its file is named by a hash of its canonical JSON and
  holds the key itself, which is compared on reading (a changed key is a miss, never a wrong number).
- Files are JSON, written atomically (a reader sees the old file or the new one), read without unpickling.
- A folder that cannot be written is said once; the baselines are then computed for this eval only.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from sslab.checkpoint import atomic_write_bytes
from sslab.errors import RunFolderError

BASELINE_FORMAT = 1  # bump when a baseline protocol changes what it computes
STORE_FOLDER = "baselines"
HASH_CHUNK_BYTES = 1 << 24  # tensors are hashed 16 MiB at a time (data on a GPU is copied a chunk at a time)


def _update_with_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}:{tuple(t.shape)};".encode())
    flat = t.reshape(-1)
    step = max(1, HASH_CHUNK_BYTES // max(1, t.element_size()))
    for i in range(0, flat.numel(), step):
        h.update(flat[i:i + step].cpu().contiguous().view(torch.uint8).numpy().tobytes())


def tensor_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]], extra: Any = None) -> str:
    """SHA-256 (32 hex digits) of named tensors' names, dtypes, shapes and bytes, and of `extra` (JSON)."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for name, t in tensors:
        h.update(name.encode() + b"\0")
        _update_with_tensor(h, t)
    return h.hexdigest()[:32]


def data_fingerprint(data) -> str:
    """The identity of a dataset's content: both splits' images and labels, and the class names."""
    return tensor_fingerprint([("train_x", data.train_x), ("train_y", data.train_y), ("test_x", data.test_x),
                               ("test_y", data.test_y)], extra={"classes": [str(c) for c in data.classes]})


def network_fingerprint(module: torch.nn.Module) -> str:
    """The identity of a network's weights: every parameter and buffer, by name (architecture, width and seed
    all show in them)."""
    return tensor_fingerprint(sorted(module.state_dict().items()), extra={"type": type(module).__name__})


def key_hash(key: dict[str, Any]) -> str:
    """The hash naming a key's file: SHA-256 of its canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


class BaselineStore:
    """Baseline accuracies by key, in `folder` (None: nothing is kept)."""

    def __init__(self, folder: Path | None, log: Callable[[str], None] = print):
        self.folder, self.log = folder, log
        self.writable = folder is not None

    def path(self, key: dict[str, Any]) -> Path | None:
        return None if self.folder is None else self.folder / f"{key_hash(key)}.json"

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The stored entry for exactly `key` ({"accuracy", "computed", "seconds", "device", ...}), else None."""
        path = self.path(key)
        if path is None:
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        accuracy = entry.get("accuracy")
        if accuracy is not None and not (isinstance(accuracy, (int, float)) and 0 <= accuracy <= 1):
            return None
        return entry

    def put(self, key: dict[str, Any], accuracy: float | None, seconds: float, device: str) -> dict[str, Any]:
        """Keep `accuracy` under `key`; returns the entry (with "stored": False when it could not be written)."""
        entry = {"key": key, "accuracy": accuracy, "computed": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "seconds": round(seconds, 3), "device": device, "torch": torch.__version__}
        path = self.path(key)
        if path is None or not self.writable:
            return {**entry, "stored": False}
        try:
            atomic_write_bytes(path, (json.dumps(entry, indent=1, sort_keys=True) + "\n").encode())
        except (OSError, RunFolderError):  # the atomic writer reports an OSError as RunFolderError
            self.writable = False
            self.log(f"note: cannot write to {self.folder}, so the baselines are computed for this eval only "
                     "(set $SSLAB_CACHE_DIR to a writable folder to keep them)")
            return {**entry, "stored": False}
        return {**entry, "stored": True}


__all__ = ["BASELINE_FORMAT", "BaselineStore", "data_fingerprint", "network_fingerprint", "key_hash",
           "tensor_fingerprint", "STORE_FOLDER"]
