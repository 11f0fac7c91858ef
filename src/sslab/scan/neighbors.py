"""Step 2 of SCAN: the K nearest neighbours of every training image in the pretext feature space.

Cosine similarity on l2-normalised features of the un-augmented images, on the features' device, in chunks
of queries (a chunk x N similarity block and its top-k at a time, so 50,000 images need ~200 MB, not 10 GB).
The image itself is left out (its similarity is set to -inf before the top-k), so `indices` holds K other
images even when there are duplicates; SCAN's sampling adds the anchor back as a candidate (`include_self`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def mine_neighbors(features: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """indices (N, K) int64 and similarities (N, K) float32, most similar first, self excluded."""
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < number of images, got k={k} for {n} images")
    z = F.normalize(features.float(), dim=1)  # N x D
    all_idx, all_sim = [], []
    for start in range(0, n, chunk):
        q = z[start:start + chunk]  # Q x D
        sim = q @ z.T  # Q x N
        rows = torch.arange(len(q), device=z.device)
        sim[rows, rows + start] = float("-inf")  # not its own neighbour
        top_sim, top_idx = sim.topk(k, dim=1)  # Q x K, sorted
        all_idx.append(top_idx)
        all_sim.append(top_sim)
    return torch.cat(all_idx), torch.cat(all_sim)


def neighbor_accuracy(indices: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Share of (anchor, neighbour) pairs with the same label, over pairs where both are labelled (>= 0);
    None without labels (reference `mine_nearest_neighbors(calculate_accuracy=True)`)."""
    labels = labels.to(indices.device)
    anchor = labels.view(-1, 1).expand_as(indices)
    neighbor = labels[indices]
    known = (anchor >= 0) & (neighbor >= 0)
    if not bool(known.any()):
        return None
    return float(((anchor == neighbor) & known).sum() / known.sum())


def neighbor_pool(indices: torch.Tensor, include_self: bool) -> torch.Tensor:
    """(N, K[+1]) candidates a neighbour is drawn from uniformly: the K neighbours, plus the anchor itself when
    `include_self` (the reference samples from its stored top-(K+1), which starts with the image itself)."""
    if not include_self:
        return indices
    own = torch.arange(len(indices), device=indices.device).view(-1, 1)
    return torch.cat((indices, own), dim=1)
