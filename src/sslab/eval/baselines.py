"""Reference points for every learned figure: the raw pixels and the untrained network.

A learned kNN accuracy means little alone. sslab prints it beside (a) the raw pixels under the same kNN
protocol, taking the better of plain and mean-centred pixel vectors so the baseline is never a straw man,
and (b) the run's own network before training (its initial weights).
"""
from __future__ import annotations

import torch

from sslab.eval.knn import knn_accuracy


def pixel_features(images: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (N, C*H*W) pixel vectors in [0, 1], minus `center` when given."""
    x = images.reshape(len(images), -1).float() / 255.0
    return x - center if center is not None else x


@torch.no_grad()
def pixel_knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                       num_classes: int, k: int = 200, t: float = 0.1) -> float | None:
    """kNN top-1 of raw pixel vectors, the better of plain and centred on the train mean (same k and t as
    the learned features). None when there is nothing to score (no test images or no labelled train image)."""
    labelled = train_y >= 0
    if len(test_x) == 0 or int(labelled.sum()) == 0:
        return None
    bank = pixel_features(train_x[labelled])
    mean = bank.mean(dim=0, keepdim=True)
    plain = knn_accuracy(bank, train_y[labelled], pixel_features(test_x), test_y, num_classes, k, t)
    centred = knn_accuracy(bank - mean, train_y[labelled], pixel_features(test_x, mean), test_y, num_classes, k, t)
    return max(plain, centred)
