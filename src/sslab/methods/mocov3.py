"""MoCo v3 (Chen, Xie, He; ICCV 2021): "An Empirical Study of Training Self-Supervised Vision Transformers".

query encoder = backbone + projector + predictor; momentum encoder = EMA of backbone + projector (momentum
rising from `ema` to 1 by a cosine). No queue: the keys of the batch are the negatives. Symmetrised:
    L = ctr(q1, k2) + ctr(q2, k1),
    ctr(q, k) = CrossEntropy(q k^T / tau, labels = the diagonal) * 2 tau
(the paper's Algorithm 1 and the official `contrastive_loss`; "the loss is scaled by a constant 2 tau", which makes
its gradient's scale independent of tau). q, k are l2-normalised; k is gathered from every rank (no gradient), and
the positive of this rank's row i is the global row (rank * N + i).

Heads (official `_build_mlp`): projector Linear-BN-ReLU-Linear-BN(no affine) (2 layers after a ResNet, 3 after a
ViT), hidden 4096, output 256; predictor Linear-BN-ReLU-Linear, hidden 4096 (with the output BN after a ViT).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.distributed import gather_no_grad, rank
from sslab.methods.base import (
    Method,
    MethodSettings,
    PredictorSettings,
    ProjectorSettings,
    StepProgress,
    ViewSpec,
    ema_update,
    frozen_copy,
)
from sslab.methods.byol import byol_momentum
from sslab.methods.crops import asymmetric_views
from sslab.models.heads import mlp
from sslab.models.vit import VisionTransformer
from sslab.registry import METHODS
from sslab.settings import setting


def mocov3_contrastive(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """ctr(q, k): CE over the gathered keys with this rank's diagonal as positives, times 2 tau. k is detached."""
    q = F.normalize(q, dim=1)
    k = gather_no_grad(F.normalize(k.detach(), dim=1))  # N_global x d
    logits = q @ k.T / temperature  # N x N_global
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank()
    return F.cross_entropy(logits, labels) * (2 * temperature)


def mocov3_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor,
                temperature: float = 0.2) -> torch.Tensor:
    """ctr(q1, k2) + ctr(q2, k1): the SUM of the two directions, as the official code."""
    return mocov3_contrastive(q1, k2, temperature) + mocov3_contrastive(q2, k1, temperature)


def mocov3_projector(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """(Linear-BN-ReLU) x (layers - 1), Linear-BN without affine (SimCLR's design, "we further removed gamma")."""
    return mlp([in_dim] + [hidden] * (layers - 1) + [out_dim], last_bn=True, last_bn_affine=False)


def mocov3_predictor(dim: int, hidden: int, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU-Linear (the official ViT predictor adds the affine-free output BN: `last_bn`)."""
    return mlp([dim, hidden, dim], last_bn=last_bn, last_bn_affine=False)


@dataclass
class MoCoV3Settings(MethodSettings, PredictorSettings, ProjectorSettings):
    """solo-learn's CIFAR MoCo v3 (scripts/pretrain/cifar/mocov3.yaml, ResNet-18, 93.10% linear at 1000 ep): LARS
    (eta 0.02, clipped, BN/bias excluded) lr 0.3 per 256, wd 1e-6, warm-up 10 epochs then cosine; projector and
    predictor 4096 -> 256; temperature 0.2; momentum 0.99 -> 1 by cosine. Batch 512, 800 epochs as the other
    recipes here. After a ViT the projector has 3 layers and the predictor an output BN (the official heads)."""

    temperature: float = setting(0.2, "temperature tau of the contrastive softmax (the loss is scaled by 2 tau)",
                                 ge=1e-3, le=100)
    ema: float = setting(0.99, "tau_base, the momentum encoder's EMA momentum at the start (it rises to 1 by cosine)",
                         ge=0, le=1)
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    optimizer: str = "lars"
    lr: float = 0.3
    weight_decay: float = 1e-6

    # solo-learn's asymmetric recipe: jitter (0.4, 0.4, 0.2, 0.1), the second view solarized (view_specs)
    augment = {"jitter": (0.4, 0.4, 0.2, 0.1)}
    # ImageNet (ResNet-50, 224 px, 100 epochs; the official README): LARS lr 0.6 per 256, wd 1e-6, batch 4096,
    # temperature 1.0, momentum 0.99; crops of 20-100% of the image
    large_images = {"lr": 0.6, "weight_decay": 1e-6, "batch_size": 4096, "epochs": 100, "temperature": 1.0}
    large_augment = {"crop_scale": (0.2, 1.0)}


@METHODS.register("mocov3")
class MoCoV3(Method):
    Settings = MoCoV3Settings

    def __init__(self, backbone, cfg: MoCoV3Settings):
        super().__init__(backbone, cfg)
        vit = isinstance(backbone, VisionTransformer)
        self.projector = mocov3_projector(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, layers=3 if vit else 2)
        self.predictor = mocov3_predictor(cfg.proj_dim, cfg.pred_hidden, last_bn=vit)
        self.momentum_backbone = frozen_copy(self.backbone)
        self.momentum_projector = frozen_copy(self.projector)

    def view_specs(self, image_size: int) -> list[ViewSpec]:
        return asymmetric_views(image_size)

    def forward(self, views, clean=None):
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))  # N x d
        z2 = self.projector(self.backbone(x2))
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_backbone(x1))  # N x d
            k2 = self.momentum_projector(self.momentum_backbone(x2))
        loss = mocov3_loss(q1.float(), q2.float(), k1.float(), k2.float(), self.cfg.temperature)
        return {"loss": loss, "z": z1.detach()}

    def param_groups(self):
        online = [*self.backbone.parameters(), *self.projector.parameters(), *self.predictor.parameters()]
        return [{"params": online, "fixed_lr": False}]

    @torch.no_grad()
    def after_step(self, progress: StepProgress) -> None:
        tau = byol_momentum(self.cfg.ema, progress.done)
        ema_update(self.momentum_backbone, self.backbone, tau)
        ema_update(self.momentum_projector, self.projector, tau)
