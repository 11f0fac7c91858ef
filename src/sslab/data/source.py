"""What a loader is asked for (`LoadRequest`) and what it answers (`Source`): where the files are and
how to decode them. `load_dataset` turns a `Source` into an `ImageData`, through the cache."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from sslab.data.base import ImageData


@dataclass(frozen=True)
class LoadRequest:
    root: Path  # the folder (or file) given by --data-dir, or the default for this dataset
    root_given: bool = True  # False: `root` is the default, so loaders may also look in system folders
    download: bool = False
    train_split: str = "train"
    image_size: Optional[int] = None
    strict: bool = False
    workers: Optional[int] = None  # decoding processes (folders); None: every core (data/parallel.py)


@dataclass
class Source:
    """A located dataset. `decode()` reads `files` into uint8 tensors; it returns an empty test split when
    the source ships none. `options` are the loader settings that change the decoded content (cache key).
    `build(writer)`, where given, writes the decoded images into a cache entry chunk by chunk without holding
    them in memory, and continues a stopped build (data/cache.py); otherwise the cache writes `decode()`'s."""

    decode: Callable[[], ImageData]
    build: Optional[Callable[[Any], tuple[str, list[str], list[str]]]] = None
    files: list[Path] = field(default_factory=list)  # their sizes and mtimes key the cache
    files_base: Optional[Path] = None  # `files` are keyed by their path relative to this folder
    cached: bool = False  # decode once and keep the tensors in the cache folder (data/cache.py)
    options: dict[str, Any] = field(default_factory=dict)


def default_root(name: str) -> Path:
    """`$SSLAB_DATA/<name>` if set, else `~/.cache/sslab/data/<name>`."""
    base = os.environ.get("SSLAB_DATA")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "sslab" / "data") / name
