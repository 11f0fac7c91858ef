"""BYOL (Grill et al., 2020): "Bootstrap your own latent".

online = backbone + projector + predictor q; target = EMA of (backbone + projector), never trained:
    xi <- tau * xi + (1 - tau) * theta,   tau = 1 - (1 - tau_base) * (cos(pi * progress) + 1) / 2
(tau_base = `ema`, rising to 1 by the end of training). Loss per pair 2 - 2 cos(q(z_online), sg(z_target)),
symmetrised as the MEAN of the two directions (view 1 -> view 2 and view 2 -> view 1); the paper and
solo-learn sum them, which is the same loss times 2 (the recipe's lr/wd account for it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslab.methods.base import (
    Method,
    MethodSettings,
    PredictorSettings,
    ProjectorSettings,
    StepProgress,
    ema_update,
    frozen_copy,
)
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.settings import setting


@dataclass
class BYOLSettings(MethodSettings, PredictorSettings, ProjectorSettings):
    """solo-learn's CIFAR BYOL (scripts/pretrain/cifar/byol.yaml, ResNet-18, 92.58% linear at 1000 ep):
    LARS (eta 0.02, clipped, BN/bias excluded), lr 1.0 per 256, wd 1e-5 for the SUMMED loss, warm-up 10
    epochs then cosine; projector and predictor 4096 -> 256; tau 0.99 -> 1. Our loss is the mean of the two
    directions (half the sum), so lr 2.0 and wd 5e-6 give exactly solo-learn's updates (LARS's trust ratio is
    invariant to the loss scale; the clip, BN/bias steps and decay are not)."""

    ema: float = setting(0.99, "tau_base, the target encoder's EMA momentum at the start (it rises to 1 by cosine)",
                         ge=0, le=1)
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    optimizer: str = "lars"
    lr: float = 2.0
    weight_decay: float = 5e-6

    # solarize p 0.1 on every view: one symmetric recipe for the paper's two (p 0 and 0.2)
    augment = {"jitter": (0.4, 0.4, 0.2, 0.1), "solarize_p": 0.1}
    # ImageNet (ResNet-50, 224 px): LARS lr 0.2 per 256 and wd 1.5e-6 for the summed loss (0.4 and 7.5e-7 for our
    # mean), batch 4096, 1000 epochs, tau 0.996
    large_images = {"lr": 0.4, "weight_decay": 7.5e-7, "batch_size": 4096, "epochs": 1000, "ema": 0.996}


def byol_loss(p: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p_i, sg(z_i)), mean over the batch (the MSE of the l2-normalised vectors)."""
    return 2 - 2 * F.cosine_similarity(p, z_target.detach(), dim=-1).mean()


def byol_momentum(base: float, progress: float) -> float:
    """tau at `progress` in [0, 1]: base at the start, 1 at the end, cosine in between."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@METHODS.register("byol")
class BYOL(Method):
    Settings = BYOLSettings

    def __init__(self, backbone, cfg: BYOLSettings):
        super().__init__(backbone, cfg)
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden, cfg.proj_dim])  # Linear-BN-ReLU-Linear
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim])
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)

    def forward(self, views, clean=None):
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))  # N x d
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(x1))  # N x d
            t2 = self.target_projector(self.target_backbone(x2))
        loss = (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2
        return {"loss": loss, "z": z1.detach()}

    def param_groups(self):
        online = [*self.backbone.parameters(), *self.projector.parameters(), *self.predictor.parameters()]
        return [{"params": online, "fixed_lr": False}]

    @torch.no_grad()
    def after_step(self, progress: StepProgress) -> None:
        tau = byol_momentum(self.cfg.ema, progress.done)
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)
