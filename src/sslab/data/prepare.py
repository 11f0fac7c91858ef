"""Steps applied to decoded tensors: resize, stratified split, stratified subset. All vectorised."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_RESIZE_CHUNK_BYTES = 256 * 2**20  # float32 working memory per chunk


def resize_images(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, h, w); bilinear with antialiasing, in chunks to bound memory."""
    h, w = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == (h, w):
        return x
    out = torch.empty((x.shape[0], x.shape[1], h, w), dtype=torch.uint8)
    per_image = 4 * x.shape[1] * max(h * w, x.shape[2] * x.shape[3])
    chunk = max(1, _RESIZE_CHUNK_BYTES // per_image)
    for i in range(0, len(x), chunk):
        resized = F.interpolate(x[i:i + chunk].float(), size=(h, w), mode="bilinear", align_corners=False,
                                antialias=True)
        out[i:i + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test), both sorted: `test_fraction` of the images go to test, each class keeping its
    share (see `stratified_subset`). Unlabelled images (-1) are a class of their own here."""
    n_test = math.floor(len(labels) * test_fraction + 0.5)
    test = stratified_subset(labels, n_test, seed)
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[test] = True
    return torch.nonzero(~is_test).flatten(), test


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of `n` random images, each class c getting floor or ceil of n * share_c (the largest
    remainders get the rounding), so the total is exactly n."""
    y = labels.cpu().numpy()
    if n >= len(y):
        return torch.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n / len(y)
    take = np.floor(quota).astype(np.int64)
    by_remainder = np.argsort(-(quota - take), kind="stable")
    take[by_remainder[: n - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in zip(classes, take)]
    return torch.from_numpy(np.sort(np.concatenate(keep)))
