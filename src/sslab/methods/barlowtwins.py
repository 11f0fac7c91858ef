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

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.models.heads import mlp

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
