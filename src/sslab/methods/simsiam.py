"""SimSiam (Chen & He, CVPR 2021): "a Siamese network ... with a stop-gradient operation".

f = backbone + projector (2 layers on CIFAR-size images, 3 above), h = bottleneck predictor.
L = D(h(z1), sg(z2))/2 + D(h(z2), sg(z1))/2.
"""
from __future__ import annotations

from typing import Any

import torch

from sslab.methods.base import Method, negative_cosine
from sslab.models.heads import mlp
from sslab.registry import METHODS


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient on the targets (the detach is the method)."""
    return negative_cosine(p1, z2.detach()) / 2 + negative_cosine(p2, z1.detach()) / 2


def simsiam_recipe(dataset: str, image_size: int) -> dict[str, dict[str, Any]]:
    """docs/methods.md CIFAR-10 recipe: SGD 0.9, wd 5e-4, lr 0.03 * batch/256, cosine, batch 512, 800 epochs."""
    small = image_size <= 64
    return {
        "method": {"proj_layers": 2 if small else 3, "proj_hidden": 2048, "proj_dim": 2048, "pred_hidden": 512,
                   "fixed_predictor_lr": True},
        "optim": {"optimizer": "sgd", "lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 0},
        "train": {"epochs": 800, "batch_size": 512},
    }


def projector(in_dim: int, cfg) -> torch.nn.Module:
    """Linear-BN-ReLU, [Linear-BN-ReLU], Linear-BN (output BN, no ReLU)."""
    dims = [in_dim] + [cfg.proj_hidden] * (cfg.proj_layers - 1) + [cfg.proj_dim]
    return mlp(dims, last_bn=True)


def predictor(cfg) -> torch.nn.Module:
    """Bottleneck: Linear(d, d/4)-BN-ReLU-Linear(d/4, d), no BN on the output."""
    return mlp([cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim])


@METHODS.register("simsiam")
class SimSiam(Method):
    augment_family = "simsiam"  # its augmentation: the simsiam-small/-large preset
    recipe = staticmethod(simsiam_recipe)

    def __init__(self, backbone, cfg):
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
        fixed = self.cfg.fixed_predictor_lr
        return [{"params": list(self.backbone.parameters()) + list(self.projector.parameters()), "fixed_lr": False},
                {"params": list(self.predictor.parameters()), "fixed_lr": bool(fixed)}]
