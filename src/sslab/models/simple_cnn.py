"""The teaching model of docs/methods.md: 3 x (conv3x3 64 -> ReLU -> maxpool2), flatten (64 * H/8 * W/8);
and `simple-cnn-bn`, the same with BatchNorm after each conv, which short CPU runs of the methods without
negatives need (docs/methods.md, "Backbones")."""
from __future__ import annotations

import torch
import torch.nn as nn

from sslab.errors import ConfigError
from sslab.registry import BACKBONES

MIN_IMAGE_SIZE = 8  # three 2x2 max-pools: a smaller image has no pixel left


class SimpleCNN(nn.Module):
    def __init__(self, in_channels: int = 3, image_size: int = 32, width: int = 64, batchnorm: bool = False):
        super().__init__()
        if image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"simple-cnn needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels (it halves "
                              f"them 3 times), these are {image_size}x{image_size}; pass --image-size "
                              f"{MIN_IMAGE_SIZE} or more, or use --backbone resnet18")
        blocks: list[nn.Module] = []
        c = in_channels
        for _ in range(3):
            norm = [nn.BatchNorm2d(width)] if batchnorm else []
            blocks.append(nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=not batchnorm), *norm, nn.ReLU(),
                                        nn.MaxPool2d(2)))
            c = width
        self.features = nn.Sequential(*blocks)
        side = image_size // 8
        self.out_dim = width * side * side

    def stages(self) -> dict[str, nn.Module]:
        return {f"block{i + 1}": block for i, block in enumerate(self.features)}  # the modules themselves: hooks fire

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)  # B x (64 * H/8 * W/8)


@BACKBONES.register("simple-cnn")
def simple_cnn(in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> SimpleCNN:
    return SimpleCNN(in_channels, image_size)


@BACKBONES.register("simple-cnn-bn")
def simple_cnn_bn(in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> SimpleCNN:
    return SimpleCNN(in_channels, image_size, batchnorm=True)
