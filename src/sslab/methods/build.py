"""From a run spec to a method: the backbone it names, with the method's heads around it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from sslab.methods.base import Method
from sslab.models import create_backbone
from sslab.registry import METHODS

if TYPE_CHECKING:
    from sslab.config import Config


def build_method(cfg: "Config", in_channels: int, image_size: int) -> Method:
    """The spec's method around a fresh backbone (initialised from the global torch seed)."""
    backbone = create_backbone(cfg.model.backbone, in_channels, image_size, cfg.model.stem)
    return METHODS.create(cfg.method.method, backbone, cfg.method)


__all__ = ["build_method"]
