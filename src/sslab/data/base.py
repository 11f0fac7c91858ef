"""The dataset every loader returns: uint8 images (N, C, H, W) and int64 labels per split.

The images are tensors (in memory, or pages of a memory-mapped cache file, data/cache.py), or, for a split
or a limit of a cache too large to copy (`ImageRows`), some rows of a mapped tensor, gathered on demand.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Union

import torch

from sslab.errors import DataError


@dataclass
class ImageData:
    """A dataset decoded once into uint8 tensors.

    `train_x`: (N, C, H, W) uint8, C in {1, 3}; `train_y`: (N,) int64 (-1 where unlabelled).
    `test_x`/`test_y` likewise; they may hold zero images for sets without a test split.
    `crop_size`: the side training crops views at and evaluation centre-crops to, when the images are stored
    larger (`--store-size 256 --image-size 224`); None: the stored side (`train_size` is either).
    """

    name: str
    train_x: "Images"
    train_y: torch.Tensor
    test_x: "Images"
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = field(default=())  # per channel, in [0, 1], of the train split
    std: tuple[float, ...] = field(default=())
    crop_size: int | None = None

    def __post_init__(self) -> None:
        for x in (self.train_x, self.test_x):
            assert x.dtype == torch.uint8 and x.ndim == 4, "images must be uint8 (N, C, H, W)"
        for y in (self.train_y, self.test_y):  # -1: unlabelled; anything else outside the classes breaks kNN
            if len(y) and (int(y.min()) < -1 or int(y.max()) >= len(self.classes)):
                raise DataError(f"{self.name}: labels span {int(y.min())}..{int(y.max())} but there are "
                                f"{len(self.classes)} classes (0..{len(self.classes) - 1}, -1 unlabelled); the data "
                                "is damaged: replace it with the original files")
        if not self.mean:
            self.mean, self.std = channel_stats(self.train_x)
        self.std = tuple(max(float(s), STD_FLOOR) for s in self.std)  # also a cache's, from before the floor

    @property
    def nbytes(self) -> int:
        """Bytes of the images and labels of both splits (what the device holds when they sit there)."""
        return sum(image_bytes(x) for x in (self.train_x, self.test_x)) + 8 * (len(self.train_y) + len(self.test_y))

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def train_size(self) -> int:
        """The side the network sees: views are cropped to it from the stored images."""
        return self.crop_size or self.image_size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def labels_to(self, device: torch.device | str) -> "ImageData":
        """The same images where they are (a streamed run keeps them in the host's mapped cache), the labels on
        `device` (the kNN monitor compares them with features there)."""
        return dataclasses.replace(self, train_y=self.train_y.to(device), test_y=self.test_y.to(device))

    def to(self, device: torch.device | str) -> "ImageData":
        """The same data on `device` (the GPU holds it once; augmentation runs there)."""
        return dataclasses.replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                                   test_x=self.test_x.to(device), test_y=self.test_y.to(device))


class ImageRows:
    """Rows `rows` of the uint8 images `base` (N, C, H, W), usually a memory-mapped cache, without copying them:
    a held-out split or a limit of a cache too large to copy in host memory. It indexes like a tensor (a slice
    or index tensor gathers those images into a new tensor), and `.to(device)` copies all its rows there."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, base: torch.Tensor, rows: torch.Tensor):
        assert base.dtype == torch.uint8 and base.ndim == 4 and rows.ndim == 1
        self.base, self.rows = base, rows.to(torch.int64).cpu()

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.base.shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.base.device

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ImageRows({len(self.rows)} of {len(self.base)} images of {tuple(self.base.shape[1:])})"

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return 1

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor:
        if isinstance(key, int):
            return self.base[int(self.rows[key])]
        index = self.rows[key] if isinstance(key, slice) else self.rows[torch.as_tensor(key).cpu()]
        return self.base.index_select(0, index)

    def to(self, device: torch.device | str) -> torch.Tensor:
        """All the rows as one tensor on `device` (a copy), gathered in chunks of about 256 MiB."""
        out = torch.empty(self.shape, dtype=torch.uint8, device=device)
        chunk = max(1, 256 * 2**20 // max(1, self.base[0].numel()))
        for i in range(0, len(self.rows), chunk):
            out[i:i + chunk].copy_(self[i:i + chunk])
        return out


Images = Union[torch.Tensor, ImageRows]


def image_bytes(x: Images) -> int:
    return x.numel() * x.element_size()


def gather(images: Images, indices: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`images[indices]` (CPU indices), into `out` when given (e.g. a pinned buffer of the right shape)."""
    if isinstance(images, ImageRows):
        images, indices = images.base, images.rows[indices]
    indices = indices.to(images.device)
    if out is None:
        return images.index_select(0, indices)
    return torch.index_select(images, 0, indices, out=out)


# the smallest per-channel std normalisation divides by: a channel that never changes (all images black in red,
# say) has std 0; one grey level keeps its normalised values finite (0 for a constant channel)
STD_FLOOR = round(1 / 255, 4)


def channel_stats(x: Images, chunk_bytes: int = 64 * 2**20) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 images (N, C, H, W), in chunks of about `chunk_bytes` of
    float64 working memory (a fixed image count would cost gigabytes at 96 px and above)."""
    if len(x) == 0:
        return (0.5,) * x.shape[1], (0.25,) * x.shape[1]
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    chunk = max(1, chunk_bytes // (x[0].numel() * 8))
    for i in range(0, len(x), chunk):
        c = x[i:i + chunk].to(torch.float64).div_(255.0)
        s += c.sum(dim=(0, 2, 3)).cpu()
        s2 += c.square_().sum(dim=(0, 2, 3)).cpu()
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean**2).clamp_min(0).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(max(round(v, 4), STD_FLOOR) for v in std.tolist())
