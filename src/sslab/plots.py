"""Learning-curve PNGs in RUN/plots/, titled with the real method, dataset and backbone names."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sslab.config import Config
    from sslab.run import RunDir

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10", "fashion-mnist": "Fashion-MNIST",
                 "mnist": "MNIST", "digits": "digits (8x8)", "folder": "image folder", "npz": "npz arrays"}
METHOD_NAMES = {"simsiam": "SimSiam", "phinet": "PhiNet", "xphinet": "X-PhiNet", "simclr": "SimCLR", "byol": "BYOL",
                "mocov2": "MoCo v2"}


def run_title(cfg: "Config") -> str:
    dataset = DATASET_NAMES.get(cfg.data.dataset, cfg.data.dataset)
    if cfg.data.dataset == "folder" and cfg.data.data_dir:
        dataset = f"folder {cfg.data.data_dir.rstrip('/').split('/')[-1]}"
    return f"{METHOD_NAMES.get(cfg.method.method, cfg.method.method)} · {dataset} · {cfg.model.backbone}"


def new_figure(width: float = 6.4, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=110)


def save_figure(fig, path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_learning_curves(run: "RunDir", cfg: "Config") -> None:
    records = run.read_metrics()
    if not records:
        return
    epochs = [r["epoch"] for r in records]
    title = run_title(cfg)

    fig, ax = new_figure()
    ax.plot(epochs, [r["loss"] for r in records], marker="." if len(records) < 50 else None)
    ax.set(xlabel="epoch", ylabel="training loss", title=f"loss: {title}")
    ax.grid(alpha=0.3)
    save_figure(fig, run.plots_dir / "loss.png")

    knn = [(r["epoch"], 100 * r["knn_top1"]) for r in records if r.get("knn_top1") is not None]
    fig, ax = new_figure()
    if knn:
        ax.plot(*zip(*knn), marker="." if len(knn) < 50 else None, label="kNN top-1 (test)")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no kNN monitor (no labelled test split, or --knn-every 0)", ha="center", transform=ax.transAxes)
    ax.set(xlabel="epoch", ylabel="kNN top-1 accuracy (%)", title=f"kNN monitor: {title}")
    ax.grid(alpha=0.3)
    save_figure(fig, run.plots_dir / "knn.png")
