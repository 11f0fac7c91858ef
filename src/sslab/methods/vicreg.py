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

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.distributed import gather_with_grad
from sslab.methods.barlowtwins import off_diagonal
from sslab.methods.base import Method, MethodSettings, ProjectorSettings
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.settings import setting

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


@dataclass
class VICRegSettings(MethodSettings, ProjectorSettings):
    """solo-learn's CIFAR VICReg (scripts/pretrain/cifar/vicreg.yaml, ResNet-18, 92.07% linear at 1000 ep): LARS
    (eta 0.02, clipped, BN/bias excluded) lr 0.3 per 256, wd 1e-4, warm-up 10 epochs then cosine; expander
    2048-2048-2048; weights 25 / 25 / 1. Batch 512, 800 epochs as the other recipes here."""

    sim_weight: float = setting(25.0, "lambda, the weight of the invariance (mean squared distance) term", ge=0,
                                le=1000)
    var_weight: float = setting(25.0, "mu, the weight of the variance (hinge on each dimension's std) term", ge=0,
                                le=1000)
    cov_weight: float = setting(1.0, "nu, the weight of the covariance (off-diagonal) term", ge=0, le=1000)
    optimizer: str = "lars"
    lr: float = 0.3

    # solo-learn's VICReg augmentation: crops of 20-100% of the image, jitter (0.4, 0.4, 0.2, 0.1), solarize p 0.1
    augment = {"crop_scale": (0.2, 1.0), "jitter": (0.4, 0.4, 0.2, 0.1), "solarize_p": 0.1}
    # ImageNet (ResNet-50, 224 px; the official main_vicreg.py): LARS lr 0.2 per 256 (base-lr 0.2), wd 1e-6,
    # batch 2048, 1000 epochs, expander 8192-8192-8192
    large_images = {"lr": 0.2, "weight_decay": 1e-6, "batch_size": 2048, "epochs": 1000, "proj_hidden": 8192,
                    "proj_dim": 8192}


@METHODS.register("vicreg")
class VICReg(Method):
    Settings = VICRegSettings

    def __init__(self, backbone, cfg: VICRegSettings):
        super().__init__(backbone, cfg)
        self.projector = vicreg_expander(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)

    def forward(self, views, clean=None):
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))  # N x D
        z2 = self.projector(self.backbone(x2))
        inv, var, cov = vicreg_terms(gather_with_grad(z1).float(), gather_with_grad(z2).float())  # the global batch
        c = self.cfg
        loss = c.sim_weight * inv + c.var_weight * var + c.cov_weight * cov
        return {"loss": loss, "invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach(),
                "z": z1.detach()}
