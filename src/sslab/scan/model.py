"""The clustering model: the pretext backbone and H linear heads Linear(D -> C) trained at once.

The heads are one Linear(D -> H*C) (one matmul for all of them); `logits` reshapes to (H, B, C). After the
clustering step the lowest-loss head is cut out (`ClusterModel.single_head`) for self-labelling.

What the heads read (`head_input`): the backbone's output as it is ("features", the reference), l2-normalised
("l2": the cosine geometry the neighbours were mined in and k-means runs in), or each dimension centred and
scaled by the pretext train features' mean and std ("standardized", a fixed, affine-free BatchNorm). On a frozen
backbone the raw features of a small ReLU network sit far from the origin, with a few large dimensions; a linear
softmax head learns slowly there (docs/methods.md, "The demo": SCAN on the demo's frozen features).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.scan.config import HEAD_INPUTS


class ClusterModel(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, num_clusters: int, heads: int = 1,
                 head_input: str = "features", feature_stats: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        if head_input not in HEAD_INPUTS:
            raise ValueError(f"head_input must be one of {', '.join(HEAD_INPUTS)}, got {head_input!r}")
        if head_input == "standardized" and feature_stats is None:
            raise ValueError("head_input 'standardized' needs feature_stats (mean, std) of the train features")
        self.backbone = backbone
        self.num_heads, self.num_clusters, self.head_input = heads, num_clusters, head_input
        self.heads = nn.Linear(feat_dim, heads * num_clusters)
        mean, std = feature_stats if feature_stats is not None else (torch.zeros(feat_dim), torch.ones(feat_dim))
        # buffers: they follow .to(device), and are not trained; rebuilt from the pretext features, not saved
        self.register_buffer("feature_mean", mean.detach().float().clone(), persistent=False)
        self.register_buffer("feature_std", std.detach().float().clone(), persistent=False)
        self.backbone_frozen = False

    def freeze_backbone(self) -> "ClusterModel":
        """Train the heads only: the backbone gets no gradient and keeps its BN statistics (the reference's
        frozen backbone stays in eval mode while the heads train)."""
        self.backbone.requires_grad_(False)
        self.backbone_frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> "ClusterModel":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, D) -> logits (H, B, C)."""
        B = features.shape[0]
        if self.head_input == "l2":
            features = F.normalize(features.float(), dim=1)
        elif self.head_input == "standardized":
            features = (features.float() - self.feature_mean) / self.feature_std
        return self.heads(features).view(B, self.num_heads, self.num_clusters).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            features = self.backbone(x)  # B x D
        return self.head_logits(features)  # H x B x C

    @torch.no_grad()
    def single_head(self, h: int) -> "ClusterModel":
        """A model with the same backbone object and a copy of head h only."""
        out = ClusterModel(self.backbone, self.heads.in_features, self.num_clusters, 1, self.head_input,
                           (self.feature_mean, self.feature_std)).to(self.heads.weight.device)
        rows = slice(h * self.num_clusters, (h + 1) * self.num_clusters)
        out.heads.weight.copy_(self.heads.weight[rows])
        out.heads.bias.copy_(self.heads.bias[rows])
        return out
