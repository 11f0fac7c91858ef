"""X-PhiNet (same paper as PhiNet): PhiNet whose target z0 comes from a slow encoder.

f_long is an exponential moving average of f = backbone + projector, updated after every optimiser step:
    xi_long <- beta * xi_long + (1 - beta) * xi,   beta = `ema` (0.99)
on the parameters; BN running statistics are copied from f. z0 = f_long(x0) never receives gradient: its
parameters have requires_grad False, it is left out of `param_groups()`, and it runs under no_grad.

BN mode: f_long is a submodule, so it follows the model's mode, as in the reference code (which calls the
slow encoder in train mode). During training it normalises x0 with x0's batch statistics, like f does for
x1, x2; the running statistics it accumulates are overwritten by f's at each `after_step`, so in eval mode
f_long uses f's running statistics with its own averaged weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslab.methods.base import StepProgress, ema_update, frozen_copy
from sslab.methods.phinet import PhiNet, PhiNetSettings
from sslab.registry import METHODS
from sslab.settings import setting


@dataclass
class XPhiNetSettings(PhiNetSettings):
    """PhiNet's recipe plus the slow encoder's beta = 0.99 (docs/methods.md)."""

    ema: float = setting(0.99, "beta, the EMA momentum of the slow encoder f_long", ge=0, le=1)


@METHODS.register("xphinet")
class XPhiNet(PhiNet):
    Settings = XPhiNetSettings

    def __init__(self, backbone, cfg: XPhiNetSettings):
        super().__init__(backbone, cfg)
        self.slow_backbone = frozen_copy(self.backbone)  # f_long = slow_projector(slow_backbone(.))
        self.slow_projector = frozen_copy(self.projector)

    def target_z0(self, x0: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.slow_projector(self.slow_backbone(x0))  # N x d

    @torch.no_grad()
    def after_step(self, progress: StepProgress) -> None:
        ema_update(self.slow_backbone, self.backbone, self.cfg.ema)
        ema_update(self.slow_projector, self.projector, self.cfg.ema)
