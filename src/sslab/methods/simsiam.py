"""SimSiam (Chen & He, CVPR 2021): "a Siamese network ... with a stop-gradient operation".

f = backbone + projector (2 layers on CIFAR-size images, 3 above), h = bottleneck predictor.
L = D(h(z1), sg(z2))/2 + D(h(z2), sg(z1))/2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslab.methods.base import Method, MethodSettings, PredictorSettings, ProjectorSettings, negative_cosine
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.settings import setting


@dataclass
class SimSiamSettings(MethodSettings, PredictorSettings, ProjectorSettings):
    """The paper's CIFAR-10 recipe (docs/methods.md): SGD momentum 0.9, weight decay 5e-4, lr 0.03 per 256, cosine
    without warm-up, batch 512, 800 epochs; projector 2048 -> 2048 (2 layers), predictor bottleneck 512."""

    proj_layers: int = setting(2, "layers of the projector MLP", ge=1, le=16)
    fixed_predictor_lr: bool = setting(True, "the predictor h keeps the peak learning rate (the paper's choice)")
    lr: float = 0.03
    weight_decay: float = 5e-4
    warmup_epochs: int = 0

    # RandomResizedCrop(scale 0.2-1.0), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grey p 0.2, no blur at 32 px
    augment = {"crop_scale": (0.2, 1.0)}
    # ImageNet (ResNet-50, 224 px): the projector's third layer, lr 0.05, wd 1e-4, 100 epochs (the paper's main run)
    large_images = {"proj_layers": 3, "lr": 0.05, "weight_decay": 1e-4, "epochs": 100}


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient on the targets (the detach is the method)."""
    return negative_cosine(p1, z2.detach()) / 2 + negative_cosine(p2, z1.detach()) / 2


def projector(in_dim: int, cfg: SimSiamSettings) -> torch.nn.Module:
    """Linear-BN-ReLU, [Linear-BN-ReLU], Linear-BN (output BN, no ReLU)."""
    dims = [in_dim] + [cfg.proj_hidden] * (cfg.proj_layers - 1) + [cfg.proj_dim]
    return mlp(dims, last_bn=True)


def predictor(cfg: SimSiamSettings) -> torch.nn.Module:
    """Bottleneck: Linear(d, d/4)-BN-ReLU-Linear(d/4, d), no BN on the output."""
    return mlp([cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim])


@METHODS.register("simsiam")
class SimSiam(Method):
    Settings = SimSiamSettings

    def __init__(self, backbone, cfg: SimSiamSettings):
        super().__init__(backbone, cfg)
        self.projector = projector(backbone.out_dim, cfg)
        self.predictor = predictor(cfg)

    def forward(self, views, clean=None):
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))  # N x d
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)  # N x d
        return {"loss": simsiam_loss(p1, p2, z1, z2), "z": z1.detach()}

    def param_groups(self):
        return [{"params": [*self.backbone.parameters(), *self.projector.parameters()], "fixed_lr": False},
                {"params": list(self.predictor.parameters()), "fixed_lr": self.cfg.fixed_predictor_lr}]
