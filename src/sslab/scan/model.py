"""The clustering model: the pretext backbone and H linear heads Linear(D -> C) trained at once.

The heads are one Linear(D -> H*C) (one matmul for all of them); `logits` reshapes to (H, B, C). After the
clustering step the lowest-loss head is cut out (`ClusterModel.single_head`) for self-labelling.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ClusterModel(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, num_clusters: int, heads: int = 1):
        super().__init__()
        self.backbone = backbone
        self.num_heads, self.num_clusters = heads, num_clusters
        self.heads = nn.Linear(feat_dim, heads * num_clusters)
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
        return self.heads(features).view(B, self.num_heads, self.num_clusters).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            features = self.backbone(x)  # B x D
        return self.head_logits(features)  # H x B x C

    @torch.no_grad()
    def single_head(self, h: int) -> "ClusterModel":
        """A model with the same backbone object and a copy of head h only."""
        out = ClusterModel(self.backbone, self.heads.in_features, self.num_clusters, 1).to(self.heads.weight.device)
        rows = slice(h * self.num_clusters, (h + 1) * self.num_clusters)
        out.heads.weight.copy_(self.heads.weight[rows])
        out.heads.bias.copy_(self.heads.bias[rows])
        return out
