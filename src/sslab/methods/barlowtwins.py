"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny; ICML 2021): "Self-Supervised Learning via Redundancy Reduction".

f = backbone + projector (Linear-BN-ReLU, Linear-BN-ReLU, Linear). Each embedding dimension is standardised over
the batch (BatchNorm without affine parameters), then the cross-correlation of the two views is driven to the
identity:
    C_ij = sum_b z1n_bi z2n_bj / N,
    L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2
"the first term ... makes the embedding invariant to the distortions applied. The redundancy reduction term
... decorrelates the different vector components" (paper, section 2). lambda = 0.0051 (official code).
With torch.distributed, z is gathered from every rank first (with gradient), so C is the global batch's
(the official code divides by the global batch and all-reduces C; the same matrix).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.distributed import gather_with_grad
from sslab.methods.base import Method, MethodSettings, ProjectorSettings, ViewSpec
from sslab.methods.crops import asymmetric_views
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.settings import setting

BN_EPS = 1e-5  # nn.BatchNorm1d's, as the official `self.bn = nn.BatchNorm1d(sizes[-1], affine=False)`


def standardise(z: torch.Tensor) -> torch.Tensor:
    """(z - mean_b) / sqrt(var_b + eps) per dimension, biased variance: BatchNorm1d(affine=False) in training."""
    return F.batch_norm(z, None, None, training=True, eps=BN_EPS)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """C = standardise(z1)^T standardise(z2) / N: (D, D) for z1, z2 of (N, D)."""
    return standardise(z1).T @ standardise(z2) / z1.shape[0]


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    """The D*(D-1) off-diagonal entries of a square matrix, flattened."""
    d = c.shape[0]
    return c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2. The method passes float32 z (AMP gives bf16)."""
    c = cross_correlation(z1, z2)  # D x D
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    return on_diag + lambd * off_diagonal(c).pow(2).sum()


def barlow_twins_projector(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear: the official 3-layer projector (8192-8192-8192 on ImageNet,
    2048-2048-2048 in solo-learn's CIFAR recipe)."""
    return mlp([in_dim, hidden, hidden, out_dim])


@dataclass
class BarlowTwinsSettings(MethodSettings, ProjectorSettings):
    """solo-learn's CIFAR Barlow Twins (scripts/pretrain/cifar/barlow.yaml, ResNet-18, 92.10% linear at 1000 ep):
    LARS (eta 0.02, clipped, BN/bias excluded) lr 0.3 per 256, wd 1e-4, warm-up 10 epochs then cosine; projector
    2048-2048-2048; lambda 0.0051; the loss scaled by 0.1. Batch 512, 800 epochs as the other recipes here."""

    lambd: float = setting(0.0051, "lambda, the weight of the redundancy-reduction (off-diagonal) term", ge=0, le=100)
    scale_loss: float = setting(0.1, "factor on the whole loss (solo-learn's CIFAR recipe: 0.1; the paper: 1)",
                                gt=0, le=100)
    optimizer: str = "lars"
    lr: float = 0.3

    # solo-learn's asymmetric recipe: jitter (0.4, 0.4, 0.2, 0.1), the second view solarized (view_specs)
    augment = {"jitter": (0.4, 0.4, 0.2, 0.1)}
    # a short run (< 100 epochs) on small images crops at least 20% of the image: with the 8% crops above, 3 epochs
    # on 10,000 CIFAR-10 images (simple-cnn-bn) end below the untrained network (kNN 37.7% < 38.0%), with 20% above
    # both baselines (39.2%; docs/benchmarks.md, "does each method learn")
    short_run_augment = {"crop_scale": (0.2, 1.0)}
    # ImageNet (ResNet-50, 224 px; the official main.py): LARS lr 0.2 per 256, wd 1.5e-6, batch 2048, 1000 epochs,
    # projector 8192-8192-8192, the loss unscaled
    large_images = {"lr": 0.2, "weight_decay": 1.5e-6, "batch_size": 2048, "epochs": 1000, "proj_hidden": 8192,
                    "proj_dim": 8192, "scale_loss": 1.0}


@METHODS.register("barlowtwins")
class BarlowTwins(Method):
    Settings = BarlowTwinsSettings

    def __init__(self, backbone, cfg: BarlowTwinsSettings):
        super().__init__(backbone, cfg)
        self.projector = barlow_twins_projector(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)

    def view_specs(self, image_size: int) -> list[ViewSpec]:
        return asymmetric_views(image_size)

    def forward(self, views, clean=None):
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))  # N x D
        z2 = self.projector(self.backbone(x2))
        # the global batch's cross-correlation, in float32 (bf16 sums of 512 products lose the diagonal's 1)
        loss = barlow_twins_loss(gather_with_grad(z1).float(), gather_with_grad(z2).float(), self.cfg.lambd)
        return {"loss": self.cfg.scale_loss * loss, "z": z1.detach()}
