"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski, Joulin; NeurIPS 2020): "Swapping Assignments between Views".

f = backbone + projector, z = normalize(f(x)); scores s = z C^T against K unit prototypes C (a Linear without
bias, re-normalised before every step). For each of the 2 global crops ("crops_for_assign") the codes q come
from the Sinkhorn-Knopp algorithm on its scores (together with a queue of past embeddings' scores when there is
one), and every OTHER crop, local ones included, predicts them:
    L = mean over assigned crops i of [ sum_{v != i} -mean_b sum_k q_i log softmax(s_v / tau) ] / (V - 1)
(official `main_swav.py`). Sinkhorn-Knopp (official `distributed_sinkhorn`): Q = exp(s / eps)^T (K x B), scaled to
sum 1, then `iterations` times rows to 1/K and columns to 1/B; the codes are the columns scaled to sum 1.
"we use ... epsilon = 0.05 ... 3 iterations" (section 4, implementation details). No gradient flows through q.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.models.heads import mlp


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes (B, K), rows summing to 1, for scores (B, K): the equipartitioned assignment of the batch to
    the K prototypes. Computed in float32 (exp(s / 0.05) of bf16 scores would overflow its precision)."""
    q = torch.exp(scores.to(torch.promote_types(scores.dtype, torch.float32)) / epsilon).T  # K x B
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)  # each prototype gets total weight 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample gets total weight 1/B
        q /= b
    return (q * b).T  # B x K


def swapped_prediction(scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor],
                       temperature: float = 0.1) -> torch.Tensor:
    """scores: V crops' (B, K) scores (the assigned crops first); codes: the codes of crops 0 .. len(codes) - 1.
    Each other crop predicts each assigned crop's codes; mean over pairs as the official loss."""
    log_p = [F.log_softmax(s / temperature, dim=1) for s in scores]
    loss = 0.0
    for i, q in enumerate(codes):
        sub = sum(-(q * log_p[v]).sum(dim=1).mean() for v in range(len(scores)) if v != i)
        loss = loss + sub / (len(scores) - 1)
    return loss / len(codes)


def swav_codes(scores: torch.Tensor, queue_scores: torch.Tensor | None, epsilon: float = 0.05,
               iterations: int = 3) -> torch.Tensor:
    """Sinkhorn codes of the batch's scores (B, K), with the queue's scores (Q, K) stacked in front when given
    ("the codes are computed ... using the features of the batch and the stored features", section 4.1) and
    dropped from the result."""
    s = scores.detach() if queue_scores is None else torch.cat([queue_scores.detach(), scores.detach()])
    return sinkhorn(s, epsilon, iterations)[-scores.shape[0]:]


def swav_loss(scores: Sequence[torch.Tensor], queue_scores: Sequence[torch.Tensor] | None = None,
              temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3,
              assigned: int = 2) -> torch.Tensor:
    """The whole loss: codes for the first `assigned` crops (with their queue scores when given), then
    `swapped_prediction` over every crop."""
    codes = [swav_codes(scores[i], None if queue_scores is None else queue_scores[i], epsilon, iterations)
             for i in range(assigned)]
    return swapped_prediction(scores, codes, temperature)


def swav_projector(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU-Linear (official `hidden_mlp` 2048, `feat_dim` 128)."""
    return mlp([in_dim, hidden, out_dim])


def swav_prototypes(dim: int, count: int) -> nn.Linear:
    """K prototypes as the rows of a Linear without bias (official `nmb_prototypes` 3000)."""
    return nn.Linear(dim, count, bias=False)


@torch.no_grad()
def normalise_prototypes_(prototypes: nn.Linear) -> None:
    """Unit rows, in place: the official loop does this before every forward."""
    prototypes.weight.copy_(F.normalize(prototypes.weight, dim=1))
