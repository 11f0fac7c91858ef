"""Figure pieces shared by `eval`, `analyze` and `attention`: class colours, images for display, scatter by
class, confusion matrix, per-class bars, image tiles. Every figure goes through `plots.new_figure` and
`plots.save_figure`, titled with `plots.run_title`."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sslab.plots import new_figure, save_figure

LEGEND_MAX_CLASSES = 20  # above this a legend hides the plot


def class_colors(n: int) -> np.ndarray:
    """(n, 3) RGB in [0, 1]: tab10 up to 10 classes, tab20 up to 20, evenly spaced turbo beyond."""
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return np.array([cmap(i)[:3] for i in range(n)])
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return np.array([cmap(i)[:3] for i in range(n)])
    cmap = matplotlib.colormaps["turbo"]
    return np.array([cmap(v)[:3] for v in np.linspace(0.05, 0.95, n)])


def to_display(images: torch.Tensor, size: int | None = None) -> np.ndarray:
    """uint8 (N, C, H, W), C = 1 or 3 -> float (N, h, w, 3) in [0, 1]; `size` enlarges (nearest, keeps the
    pixels of tiny images crisp) or shrinks (area average) to size x size."""
    x = images.detach().cpu().float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if size is not None and size != x.shape[-1]:
        mode = "nearest-exact" if size > x.shape[-1] else "area"
        x = F.interpolate(x, size=(size, size), mode=mode)
    return x.permute(0, 2, 3, 1).clamp(0, 1).numpy()


def class_legend(ax, names: Sequence[str], colors: np.ndarray, **kwargs) -> None:
    from matplotlib.patches import Patch

    if len(names) <= LEGEND_MAX_CLASSES:
        ax.legend(handles=[Patch(color=c, label=n) for n, c in zip(names, colors)], fontsize=7,
                  **{"loc": "center left", "bbox_to_anchor": (1.0, 0.5), "frameon": False, **kwargs})


def scatter_by_class(points: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: Path, title: str,
                     xlabel: str, ylabel: str) -> None:
    """A 2-D scatter, one colour per class (unlabelled points, label -1, in grey)."""
    colors = class_colors(len(classes))
    fig, ax = new_figure(7.2, 5.6)
    size = float(np.clip(4000 / max(len(points), 1), 3, 30))
    unlabelled = labels < 0
    if unlabelled.any():
        ax.scatter(points[unlabelled, 0], points[unlabelled, 1], s=size, c="0.75", linewidths=0, label="unlabelled")
    labelled = ~unlabelled
    ax.scatter(points[labelled, 0], points[labelled, 1], s=size, c=colors[labels[labelled]], linewidths=0, alpha=0.85)
    class_legend(ax, classes, colors)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    save_figure(fig, path)


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Rows: true class, columns: predicted class; cells show counts, colour shows the row share."""
    k = len(classes)
    side = float(np.clip(0.45 * k + 2.5, 5, 16))
    fig, ax = new_figure(side, side * 0.9)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(k)
    labels = [c if len(c) <= 14 else c[:13] + "…" for c in classes]
    fontsize = 8 if k <= 20 else 5
    ax.set_xticks(ticks, labels, rotation=90 if k > 10 or max(map(len, labels), default=0) > 3 else 0, fontsize=fontsize)
    ax.set_yticks(ticks, labels, fontsize=fontsize)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    save_figure(fig, path)


def per_class_figure(per_class: dict[str, dict[str, float | None]], classes: Sequence[str], path: Path,
                     title: str) -> None:
    """Grouped bars: per-class accuracy (%) of each protocol, one group per class."""
    names = list(per_class)
    k = len(classes)
    fig, ax = new_figure(float(np.clip(3.0 + 0.25 * k * max(1, len(names)) ** 0.5, 6.4, 18)), 4.2)
    width = 0.8 / max(1, len(names))
    x = np.arange(k)
    for i, name in enumerate(names):
        values = [100 * (per_class[name].get(c) or 0.0) for c in classes]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, [c if len(c) <= 12 else c[:11] + "…" for c in classes], rotation=90 if k > 10 else 0, fontsize=8)
    ax.set(xlabel="class", ylabel="accuracy (%)", ylim=(0, 105), title=title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def tile_grid(rows: list[np.ndarray], columns: int, gap: int = 2, background: float = 1.0) -> np.ndarray:
    """Rows of (n_i, h, w, 3) images (n_i <= columns) -> one (R*(h+gap), columns*(w+gap), 3) array; short rows
    are padded with background."""
    h, w = rows[0].shape[1:3]
    out = np.full((len(rows) * (h + gap) - gap, columns * (w + gap) - gap, 3), background, dtype=np.float32)
    for r, images in enumerate(rows):
        for c, image in enumerate(images[:columns]):
            out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return out


def save_image_figure(image: np.ndarray, path: Path, title: str, legend: tuple[Sequence[str], np.ndarray] | None = None,
                      max_inches: float = 14.0) -> None:
    """Show an (H, W, 3) array at about its own resolution, with a title (and a class-colour legend)."""
    dpi = 110
    h, w = image.shape[:2]
    scale = min(1.0, max_inches * dpi / max(h, w))
    extra = 2.2 if legend is not None and len(legend[0]) <= LEGEND_MAX_CLASSES else 0.0
    fig, ax = new_figure(max(4.0, w * scale / dpi + extra), max(3.0, h * scale / dpi + 0.6))
    ax.imshow(image, interpolation="nearest" if scale >= 1 else "antialiased")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    if legend is not None:
        class_legend(ax, legend[0], legend[1])
    save_figure(fig, path)
