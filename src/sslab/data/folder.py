"""An image folder: `ROOT/<class>/**/*.{png,jpg,jpeg,bmp,webp,tif,tiff,gif}`, or `ROOT/train/<class>/...` with
`ROOT/test/<class>/...`, `ROOT/val/<class>/...` or `ROOT/validation/<class>/...` (ImageNet's layout; without
any, load_dataset holds out a stratified, seeded share). As with torchvision's `ImageFolder`, images in
sub-folders of a class folder belong to that class; a GIF or a multi-page TIFF gives its first frame.

Images are decoded on worker processes (data/parallel.py), in order, chunk by chunk, straight into the cache
(`build_cache`, resumable) or into memory (`decode`); first the headers fix the stored size and channels
(`plan_folder`). With `image_size` a large image is decoded reduced (JPEG DCT scaling, else an integer box
reduction) to no less than that size, so memory follows the training size, not the file's. Grey images stay
one channel when every image is grey; otherwise all become RGB, transparent ones composited on white. Images
of another size than the most common one (or than `image_size`) are resized, with a warning. Every file that
is not used is listed in one warning with the reason (not an image extension, unreadable, symlink loop, ...),
or with `strict` an unreadable one stops the load.
"""
from __future__ import annotations

import errno
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sslab.data.base import ImageData
from sslab.data.cache import DecodeSink, collect_warnings
from sslab.data.parallel import BuildProgress, default_workers, ordered_map
from sslab.data.prepare import resize_images
from sslab.data.source import LoadRequest, Source
from sslab.errors import DataError
from sslab.registry import DATASETS

log = logging.getLogger("sslab.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
LAYOUT_HINT = "ROOT/<class>/<image>.png, or ROOT/train/<class>/... and ROOT/test/<class>/... (or ROOT/val/<class>/...)"
TEST_SPLITS = ("test", "val", "validation")  # beside train/, the first of these with class folders is the test split
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                   5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                   8: Image.Transpose.ROTATE_90}  # as ImageOps.exif_transpose
_REDUCIBLE_MODES = ("L", "LA", "I", "F", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
_SHOW_AT_MOST = 10  # files named per reason in the skipped-files warning
_FILES_PER_TASK = 256  # small images decode in ~0.1 ms: one task per file would cost more than the decoding
_TASK_BYTES = 32 * 2**20  # decoded bytes a task returns at most (the parent holds about 2 x workers of them)
PROCESS_MIN_FILES = 2000  # smaller folders decode in this process (starting workers would take longer)


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
    settings = (request.root, listing, request.image_size, request.strict, request.workers)
    return Source(decode=partial(decode, *settings), build=partial(build_cache, *settings),
                  files=listing.train + listing.test, files_base=request.root, cached=True,
                  options={"strict": request.strict})


def list_folder(root: Path) -> FolderListing:
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; lay it out as {LAYOUT_HINT}".replace("ROOT", str(root)))
    train_dir = root / "train"
    if not train_dir.is_dir():
        _report_split_without_train(root)
        classes, train, train_labels, skipped = list_classes(root)
        return FolderListing(classes, train, train_labels, [], [], skipped)
    classes, train, train_labels, skipped = list_classes(train_dir)
    held_out = [name for name in TEST_SPLITS if _has_subfolders(root / name)]  # ImageNet's test/ has no classes
    _report_unused_top_level(root, held_out[:1])
    if not held_out:
        return FolderListing(classes, train, train_labels, [], [], skipped)
    test_dir = root / held_out[0]
    test_classes, test, test_labels, test_skipped = list_classes(test_dir)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes)) or ["-"]
        only_test = sorted(set(test_classes) - set(classes)) or ["-"]
        raise DataError(f"the class folders of {train_dir} and {test_dir} differ (only in train: "
                        f"{', '.join(only_train)}; only in {held_out[0]}: {', '.join(only_test)}); use the same classes "
                        "in both")
    return FolderListing(classes, train, train_labels, test, test_labels, skipped + test_skipped)


def _has_subfolders(folder: Path) -> bool:
    try:
        return any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(folder))
    except OSError:
        return False


def _report_unused_top_level(root: Path, used_test: list[str]) -> None:
    """Beside train/, anything but the test split used is left out: say so (an ImageNet download also holds
    test/ without labels, devkits, CSV files; a misspelt split folder must not vanish silently)."""
    used = {"train", *used_test}
    unused = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(root)
                    if e.name not in used and not e.name.startswith("."))
    if unused:
        shown = ", ".join(unused[:_SHOW_AT_MOST]) + (f" and {len(unused) - _SHOW_AT_MOST} more" if len(unused) > _SHOW_AT_MOST else "")
        test = (f"{used_test[0]}/ as the test split" if used_test else
                "no test split (none of test/, val/, validation/ has class folders; one is held out of train/)")
        log.warning("%s: using train/ and %s; left out the other top-level entries: %s", root, test, shown)


def _report_split_without_train(root: Path) -> None:
    """`val/` or `test/` without `train/`: each subfolder is read as a class, which is likely not what was meant."""
    splits = [name for name in TEST_SPLITS if (root / name).is_dir()]
    if splits:
        log.warning("%s has %s but no train/, so every subfolder, %s included, is read as a class; to use a split, put "
                    "the training images in %s/train/<class>/", root, "/, ".join(splits) + "/", " and ".join(splits), root)


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


def decode(root: Path, listing: FolderListing, image_size: int | None, strict: bool,
           workers: int | None = None) -> ImageData:
    """The whole folder decoded in memory (`cache=False`); the cache's build (`build_cache`) writes the same
    images chunk by chunk instead."""
    sink = MemorySink()
    decode_into(sink, root, listing, image_size, strict, workers)
    return sink.data("folder", listing.classes)


def build_cache(root: Path, listing: FolderListing, image_size: int | None, strict: bool, workers: int | None,
                writer: Any) -> tuple[str, list[str], list[str]]:
    """Decode the folder into the cache entry `writer` (data/cache.py), continuing where a stopped build got to."""
    with collect_warnings() as warnings:
        decode_into(writer, root, listing, image_size, strict, workers)
    return "folder", listing.classes, warnings


def decode_into(sink: DecodeSink, root: Path, listing: FolderListing, image_size: int | None, strict: bool,
                workers: int | None = None) -> None:
    """Decode every image of `listing` in order into `sink` (an EntryWriter or a MemorySink), on `workers`
    processes (default: every core; folders under PROCESS_MIN_FILES files: this process), chunk by chunk.

    First the plan (kept in the sink, so a resumed build reuses it): the image size (`image_size` square, else
    the most common size) and the channels (1 when every image is grey), read from the files' headers."""
    paths = listing.train + listing.test
    broken_links = [(path, why) for path, why in listing.skipped if "symlink" in why]
    if broken_links and strict:
        raise DataError(f"cannot read image {broken_links[0][0]} ({broken_links[0][1]}); remove it, or drop --strict to "
                        "skip unreadable images")
    workers = (workers or default_workers()) if len(paths) >= PROCESS_MIN_FILES else 1
    if sink.plan is None:
        sink.set_plan(plan_folder(root, paths, image_size, workers))
    plan = sink.plan
    channels, size = plan["channels"], tuple(plan["size"])
    image_bytes = channels * size[0] * size[1]
    sink.reserve(len(paths) * (image_bytes + 8), f"folder {root}")
    per_task = min(_FILES_PER_TASK, max(16, _TASK_BYTES // image_bytes))
    done = sum(sink.done(split)[1] for split in ("train", "test"))
    with BuildProgress(f"decoding {root.name or root}" + (f" ({workers} processes)" if workers > 1 else ""),
                       len(paths), done) as bar:
        for split, files, labels in (("train", listing.train, listing.train_labels),
                                     ("test", listing.test, listing.test_labels)):
            sink.start_split(split, (channels, *size))
            first = sink.done(split)[1]
            chunks = [(files[i:i + per_task], labels[i:i + per_task]) for i in range(first, len(files), per_task)]
            tasks = (([str(f) for f in chunk], image_size, channels, size) for chunk, _ in chunks)
            for (chunk, chunk_labels), (x, reasons, sizes) in zip(chunks, ordered_map(_decode_task, tasks, workers)):
                skipped = [(str(path), f"unreadable: {why}") for path, why in zip(chunk, reasons) if why]
                if skipped and strict:
                    raise DataError(f"cannot read image {skipped[0][0]} ({skipped[0][1][len('unreadable: '):]}); remove "
                                    "it, or drop --strict to skip unreadable images")
                y = [label for label, why in zip(chunk_labels, reasons) if not why]
                sink.append(split, x, np.asarray(y, dtype=np.int64), len(chunk), skipped, sizes)
                bar.update(len(chunk))
    _report(sink, root, listing, size, image_size)


def _report(sink: DecodeSink, root: Path, listing: FolderListing, size: tuple[int, int], image_size: int | None) -> None:
    """The warnings of a finished decode: files left out, images resized; a DataError when nothing was readable."""
    paths = listing.train + listing.test
    failed = [(Path(path), why) for path, why in sink.state["skipped"]]
    if paths and len(failed) == len(paths):
        raise DataError(f"none of the {len(paths)} images in {root} could be read (first: {failed[0][0]}: "
                        f"{failed[0][1][len('unreadable: '):]})")
    left_out = listing.skipped + failed
    if left_out:
        unreadable = failed or [item for item in listing.skipped if "symlink" in item[1]]
        log.warning("left out %d of the %d files in %s: %s%s", len(left_out), len(paths) + len(listing.skipped), root,
                    describe_skipped(left_out, root), " (pass --strict to stop at unreadable images instead)"
                    if unreadable else "")
    sizes = sink.state["sizes"]
    if len(sizes) > 1:
        total, target = sum(sizes.values()), f"{size[0]}x{size[1]}"
        common, count = max(sizes.items(), key=lambda item: item[1])
        reason = ("as --image-size asks" if image_size else
                  f"the most common size ({count} of {total} images); pass --image-size to choose another")
        log.warning("images in %s come in %d sizes; resized %d of them to %dx%d (HxW), %s", root, len(sizes),
                    total - sizes.get(target, 0), size[0], size[1], reason)


def plan_folder(root: Path, paths: list[Path], image_size: int | None, workers: int) -> dict[str, Any]:
    """What every decoded image becomes: {"files", "channels", "size": [H, W], "image_size"}, from the headers
    (PIL reads a file's size and mode without decoding it)."""
    tasks = [([str(p) for p in paths[i:i + _FILES_PER_TASK]], image_size is None)
             for i in range(0, len(paths), _FILES_PER_TASK)]
    shapes: list[tuple[int, int, int]] = []
    with BuildProgress(f"reading the image headers of {root.name or root}", len(paths)) as bar:
        for task, found in zip(tasks, ordered_map(_survey_task, tasks, workers)):
            shapes += [shape for shape in found if shape is not None]
            bar.update(len(task[0]))
    channels = 3 if any(c == 3 for _, _, c in shapes) or not shapes else 1
    if image_size:
        size = (image_size, image_size)
    else:
        size = Counter((h, w) for h, w, _ in shapes).most_common(1)[0][0] if shapes else (1, 1)
    return {"files": len(paths), "channels": channels, "size": list(size), "image_size": image_size}


def _survey_task(task: tuple[list[str], bool]) -> list[tuple[int, int, int] | None]:
    """(H, W, channels) of each file as `read_image` will return it (None: unreadable); `oriented`: apply the
    EXIF orientation to H and W (needed only to find the most common size)."""
    paths, oriented = task
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            with Image.open(path) as im:
                w, h = im.size
                if oriented and im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                    h, w = w, h
                out.append((h, w, mode_channels(im.mode)))
        except Exception:  # PIL raises many kinds for damaged files; decoding reports them
            out.append(None)
    return out


def mode_channels(mode: str) -> int:
    """Channels `_to_array` gives an image of PIL `mode`: grey modes 1, everything else (palette included) 3."""
    return 1 if mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16") else 3


def _decode_task(task: tuple[list[str], int | None, int, tuple[int, int]]) -> tuple[np.ndarray, list[str | None], dict[str, int]]:
    """Decode files into uint8 (n readable, channels, *size) in order; why each unreadable one failed (None:
    read); the decoded sizes, "HxW": count (for the resized-images warning)."""
    paths, image_size, channels, size = task
    results = [_read_or_reason(Path(p), image_size) for p in paths]
    arrays = [a for a in results if not isinstance(a, str)]
    sizes = Counter(f"{a.shape[0]}x{a.shape[1]}" for a in arrays)
    x = stack_images(arrays, channels, size).numpy()
    return x, [r if isinstance(r, str) else None for r in results], dict(sizes)


class MemorySink(DecodeSink):
    """Where `decode_into` puts the images when there is no cache: lists of chunks, joined at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}

    def start_split(self, split: str, image_shape: tuple[int, ...]) -> None:
        super().start_split(split, image_shape)
        self.chunks[split] = ([np.zeros((0, *image_shape), np.uint8)], [np.zeros(0, np.int64)])

    def append(self, split: str, x: np.ndarray, y: np.ndarray, files_done: int, skipped: Any = (),
               sizes: dict[str, int] | None = None) -> None:
        self.chunks[split][0].append(x)
        self.chunks[split][1].append(y)
        self._count(split, len(x), files_done, skipped, sizes)

    def data(self, name: str, classes: list[str]) -> ImageData:
        def joined(split: str, i: int) -> torch.Tensor:
            return torch.from_numpy(np.concatenate(self.chunks[split][i]))

        return ImageData(name, joined("train", 0), joined("train", 1), joined("test", 0), joined("test", 1), classes)


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
