"""SCAN on CIFAR-10 from a pretext run folder: k-means vs SCAN vs SCAN + self-label, with each stage's time.

Runs `sslab.scan.run_scan` (every stage from scratch unless --resume) on a run folder made by
`sslab train` on CIFAR-10 (e.g. SimCLR or SimSiam, ResNet-18, CIFAR stem), once per seed, and prints the
configuration, the device, test ACC/NMI/ARI of the k-means baseline (same pretext features), of SCAN and of
SCAN + self-labelling, the seconds of each stage, and mean +- std over the seeds. The defaults are the
reference recipe (docs/methods.md; configs/scan/scan_cifar10.yml, configs/selflabel/selflabel_cifar10.yml);
every `sslab scan` flag is accepted. Published (SCAN paper, CIFAR-10, ACC/NMI/ARI): SCAN 81.6/71.5/66.5,
+ self-label 88.3/79.7/77.2.

    python bench/scan_cifar10.py RUN                       # GPU: the full recipe (50 + 200 epochs)
    python bench/scan_cifar10.py RUN --seeds 0,1,2 --json scan_bench.json
    python bench/scan_cifar10.py RUN --tiny --device cpu   # smoke run: 1 + 1 epochs, small batches
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sslab.commands.scan import add_scan_flags  # noqa: E402
from sslab.scan import ScanConfig, run_scan  # noqa: E402
from sslab.scan.config import FIELD_TYPES  # noqa: E402

PUBLISHED = {"scan": (81.6, 71.5, 66.5), "selflabel": (88.3, 79.7, 77.2)}
TINY = dict(cluster_epochs=1, selflabel_epochs=1, batch_size=32, selflabel_batch_size=64, heads=2, kmeans_init=1,
            eval_every=0, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="pretext run folder (sslab train on cifar10)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; each reruns all stages (default: 0)")
    ap.add_argument("--resume", action="store_true", help="continue RUN/scan instead of starting from scratch")
    ap.add_argument("--tiny", action="store_true", help="smoke settings: 1 epoch per stage, small batches")
    ap.add_argument("--json", help="write the results here")
    add_scan_flags(ap.add_argument_group("SCAN settings"))
    args = ap.parse_args()

    base = ScanConfig(**TINY) if args.tiny else ScanConfig(progress=False)
    base.update({k: v for k, v in vars(args).items() if k in FIELD_TYPES}, where="command line")
    if base.device != "cpu" and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    seeds = [int(s) for s in args.seeds.split(",")]
    print("config:", json.dumps(base.to_dict()), flush=True)
    print(f"torch {torch.__version__}, device request {base.device}, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() and base.device != 'cpu' else 'cpu'}", flush=True)

    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        report = run_scan(args.run, base.replace(seed=seed), restart=None if args.resume else "mine",
                          log=lambda s: print(s, flush=True))
        runs.append({"seed": seed, "wall_s": time.perf_counter() - t0,
                     **{k: report[k] for k in ("kmeans", "scan", "selflabel", "neighbor_accuracy", "seconds", "device")}})
        print(f"seed {seed}: {json.dumps(runs[-1])}", flush=True)

    print(f"\nSCAN on {Path(args.run).name} ({runs[0]['device']}), {len(seeds)} seed(s); test ACC / NMI / ARI (%)")
    summary = {}
    for key, name in (("kmeans", "k-means (pretext features)"), ("scan", "SCAN"), ("selflabel", "SCAN + self-label")):
        rows = [r[key] for r in runs if r.get(key)]
        if not rows:
            continue
        stats = {m: (100 * float(np.mean([r[m] for r in rows])), 100 * float(np.std([r[m] for r in rows])))
                 for m in ("acc", "nmi", "ari")}
        summary[key] = stats
        line = "  ".join(f"{m.upper()} {mu:5.1f} +- {sd:3.1f}" for m, (mu, sd) in stats.items())
        pub = PUBLISHED.get(key)
        print(f"  {name:28s} {line}" + (f"   (paper {pub[0]}/{pub[1]}/{pub[2]})" if pub else ""))
    secs = {k: float(np.mean([r["seconds"][k] or 0.0 for r in runs])) for k in runs[0]["seconds"]}
    print("  seconds per stage (mean): " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    print(f"  neighbour accuracy (K={base.neighbors}): {100 * runs[0]['neighbor_accuracy']:.1f}%"
          if runs[0]["neighbor_accuracy"] is not None else "  neighbour accuracy: no labels")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": base.to_dict(), "runs": runs, "summary": summary,
                                               "seconds_mean": secs}, indent=1))


if __name__ == "__main__":
    main()
