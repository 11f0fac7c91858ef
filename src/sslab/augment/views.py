"""The views a training step makes of a batch: what the method asks for (`Method.view_specs`: count, size,
augmentation changes per view), made by batched augmenters on the data's device.

One `Augmenter` per distinct spec, built once; views are made in the order of the specs, each from the same
generator, so two equal specs draw exactly what one augmenter called twice would (the default: `num_views`
views at the image size).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from sslab.augment.presets import AugmentConfig, Augmenter
from sslab.methods.base import ViewSpec


class ViewMaker:
    def __init__(self, specs: Sequence[ViewSpec], params: AugmentConfig, image_size: int, mean: Sequence[float],
                 std: Sequence[float], dtype: torch.dtype = torch.float32):
        made: dict[tuple, Augmenter] = {}
        self.augmenters = []
        for spec in specs:
            key = (spec.size, tuple(sorted(spec.changes.items())))
            if key not in made:
                made[key] = Augmenter(dataclasses.replace(params, **spec.changes), spec.size, mean, std, dtype)
            self.augmenters.append(made[key])
        self.full = Augmenter(params, image_size, mean, std, dtype)  # the clean view, at the image size

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
        """uint8 (B, C, H, W) -> one normalised float batch per spec (B, C, size, size)."""
        return [augment(x, generator) for augment in self.augmenters]

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """The un-augmented view at the image size (PhiNet's x0)."""
        return self.full.clean(x)


__all__ = ["ViewMaker"]
