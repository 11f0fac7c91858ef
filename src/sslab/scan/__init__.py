"""SCAN (Van Gansbeke et al., ECCV 2020): learning to classify images without labels, on any trained run.

    from sslab.scan import ScanConfig, run_scan
    report = run_scan("runs/simclr-cifar10-...", ScanConfig(cluster_epochs=50))   # == RUN/scan/scan.json

Stages (METHODS.md "SCAN"): mine neighbours in the pretext feature space -> train clustering heads with the
SCAN loss -> self-label with confident pseudo-labels. `pipeline.py` runs them; the losses are in `loss.py`.
"""
from sslab.scan.config import STAGES, ScanConfig
from sslab.scan.loss import entropy_of_mean, scan_loss, selflabel_loss
from sslab.scan.model import ClusterModel
from sslab.scan.neighbors import mine_neighbors, neighbor_accuracy
from sslab.scan.pipeline import run_scan

__all__ = ["STAGES", "ClusterModel", "ScanConfig", "entropy_of_mean", "mine_neighbors", "neighbor_accuracy",
           "run_scan", "scan_loss", "selflabel_loss"]
