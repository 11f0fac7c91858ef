"""Training speed of sslab, and the peer pipeline side by side in the same process.

Trains a method on CIFAR-10 (an image folder: train/<class>/*.jpg, test/<class>/*.jpg, e.g. the unpacked
../shared/data/cifar10-jpeg.tar.gz) and prints the config, the device, seconds per epoch, images/s, peak
GPU memory and kNN top-1. With --compare it then runs ../shared/bench/peer_lightly_simsiam.py (lightly's
SimSiam, PIL transforms, DataLoader workers) in this process and prints the ratio of epoch times.

    python bench/train_speed.py --data /tmp/data/cifar10-jpeg --epochs 5 --compare .data/peer_lightly_simsiam.py
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sslab.config import Config  # noqa: E402
from sslab.pretrain import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 image folder (train/ and test/)")
    ap.add_argument("--method", default="simsiam")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--knn-every", type=int, default=0, help="kNN monitor every N epochs (0: only after the last)")
    ap.add_argument("--limit-train", type=int, default=None, help="use N training images (smoke runs)")
    ap.add_argument("--compare", metavar="PEER_SCRIPT", help="also run the peer pipeline script in this process")
    ap.add_argument("--peer-epochs", type=int, default=4)
    ap.add_argument("--peer-workers", type=int, default=16)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    out = tempfile.mkdtemp(prefix="sslab-bench-")
    cfg = Config.from_dict({
        "data": {"dataset": "folder", "data_dir": args.data, "limit_train": args.limit_train},
        "model": {"backbone": args.backbone}, "method": {"method": args.method},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device, "compile": args.compile,
                  "knn_every": args.knn_every if args.knn_every else args.epochs, "out": out, "progress": False}})
    print("config:", json.dumps(cfg.to_dict()["train"]), flush=True)
    t0 = time.perf_counter()
    summary = fit(cfg, log=lambda s: print(s, flush=True))
    wall = time.perf_counter() - t0
    records = [json.loads(l) for l in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r["epoch"] >= 1]  # not the epoch-0 record (before training)
    epoch_s = [r["epoch_seconds"] for r in records]
    steady = sorted(epoch_s[1:] if len(epoch_s) > 1 else epoch_s)
    ours = {"pipeline": f"sslab {args.method}", "device": summary["device"], "torch": torch.__version__,
            "epochs": args.epochs, "batch_size": args.batch_size, "compile": args.compile,
            "epoch_s_first": epoch_s[0], "epoch_s_median": steady[len(steady) // 2],
            "images_per_s": summary["images_per_second_median"], "knn_top1": summary["knn_top1"],
            "peak_gpu_gib": summary["peak_gpu_memory_gib"], "wall_s": wall}
    print("ours:", json.dumps(ours), flush=True)
    result = {"ours": ours}
    if args.compare:
        peer_json = Path(out) / "peer.json"
        sys.argv = [args.compare, "--data", args.data, "--epochs", str(args.peer_epochs),
                    "--workers", str(args.peer_workers), "--json", str(peer_json)]
        runpy.run_path(args.compare, run_name="__main__")
        peer = json.loads(peer_json.read_text())
        result["peer"] = peer
        result["speedup_vs_peer"] = peer["epoch_s_median"] / ours["epoch_s_median"]
        result["ours_vs_peer_bf16_floor"] = ours["epoch_s_median"] / peer["floor_bf16_cl_epoch_s"]
        print(f"epoch time: ours {ours['epoch_s_median']:.2f} s, peer {peer['epoch_s_median']:.2f} s "
              f"-> {result['speedup_vs_peer']:.2f}x faster; bf16 compute floor {peer['floor_bf16_cl_epoch_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
