"""MoCo v2 (Chen, Fan, Girshick, He 2020), symmetric as solo-learn's MoCo v2+.

query encoder = backbone + MLP projector Linear-ReLU-Linear (no BN, as in MoCo v2); key encoder = EMA copy
(momentum `ema`, constant), never trained. Each view is the query of the other's key:
    L = InfoNCE(q1, k2, queue_2)/2 + InfoNCE(q2, k1, queue_1)/2,
    InfoNCE(q, k, Q) = -mean_i log( exp(q_i.k_i/t) / (exp(q_i.k_i/t) + sum_j exp(q_i.Q_j/t)) )
with q, k l2-normalised. queue_v is a FIFO of the last `queue_size` keys of view v; after the loss (in
training mode) the batch's keys, gathered from every rank, replace the oldest ones at the pointer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslab.distributed import gather_no_grad
from sslab.methods.base import Method, MethodSettings, ProjectorSettings, StepProgress, ema_update, frozen_copy
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.settings import setting


@dataclass
class MoCoV2Settings(MethodSettings, ProjectorSettings):
    """solo-learn's CIFAR MoCo v2+ (scripts/pretrain/cifar/mocov2plus.yaml, ResNet-18, 92.94% linear at
    1000 ep): SGD momentum 0.9, lr 0.3 per 256, wd 1e-4, warm-up 10 epochs then cosine; projector 2048 -> 256;
    queue 32768 per view; temperature 0.2; key momentum 0.99 (solo-learn raises it to 0.999 by cosine; here
    it is constant, docs/methods.md's 0.99). Batch 512, 800 epochs as the other recipes here."""

    temperature: float = setting(0.2, "temperature t of the InfoNCE softmax", ge=1e-3, le=100)
    ema: float = setting(0.99, "momentum of the key encoder's EMA (constant)", ge=0, le=1)
    queue_size: int = setting(32768, "keys in the queue of negatives of each view", ge=1, le=2**22)
    proj_dim: int = 256
    lr: float = 0.3

    short_run_min_warmup = 1  # without a warm-up a short run collapses in its first steps (docs/methods.md)
    # ImageNet (ResNet-50, 224 px; MoCo v2): SGD lr 0.03 per 256, batch 256, 200 epochs, no warm-up, queue 65536,
    # key momentum 0.999, z of 128 dimensions; crops of 20-100% of the image
    large_images = {"lr": 0.03, "batch_size": 256, "epochs": 200, "warmup_epochs": 0, "queue_size": 65536,
                    "ema": 0.999, "proj_dim": 128}
    large_augment = {"crop_scale": (0.2, 1.0)}


def infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: the positive logit q_i.k_i against q_i.queue_j; q, k normalised here, queue already is."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)  # N x 1
    neg = q @ queue.detach().T  # N x K
    logits = torch.cat([pos, neg], dim=1) / temperature  # N x (1 + K)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@METHODS.register("mocov2")
class MoCoV2(Method):
    Settings = MoCoV2Settings

    def __init__(self, backbone, cfg: MoCoV2Settings):
        super().__init__(backbone, cfg)
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden, cfg.proj_dim], hidden_bn=False)
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(2, cfg.queue_size, cfg.proj_dim), dim=2))  # 2 x K x d
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, views, clean=None):
        x1, x2 = views
        q1 = self.projector(self.backbone(x1))  # N x d
        q2 = self.projector(self.backbone(x2))
        with torch.no_grad():
            k1 = F.normalize(self.key_projector(self.key_backbone(x1)), dim=1)  # N x d
            k2 = F.normalize(self.key_projector(self.key_backbone(x2)), dim=1)
        t, queue = self.cfg.temperature, self.queue.clone()  # a copy: the enqueue below must not touch the graph
        loss = infonce(q1, k2, queue[1], t) / 2 + infonce(q2, k1, queue[0], t) / 2
        if self.training:
            self.enqueue(torch.stack([gather_no_grad(k1), gather_no_grad(k2)]))
        return {"loss": loss, "z": q1.detach()}

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """keys: 2 x B x d. Write them at the pointer (wrapping around the end); advance it by B mod K."""
        size = self.queue.shape[1]
        keys = keys[:, -size:].to(self.queue.dtype)  # a batch larger than the queue keeps its newest keys
        b = keys.shape[1]
        rows = (self.queue_ptr + torch.arange(b, device=keys.device)) % size
        self.queue[:, rows] = keys
        self.queue_ptr.copy_((self.queue_ptr + b) % size)

    def param_groups(self):
        return [{"params": [*self.backbone.parameters(), *self.projector.parameters()], "fixed_lr": False}]

    @torch.no_grad()
    def after_step(self, progress: StepProgress) -> None:
        ema_update(self.key_backbone, self.backbone, self.cfg.ema)
        ema_update(self.key_projector, self.projector, self.cfg.ema)
