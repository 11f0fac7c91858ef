"""An image folder: `ROOT/<class>/**/*.{png,jpg,jpeg,bmp,webp,tif,tiff,gif}`, or `ROOT/train/<class>/...` with
`ROOT/test/<class>/...` (without `test/`, load_dataset holds out a stratified, seeded share). As with
torchvision's `ImageFolder`, images in sub-folders of a class folder belong to that class; a GIF or a
multi-page TIFF gives its first frame.

Images are decoded in a thread pool (PIL releases the GIL while decoding); with `image_size` a large image
is decoded reduced (JPEG DCT scaling, else an integer box reduction) to no less than that size, so memory
follows the training size, not the file's. Grey images stay one channel when every image is grey; otherwise
all become RGB, transparent ones composited on white. Images of another size than the most common one (or
than `image_size`) are resized, with a warning. Every file that is not used is listed in one warning with
the reason (not an image extension, unreadable, symlink loop, ...), or with `strict` an unreadable one
stops the load.
"""
from __future__ import annotations

import errno
import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from sslab.data.base import ImageData
from sslab.data.prepare import resize_images
from sslab.data.source import LoadRequest, Source
from sslab.errors import DataError
from sslab.registry import DATASETS

log = logging.getLogger("sslab.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
LAYOUT_HINT = "ROOT/<class>/<image>.png, or ROOT/train/<class>/... and ROOT/test/<class>/..."
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                   5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                   8: Image.Transpose.ROTATE_90}  # as ImageOps.exif_transpose
_REDUCIBLE_MODES = ("L", "LA", "I", "F", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
_SHOW_AT_MOST = 10  # files named per reason in the skipped-files warning
_FILES_PER_TASK = 256  # small images decode in ~0.1 ms: one task per file would cost more than the decoding


@dataclass(frozen=True)
class FolderListing:
    classes: list[str]
    train: list[Path]
    train_labels: list[int]
    test: list[Path]  # empty without ROOT/test
    test_labels: list[int]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files found but not images: (path, why)


@DATASETS.register("folder")
def image_folder(request: LoadRequest) -> Source:
    listing = list_folder(request.root)
    return Source(decode=partial(decode, request.root, listing, request.image_size, request.strict),
                  files=listing.train + listing.test, files_base=request.root, cached=True,
                  options={"strict": request.strict})


def list_folder(root: Path) -> FolderListing:
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; lay it out as {LAYOUT_HINT}".replace("ROOT", str(root)))
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        classes, train, train_labels, skipped = list_classes(root)
        return FolderListing(classes, train, train_labels, [], [], skipped)
    classes, train, train_labels, skipped = list_classes(train_dir)
    if not test_dir.is_dir():
        return FolderListing(classes, train, train_labels, [], [], skipped)
    test_classes, test, test_labels, test_skipped = list_classes(test_dir)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes)) or ["-"]
        only_test = sorted(set(test_classes) - set(classes)) or ["-"]
        raise DataError(f"the class folders of {train_dir} and {test_dir} differ (only in train: "
                        f"{', '.join(only_train)}; only in test: {', '.join(only_test)}); use the same classes in both")
    return FolderListing(classes, train, train_labels, test, test_labels, skipped + test_skipped)


def list_classes(folder: Path) -> tuple[list[str], list[Path], list[int], list[tuple[Path, str]]]:
    """Class names (sorted subfolder names), the sorted image paths under each (at any depth) with their
    labels, and the files that were left out with the reason."""
    entries = list(os.scandir(folder))
    class_dirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not class_dirs:
        loose = sum(1 for e in entries if e.is_file() and _is_image(e.name))
        found = f" (it holds {loose} images directly)" if loose else ""
        raise DataError(f"no class subfolders in {folder}{found}; put the images in {folder}/<class>/, one subfolder "
                        "per class")
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[tuple[Path, str]] = []
    empty = []
    for label, name in enumerate(class_dirs):
        images = walk_images(folder / name, skipped)
        if not images:
            empty.append(name)
        paths += images
        labels += [label] * len(images)
    if empty:
        raise DataError(f"no images in the class folder(s) {', '.join(empty)} of {folder}; add "
                        f"{'/'.join(IMAGE_EXTENSIONS)} images there or remove the folder(s)")
    return class_dirs, paths, labels, skipped


def walk_images(top: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Sorted image files under `top`, following symbolic links to folders once each (a link back to a
    folder already walked is a loop); everything else found is appended to `skipped` with the reason."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                skipped.append((folder, "symlink loop"))
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError as e:
            skipped.append((folder, _os_reason(e)))
            continue
        for e in entries:
            path = Path(e.path)
            if e.name.startswith("."):
                continue  # hidden: .DS_Store, editors' swap files, our own temp files
            kind = _kind(e)
            if kind == "folder":
                pending.append(path)
            elif kind == "file" and _is_image(e.name):
                found.append(path)
            elif kind == "file":
                skipped.append((path, f"not an image ({path.suffix.lower() or 'no extension'})"))
            else:
                skipped.append((path, kind))
    return sorted(found)


def _kind(entry: os.DirEntry) -> str:
    """"folder", "file", or why the entry is neither (links followed): a symlink loop (DirEntry.is_dir
    raises ELOOP for it), a dangling link, a device or pipe."""
    try:
        if entry.is_dir():
            return "folder"
        if entry.is_file():
            return "file"
        os.stat(entry.path)
    except OSError as e:
        return _os_reason(e)
    return "not a regular file"


def _os_reason(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno == errno.ENOENT:
        return "dangling symlink"
    return f"unreadable ({error.strerror or error})"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def decode(root: Path, listing: FolderListing, image_size: int | None, strict: bool) -> ImageData:
    paths = listing.train + listing.test
    results = read_images(paths, desc=f"decoding {root.name}", image_size=image_size)
    failed = [(path, r) for path, r in zip(paths, results) if isinstance(r, str)]
    broken_links = [(path, why) for path, why in listing.skipped if "symlink" in why]
    if (failed or broken_links) and strict:
        path, reason = (failed + broken_links)[0]
        raise DataError(f"cannot read image {path} ({reason}); remove it, or drop --strict to skip unreadable images")
    if len(failed) == len(paths):
        raise DataError(f"none of the {len(paths)} images in {root} could be read (first: {failed[0][0]}: "
                        f"{failed[0][1]})")
    left_out = listing.skipped + [(path, f"unreadable: {reason}") for path, reason in failed]
    if left_out:
        log.warning("left out %d of the %d files in %s: %s%s", len(left_out), len(paths) + len(listing.skipped), root,
                    describe_skipped(left_out, root), " (pass --strict to stop at unreadable images instead)"
                    if failed or broken_links else "")

    n_train = len(listing.train)
    train = [(a, y) for a, y in zip(results[:n_train], listing.train_labels) if not isinstance(a, str)]
    test = [(a, y) for a, y in zip(results[n_train:], listing.test_labels) if not isinstance(a, str)]
    arrays = [a for a, _ in train + test]
    channels = 3 if any(a.shape[2] == 3 for a in arrays) else 1
    size = _common_size(arrays, image_size, root)
    return ImageData("folder", stack_images([a for a, _ in train], channels, size), _labels(train),
                     stack_images([a for a, _ in test], channels, size), _labels(test), listing.classes)


def describe_skipped(skipped: list[tuple[Path, str]], root: Path) -> str:
    """"symlink loop: cat/loop; not an image (.txt) (2): a.txt, b.txt; unreadable: x.png (OSError: ...)",
    files grouped by reason (the part before a colon), at most _SHOW_AT_MOST named per reason."""
    groups: dict[str, list[str]] = defaultdict(list)
    for path, why in skipped:
        reason, _, detail = why.partition(": ")
        name = os.path.relpath(path, root) if str(path).startswith(str(root)) else str(path)
        groups[reason].append(f"{name} ({detail})" if detail else name)
    parts = []
    for reason, names in groups.items():
        shown = ", ".join(names[:_SHOW_AT_MOST]) + (f" and {len(names) - _SHOW_AT_MOST} more" if len(names) > _SHOW_AT_MOST else "")
        parts.append(f"{reason} ({len(names)}): {shown}")
    return "; ".join(parts)


def _common_size(arrays: list[np.ndarray], image_size: int | None, root: Path) -> tuple[int, int]:
    """`image_size` square if given, else the most common (H, W); mixed sizes are reported."""
    sizes = Counter(a.shape[:2] for a in arrays)
    (h, w), count = sizes.most_common(1)[0]
    target = (image_size, image_size) if image_size else (h, w)
    if len(sizes) > 1:
        n_resized = len(arrays) - sizes.get(target, 0)
        reason = ("as --image-size asks" if image_size else
                  f"the most common size ({count} of {len(arrays)} images); pass --image-size to choose another")
        log.warning("images in %s come in %d sizes; resized %d of them to %dx%d (HxW), %s", root, len(sizes),
                    n_resized, target[0], target[1], reason)
    return target


def stack_images(arrays: list[np.ndarray], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 1 or 3) uint8 arrays -> (N, channels, *size) uint8; each size group is resized in one batch."""
    out = torch.empty((len(arrays), channels, *size), dtype=torch.uint8)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, a in enumerate(arrays):
        by_size[a.shape[:2]].append(i)
    for (h, w), rows in by_size.items():
        group = np.stack([arrays[i] if arrays[i].shape[2] == channels else np.broadcast_to(arrays[i], (h, w, channels))
                          for i in rows])  # n x h x w x c
        out[rows] = resize_images(torch.from_numpy(group).permute(0, 3, 1, 2), size)
    return out


def _labels(pairs: list[tuple[np.ndarray, int]]) -> torch.Tensor:
    return torch.tensor([y for _, y in pairs], dtype=torch.int64)


def read_images(paths: list[Path], desc: str, image_size: int | None = None) -> list[np.ndarray | str]:
    """Decode `paths` in a thread pool, in order: an array per readable file, else why it is unreadable.
    With `image_size`, large images come reduced to no less than image_size x image_size."""
    tasks = [paths[i:i + _FILES_PER_TASK] for i in range(0, len(paths), _FILES_PER_TASK)]
    results: list[np.ndarray | str] = []
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=None) as bar:
        for decoded in pool.map(partial(_read_task, image_size=image_size), tasks):
            results += decoded
            bar.update(len(decoded))
    return results


def _read_task(paths: list[Path], image_size: int | None) -> list[np.ndarray | str]:
    return [_read_or_reason(p, image_size) for p in paths]


def _read_or_reason(path: Path, image_size: int | None) -> np.ndarray | str:
    try:
        return read_image(path, image_size)
    except MemoryError:  # not the file's fault: the machine ran out of memory (it would be filed as unreadable)
        advice = (f"at --image-size {image_size} the decoded dataset does not fit: free memory or use a smaller "
                  "--image-size" if image_size else "without --image-size each image is decoded at its own size: "
                  "pass --image-size 96 (or another size) to decode large images reduced")
        raise DataError(f"out of memory while decoding {path}; {advice}") from None
    except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...) for damaged files
        return f"{type(e).__name__}: {e}"


def read_image(path: Path, image_size: int | None = None) -> np.ndarray:
    """A file -> uint8 (H, W, 1) for grey modes, (H, W, 3) otherwise; transparency composited on white;
    the first frame of an animation or multi-page file. With `image_size`, an image at least twice that
    size is decoded reduced (both sides stay >= image_size; the exact resize happens later, in a batch)."""
    with Image.open(path) as im:
        if image_size:
            im.draft(None, (image_size, image_size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale; others: no-op
        im.load()
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        if image_size and min(im.size) >= 2 * image_size:
            im = _reduced(im, min(im.size) // image_size)
        if orientation in _EXIF_TRANSPOSE:
            im = im.transpose(_EXIF_TRANSPOSE[orientation])
        return _to_array(im)


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    """Box average over factor x factor pixels; palette and 1-bit images first become colour or grey
    (averaging palette indices would mix unrelated colours). Modes PIL cannot reduce stay as they are."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    return im.reduce(factor) if im.mode in _REDUCIBLE_MODES else im


def _to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))[..., None]
    if mode.startswith("I;16"):
        return _scale_16bit(np.asarray(im))[..., None]
    if mode == "I":
        a = np.asarray(im)
        return (_scale_16bit(a) if a.max(initial=0) > 255 else a.clip(0, 255).astype(np.uint8))[..., None]
    if mode == "F":
        return np.asarray(im).clip(0, 255).round().astype(np.uint8)[..., None]
    if mode in ("LA", "La"):
        return _on_white(np.asarray(im.convert("LA")))
    if mode in ("RGBA", "RGBa", "PA"):
        return _on_white(np.asarray(im.convert("RGBA")))
    return np.asarray(im if mode == "RGB" else im.convert("RGB"))


def _scale_16bit(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.int64).clip(0, 65535) * 255 + 32767) // 65535).astype(np.uint8)


def _on_white(colour_and_alpha: np.ndarray) -> np.ndarray:
    """(H, W, C+1) with alpha last -> (H, W, C) composited on a white background."""
    colour = colour_and_alpha[..., :-1].astype(np.float32)
    alpha = colour_and_alpha[..., -1:].astype(np.float32) / 255.0
    return np.rint(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
