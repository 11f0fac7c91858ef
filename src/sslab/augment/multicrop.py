"""Multi-crop (Caron et al., SwAV 2020): 2 global views at the training size plus N local views of a smaller
size cut from smaller parts of the image, "we ... use two standard resolution crops and sample V additional low
resolution crops that cover only small parts of the image" (SwAV, section 3.2). DINO uses the same.

A `CropGroup` is `count` views of one size and one augmentation; `MultiCrop` draws every view of a group in one
batched `Augmenter` call on the batch repeated `count` times (no loop over images or views inside a group), on
the images' device. The views come back as a list, group by group: [global 1, global 2, local 1, ..., local N].
Any method can ask for it; DINO's asymmetric global views are two groups of one view each.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from sslab.augment.presets import AugmentParams, Augmenter
# the scales and the local size are declared beside the methods' view specs (sslab/methods/crops.py)
from sslab.methods.crops import DINO_GLOBAL_SCALE, DINO_LOCAL_SCALE, SWAV_GLOBAL_SCALE, SWAV_LOCAL_SCALE, local_crop_size

@dataclass(frozen=True)
class CropGroup:
    """`count` views of `size` x `size` pixels, each augmented with `params` (its own crop scale included)."""

    params: AugmentParams
    size: int
    count: int = 1


def global_and_local(params: AugmentParams, image_size: int, local_count: int,
                     global_scale: tuple[float, float] = DINO_GLOBAL_SCALE,
                     local_scale: tuple[float, float] = DINO_LOCAL_SCALE,
                     local_size: Optional[int] = None) -> list[CropGroup]:
    """2 global views at `image_size` and `local_count` local views at `local_size` (default `local_crop_size`),
    both with `params` but their own crop scales."""
    groups = [CropGroup(dataclasses.replace(params, crop_scale=global_scale), image_size, 2)]
    if local_count > 0:
        groups.append(CropGroup(dataclasses.replace(params, crop_scale=local_scale),
                                local_size or local_crop_size(image_size), local_count))
    return groups


class MultiCrop:
    """uint8 (B, C, H, W) -> a list of normalised views, group by group (see the module's docstring)."""

    def __init__(self, groups: Sequence[CropGroup], mean: Sequence[float], std: Sequence[float],
                 dtype: torch.dtype = torch.float32):
        self.groups = list(groups)
        self.augmenters = [Augmenter(g.params, g.size, mean, std, dtype) for g in self.groups]

    @property
    def num_views(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def sizes(self) -> list[int]:
        """The side of every view, in order."""
        return [g.size for g in self.groups for _ in range(g.count)]

    def __repr__(self) -> str:
        return f"MultiCrop({', '.join(f'{g.count} x {g.size} px' for g in self.groups)})"

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
        views: list[torch.Tensor] = []
        for group, augment in zip(self.groups, self.augmenters):
            batch = x if group.count == 1 else x.repeat(group.count, 1, 1, 1)  # (count * B, C, H, W)
            views += list(augment(batch, generator).chunk(group.count))  # count x (B, C, size, size)
        return views


__all__ = ["CropGroup", "MultiCrop", "global_and_local", "local_crop_size", "DINO_GLOBAL_SCALE", "DINO_LOCAL_SCALE",
           "SWAV_GLOBAL_SCALE", "SWAV_LOCAL_SCALE"]
