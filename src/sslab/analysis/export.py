"""`sslab export-images`: a dataset of the registry as PNG files, OUT/<split>/<class>/NNNNN.png.

NNNNN is the image's index in its split as sslab loads it, so `--dataset folder --data-dir OUT` reads the
same pixels back (classes in sorted folder order, images of a class in their original order). Grey images
are written as 8-bit grey PNGs, colour ones as RGB. Class names become folder names with every character
outside letters, digits, space, `.`, `_`, `-` replaced by `_`; unlabelled images go to `unlabeled/`.

An image folder (`export_folder`) keeps each file's name and sub-folder (`cat/2024/a.jpg` becomes
`OUT/train/cat/2024/a.png`) and its original size: the pixels as sslab decodes them (orientation applied,
transparency on white), before the resize to one training size. Its train/test split is the one training
uses (the folder's own `test/`, else the same seeded, stratified share).
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from sslab.data import TEST_FRACTION
from sslab.data.base import ImageData
from sslab.errors import ConfigError, DataError, RunFolderError

UNLABELED = "unlabeled"
_CHUNK = 256


def safe_class_names(classes: Sequence[str]) -> list[str]:
    """Filesystem-safe, unique, non-hidden folder names, one per class, in class order."""
    out: list[str] = []
    seen: set[str] = {UNLABELED}
    for i, name in enumerate(classes):
        safe = re.sub(r"[^\w .\-]+", "_", str(name), flags=re.UNICODE).strip(" .") or f"class_{i}"
        safe = safe[:100]
        candidate, k = safe, 2
        while candidate.lower() in seen:
            candidate, k = f"{safe}_{k}", k + 1
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def _write_chunk(args: tuple[np.ndarray, list[Path]]) -> int:
    from PIL import Image

    images, paths = args  # images: n x H x W x C uint8
    for image, path in zip(images, paths):
        grey = image.shape[-1] == 1
        Image.fromarray(image[..., 0] if grey else image, mode="L" if grey else "RGB").save(path)
    return len(paths)


def export_images(data: ImageData, out: str | Path, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, dict[str, int]]:
    """Write every image of `data` under `out`; returns {split: {folder: count}}."""
    from tqdm import tqdm

    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunFolderError(f"{out} exists and is not an empty folder; choose a new --out")
    folders = safe_class_names(data.classes)
    splits = [(name, x, y) for name, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y))
              if len(x)]
    total = sum(len(x) for _, x, _ in splits)
    counts: dict[str, dict[str, int]] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, \
                tqdm(total=total, desc=f"exporting {data.name}", unit="img", disable=not progress) as bar:
            for split, x, y in splits:
                labels = y.cpu().numpy()
                names = np.array(folders + [UNLABELED])[np.where(labels >= 0, labels, len(folders))]
                for folder in np.unique(names):
                    (out / split / folder).mkdir(parents=True, exist_ok=True)
                counts[split] = {str(k): int(v) for k, v in zip(*np.unique(names, return_counts=True))}
                width = max(5, len(str(len(x) - 1)))
                paths = [out / split / names[i] / f"{i:0{width}d}.png" for i in range(len(x))]
                jobs = ((x[i:i + _CHUNK].permute(0, 2, 3, 1).cpu().numpy(), paths[i:i + _CHUNK])
                        for i in range(0, len(x), _CHUNK))
                for n in pool.map(_write_chunk, jobs):
                    bar.update(n)
    except OSError as e:
        raise RunFolderError(f"cannot write images to {out} ({e.strerror or e}); "
                             "choose a writable --out with free space") from None
    log(f"exported {total} images of {data.name} to {out} "
        f"({', '.join(f'{s}: {sum(c.values())}' for s, c in counts.items())})")
    return counts


def loaded_like_folder(data: ImageData) -> ImageData:
    """What reading the export back with `--dataset folder` gives: classes sorted by folder name, each
    split's images grouped by class (in their original order within a class). For tests and checks."""
    folders = safe_class_names(data.classes)
    order = sorted(range(len(folders)), key=lambda k: folders[k])
    new_label = {old: new for new, old in enumerate(order)}

    def regroup(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = [torch.nonzero(y == old).flatten() for old in order]
        idx = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
        return x[idx], torch.tensor([new_label[int(v)] for v in y[idx]], dtype=torch.int64)

    train_x, train_y = regroup(data.train_x, data.train_y)
    test_x, test_y = regroup(data.test_x, data.test_y)
    return ImageData("folder", train_x, train_y, test_x, test_y, [folders[k] for k in order])


# ---- image folders: original names and sizes ---------------------------------------------------------------------
def export_folder(root: str | Path, out: str | Path, image_size: int | None = None, test_fraction: float = TEST_FRACTION,
                  seed: int = 0, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, dict[str, int]]:
    """Write every readable image of the folder dataset at `root` under `out` as PNG, keeping its name,
    sub-folder and size (`image_size`: resized to that square, as `--image-size` trains); returns
    {split: {class: count}}."""
    from sslab.data.folder import describe_skipped, list_folder

    if not 0 <= test_fraction < 1 or (image_size is not None and image_size < 1):
        raise ConfigError("--test-fraction must be in [0, 1) and --image-size >= 1")
    root, out = Path(root).expanduser(), Path(out).expanduser()
    listing = list_folder(root)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunFolderError(f"{out} exists and is not an empty folder; choose a new --out")
    paths = listing.train + listing.test
    labels = np.array(listing.train_labels + listing.test_labels, dtype=np.int64)
    staging = out / ".staging"
    try:
        staging.mkdir(parents=True, exist_ok=True)
        written = _stage_images(paths, staging, image_size, progress, f"exporting {root.name}")
        readable = np.flatnonzero([reason is None for reason in written])
        if len(readable) == 0:
            raise DataError(f"none of the {len(paths)} images in {root} could be read; nothing to export")
        split = _split_like_training(readable, labels, len(listing.train), test_fraction, seed)
        counts: dict[str, dict[str, int]] = {}
        names = _png_names(paths, root, listing.classes, labels, split_layout=(root / "train").is_dir())
        for i in readable:
            dest = out / split[i] / names[i]
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f"{i}.png", dest)
            by_class = counts.setdefault(split[i], {})
            by_class[listing.classes[labels[i]]] = by_class.get(listing.classes[labels[i]], 0) + 1
        staging.rmdir()
    except OSError as e:
        raise RunFolderError(f"cannot write images to {out} ({e.strerror or e}); "
                             "choose a writable --out with free space") from None
    left_out = listing.skipped + [(paths[i], f"unreadable: {reason}") for i, reason in enumerate(written) if reason]
    if left_out:
        log(f"warning: left out {len(left_out)} file(s) of {root}: {describe_skipped(left_out, root)}")
    log(f"exported {len(readable)} images of {root} to {out} at their own size, with their file names "
        f"({', '.join(f'{s}: {sum(c.values())}' for s, c in sorted(counts.items(), reverse=True))})")
    return counts


def _stage_images(paths: list[Path], staging: Path, image_size: int | None, progress: bool,
                  desc: str) -> list[str | None]:
    """Decode each file as the loader does and write it as staging/<index>.png: None, or why it failed."""
    from PIL import Image
    from tqdm import tqdm

    from sslab.data.folder import read_image
    from sslab.data.prepare import resize_images

    def one(i: int) -> str | None:
        try:
            image = read_image(paths[i], image_size)  # H x W x C uint8
        except MemoryError:  # the machine's fault, not the file's: not "unreadable"
            raise
        except Exception as e:  # as the loader: a damaged file is left out and listed
            return f"{type(e).__name__}: {e}"
        if image_size:
            image = resize_images(torch.from_numpy(image).permute(2, 0, 1)[None], image_size)[0].permute(1, 2, 0).numpy()
        grey = image.shape[-1] == 1
        Image.fromarray(np.ascontiguousarray(image[..., 0] if grey else image), mode="L" if grey else "RGB").save(
            staging / f"{i}.png")
        return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        results = []
        for reason in pool.map(one, range(len(paths))):
            results.append(reason)
            bar.update(1)
    return results


def _split_like_training(readable: np.ndarray, labels: np.ndarray, n_train: int, test_fraction: float,
                         seed: int) -> dict[int, str]:
    """File index -> "train" or "test", as `load_dataset` splits the decoded images: the folder's test/
    if it has one, else a seeded, stratified `test_fraction` of the readable training images."""
    from sslab.data.prepare import stratified_split

    train, test = readable[readable < n_train], readable[readable >= n_train]
    if len(test) == 0 and test_fraction > 0:
        keep, held_out = stratified_split(torch.from_numpy(labels[train]), test_fraction, seed)
        train, test = train[keep.numpy()], train[held_out.numpy()]
    return {**{int(i): "train" for i in train}, **{int(i): "test" for i in test}}


def _png_names(paths: list[Path], root: Path, classes: list[str], labels: np.ndarray, split_layout: bool) -> list[Path]:
    """<class>/<sub-folders>/<name>.png for each file; where two files would meet (a.jpg and a.png), the
    later keeps its whole name (a.jpg.png)."""
    names: list[Path] = []
    used: set[Path] = set()
    below = 2 if split_layout else 1  # ROOT/train/<class>/... or ROOT/<class>/...
    for path, label in zip(paths, labels):
        inside = Path(*path.relative_to(root).parts[below:])
        name = Path(classes[label]) / inside.with_suffix(".png")
        if name in used:
            name = Path(classes[label]) / inside.with_name(inside.name + ".png")
        used.add(name)
        names.append(name)
    return names
