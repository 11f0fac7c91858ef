"""Datasets as uint8 tensors: `load_dataset("cifar10")` -> `ImageData`.

Each loader module registers a locator in `DATASETS` (`@DATASETS.register("cifar10")`) that finds (or
downloads) the files and says how to decode them; `load_dataset` then decodes once through the cache,
resizes, holds out a test split where the source has none, and applies the limits.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from sslab.data import cifar, digits, folder, idx, npz, stl10  # noqa: F401  (each registers its loader)
from sslab.data.base import ImageData
from sslab.data.cache import cache_folder, cache_key, load_or_decode
from sslab.data.prepare import resize_images, stratified_split, stratified_subset
from sslab.data.source import LoadRequest, Source, default_root
from sslab.errors import ConfigError, DataError
from sslab.registry import DATASETS

if TYPE_CHECKING:  # sslab.config imports this package: its settings name the datasets
    from sslab.config import DataConfig

TRAIN_SPLITS = {"stl10": stl10.TRAIN_SPLITS}  # datasets with more than a "train" split to train on


def load_dataset(name: str, root: str | Path | None = None, *, download: bool = False, train_split: str = "train",
                 image_size: Optional[int] = None, test_fraction: float = 0.2, seed: int = 0, strict: bool = False,
                 limit_train: Optional[int] = None, limit_test: Optional[int] = None, cache: bool = True,
                 cache_dir: str | Path | None = None) -> ImageData:
    """Load dataset `name` from `root` (default: `$SSLAB_DATA/<name>` or `~/.cache/sslab/data/<name>`).

    Decoded tensors are cached in `cache_dir` (default: `data.cache.cache_folder()`, the user's cache
    folder; never the data folder unless it is asked for); `cache=False` decodes without a cache.
    `image_size` resizes every image to a square (bilinear, antialiased); sources without a test split
    get a stratified, seeded `test_fraction`; `limit_train`/`limit_test` keep that many images,
    stratified and seeded.
    """
    locate = DATASETS.get(name)
    if train_split not in TRAIN_SPLITS.get(name, ("train",)):
        raise ConfigError(f"--train-split {train_split!r} is not a split of {name}; choose one of "
                          f"{', '.join(TRAIN_SPLITS.get(name, ('train',)))}")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    for flag, value in (("--image-size", image_size), ("--limit-train", limit_train), ("--limit-test", limit_test)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    request = LoadRequest(Path(root).expanduser() if root is not None else default_root(name), root is not None,
                          download, train_split, image_size, strict)
    source: Source = locate(request)
    data = decode_cached(name, source, image_size, cache_folder(cache_dir)) if cache else _resized(source, image_size)
    if len(data.train_x) == 0:
        raise DataError(f"{name} at {request.root} has no readable training images; add images there")
    out = split_and_limit(data, test_fraction, seed, limit_train, limit_test)
    if len(out.train_x) == 0:
        raise DataError(f"{name} at {request.root}: all {len(data.train_x)} image(s) went to the held-out test split "
                        f"(--test-fraction {test_fraction}); add images or lower --test-fraction")
    return out


def load_from_config(cfg: "DataConfig", seed: int) -> ImageData:
    """The dataset `cfg` describes. Records the cache folder it used in `cfg.cache_dir`, so the run's
    config.yaml says where the decoded data went."""
    if cfg.cache_dir is None:
        cfg.cache_dir = str(cache_folder())
    return load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, train_split=cfg.train_split,
                        image_size=cfg.image_size, test_fraction=cfg.test_fraction, seed=seed, strict=cfg.strict,
                        limit_train=cfg.limit_train, limit_test=cfg.limit_test, cache_dir=cfg.cache_dir)


def decode_cached(name: str, source: Source, image_size: Optional[int], folder: Path) -> ImageData:
    if not source.cached:
        return _resized(source, image_size)
    key = cache_key(name, {**source.options, "image_size": image_size}, source.files, source.files_base or Path("."))
    return load_or_decode(f"{name}-{key}.pt", folder, lambda: _resized(source, image_size))


def _resized(source: Source, image_size: Optional[int]) -> ImageData:
    data = source.decode()
    if image_size is None:
        return data
    return ImageData(data.name, resize_images(data.train_x, image_size), data.train_y,
                     resize_images(data.test_x, image_size), data.test_y, data.classes)


def split_and_limit(data: ImageData, test_fraction: float, seed: int, limit_train: Optional[int],
                    limit_test: Optional[int]) -> ImageData:
    """Hold out a stratified test split if there is none, then keep `limit_*` images of each split."""
    train_x, train_y, test_x, test_y = data.train_x, data.train_y, data.test_x, data.test_y
    if len(test_x) == 0 and test_fraction > 0:
        train_idx, test_idx = stratified_split(train_y, test_fraction, seed)
        train_x, train_y, test_x, test_y = train_x[train_idx], train_y[train_idx], train_x[test_idx], train_y[test_idx]
    if limit_train is not None and limit_train < len(train_x):
        keep = stratified_subset(train_y, limit_train, seed)
        train_x, train_y = train_x[keep], train_y[keep]
    if limit_test is not None and limit_test < len(test_x):
        keep = stratified_subset(test_y, limit_test, seed)
        test_x, test_y = test_x[keep], test_y[keep]
    same_train = train_x is data.train_x
    return ImageData(data.name, train_x, train_y, test_x, test_y, data.classes,
                     data.mean if same_train else (), data.std if same_train else ())


__all__ = ["ImageData", "load_dataset", "load_from_config", "LoadRequest", "Source", "default_root", "DATASETS",
           "resize_images", "stratified_split", "stratified_subset"]
