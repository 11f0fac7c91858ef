"""Weighted kNN (the monitor protocol of docs/methods.md, as in Wu et al. 2018 and every SSL codebase).

l2-normalised features, cosine similarity, k=200 neighbours, each voting with weight exp(sim / t), t=0.1;
bank = train split without augmentation, queries = test split.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int, t: float, chunk: int = 1024) -> torch.Tensor:
    """Class scores (Q, num_classes) for each query. Features need not be normalised."""
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for i in range(0, len(queries), chunk):
        sim = queries[i:i + chunk] @ bank.T  # Q x N
        top_sim, top_idx = sim.topk(k, dim=1)  # Q x k
        weights = (top_sim / t).exp()
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 num_classes: int, k: int, t: float) -> float:
    """Top-1 accuracy of the weighted kNN vote. Unlabelled bank entries (label -1) are left out."""
    keep = bank_labels >= 0
    bank, bank_labels = bank[keep], bank_labels[keep]
    pred = knn_predict(bank, bank_labels, queries, num_classes, k, t).argmax(dim=1)
    return (pred == query_labels).float().mean().item()
