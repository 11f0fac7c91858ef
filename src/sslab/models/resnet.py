"""ResNet-18/34/50 (He et al. 2016) without torchvision.

Stem: at <= 64 px the CIFAR variant (3x3 conv, stride 1, no max-pool) that every CIFAR number uses; above
64 px the ImageNet stem (7x7 stride 2 + max-pool). docs/methods.md: the ImageNet stem on 32 px costs ~10 points.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sslab.errors import ConfigError
from sslab.registry import BACKBONES

# images up to this side are "CIFAR-size": the CIFAR stem here, and in sslab/recipe.py the CIFAR recipes (a
# 2-layer SimSiam projector, no blur); above it the ImageNet stem and recipes
SMALL_IMAGE_MAX = 64


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.shortcut = _shortcut(c_in, c, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c * 4)
        self.shortcut = _shortcut(c_in, c * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """Backbone: (B, C, H, W) -> (B, out_dim) after global average pooling. No classifier."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: list[int], in_channels: int = 3,
                 stem: str = "cifar"):
        super().__init__()
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        elif stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            raise ConfigError(f"unknown stem {stem!r}; use cifar or imagenet")
        c_in, stages = 64, []
        for i, (width, depth) in enumerate(zip([64, 128, 256, 512], depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last BN of each residual branch (Goyal et al.): each block starts as identity
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.bn3.weight if isinstance(m, Bottleneck) else m.bn2.weight)

    def stages(self) -> dict[str, nn.Module]:
        """The named stages, for activation maps and Grad-CAM."""
        return {"stem": self.stem, "layer1": self.layer1, "layer2": self.layer2, "layer3": self.layer3,
                "layer4": self.layer4}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))  # B x out_dim x h x w
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # B x out_dim


def _pick_stem(stem: str, image_size: int) -> str:
    return ("cifar" if image_size <= SMALL_IMAGE_MAX else "imagenet") if stem == "auto" else stem


@BACKBONES.register("resnet18")
def resnet18(in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channels, _pick_stem(stem, image_size))


@BACKBONES.register("resnet34")
def resnet34(in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], in_channels, _pick_stem(stem, image_size))


@BACKBONES.register("resnet50")
def resnet50(in_channels: int = 3, image_size: int = 32, stem: str = "auto") -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channels, _pick_stem(stem, image_size))
