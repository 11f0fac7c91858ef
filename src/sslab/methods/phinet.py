"""PhiNet (Ishikawa, Yamada, Bao, Takezawa; ICLR 2025): SimSiam plus a second predictor and a second target.

Hippocampus reading: f (EC) = backbone + projector, h (CA3) = SimSiam's bottleneck predictor, g (CA1) = a
second predictor of the same shape applied to h's output. Three inputs: two strong views x1, x2 and x0,
the clean image (`third_view: clean`) or a third strong view (`third_view: strong`).

    L     = L_cos + lam * L_mse
    L_cos = D(h(z1), sg(z2))/2 + D(h(z2), sg(z1))/2            (SimSiam)
    L_mse = ( mse(g(h(z1)), sg(z0)) + mse(g(h(z2)), sg(z0)) ) / 2,   z = f(x)

`mse` is torch's MSELoss with mean reduction, as in the reference code: the mean over the batch AND the d
dimensions, i.e. ||y - z0||^2 / d averaged over samples (so lam = 1 weighs a per-dimension error).
h keeps a constant lr (`fixed_predictor_lr`); g follows the schedule with f.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslab.methods.base import Method
from sslab.methods.simsiam import SimSiamSettings, predictor, projector, simsiam_loss
from sslab.registry import METHODS
from sslab.settings import setting


@dataclass
class PhiNetSettings(SimSiamSettings):
    """SimSiam's recipe (optimiser, heads, schedule) plus lam = 1.0, x0 = the clean image, and the 10 warm-up
    epochs of PhiNet's reference code (riverstone496/PhiNets; docs/methods.md)."""

    lam: float = setting(1.0, "weight of PhiNet's MSE term", ge=0, le=1000)
    third_view: str = setting("clean", "PhiNet's x0: the clean image or a third strong view", choices=("clean", "strong"))
    warmup_epochs: int = 10


def phinet_mse(y1: torch.Tensor, y2: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """L_mse = (mse(y1, sg(z0)) + mse(y2, sg(z0))) / 2, mean over batch and dims (torch's MSELoss)."""
    z0 = z0.detach()
    return (F.mse_loss(y1, z0) + F.mse_loss(y2, z0)) / 2


@METHODS.register("phinet")
class PhiNet(Method):
    Settings = PhiNetSettings

    def __init__(self, backbone, cfg: PhiNetSettings):
        super().__init__(backbone, cfg)
        self.num_views = 3 if cfg.third_view == "strong" else 2  # x1, x2 (, x0)
        self.needs_clean = cfg.third_view == "clean"
        self.projector = projector(backbone.out_dim, cfg)
        self.predictor = predictor(cfg)  # h (CA3)
        self.ca1_predictor = predictor(cfg)  # g (CA1)

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))  # N x d

    def target_z0(self, x0: torch.Tensor) -> torch.Tensor:
        """z0 = sg(f(x0)): no gradient reaches it, so no graph is kept (BN runs in the model's mode, as for x1, x2)."""
        with torch.no_grad():
            return self.f(x0)

    def forward(self, views, clean=None):
        x1, x2 = views[0], views[1]
        x0 = clean if self.needs_clean else views[2]
        z1, z2 = self.f(x1), self.f(x2)  # N x d
        p1, p2 = self.predictor(z1), self.predictor(z2)  # h(z): N x d
        y1, y2 = self.ca1_predictor(p1), self.ca1_predictor(p2)  # g(h(z)): N x d
        z0 = self.target_z0(x0)
        loss_cos = simsiam_loss(p1, p2, z1, z2)
        loss_mse = phinet_mse(y1, y2, z0)
        loss = loss_cos + self.cfg.lam * loss_mse
        return {"loss": loss, "loss_cos": loss_cos.detach(), "loss_mse": loss_mse.detach(), "z": z1.detach()}

    def param_groups(self):
        online = [*self.backbone.parameters(), *self.projector.parameters(), *self.ca1_predictor.parameters()]
        return [{"params": online, "fixed_lr": False},
                {"params": list(self.predictor.parameters()), "fixed_lr": self.cfg.fixed_predictor_lr}]
