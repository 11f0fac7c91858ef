"""Checkpoints written atomically (temp file, fsync, rename) and read back safely, with clear errors.

Loading a file never runs code from it: every file sslab reads back with torch is loaded with
`weights_only=True`, which unpickles only tensors and plain data (dicts, lists, tuples, numbers, strings).
`save_checkpoint` turns what that loader refuses into plain data first (a numpy array, such as numpy's RNG
state, becomes a marked dict holding its bytes as a tensor) and `load_checkpoint` turns it back, so callers
pass and get plain dicts. A file holding any other object is refused with one line.
"""
from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslab.errors import CheckpointError
from sslab.safe_write import write_bytes, write_stream

FORMAT = "sslab-checkpoint-1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`safe_write.write_bytes` (the name older code uses): a reader sees the old file or the new one, never
    half of one, and nothing is written through a link inside a run folder."""
    write_bytes(path, data)


def first_line(e: BaseException, limit: int = 160) -> str:
    """An exception as one short line (for a one-line error message): its text with the line breaks folded."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


NDARRAY = "__sslab_ndarray__"  # marks a numpy array stored as {NDARRAY: uint8 tensor of its bytes, dtype, shape}


def to_plain(obj: Any) -> Any:
    """`obj` with numpy arrays as marked dicts and numpy scalars as Python numbers: what `weights_only` loads.
    Containers are rebuilt only where something inside them changed (a model's state_dict is passed as is)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("a numpy array of Python objects cannot be stored in a checkpoint")
        raw = np.ascontiguousarray(obj).reshape(-1).view(np.uint8)
        return {NDARRAY: torch.from_numpy(raw.copy()), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    return _map_children(obj, to_plain)


def from_plain(obj: Any) -> Any:
    """The inverse of `to_plain`."""
    if isinstance(obj, dict) and NDARRAY in obj:
        raw = obj[NDARRAY]
        if not isinstance(raw, torch.Tensor) or raw.dtype != torch.uint8:
            raise ValueError("a stored numpy array without its bytes")
        return np.frombuffer(raw.numpy().tobytes(), dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    return _map_children(obj, from_plain)


def _map_children(obj: Any, fn: Any) -> Any:
    if isinstance(obj, dict):
        items = [(k, fn(v)) for k, v in obj.items()]
        if all(new is old for (_, new), old in zip(items, obj.values())):
            return obj
        out = type(obj)(items) if type(obj) in (dict, OrderedDict) else dict(items)
        if hasattr(obj, "_metadata"):  # a state_dict's per-module versions
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        new = [fn(v) for v in obj]
        return obj if all(a is b for a, b in zip(new, obj)) else type(obj)(new)
    return obj


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    plain = {"format": FORMAT, **to_plain(state)}
    write_stream(path, lambda f: torch.save(plain, f))


# what checkpoints written before `to_plain` hold besides plain data: numpy's RNG state (a uint32 array)
_OLD_NUMPY_RNG = [np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                  (getattr(np, "_core", getattr(np, "core", None)).multiarray._reconstruct,
                   "numpy.core.multiarray._reconstruct")]
if hasattr(np, "_core"):  # numpy 2 names it numpy._core.multiarray._reconstruct
    _OLD_NUMPY_RNG.append(np._core.multiarray._reconstruct)


def load_safely(path: Path, map_location: str | torch.device = "cpu", what: str = "checkpoint",
                advice: str = "use another checkpoint (checkpoints/epoch_*.pt) or retrain") -> Any:
    """torch.load with `weights_only=True` (nothing in the file runs), then `from_plain`. CheckpointError (one
    line) for a truncated or foreign file, and for one holding objects other than tensors and plain data."""
    try:
        with torch.serialization.safe_globals(_OLD_NUMPY_RNG), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on odd pickle protocols: the error says enough
            raw = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:  # not a damaged file: out of memory (the command line says so)
        raise
    except Exception as e:  # torch raises several types for truncated or foreign files
        text = str(e)
        if "Weights only load failed" in text or "weights_only" in text:
            found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", text)
            name = next((g for g in found.groups() if g), "?") if found else "?"
            raise CheckpointError(f"{what} {path} holds an object that is not a tensor or plain data ({name}); "
                                  "refused, because loading it could run code; use a file written by sslab") from None
        raise CheckpointError(f"{what} {path} is unreadable or truncated ({type(e).__name__}); {advice}") from None
    try:
        return from_plain(raw)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{what} {path} is unreadable ({first_line(e)}); {advice}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict; CheckpointError (one line) when it is missing, truncated or not ours."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "checkpoints" / "last.pt", path / "last.pt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path} (looked for checkpoints/last.pt); "
                                  "train first with `sslab train`, or pass a checkpoint file")
        path = found
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a run folder or a .pt file written by sslab")
    state = load_safely(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an sslab checkpoint; pass a file written by `sslab train`")
    return state
