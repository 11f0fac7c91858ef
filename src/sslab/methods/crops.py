"""The views of the newer methods (`Method.view_specs`): solo-learn's asymmetric pair and multi-crop.

Asymmetric pair (solo-learn's `augmentations/asymmetric.yaml`, used by its Barlow Twins, DINO, MoCo v3 and NNCLR
CIFAR recipes): both views with the method's augmentation, the second one alone solarized (p 0.2). Above
SMALL_IMAGE_MAX px the published ImageNet pair (BYOL's, kept by DINO and MoCo v3): blur p 1.0 on the first view,
blur p 0.1 and solarize p 0.2 on the second.

Multi-crop (SwAV, section 3.2: "two standard resolution crops and ... V additional low resolution crops that
cover only small parts of the image"; DINO uses the same): 2 global views at the image size and `local` views at
`local_crop_size`, each group with its own crop scale. `sslab.augment.multicrop` makes such groups batched; here
they are declared as the views of a training step.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn

from sslab.errors import ConfigError
from sslab.methods.base import ViewSpec
from sslab.models.resnet import SMALL_IMAGE_MAX
from sslab.models.simple_cnn import SimpleCNN

# DINO's defaults at 224 px (main_dino.py): global_crops_scale (0.4, 1), local_crops_scale (0.05, 0.4), 8 local
# crops of 96 px. SwAV's (swav_800ep_pretrain.sh): 2 x 224 at (0.14, 1), 6 x 96 at (0.05, 0.14).
DINO_GLOBAL_SCALE, DINO_LOCAL_SCALE = (0.4, 1.0), (0.05, 0.4)
SWAV_GLOBAL_SCALE, SWAV_LOCAL_SCALE = (0.14, 1.0), (0.05, 0.14)
SOLARIZE_SECOND_VIEW = 0.2  # solo-learn's asymmetric recipe and BYOL's: the second view alone is solarized


def local_crop_size(image_size: int) -> int:
    """The local views' side: 3/7 of the image's (224 -> 96, the papers'), to the nearest multiple of 8, at least 8
    (32 -> 16, 64 -> 24, 96 -> 40)."""
    return max(8, 8 * round(image_size * 3 / 7 / 8))


def asymmetric_pair(image_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The augmentation changes of the two views (module docstring): CIFAR-size or, above 64 px, ImageNet's."""
    if image_size <= SMALL_IMAGE_MAX:
        return {}, {"solarize_p": SOLARIZE_SECOND_VIEW}
    return {"blur_p": 1.0}, {"blur_p": 0.1, "solarize_p": SOLARIZE_SECOND_VIEW}


def asymmetric_views(image_size: int) -> list[ViewSpec]:
    """The two views of `asymmetric_pair` at the image size (Barlow Twins', MoCo v3's and NNCLR's view_specs)."""
    return [ViewSpec(image_size, changes) for changes in asymmetric_pair(image_size)]


def multi_crop(image_size: int, local: int, global_scale: tuple[float, float], local_scale: tuple[float, float],
               global_changes: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
               local_changes: Mapping[str, Any] | None = None) -> list[ViewSpec]:
    """2 global views (each with its `global_changes`) and `local` local views; with no local view the two views
    keep the method's own crop scale (its CIFAR recipe has 2 crops)."""
    if local == 0:
        return [ViewSpec(image_size, dict(c)) for c in global_changes]
    views = [ViewSpec(image_size, {"crop_scale": global_scale, **c}) for c in global_changes]
    return views + [ViewSpec(local_crop_size(image_size), {"crop_scale": local_scale, **(local_changes or {})})] * local


def check_local_crops(backbone: nn.Module, local: int) -> None:
    """Local views are smaller than the image: the backbone must pool globally (a ResNet, a ViT)."""
    if local > 0 and isinstance(backbone, SimpleCNN):
        raise ConfigError("--local-crops needs a backbone that takes any image size (resnet18, vit-tiny, ...): "
                          "simple-cnn flattens a map whose size follows the image; use --local-crops 0 or another "
                          "--backbone")


def by_size(views: list) -> list[list[int]]:
    """Indices of consecutive views of one size: [[0, 1], [2, 3, 4, 5]] for 2 global + 4 local views (each group
    goes through the backbone as one batch, as the official MultiCropWrapper does)."""
    groups: list[list[int]] = []
    for i, v in enumerate(views):
        if groups and views[groups[-1][0]].shape[-1] == v.shape[-1]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


__all__ = ["local_crop_size", "asymmetric_pair", "asymmetric_views", "multi_crop", "check_local_crops", "by_size", "DINO_GLOBAL_SCALE",
           "DINO_LOCAL_SCALE", "SWAV_GLOBAL_SCALE", "SWAV_LOCAL_SCALE"]
