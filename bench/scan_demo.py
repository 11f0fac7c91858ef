"""The demo's SCAN step against k-means on the same features, over pretext seeds: the measurement behind the
recipe in `sslab/scan/demo.py` (docs/methods.md, "The demo").

For each seed it trains the demo's pretext run (`sslab demo`'s SimCLR recipe with `--seed`; reused when RUN
folders are given or already in --out) and runs the demo's SCAN step on it (`sslab.scan.demo.demo_config()`,
overridden by `--set field=value`), then prints ACC (Hungarian) of k-means, SCAN and SCAN + self-label on the
TRAIN images (what a recipe is chosen on: SCAN never sees a label, and the recipe is picked on the train split)
and on the TEST images (reported only), with the step's seconds.

    python bench/scan_demo.py --seeds 0,1,2 --out /tmp/scan-demo
    python bench/scan_demo.py --runs RUN0 RUN1 --set head_input=features --set cluster_epochs=50
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sslab.demo import demo_config as demo_train_config  # noqa: E402
from sslab.eval.clustering import clustering_scores  # noqa: E402
from sslab.scan.demo import demo_config  # noqa: E402
from sslab.scan.pipeline import run_scan  # noqa: E402
from sslab.pretrain import fit  # noqa: E402


def pretext_run(out: Path, seed: int) -> Path:
    """The demo's pretext run for `seed` under out/seed<N>/ (trained once, then reused)."""
    folder = out / f"seed{seed}"
    done = sorted(p.parent.parent for p in folder.glob("*/checkpoints/last.pt"))
    if done:
        return done[-1]
    summary = fit(demo_train_config(str(folder), seed=seed), log=lambda s: print("  " + s, flush=True))
    return Path(summary["run_dir"])


def scan_again(run: Path, cfg):
    """The SCAN step from its clustering stage on (the mined neighbours and k-means are reused when they were made
    with the same settings), else from scratch."""
    from sslab.errors import ConfigError

    log = lambda s: print("  " + s, flush=True)  # noqa: E731
    try:
        return run_scan(run, cfg, restart="cluster", log=log)
    except ConfigError:
        return run_scan(run, cfg, restart="mine", log=log)


def train_accuracies(run: Path) -> dict[str, float]:
    """ACC of the k-means and final SCAN clusters of the train images (RUN/scan/clusters.npz)."""
    with np.load(run / "scan" / "clusters.npz", allow_pickle=False) as z:
        labels = z["train_labels"]
        return {"kmeans": clustering_scores(z["kmeans_train_clusters"], labels)["acc"],
                "final": clustering_scores(z["train_clusters"], labels)["acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="pretext seeds (comma-separated; default: 0,1,2)")
    ap.add_argument("--runs", nargs="*", help="pretext run folders to use instead of training (one per seed)")
    ap.add_argument("--out", default="runs/scan-demo-bench", help="where the pretext runs are trained")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field of the demo's SCAN config (repeatable)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    cfg = demo_config()
    cfg.update({k: yaml_value(v) for k, v in (s.split("=", 1) for s in args.set)}, where="--set")
    cfg = cfg.replace(progress=False)
    runs = [Path(r) for r in args.runs] if args.runs else None
    seeds = list(range(len(runs))) if runs else [int(s) for s in args.seeds.split(",")]
    print("config:", json.dumps(cfg.to_dict()), flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} {os.cpu_count()} CPUs, "
          f"load average {Path('/proc/loadavg').read_text().split()[:3] if Path('/proc/loadavg').exists() else '?'}")
    rows = []
    for i, seed in enumerate(seeds):
        run = runs[i] if runs else pretext_run(Path(args.out), seed)
        t0 = time.perf_counter()
        report = scan_again(run, cfg)
        seconds = time.perf_counter() - t0
        train = train_accuracies(run)
        final = report["selflabel"] or report["scan"]
        rows.append({"seed": seed, "run": str(run), "seconds": seconds, "kmeans_train": train["kmeans"],
                     "final_train": train["final"], "kmeans_test": report["kmeans"]["acc"],
                     "scan_test": report["scan"]["acc"], "final_test": final["acc"],
                     "neighbor_accuracy": report["neighbor_accuracy"]})
        print(json.dumps(rows[-1]), flush=True)
    print("\nACC (%), Hungarian | train images (chosen on) | test images (reported)")
    print("seed | k-means train | SCAN(+self-label) train | k-means test | SCAN test | +self-label test | seconds")
    for r in rows:
        print(f"{r['seed']} | {100 * r['kmeans_train']:.1f} | {100 * r['final_train']:.1f} | "
              f"{100 * r['kmeans_test']:.1f} | {100 * r['scan_test']:.1f} | {100 * r['final_test']:.1f} | "
              f"{r['seconds']:.1f}")
    for key in ("kmeans_train", "final_train", "kmeans_test", "scan_test", "final_test"):
        values = [100 * r[key] for r in rows]
        print(f"  {key}: mean {np.mean(values):.1f} +- {np.std(values):.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg.to_dict(), "rows": rows}, indent=1))


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    main()
