"""The demo's SCAN step: cluster the demo's images (Fashion-MNIST mini) with the demo run's backbone,
against k-means.

To stay within ~40 s on two CPU cores it trains the heads only, on the frozen backbone's cached features of
the un-augmented images, with a larger learning rate (few steps), then self-labels for one epoch on strong
views; the full recipe (trainable backbone, strong views, 50 + 200 epochs) is `sslab scan RUN`. The heads read
the l2-normalised features (`head_input="l2"`): on the raw features of this small frozen ReLU network SCAN
ended below k-means on the same features; l2-normalised it ends well above (docs/methods.md, "The demo";
bench/scan_demo.py measures it). Its lines are shown indented, so the step is never silent for long.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from sslab.scan.config import ScanConfig

DEMO_SCAN = dict(
    heads=5, cluster_epochs=30, batch_size=64, lr=1e-2, freeze_backbone=True, cluster_augment="none",
    head_input="l2", selflabel_epochs=1, selflabel_batch_size=256, confidence=0.9,
    device="cpu", progress_every=5.0, show_per_cluster=8, eval_every=10,
)


def demo_config() -> ScanConfig:
    return ScanConfig(**DEMO_SCAN)


def demo_step(run_dir: Path, log: Callable[[str], None]) -> None:
    from sslab.scan.pipeline import run_scan

    t0 = time.perf_counter()
    report = run_scan(run_dir, demo_config(), log=lambda line: log("  " + line))  # its stages, indented
    km, sc, sl = report["kmeans"], report["scan"], report["selflabel"]
    best = max(sc["acc"], sl["acc"])
    log(f"demo: SCAN clustering of the test images (ACC, Hungarian): k-means {100 * km['acc']:.1f}% -> SCAN "
        f"{100 * sc['acc']:.1f}% -> + self-label {100 * sl['acc']:.1f}% "
        f"({'beats' if best > km['acc'] else 'does not beat'} k-means on the same features; neighbour accuracy "
        f"{100 * report['neighbor_accuracy']:.1f}%); {time.perf_counter() - t0:.1f} s; {run_dir / 'scan'}")
