"""Features of a frozen backbone over uint8 images, in one batched pass on the model's device."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from sslab.augment import ops
from sslab.device import autocast, is_gpu


def normalize_images(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float normalised per channel, exactly as the training views are (`augment.ops`)."""
    return ops.normalize(ops.to_float(x), mean, std)


def autocast_for(device: torch.device, bf16: bool | None = None):
    """bf16 autocast on `device`. None (auto): on a GPU only; True: on the CPU too (the tests run the GPU
    configuration there); False: never."""
    return autocast(device, is_gpu(device) if bf16 is None else bf16)


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     batch_size: int = 1024, bf16: bool | None = None, channels_last: bool = False) -> torch.Tensor:
    """Backbone features (N, D) float32 on the model's device, in eval mode (BN running stats)."""
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = normalize_images(images[i:i + batch_size].to(device, non_blocking=True), mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, bf16):
                out.append(backbone(x).float())
    finally:
        backbone.train(was_training)
    if not out:
        return torch.zeros(0, 0, device=device)
    return torch.cat(out)


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
