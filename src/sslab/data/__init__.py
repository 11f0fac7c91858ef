"""Datasets as uint8 tensors: `load_dataset("cifar10")` -> `ImageData`.

Each loader module registers a locator in `DATASETS` (`@DATASETS.register("cifar10")`) that finds (or
downloads) the files and says how to decode them; `load_dataset` then decodes once through the cache,
resizes, holds out a test split where the source has none, and applies the limits.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from sslab.data import cifar, digits, folder, idx, npz, stl10  # noqa: F401  (each registers its loader)
from sslab.data.base import ImageData, ImageRows, Images, image_bytes
from sslab.data.cache import cache_folder, cache_key, in_memory_build, load_or_build
from sslab.data.prepare import resize_images, stratified_split, stratified_subset
from sslab.data.source import LoadRequest, Source, default_root
from sslab.errors import ConfigError, DataError
from sslab.registry import DATASETS

if TYPE_CHECKING:  # sslab.config imports this package: its settings name the datasets
    from sslab.config import DataConfig

TRAIN_SPLITS = {"stl10": stl10.TRAIN_SPLITS}  # datasets with more than a "train" split to train on
TEST_FRACTION = 0.2  # datasets without a test split: the share held out (the data settings' default, --test-fraction)
# a held-out split or a limit larger than this stays rows of the (memory-mapped) images instead of a copy
COPY_MAX_BYTES = 1 * 2**30


def load_dataset(name: str, root: str | Path | None = None, *, download: bool = False, train_split: str = "train",
                 image_size: Optional[int] = None, test_fraction: float = TEST_FRACTION, seed: int = 0, strict: bool = False,
                 limit_train: Optional[int] = None, limit_test: Optional[int] = None, cache: bool = True,
                 cache_dir: str | Path | None = None, store_size: Optional[int] = None,
                 workers: Optional[int] = None) -> ImageData:
    """Load dataset `name` from `root` (default: `$SSLAB_DATA/<name>` or `~/.cache/sslab/data/<name>`).

    Decoded tensors are cached in `cache_dir` (default: `data.cache.cache_folder()`, the user's cache
    folder; never the data folder unless it is asked for); `cache=False` decodes without a cache.
    `image_size` resizes every image to a square (bilinear, antialiased); `store_size` (>= image_size), when
    given, is the size kept instead, for training to crop from (`image_size` is then the size trained at);
    sources without a test split get a stratified, seeded `test_fraction`; `limit_train`/`limit_test` keep that
    many images, stratified and seeded. `workers`: processes that decode an image folder (default: every core).
    """
    locate = DATASETS.get(name)
    if train_split not in TRAIN_SPLITS.get(name, ("train",)):
        raise ConfigError(f"--train-split {train_split!r} is not a split of {name}; choose one of "
                          f"{', '.join(TRAIN_SPLITS.get(name, ('train',)))}")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    for flag, value in (("--image-size", image_size), ("--limit-train", limit_train), ("--limit-test", limit_test),
                        ("--store-size", store_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if store_size is not None and image_size is not None and store_size < image_size:
        raise ConfigError(f"--store-size {store_size} is smaller than --image-size {image_size}; store at least the "
                          "size trained at")
    size = store_size or image_size
    request = LoadRequest(Path(root).expanduser() if root is not None else default_root(name), root is not None,
                          download, train_split, size, strict, workers)
    source: Source = locate(request)
    data = decode_cached(name, source, size, cache_folder(cache_dir)) if cache else _resized(source, size)
    if len(data.train_x) == 0:
        raise DataError(f"{name} at {request.root} has no readable training images; add images there")
    out = split_and_limit(data, test_fraction, seed, limit_train, limit_test)
    if len(out.train_x) == 0:
        raise DataError(f"{name} at {request.root}: all {len(data.train_x)} image(s) went to the held-out test split "
                        f"(--test-fraction {test_fraction}); add images or lower --test-fraction")
    if store_size is not None and image_size is not None and store_size > image_size:
        out.crop_size = image_size
    return out


def load_from_config(cfg: "DataConfig", seed: int) -> ImageData:
    """The dataset `cfg` describes. Records the cache folder it used in `cfg.cache_dir`, and the data folder it
    was found in without --data-dir in `cfg.data_dir` (`found_data_dir`), so the run's config.yaml says where the
    data came from and where the decoded data went."""
    if cfg.cache_dir is None:
        cfg.cache_dir = str(cache_folder())
    if cfg.data_dir is None and not cfg.download:
        found = found_data_dir(cfg.dataset)
        cfg.data_dir = str(found) if found is not None else None
    return load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, train_split=cfg.train_split,
                        image_size=cfg.image_size, test_fraction=cfg.test_fraction, seed=seed, strict=cfg.strict,
                        limit_train=cfg.limit_train, limit_test=cfg.limit_test, cache_dir=cfg.cache_dir,
                        store_size=cfg.store_size)


def found_data_dir(name: str) -> Optional[Path]:
    """The folder dataset `name` is found in without --data-dir ($SSLAB_DATA/<name>, ~/.cache/sslab/data/<name>, or
    a system folder such as Debian's /usr/share/datasets/fashion-mnist), as one that finds it again when given as
    --data-dir; None when it is not found, or when it is inside the sslab package (the bundled datasets)."""
    locate = DATASETS.get(name)
    try:
        base = locate(LoadRequest(default_root(name), root_given=False)).files_base
    except DataError:
        return None
    if base is None or Path(__file__).resolve().parents[1] in base.resolve().parents:
        return None
    for candidate in (base, *list(base.parents)[:2]):  # the files' folder, or the dataset's folder above it
        try:
            locate(LoadRequest(candidate, root_given=True))
            return candidate
        except DataError:
            continue
    return None


def decode_cached(name: str, source: Source, image_size: Optional[int], folder: Path) -> ImageData:
    """The source's images from the cache entry in `folder`, decoded (and written there) first if needed."""
    if not source.cached:
        return _resized(source, image_size)
    key = cache_key(name, {**source.options, "image_size": image_size}, source.files, source.files_base or Path("."))
    uncached = partial(_resized, source, image_size)
    if source.build is not None:  # decodes chunk by chunk into the cache, and continues a stopped build
        return load_or_build(folder / f"{name}-{key}", source.build, uncached, resumable=True)
    return load_or_build(folder / f"{name}-{key}", in_memory_build(uncached), uncached, resumable=False)


def _resized(source: Source, image_size: Optional[int]) -> ImageData:
    data = source.decode()
    if image_size is None:
        return data
    return ImageData(data.name, resize_images(data.train_x, image_size), data.train_y,
                     resize_images(data.test_x, image_size), data.test_y, data.classes)


def split_and_limit(data: ImageData, test_fraction: float, seed: int, limit_train: Optional[int],
                    limit_test: Optional[int]) -> ImageData:
    """Hold out a stratified test split if there is none, then keep `limit_*` images of each split.

    A selection of more than COPY_MAX_BYTES is not copied: it stays `ImageRows` of the (memory-mapped) images,
    and keeps the channel statistics of the whole train split (reading every selected image again to
    recompute them would cost a pass over the data; a random share has the same statistics up to noise)."""
    train_x, train_y, test_x, test_y = data.train_x, data.train_y, data.test_x, data.test_y
    if len(test_x) == 0 and test_fraction > 0:
        train_idx, test_idx = stratified_split(train_y, test_fraction, seed)
        train_x, train_y, test_x, test_y = rows_of(train_x, train_idx), train_y[train_idx], rows_of(train_x, test_idx), train_y[test_idx]
    if limit_train is not None and limit_train < len(train_x):
        keep = stratified_subset(train_y, limit_train, seed)
        train_x, train_y = rows_of(train_x, keep), train_y[keep]
    if limit_test is not None and limit_test < len(test_x):
        keep = stratified_subset(test_y, limit_test, seed)
        test_x, test_y = rows_of(test_x, keep), test_y[keep]
    keep_stats = train_x is data.train_x or isinstance(train_x, ImageRows)
    return ImageData(data.name, train_x, train_y, test_x, test_y, data.classes,
                     data.mean if keep_stats else (), data.std if keep_stats else ())


def rows_of(images: Images, index: torch.Tensor) -> Images:
    """`images[index]`: a copy when it is at most COPY_MAX_BYTES, else `ImageRows` (no copy)."""
    base, rows = (images.base, images.rows[index]) if isinstance(images, ImageRows) else (images, index)
    if len(rows) * image_bytes(base[:1]) <= COPY_MAX_BYTES:
        return base.index_select(0, rows.to(base.device))
    return ImageRows(base, rows)


__all__ = ["ImageData", "ImageRows", "load_dataset", "load_from_config", "found_data_dir", "LoadRequest", "Source",
           "default_root", "DATASETS", "resize_images", "stratified_split", "stratified_subset"]
