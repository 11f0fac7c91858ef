"""The zero-download demo: the whole path on Fashion-MNIST mini (10,000 + 2,000 images shipped inside the
package, MIT licence), on the CPU, in about two minutes.

Step one trains SimCLR on simple-cnn-bn and reports the kNN accuracy of the learned backbone beside its two
baselines on the same split and protocol: the same network before training (`knn_top1_init`) and the raw
pixels (`knn_top1_pixels`). The later steps (evaluation, analysis, clustering) work on the run folder it
made. Each step is a function `step(run_dir, log)`; DEMO_STEPS lists them in order. Why this dataset,
method and size, with the measurements: docs/methods.md, "The demo and the bundled dataset".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sslab.config import Config

DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {"dataset": "fashion-mnist-mini"},
    "model": {"backbone": "simple-cnn-bn"},  # without BatchNorm the short run gains less (docs/methods.md)
    "method": {"method": "simclr", "temperature": 0.1},
    "augment": {"crop_scale": (0.3, 1.0)},  # 28 px clothes: an 8% crop of a sneaker is a few grey pixels
    "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "knn_k": 20, "progress": False},
}

Log = Callable[[str], None]
# later steps, each `step(run_dir: Path, log) -> None`, appended by the modules that own them
DEMO_STEPS: list[str] = ["sslab.scan.demo:demo_step", "sslab.commands.evaluate:demo_eval", "sslab.commands.evaluate:demo_embed", "sslab.commands.look:demo_analyze", "sslab.commands.look:demo_attention", "sslab.commands.data_tools:demo_preview", "sslab.commands.data_tools:demo_export", "sslab.commands.look:demo_report"]


def demo_config(out: str = "runs", **train: Any) -> Config:
    cfg = Config.from_dict(DEMO_SETTINGS)
    cfg.update({"train": {"out": out, **train}})
    return cfg


def run_demo(out: str = "runs", log: Log = print, steps: list[str] | None = None, **train: Any) -> dict[str, Any]:
    import importlib

    from sslab.train import fit

    summary = fit(demo_config(out, **train), log=log)
    log(learning_verdict(summary))
    for path in DEMO_STEPS if steps is None else steps:
        module, name = path.rsplit(":", 1)
        getattr(importlib.import_module(module), name)(Path(summary["run_dir"]), log)
    return summary


def learning_verdict(summary: dict[str, Any]) -> str:
    """One line: the learned kNN beside both baselines, and whether it beats them."""
    learned, init, pixels = summary["knn_top1"], summary["knn_top1_init"], summary.get("knn_top1_pixels")
    if pixels is None:  # runs from before the pixel baseline was recorded
        from sslab.data import load_from_config
        from sslab.eval.baselines import pixel_knn_accuracy
        from sslab.run import RunDir

        cfg = RunDir(Path(summary["run_dir"])).config()
        d = load_from_config(cfg.data, cfg.train.seed)
        pixels = pixel_knn_accuracy(d.train_x, d.train_y, d.test_x, d.test_y, d.num_classes, cfg.train.knn_k,
                                    cfg.train.knn_t)
    beats = learned > init and learned > pixels
    return (f"demo: kNN top-1 {100 * learned:.1f}% after training, against {100 * init:.1f}% for the same network "
            f"untrained and {100 * pixels:.1f}% for the raw pixels: "
            f"{'the learned features beat both' if beats else 'NOT above both baselines'}; "
            f"run folder {summary['run_dir']}")
