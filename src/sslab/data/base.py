"""The in-memory dataset every loader returns: uint8 images (N, C, H, W) and int64 labels per split."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sslab.errors import DataError


@dataclass
class ImageData:
    """A dataset decoded once into uint8 tensors.

    `train_x`: (N, C, H, W) uint8, C in {1, 3}; `train_y`: (N,) int64 (-1 where unlabelled).
    `test_x`/`test_y` likewise; they may hold zero images for sets without a test split.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = field(default=())  # per channel, in [0, 1], of the train split
    std: tuple[float, ...] = field(default=())

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
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> "ImageData":
        """The same data on `device` (the GPU holds it once; augmentation runs there)."""
        return ImageData(self.name, self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                         self.test_y.to(device), self.classes, self.mean, self.std)


# the smallest per-channel std normalisation divides by: a channel that never changes (all images black in red,
# say) has std 0; one grey level keeps its normalised values finite (0 for a constant channel)
STD_FLOOR = round(1 / 255, 4)


def channel_stats(x: torch.Tensor, chunk_bytes: int = 64 * 2**20) -> tuple[tuple[float, ...], tuple[float, ...]]:
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
