"""SCAN's figures: each cluster's most confident images, and clusters against classes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sslab.eval.clustering import cluster_to_class, contingency
from sslab.plots import new_figure, run_title, save_figure

__all__ = ["confident_images", "confusion", "mosaic", "run_title"]


def mosaic(tiles: list[list[Optional[np.ndarray]]], channels: int, size: tuple[int, int], pad: int = 1) -> np.ndarray:
    """Rows of uint8 (C, H, W) images (None: blank) -> one (rows*(H+pad), cols*(W+pad), 3) uint8 picture,
    white between the tiles."""
    h, w = size
    rows, cols = len(tiles), max((len(r) for r in tiles), default=0)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, img in enumerate(row):
            if img is None:
                continue
            rgb = np.repeat(img, 3, axis=0) if channels == 1 else img
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + h, x:x + w] = np.transpose(rgb, (1, 2, 0))
    return out


def confident_images(path: Path, images: np.ndarray, clusters: np.ndarray, confidence: np.ndarray, num_clusters: int,
                     per_cluster: int, title: str, labels: Optional[np.ndarray] = None,
                     class_names: Sequence[str] = ()) -> None:
    """Rows = clusters, columns = the cluster's `per_cluster` images with the highest max-probability, most
    confident first (drawn as one mosaic). Each row is labelled with its size, the lowest confidence shown and,
    with labels, the cluster's majority class."""
    C, H, W = images.shape[1:]
    tiles, names = [], []
    for c in range(num_clusters):
        members = np.flatnonzero(clusters == c)
        order = members[np.argsort(-confidence[members], kind="stable")][:per_cluster]
        tiles.append([images[i] for i in order] + [None] * (per_cluster - len(order)))
        name = f"{c}: n={len(members)}"
        if len(order):
            name += f", p>={confidence[order[-1]]:.2f}"
        if labels is not None and len(members) and (labels[members] >= 0).any():
            known = labels[members][labels[members] >= 0]
            majority = int(np.bincount(known).argmax())
            name += f", mostly {class_names[majority] if majority < len(class_names) else majority}"
        names.append(name)
    picture = mosaic(tiles, C, (H, W))
    scale = 0.45 if H <= 16 else 0.7  # inches per tile
    fig, ax = new_figure(width=2.2 + scale * per_cluster, height=0.8 + scale * num_clusters)
    ax.imshow(picture, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([1 + r * (H + 1) + H / 2 for r in range(num_clusters)])
    ax.set_yticklabels(names, fontsize=7)
    ax.set_title(f"most confident images per cluster: {title}\n"
                 "(rows: cluster: size, lowest confidence shown, majority class)", fontsize=8)
    save_figure(fig, path)


def confusion(path: Path, clusters: np.ndarray, labels: np.ndarray, num_clusters: int, class_names: Sequence[str],
              mapping: str, title: str) -> None:
    """Counts of (cluster, class) on the labelled samples; rows are clusters ordered by the class they are
    mapped to (Hungarian or majority), so a good clustering shows a diagonal. Colour: share of the row."""
    known = labels >= 0
    clusters, labels = clusters[known], labels[known]
    k = len(class_names)
    counts = contingency(clusters, labels, num_clusters, k)
    to_class = cluster_to_class(clusters, labels, num_clusters, k, mapping)
    order = np.argsort(np.where(to_class < 0, k, to_class), kind="stable")
    counts = counts[order]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = new_figure(width=2.5 + 0.45 * k, height=1.6 + 0.3 * num_clusters)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if num_clusters * k <= 900:
        for r in range(num_clusters):
            for c in range(k):
                if counts[r, c]:
                    ax.text(c, r, str(counts[r, c]), ha="center", va="center", fontsize=6,
                            color="white" if share[r, c] > 0.5 else "black")
    ax.set_xticks(range(k))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(num_clusters))
    ax.set_yticklabels([f"{c} -> {class_names[to_class[c]] if to_class[c] >= 0 else 'none'}" for c in order], fontsize=7)
    ax.set_xlabel("class", fontsize=8)
    ax.set_ylabel(f"cluster -> class ({mapping})", fontsize=8)
    ax.set_title(f"clusters vs classes (test split): {title}", fontsize=8)
    fig.colorbar(im, ax=ax, label="share of the cluster")
    save_figure(fig, path)
