"""The zero-download demo: the whole path on scikit-learn's bundled 8x8 digits, on the CPU, in minutes.

It trains SimSiam and reports the kNN accuracy of the same backbone before training (`knn_top1_init`)
and after (`knn_top1`).
"""
from __future__ import annotations

from typing import Any, Callable

from sslab.config import Config

DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {"dataset": "digits", "image_size": 16},  # 8x8 upsampled so random crops keep the digit
    "model": {"backbone": "resnet18"},
    "method": {"method": "simsiam"},
    "optim": {"lr": 0.06, "warmup_epochs": 2},
    "train": {"epochs": 30, "batch_size": 128, "device": "cpu", "knn_k": 20, "progress": False},
}


def demo_config(out: str = "runs", **train: Any) -> Config:
    cfg = Config.from_dict(DEMO_SETTINGS)
    cfg.update({"train": {"out": out, **train}})
    return cfg


def run_demo(out: str = "runs", log: Callable[[str], None] = print, **train: Any) -> dict[str, Any]:
    from sslab.train import fit

    summary = fit(demo_config(out, **train), log=log)
    log(f"demo: kNN top-1 {100 * summary['knn_top1_init']:.1f}% before training -> "
        f"{100 * summary['knn_top1']:.1f}% after; run folder {summary['run_dir']}")
    return summary
