"""Backbones (resnet18/34/50, simple-cnn, vit-tiny/small) and MLP heads. Importing this registers the backbones."""
from sslab.models import resnet, simple_cnn, vit  # noqa: F401  (registration)
from sslab.models.heads import mlp
from sslab.registry import BACKBONES


def create_backbone(name: str, in_channels: int, image_size: int, stem: str = "auto"):
    """A backbone by name; every backbone maps (B, C, H, W) to features (B, out_dim)."""
    return BACKBONES.create(name, in_channels=in_channels, image_size=image_size, stem=stem)


__all__ = ["create_backbone", "mlp", "BACKBONES"]
