"""Curves of several run folders on one figure: kNN top-1 and the collapse monitor (z_std * sqrt(d)).

    python bench/plot_runs.py --out docs/img/phinet_wd.png RUN_A RUN_B ...
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import yaml  # noqa: E402

from sslab.plots import save_figure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import matplotlib.pyplot as plt

    fig, (ax_knn, ax_z) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=110)
    for run in map(Path, args.runs):
        records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
        records = [r for r in records if r["epoch"] >= 1]  # not the epoch-0 record (before training)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        d = cfg["method"]["proj_dim"]
        knn = [(r["epoch"], 100 * r["knn_top1"]) for r in records if r.get("knn_top1") is not None]
        if knn:
            ax_knn.plot(*zip(*knn), label=run.name)
        ax_z.plot([r["epoch"] for r in records], [r["z_std"] * math.sqrt(d) for r in records], label=run.name)
    ax_knn.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor")
    ax_z.set(xlabel="epoch", ylabel="z_std x sqrt(d)  (1 healthy, 0 collapsed)", title="collapse monitor")
    for ax in (ax_knn, ax_z):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, Path(args.out))


if __name__ == "__main__":
    main()
