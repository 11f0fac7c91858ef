"""The zero-download demo: the whole path on scikit-learn's bundled 8x8 digits, on the CPU, in minutes.

Step one trains SimSiam and reports the kNN accuracy of the same backbone before training
(`knn_top1_init`) and after (`knn_top1`); the later steps (evaluation, analysis, clustering) work on the
run folder it made. Each step is a function `step(run_dir, log)`; DEMO_STEPS lists them in order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sslab.config import Config

DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {"dataset": "digits"},
    "model": {"backbone": "resnet18"},
    "method": {"method": "simsiam", "proj_hidden": 512, "proj_dim": 512, "pred_hidden": 128},
    "augment": {"crop_scale": (0.5, 1.0), "flip_p": 0.0},  # a flipped 2 or 5 is another digit
    "optim": {"lr": 0.1, "warmup_epochs": 1},
    "train": {"epochs": 3, "batch_size": 128, "device": "cpu", "knn_k": 20, "progress": False},
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
    log(f"demo: kNN top-1 {100 * summary['knn_top1_init']:.1f}% before training -> "
        f"{100 * summary['knn_top1']:.1f}% after; run folder {summary['run_dir']}")
    for path in DEMO_STEPS if steps is None else steps:
        module, name = path.rsplit(":", 1)
        getattr(importlib.import_module(module), name)(Path(summary["run_dir"]), log)
    return summary
