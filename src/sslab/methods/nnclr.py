"""NNCLR (Dwibedi, Aytar, Tompson, Sermanet, Zisserman; ICCV 2021): "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations".

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

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.distributed import gather_with_grad, rank
from sslab.models.heads import mlp


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
