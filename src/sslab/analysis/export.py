"""`sslab export-images`: a dataset of the registry as PNG files, OUT/<split>/<class>/NNNNN.png.

NNNNN is the image's index in its split as sslab loads it, so `--dataset folder --data-dir OUT` reads the
same pixels back (classes in sorted folder order, images of a class in their original order). Grey images
are written as 8-bit grey PNGs, colour ones as RGB. Class names become folder names with every character
outside letters, digits, space, `.`, `_`, `-` replaced by `_`; unlabelled images go to `unlabeled/`.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from sslab.data.base import ImageData
from sslab.errors import RunFolderError

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
