"""Every method with its own recipe on CIFAR-10: final kNN top-1, wall time, peak GPU memory.

ResNet-18, batch 512, N epochs (200 for the methods issue), on the CIFAR-10 image folder (the unpacked
../shared/data/cifar10-jpeg.tar.gz). Each method trains in its own run folder under --out; a run that was
cut off (a device call has a 10-minute limit) is resumed when the same command is given again, so the
table can be filled over several calls. Prints a markdown table of the runs found under --out.

    python bench/methods_cifar10.py --data /tmp/data/cifar10-jpeg --out .data/runs --epochs 200 \
        [--methods simsiam simclr ...] [--weight-decay 5e-3 --tag wd5e-3] [--time-limit 540]    # default: every method
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sslab.config import Config  # noqa: E402
from sslab.methods import METHODS  # noqa: E402
from sslab.pretrain import Interrupted, fit  # noqa: E402


def run_name(method: str, tag: str) -> str:
    return f"{method}-{tag}" if tag else method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", nargs="+", default=METHODS.names(), choices=METHODS.names(),
                    help="methods to train (default: every registered one)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--weight-decay", type=float, default=None, help="override every recipe's weight decay")
    ap.add_argument("--tag", default="", help="suffix of the run folder names (e.g. wd5e-3)")
    ap.add_argument("--knn-every", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--limit-train", type=int, default=None, help="use N training images (CPU smoke runs)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop cleanly (checkpoint) after this many seconds; run the command again to continue")
    args = ap.parse_args()
    out = Path(args.out)
    deadline = time.monotonic() + args.time_limit if args.time_limit else None
    for method in args.methods:
        run_dir = out / run_name(method, args.tag)
        if (run_dir / "summary.json").exists():
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < 60:
            break
        log = (lambda m: lambda s: print(f"[{m}] {s}", flush=True))(method)
        try:
            if (run_dir / "checkpoints" / "last.pt").exists():
                fit(resume=run_dir, log=log, time_limit=left)
            else:
                cfg = Config.from_dict({
                    "data": {"dataset": "folder", "data_dir": args.data, "limit_train": args.limit_train},
                    "model": {"backbone": args.backbone},
                    "method": {"method": method},
                    "optim": {} if args.weight_decay is None else {"weight_decay": args.weight_decay},
                    "train": {"epochs": args.epochs, "batch_size": args.batch_size, "knn_every": args.knn_every,
                              "compile": args.compile, "out": str(out), "name": run_name(method, args.tag),
                              "progress": False, "time_limit": left}})
                fit(cfg, log=log)
        except Interrupted:
            print(f"[{method}] stopped at the time limit; run the same command again to continue", flush=True)
            break
    print_table(out)


def print_table(out: Path) -> None:
    print("\n| run | epochs | final kNN top-1 | best kNN top-1 | train time (min) | median s/epoch | peak GPU GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in sorted(p for p in out.iterdir() if (p / "metrics.jsonl").exists()):
        records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
        records = [r for r in records if r["epoch"] >= 1]  # not the epoch-0 record (before training)
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
        knn = [r["knn_top1"] for r in records if r.get("knn_top1") is not None]
        minutes = sum(r["epoch_seconds"] + r.get("knn_seconds", 0) for r in records) / 60
        s_epoch = sorted(r["epoch_seconds"] for r in records)[len(records) // 2] if records else float("nan")
        peak = summary.get("peak_gpu_memory_gib")
        print(f"| {run.name} | {len(records)}{'' if summary else ' (running)'} | "
              f"{100 * knn[-1]:.2f} | {100 * max(knn):.2f} | {minutes:.1f} | {s_epoch:.2f} | "
              f"{'-' if peak is None else f'{peak:.1f}'} |" if knn else f"| {run.name} | {len(records)} | - | - | {minutes:.1f} | {s_epoch:.2f} | - |")


if __name__ == "__main__":
    main()
