"""Is there class structure in the features? PCA (how many directions carry the variance), t-SNE (a 2-D
map), and the image maps that draw each image at its t-SNE position.

`image_map` is pure numpy so tests can check where each thumbnail lands: thumbnail i is centred on pixel
`map_points(coords, canvas, thumb)[i]` (x = column, y = row; larger y coordinates are drawn higher up).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sslab.progress import Heartbeat

PCA_THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99)
SMALL_PROBLEM = 2000  # points; below this scikit-learn runs single-threaded


def sklearn_threads(points: int):
    """One thread for small problems: scikit-learn's OpenMP threads next to torch's idle-spinning ones cost
    10x on a 2-core machine (t-SNE of 360 points: 14 s with 2 threads, 0.9 s with 1)."""
    import contextlib

    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1) if points <= SMALL_PROBLEM else contextlib.nullcontext()


# ---- PCA ---------------------------------------------------------------------------------------------------------
def pca(features: np.ndarray) -> dict[str, Any]:
    """PCA of centred features: explained-variance ratios, cumulative, components for each threshold, the
    2-D projection, and the effective rank exp(entropy of the ratios) (Roy & Vetterli 2007; 1 = collapsed)."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64)
    with sklearn_threads(len(x)):
        model = PCA(n_components=min(x.shape), svd_solver="full").fit(x)
        projection = model.transform(x)
    ratio = model.explained_variance_ratio_
    cumulative = np.cumsum(ratio)
    p = ratio[ratio > 0]
    needed = {f"{t:g}": int(np.searchsorted(cumulative, t - 1e-12) + 1) for t in PCA_THRESHOLDS}
    return {"ratio": ratio, "cumulative": cumulative, "components_for": needed,
            "effective_rank": float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0,
            "projection": projection[:, :2] if projection.shape[1] >= 2 else np.c_[projection, np.zeros(len(x))],
            "dim": int(x.shape[1]), "points": int(x.shape[0])}


def pca_figures(result: dict[str, Any], labels: np.ndarray, classes: list[str], out_dir, title: str) -> list:
    from sslab.analysis.figures import scatter_by_class
    from sslab.plots import new_figure, save_figure

    ratio, cumulative = result["ratio"], result["cumulative"]
    k = np.arange(1, len(ratio) + 1)
    paths = []

    fig, ax = new_figure()
    ax.plot(k, 100 * cumulative, lw=1.5)
    for t in (0.9, 0.99):
        n = result["components_for"][f"{t:g}"]
        ax.axhline(100 * t, color="0.6", lw=0.8, ls="--")
        ax.annotate(f"{100 * t:g}%: {n} components", (n, 100 * t), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set(xscale="log" if len(ratio) > 50 else "linear", xlabel="number of principal components",
           ylabel="cumulative explained variance (%)", ylim=(0, 101),
           title=f"PCA cumulative contribution: {title}")
    ax.grid(alpha=0.3)
    paths.append(out_dir / "pca-cumulative.png")
    save_figure(fig, paths[-1])

    shown = min(len(ratio), 50)
    fig, ax = new_figure()
    ax.bar(k[:shown], 100 * ratio[:shown])
    ax.set(xlabel="principal component", ylabel="explained variance (%)",
           title=f"PCA contribution per component (first {shown}): {title}")
    ax.grid(axis="y", alpha=0.3)
    paths.append(out_dir / "pca-components.png")
    save_figure(fig, paths[-1])

    paths.append(out_dir / "pca-scatter.png")
    r = 100 * ratio
    scatter_by_class(result["projection"], labels, classes, paths[-1], f"PCA: {title}",
                     f"PC1 ({r[0]:.1f}%)", f"PC2 ({r[1] if len(r) > 1 else 0:.1f}%)")
    return paths


# ---- t-SNE -------------------------------------------------------------------------------------------------------
def subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted rows of a seeded random subset of at most `max_points` of `n`."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> tuple[np.ndarray, dict[str, Any]]:
    """2-D t-SNE (scikit-learn, PCA init) of l2-normalised features, reduced to 50 PCA dimensions first."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    with sklearn_threads(len(x)), Heartbeat(f"t-SNE of {len(x)} points"):
        if x.shape[1] > 50 and len(x) > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        y = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                 random_state=seed).fit_transform(x)
    return y, {"points": int(len(x)), "perplexity": perplexity, "seed": seed,
               "input": "l2-normalised features, 50 PCA dimensions"}


# ---- image maps --------------------------------------------------------------------------------------------------
def map_points(coords: np.ndarray, canvas: int, thumb: int) -> np.ndarray:
    """(N, 2) data coordinates -> (N, 2) int pixel centres (x = column, y = row) so that every thumb x thumb
    thumbnail centred there lies inside a canvas x canvas image; the y axis points up as in a plot."""
    c = np.asarray(coords, dtype=np.float64)
    lo, hi = c.min(axis=0), c.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    u = (c - lo) / span  # in [0, 1]
    u[:, 1] = 1.0 - u[:, 1]
    half = thumb // 2
    usable = canvas - thumb
    return (half + np.rint(u * usable)).astype(np.int64)


def image_map(thumbs: np.ndarray, coords: np.ndarray, canvas: int, colors: np.ndarray | None = None,
              border: int = 2, tint: float = 0.25, background: float = 1.0) -> np.ndarray:
    """Draw (N, t, t, 3) thumbnails (floats in [0, 1]) centred at `map_points(coords)` on a (canvas, canvas, 3)
    float image, later ones on top. `colors` (N, 3): a coloured `border` and a `tint` of that colour per image."""
    n, t = len(thumbs), thumbs.shape[1]
    out = np.full((canvas, canvas, 3), background, dtype=np.float32)
    centres = map_points(coords, canvas, t)
    tiles = thumbs.astype(np.float32)
    if colors is not None:
        tiles = (1 - tint) * tiles + tint * colors[:, None, None, :]
        b = min(border, t // 4)
        if b > 0:
            edge = np.zeros((t, t), dtype=bool)
            edge[:b], edge[-b:], edge[:, :b], edge[:, -b:] = True, True, True, True
            tiles = np.where(edge[None, :, :, None], colors[:, None, None, :], tiles)
    top_left = np.clip(centres - t // 2, 0, canvas - t)
    for i in range(n):  # drawing order matters where thumbnails overlap
        x, y = top_left[i]
        out[y:y + t, x:x + t] = tiles[i]
    return out


def thumb_size(image_size: int, points: int, canvas: int) -> int:
    """Thumbnails enlarged to at least 24 px for tiny images, shrunk so the map is not one solid wall."""
    fit = int(canvas / max(np.sqrt(points) * 0.9, 1))
    return int(np.clip(min(max(image_size, 24), fit), 8, 64))
