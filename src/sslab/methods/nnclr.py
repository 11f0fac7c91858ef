"""NNCLR (Dwibedi et al., ICCV 2021): "Nearest-Neighbor Contrastive Learning of Visual Representations".

Dwibedi, Aytar, Tompson, Sermanet, Zisserman: "With a Little Help from My Friends: Nearest-Neighbor Contrastive
Learning of Visual Representations".

f = backbone + projector, g = predictor. The positive of view 1 is not view 1 itself but its nearest neighbour in a
support set Q (a FIFO queue of past embeddings): "we use the nearest neighbor ... as the positive" (section 3.1):
    L_i = -log( exp(NN(z_i, Q) . p_i+ / tau) / sum_k exp(NN(z_i, Q) . p_k+ / tau) ),
NN(z, Q) = argmax_{q in Q} cos(z, q), p+ = g(f(other view)), everything l2-normalised; symmetrised as the mean
of (NN(z1), p2) and (NN(z2), p1) (solo-learn's form; the paper's Algorithm 1 uses z+ where we use the predictor's
p+, as its default configuration adds the predictor). The negatives are the other view's predictions of the global
batch (gathered with gradient), each rank's rows being its own positives.
After the loss, view 1's z (normalised, gathered from every rank, no gradient) replaces the oldest queue entries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.distributed import gather_no_grad, gather_with_grad, rank
from sslab.methods.base import Method, MethodSettings, PredictorSettings, ProjectorSettings, ViewSpec
from sslab.methods.crops import asymmetric_views
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.settings import setting


@torch.no_grad()
def nearest_neighbour(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """For each row of z (N, d), the row of `support` (K, d, unit rows) of highest cosine similarity: (N, d)."""
    idx = (F.normalize(z, dim=1) @ support.to(z.dtype).T).argmax(dim=1)  # N
    return support[idx]


def nnclr_contrastive(nn_z: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """CE of NN(z_i) . p_k / tau over the global batch's p (gathered with gradient), the positive at k = i."""
    nn_z = F.normalize(nn_z, dim=1)
    p_all = F.normalize(gather_with_grad(p), dim=1)  # N_global x d
    logits = nn_z @ p_all.T / temperature  # N x N_global
    labels = torch.arange(nn_z.shape[0], device=nn_z.device) + nn_z.shape[0] * rank()
    return F.cross_entropy(logits, labels)


def nnclr_loss(z1: torch.Tensor, z2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, support: torch.Tensor,
               temperature: float = 0.2) -> torch.Tensor:
    """(ctr(NN(z1), p2) + ctr(NN(z2), p1)) / 2; the neighbours come from `support` (no gradient through them)."""
    nn1, nn2 = nearest_neighbour(z1, support), nearest_neighbour(z2, support)
    return (nnclr_contrastive(nn1, p2, temperature) + nnclr_contrastive(nn2, p1, temperature)) / 2


def nnclr_projector(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN (paper, section 4: "3 layers ... 2048 ... 256"); solo-learn's."""
    return mlp([in_dim, hidden, hidden, out_dim], last_bn=True)


def nnclr_predictor(dim: int, hidden: int) -> nn.Sequential:
    """Linear-BN-ReLU-Linear (paper: "2 layers ... 4096")."""
    return mlp([dim, hidden, dim])


@dataclass
class NNCLRSettings(MethodSettings, PredictorSettings, ProjectorSettings):
    """solo-learn's CIFAR NNCLR (scripts/pretrain/cifar/nnclr.yaml, ResNet-18, 91.88% linear at 1000 ep): LARS
    (eta 0.02, clipped, BN/bias excluded) lr 0.4 per 256, wd 1e-5, warm-up 10 epochs then cosine; projector
    2048 -> 256, predictor 4096; temperature 0.2; support set of 65536. Batch 512, 800 epochs as the other recipes
    here."""

    temperature: float = setting(0.2, "temperature of the contrastive softmax", ge=1e-3, le=100)
    queue_size: int = setting(65536, "embeddings in the support set the nearest neighbours come from", ge=1,
                              le=2**22)
    proj_dim: int = 256
    pred_hidden: int = 4096
    optimizer: str = "lars"
    lr: float = 0.4
    weight_decay: float = 1e-5

    # solo-learn's asymmetric recipe: jitter (0.4, 0.4, 0.2, 0.1), the second view solarized (view_specs)
    augment = {"jitter": (0.4, 0.4, 0.2, 0.1)}
    # ImageNet (ResNet-50, 224 px; the paper, section 4): LARS lr 0.3 per 256, wd 1e-6, batch 4096, 1000 epochs,
    # temperature 0.1, support set 98304
    large_images = {"lr": 0.3, "weight_decay": 1e-6, "batch_size": 4096, "epochs": 1000, "temperature": 0.1,
                    "queue_size": 98304}


@METHODS.register("nnclr")
class NNCLR(Method):
    Settings = NNCLRSettings

    def __init__(self, backbone, cfg: NNCLRSettings):
        super().__init__(backbone, cfg)
        self.projector = nnclr_projector(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.predictor = nnclr_predictor(cfg.proj_dim, cfg.pred_hidden)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))  # K x d
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def view_specs(self, image_size: int) -> list[ViewSpec]:
        return asymmetric_views(image_size)

    def forward(self, views, clean=None):
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))  # N x d
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        support = self.queue.clone()  # a copy: the enqueue below must not touch what the loss read
        loss = nnclr_loss(z1.float(), z2.float(), p1.float(), p2.float(), support, self.cfg.temperature)
        if self.training:
            self.enqueue(gather_no_grad(F.normalize(z1.detach().float(), dim=1)))
        return {"loss": loss, "z": z1.detach()}

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor) -> None:
        """z: B x d, unit rows. Written at the pointer (wrapping around the end); the pointer advances by B mod K."""
        size = self.queue.shape[0]
        z = z[-size:].to(self.queue.dtype)  # a batch larger than the queue keeps its newest rows
        rows = (self.queue_ptr + torch.arange(z.shape[0], device=z.device)) % size
        self.queue[rows] = z
        self.queue_ptr.copy_((self.queue_ptr + z.shape[0]) % size)
