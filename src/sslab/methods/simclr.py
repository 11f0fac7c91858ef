"""SimCLR (Chen et al., ICML 2020) with the NT-Xent loss.

f = backbone, g = projector Linear-BN-ReLU-Linear, z = normalize(g(f(x))). Over the 2N embeddings of a batch,
"the positive of sample i is the other view of the same image": sample i + N (mod 2N); the other 2N - 2
are its negatives:
    l_i = -log( exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t) ),   L = mean_i l_i over 2N.
With torch.distributed initialised, z is gathered from every rank (with gradient) first, so the loss is the
single-process loss on the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslab.distributed import gather_with_grad
from sslab.methods.base import Method, MethodSettings, ProjectorSettings
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.settings import setting


@dataclass
class SimCLRSettings(MethodSettings, ProjectorSettings):
    """solo-learn's CIFAR SimCLR (scripts/pretrain/cifar/simclr.sh, ResNet-18, 90.74% linear at 1000 ep):
    LARS (eta 0.02, clipped, BN/bias excluded) lr 0.4 per 256 images, wd 1e-5, warm-up 10 epochs then
    cosine; projector 2048 -> 256; temperature 0.2. Batch 512, 800 epochs as the other recipes here."""

    temperature: float = setting(0.2, "temperature t of the NT-Xent softmax", ge=1e-3, le=100)
    proj_dim: int = 256
    optimizer: str = "lars"
    lr: float = 0.4
    weight_decay: float = 1e-5

    # ImageNet (ResNet-50, 224 px; the paper's default setting): LARS lr 0.3 per 256 (4.8 at batch 4096), wd 1e-6,
    # t 0.1, batch 4096, 100 epochs, z of 128 dimensions; colour jitter of strength 1 (0.8, 0.8, 0.8, 0.2)
    large_images = {"lr": 0.3, "weight_decay": 1e-6, "temperature": 0.1, "batch_size": 4096, "epochs": 100,
                    "proj_dim": 128}
    large_augment = {"jitter": (0.8, 0.8, 0.8, 0.2)}


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over cat(z1, z2): positive of row i is row i+N (mod 2N); the self-similarity is masked out."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # 2N x d
    sim = z @ z.T / temperature  # 2N x 2N
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))  # k != i
    positive = (torch.arange(2 * n, device=z.device) + n) % (2 * n)  # the other view
    return F.cross_entropy(sim, positive)  # mean over 2N


@METHODS.register("simclr")
class SimCLR(Method):
    Settings = SimCLRSettings

    def __init__(self, backbone, cfg: SimCLRSettings):
        super().__init__(backbone, cfg)
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden, cfg.proj_dim])  # Linear-BN-ReLU-Linear

    def forward(self, views, clean=None):
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))  # N x d
        z2 = self.projector(self.backbone(x2))
        # global batch: [all ranks' z1; all ranks' z2], so row i's positive stays at i + N_global
        loss = nt_xent(gather_with_grad(z1), gather_with_grad(z2), self.cfg.temperature)
        return {"loss": loss, "z": z1.detach()}
