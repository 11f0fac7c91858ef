"""k-means on the features (docs/methods.md: l2-normalised, k = number of classes, n_init >= 10; fitted on the
train split, test images assigned to the nearest centre: `sslab.eval.clustering.kmeans_fit`, the one protocol
`analyze` and `scan` share), scored with ACC (Hungarian), NMI and ARI against the labels, and a tile image: one row per
cluster, its members nearest the centre, left to right."""
from __future__ import annotations

from typing import Any

import numpy as np

from sslab.eval.clustering import (
    cluster_to_class,
    clustering_scores,
    contingency,
    kmeans_fit,
    l2_normalised,
)

TILE_COLUMNS = 10


def kmeans(features: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(assignments (N,), centres (k, D), distance of each point to its centre (N,)) on l2-normalised features."""
    result = kmeans_fit(features, features[:0], k, seed, n_init)
    return result["train"], result["centres"], distances(features, result["train"], result["centres"])


def distances(features: np.ndarray, assign: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance of each l2-normalised feature to the centre of its cluster."""
    return np.linalg.norm(l2_normalised(features) - centres[assign], axis=1)


def split_assignments(result: dict[str, np.ndarray], split: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Assignments of the rows of an `Embeddings` (split name and index per row) from a `kmeans_fit` result."""
    out = np.empty(len(split), dtype=np.int64)
    for name in ("train", "test"):
        rows = split == name
        out[rows] = result[name][indices[rows]]
    return out


def cluster_report(assign: np.ndarray, labels: np.ndarray, k: int, num_classes: int,
                   classes: list[str]) -> dict[str, Any]:
    """ACC/NMI/ARI on the labelled points, and per cluster: size, majority class, purity, matched class."""
    labelled = labels >= 0
    scores = clustering_scores(assign[labelled], labels[labelled], k, num_classes)
    counts = contingency(assign[labelled], labels[labelled], k, num_classes)
    matched = cluster_to_class(assign[labelled], labels[labelled], k, num_classes)
    sizes = np.bincount(assign, minlength=k)
    per_cluster = []
    for c in range(k):
        total = counts[c].sum()
        major = int(counts[c].argmax()) if total else -1
        per_cluster.append({"cluster": c, "size": int(sizes[c]),
                            "majority_class": classes[major] if major >= 0 else None,
                            "purity": float(counts[c].max() / total) if total else None,
                            "matched_class": classes[matched[c]] if matched[c] >= 0 else None})
    return {**scores, "k": k, "labelled_points": int(labelled.sum()), "clusters": per_cluster,
            "cluster_to_class": [int(m) for m in matched]}


def nearest_to_centres(assign: np.ndarray, dist: np.ndarray, k: int, columns: int = TILE_COLUMNS) -> list[np.ndarray]:
    """Per cluster, the rows of its members nearest its centre (at most `columns`), nearest first."""
    out = []
    for c in range(k):
        members = np.flatnonzero(assign == c)
        out.append(members[np.argsort(dist[members], kind="stable")[:columns]])
    return out


def cluster_tiles_figure(images, assign: np.ndarray, dist: np.ndarray, report: dict[str, Any],
                         path, title: str, columns: int = TILE_COLUMNS, size: int | None = None) -> None:
    """Rows = clusters (ordered by their matched class), columns = the images nearest each centre.
    `images`: uint8 (N, C, H, W) tensor, shown at `size` px."""
    import torch

    from sslab.analysis.figures import tile_grid, to_display
    from sslab.plots import new_figure, save_figure

    k = report["k"]
    nearest = nearest_to_centres(assign, dist, k, columns)
    order = sorted(range(k), key=lambda c: (report["cluster_to_class"][c] < 0, report["cluster_to_class"][c], c))
    shown = [to_display(images[torch.from_numpy(nearest[c]).to(images.device)], size) for c in order]
    h = shown[0].shape[1] if len(shown[0]) else (size or images.shape[-1])
    gap = max(1, h // 8)
    grid = tile_grid([s if len(s) else np.ones((0, h, h, 3)) for s in shown], columns, gap=gap)
    row_h = h + gap
    fig_h = max(2.5, 0.42 * k + 0.9)
    fig, ax = new_figure(max(5.0, fig_h * grid.shape[1] / max(grid.shape[0], 1) + 2.6), fig_h)
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    labels = []
    for c in order:
        info = report["clusters"][c]
        purity = f", {100 * info['purity']:.0f}% {info['majority_class']}" if info["purity"] is not None else ""
        labels.append(f"cluster {c} (n={info['size']}{purity})")
    ax.set_yticks([i * row_h + h / 2 for i in range(k)], labels, fontsize=7 if k <= 20 else 4)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"k-means clusters, {columns} images nearest each centre\n"
                 f"ACC {100 * report['acc']:.1f}%  NMI {report['nmi']:.3f}  ARI {report['ari']:.3f}: {title}", fontsize=9)
    save_figure(fig, path)
