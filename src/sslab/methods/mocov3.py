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

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.distributed import gather_no_grad, rank
from sslab.models.heads import mlp


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
