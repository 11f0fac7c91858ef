"""SCAN's two losses, as pure functions of logits.

Clustering (docs/methods.md step 3):
    L = -(1/N) sum_i sum_{j in NN(i)} log <p_i, p_j>  -  w * H(mean_i p_i),    p = softmax(head(f(aug(x))))
estimated per step, as the reference does, from a batch of anchors and ONE neighbour sampled per anchor:
consistency = mean_i -log <p_i, p_n(i)> (the reference's BCE of the dot product against 1), entropy = the
entropy of the batch's mean anchor prediction. Minimising L therefore *raises* that entropy (spreads the
samples over the clusters); w = 5.

Self-labelling (docs/methods.md step 4): cross-entropy on the strong view against argmax of the weak view, only
where the weak view's max probability exceeds the threshold, each class weighted by the inverse of its
frequency among those confident samples (reference `ConfidenceBasedCE` with class balancing; a class with no
confident sample keeps weight 1). Written with masks instead of boolean indexing, so there is no
data-dependent shape and no host sync; a batch with no confident sample gives loss 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8  # the reference's clamp inside the entropy


def entropy_of_mean(probs: torch.Tensor) -> torch.Tensor:
    """H(mean_i p_i) = -sum_c m_c log m_c for probs (B, C), m clamped at 1e-8 inside the log (reference)."""
    m = probs.mean(dim=0)  # C
    return -(m * torch.log(m.clamp_min(EPS))).sum()


def scan_loss(anchor_logits: torch.Tensor, neighbor_logits: torch.Tensor,
              entropy_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, consistency, entropy) for logits (B, C) of anchors and their sampled neighbours, or (..., B, C)
    for several heads at once (then each is per head, shape (...)).

    log <p_i, p_j> is computed as logsumexp(log p_i + log p_j): exact, and finite however small the dot product
    (the reference's BCELoss clamps the log at -100 instead)."""
    a = F.log_softmax(anchor_logits.float(), dim=-1)  # ... x B x C
    n = F.log_softmax(neighbor_logits.float(), dim=-1)
    log_dot = torch.logsumexp(a + n, dim=-1)  # ... x B: log <p_i, p_j>
    consistency = -log_dot.mean(dim=-1)
    m = a.exp().mean(dim=-2)  # ... x C
    entropy = -(m * torch.log(m.clamp_min(EPS))).sum(dim=-1)
    return consistency - entropy_weight * entropy, consistency, entropy


def confident_targets(weak_logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels (B,) = argmax of the weak view and the mask (B,) of max prob > threshold."""
    prob = F.softmax(weak_logits.float(), dim=-1)
    max_prob, target = prob.max(dim=-1)
    return target, max_prob > threshold


def selflabel_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float,
                   class_balance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, confident fraction). The weak logits are detached (they only make targets).

    Equal to the reference's `F.cross_entropy(strong[mask], target[mask], weight=w, reduction="mean")` with
    w_c = n / count_c for the classes present among the n confident samples and 1 for the others, i.e.
    sum_i w_{t_i} CE_i / sum_i w_{t_i} over the confident i."""
    target, mask = confident_targets(weak_logits.detach(), threshold)
    C = strong_logits.shape[-1]
    m = mask.float()
    if class_balance:
        counts = torch.zeros(C, device=m.device).scatter_add_(0, target, m)  # confident samples per class
        weight = torch.where(counts > 0, m.sum() / counts.clamp_min(1), 1.0)
        w = weight[target] * m
    else:
        w = m
    ce = F.cross_entropy(strong_logits.float(), target, reduction="none")
    return (w * ce).sum() / w.sum().clamp_min(1e-12), m.mean()
