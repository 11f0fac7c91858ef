"""VICReg (Bardes, Ponce, LeCun; ICLR 2022): "Variance-Invariance-Covariance Regularization".

f = backbone + expander (Linear-BN-ReLU, Linear-BN-ReLU, Linear). Three terms on the embeddings z1, z2 (N, D):
    invariance  s(z1, z2) = mean over N and D of (z1 - z2)^2                              (F.mse_loss)
    variance    v(z) = mean_j max(0, 1 - sqrt(Var_b(z_j) + eps)), eps = 1e-4, unbiased variance
    covariance  c(z) = sum_{i != j} Cov(z)_ij^2 / D, Cov(z) = (z - mean)^T (z - mean) / (N - 1)
    L = 25 s(z1, z2) + 25 (v(z1) + v(z2)) / 2 + 1 (c(z1) + c(z2))
(weights lambda = mu = 25, nu = 1: paper, section 4.3, and the official code). The official code takes the
invariance term on each rank's own batch and the other two on the gathered batch; here z is gathered from every
rank (with gradient) before all three, so two processes compute the single-process loss on the same images.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.methods.barlowtwins import off_diagonal
from sslab.models.heads import mlp

VARIANCE_EPS = 1e-4  # official: torch.sqrt(x.var(dim=0) + 0.0001)


def invariance_term(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(z1, z2)


def variance_term(z: torch.Tensor, eps: float = VARIANCE_EPS) -> torch.Tensor:
    """mean_j ReLU(1 - std_j): a hinge keeping every dimension's standard deviation over the batch at >= 1."""
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Squared off-diagonal covariances over the batch, summed, divided by D."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)  # D x D
    return off_diagonal(cov).pow(2).sum() / d


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(invariance, variance, covariance) as the weighted sum uses them."""
    return (invariance_term(z1, z2), (variance_term(z1) + variance_term(z2)) / 2,
            covariance_term(z1) + covariance_term(z2))


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0) -> torch.Tensor:
    inv, var, cov = vicreg_terms(z1, z2)
    return sim_weight * inv + var_weight * var + cov_weight * cov


def vicreg_expander(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear (8192-8192-8192 on ImageNet; 2048-2048-2048 in solo-learn's CIFAR)."""
    return mlp([in_dim, hidden, hidden, out_dim])
