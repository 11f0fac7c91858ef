"""SCAN (Van Gansbeke et al., ECCV 2020): learning to classify images without labels, on any trained run.

    from sslab.scan import ScanConfig, run_scan
    report = run_scan("runs/simclr-cifar10-...", ScanConfig(cluster_epochs=50))   # == RUN/scan/scan.json

Stages (docs/methods.md "SCAN"): mine neighbours in the pretext feature space -> train clustering heads with the
SCAN loss -> self-label with confident pseudo-labels. `pipeline.py` runs them; the losses are in `loss.py`.
"""
import importlib
from typing import Any

# imported on first use (PEP 562), so `sslab --help` and the CLI's start-up do not import scikit-learn
_WHERE = {"STAGES": "config", "ScanConfig": "config", "entropy_of_mean": "loss", "scan_loss": "loss",
          "selflabel_loss": "loss", "ClusterModel": "model", "mine_neighbors": "neighbors",
          "neighbor_accuracy": "neighbors", "run_scan": "pipeline"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"sslab.scan.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'sslab.scan' has no attribute {name!r}")


__all__ = ["STAGES", "ClusterModel", "ScanConfig", "entropy_of_mean", "mine_neighbors", "neighbor_accuracy",
           "run_scan", "scan_loss", "selflabel_loss"]
