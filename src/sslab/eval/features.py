"""Features of a frozen backbone over uint8 images, chunk by chunk on the model's device.

The images may sit on the model's device (sliced there) or on the host, e.g. a memory-mapped cache larger
than the device (data/cache.py): chunks are then gathered and copied one chunk ahead of the forward pass
(`streaming.StreamingFeed`), so the device never holds more than a few chunks of images. Either way each
chunk is the same images in the same order, so the features are the same. A kNN bank too large to keep
(ImageNet's 1.28 M images) is bounded by `bank_rows`: a stated, seeded, stratified subset.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
import torch.nn as nn

from sslab.augment import ops
from sslab.data.base import Images
from sslab.data.prepare import stratified_subset
from sslab.device import autocast, is_gpu
from sslab.streaming import StreamingFeed


def normalize_images(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float normalised per channel, exactly as the training views are (`augment.ops`)."""
    return ops.normalize(ops.to_float(x), mean, std)


def autocast_for(device: torch.device, bf16: bool | None = None):
    """bf16 autocast on `device`. None (auto): on a GPU only; True: on the CPU too (the tests run the GPU
    configuration there); False: never."""
    return autocast(device, is_gpu(device) if bf16 is None else bf16)


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Images, mean: Sequence[float], std: Sequence[float],
                     batch_size: int = 1024, bf16: bool | None = None, channels_last: bool = False,
                     out_device: torch.device | str | None = None, crop: int | None = None) -> torch.Tensor:
    """Backbone features (N, D) float32, in eval mode (BN running stats), on `out_device` (default: the
    model's device; pass "cpu" when N x D would not fit there). `images`: uint8 (N, C, H, W) anywhere.
    `crop`: the centre crop x crop of images stored larger than the training size (`--store-size 256
    --image-size 224`: the ImageNet evaluation's resize to 256, then centre crop 224)."""
    device = next(backbone.parameters()).device
    resident = isinstance(images, torch.Tensor) and images.device == device
    starts = range(0, len(images), batch_size)
    chunks = [torch.arange(i, min(i + batch_size, len(images))) for i in starts]
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        with nullcontext() if resident else StreamingFeed(images, device, depth=1) as feed:
            if feed is not None and chunks:
                feed.prefetch(chunks[0])
            for k, rows in enumerate(chunks):
                if feed is None:
                    x = images[int(rows[0]):int(rows[-1]) + 1]
                else:
                    if k + 1 < len(chunks):
                        feed.prefetch(chunks[k + 1])  # gathered and copied while this chunk runs
                    x = feed.batch(rows)
                x = normalize_images(center_crop(x, crop), mean, std)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast_for(device, bf16):
                    features = backbone(x).float()  # B x D
                out.append(features if out_device is None else features.to(out_device))
    finally:
        backbone.train(was_training)
    if not out:
        return torch.zeros(0, 0, device=device if out_device is None else out_device)
    return torch.cat(out)


def center_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The central size x size of (B, C, H, W) images (torchvision's CenterCrop offsets); as is when not larger."""
    if size is None or (x.shape[-2] <= size and x.shape[-1] <= size):
        return x
    top, left = round((x.shape[-2] - size) / 2), round((x.shape[-1] - size) / 2)
    return x[..., top:top + size, left:left + size]


KNN_BANK_MAX = 200_000  # training images in the kNN monitor's bank (ImageNet-100's 126,689 fit, ImageNet-1k's not)
PIXEL_KNN_MAX_BYTES = 4 * 2**30  # float32 pixels of the raw-pixel kNN baseline's bank and queries


def bank_rows(labels: torch.Tensor, limit: int | None, seed: int) -> tuple[torch.Tensor | None, str | None]:
    """The rows of a kNN bank bounded to `limit` images: (None, None) when all fit; else (sorted indices of a
    stratified, seeded subset of `limit` images, the note that says so in the output)."""
    if limit is None or len(labels) <= limit:
        return None, None
    rows = stratified_subset(labels, limit, seed)
    return rows, (f"kNN bank: a stratified subset of {limit:,} of the {len(labels):,} training images (seed {seed}), "
                  "each class in its share")


def finite_features(features: torch.Tensor, what: str = "the checkpoint") -> torch.Tensor:
    """`features`, or a one-line CheckpointError when any is NaN or infinite: a backbone whose weights blew
    up (or were damaged) gives no features that kNN, a probe or k-means could use."""
    bad = int((~torch.isfinite(features)).any(dim=1).sum()) if features.numel() else 0
    if bad:
        from sslab.errors import CheckpointError

        raise CheckpointError(f"{what} gives NaN or infinite features for {bad} of {len(features)} images: its weights "
                              "are broken; use an earlier checkpoint (checkpoints/epoch_NNNN.pt, --checkpoint-every) "
                              "or train again")
    return features
