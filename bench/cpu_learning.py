"""Does each method learn on real data on a CPU? Every method with its default recipe, simple-cnn-bn (or --backbone), a stratified
CIFAR-10 subset, a fixed number of epochs: each method's kNN curve beside the raw-pixel and untrained-network
baselines, and the wall time.

The subset (default 10,000 train, 2,000 test, stratified and seeded) comes from the CIFAR-10 image folder
(unpack ../shared/data/cifar10-jpeg.tar.gz). Each method trains in its own run folder under --out with the
recipe sslab picks for a run of --epochs epochs (a short run gets the short-run recipe, docs/methods.md);
a method whose run folder already has a summary.json is not trained again, so the benchmark can be filled
over several invocations. Writes OUT/cpu_learning.json and OUT/cpu_learning.png and prints a markdown table.

    nice -n 10 python bench/cpu_learning.py --data /tmp/c10/cifar10-jpeg --out /tmp/cpu_learning --epochs 3
    nice -n 10 python bench/cpu_learning.py --data /tmp/c10/cifar10-jpeg --out /tmp/cpu_vit --epochs 3 \
        --backbone vit-tiny --image-size 16 --methods mocov3        # the ViT row
    python bench/cpu_learning.py --data /tmp/c10/cifar10-jpeg --out /tmp/cpu_smoke --epochs 1 \
        --limit-train 640 --limit-test 200                          # a smoke run of every method (minutes)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from sslab.config import Config  # noqa: E402
from sslab.data import load_dataset  # noqa: E402
from sslab.eval.baselines import pixel_knn_accuracy  # noqa: E402
from sslab.methods import METHODS  # noqa: E402
from sslab.pretrain import fit  # noqa: E402

KNN_K, KNN_T = 200, 0.1  # the training loop's kNN monitor defaults (docs/methods.md, evaluation)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the CIFAR-10 image folder (with train/ and test/)")
    ap.add_argument("--out", required=True, help="folder for the run folders, the JSON and the figure")
    ap.add_argument("--methods", nargs="+", default=METHODS.names(), choices=METHODS.names(),
                    help="the methods to run, in this order; default: every registered one")
    ap.add_argument("--backbone", default="simple-cnn-bn", choices=["simple-cnn", "simple-cnn-bn", "vit-tiny"],
                    help="the backbone; choices: simple-cnn-bn (default: the teaching model with BatchNorm, on which "
                         "every method learns in 3 epochs), simple-cnn (the teaching model without), vit-tiny (the "
                         "ViT row; with --image-size 16 it fits a CPU: 4 x 4 patches)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="resize the images to this side first (default: CIFAR-10's 32 px)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs per method (a run under 100 gets the short-run recipe)")
    ap.add_argument("--limit-train", type=int, default=10_000)
    ap.add_argument("--limit-test", type=int, default=2_000)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the benchmark's 2 cores)")
    return ap.parse_args()


def method_curve(run_dir: Path) -> dict:
    """One method's record: kNN per epoch from epoch 0 (the untrained network), wall time, final loss."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = [r for r in records if r.get("epoch", 0) >= 1]
    knn = [(r["epoch"], r["knn_top1"]) for r in trained if r.get("knn_top1") is not None]
    return {"knn_top1_init": summary["knn_top1_init"], "knn_top1": summary["knn_top1"],
            "knn_curve": [(0, summary["knn_top1_init"])] + knn,
            "train_seconds": sum(r["epoch_seconds"] + r.get("knn_seconds", 0.0) for r in trained),
            "final_loss": trained[-1].get("loss") if trained else None,
            "config": json.loads(json.dumps(Config.load(run_dir / "config.yaml").to_dict()))}


def run_method(method: str, args: argparse.Namespace, data) -> dict:
    run_dir = Path(args.out) / method
    if not (run_dir / "summary.json").exists():
        cfg = Config.from_dict({
            "data": {"dataset": "folder", "data_dir": args.data, "image_size": args.image_size},
            "model": {"backbone": args.backbone},
            "method": {"method": method},
            "train": {"epochs": args.epochs, "device": "cpu", "knn_k": KNN_K, "knn_t": KNN_T, "progress": False,
                      "out": args.out, "name": method}})
        fit(cfg, data=data, log=lambda s: print(f"[{method}] {s}", flush=True))
    return method_curve(run_dir)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (method, r) in enumerate(results["methods"].items()):
        epochs, knn = zip(*r["knn_curve"])
        ax.plot(epochs, [100 * k for k in knn], marker="o", ms=3, color=f"C{i}", label=method)
    ax.axhline(100 * results["knn_top1_pixels"], color="k", ls="--", lw=1, label="raw pixels")
    inits = {r["knn_top1_init"] for r in results["methods"].values()}
    if len(inits) == 1:  # the same seed gives every method the same untrained backbone
        ax.axhline(100 * inits.pop(), color="grey", ls=":", lw=1, label="untrained network")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0 = untrained network)")
    ax.set_ylabel(f"kNN top-1 (%), k={KNN_K}, t={KNN_T}")
    size = f", {results['image_size']} px" if results.get("image_size") else ""
    ax.set_title(f"CIFAR-10 {results['train_images']}/{results['test_images']} images{size}, {results['backbone']}, CPU")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict) -> None:
    print(f"\nraw pixels: {100 * results['knn_top1_pixels']:.1f}%")
    print("| method | untrained | kNN per epoch (1..N) | final | final - untrained | above both | wall (min) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method, r in results["methods"].items():
        curve = " ".join(f"{100 * k:.1f}" for _, k in r["knn_curve"][1:])
        above = r["knn_top1"] > max(r["knn_top1_init"], results["knn_top1_pixels"])  # the untrained net and pixels
        print(f"| {method} | {100 * r['knn_top1_init']:.1f} | {curve} | {100 * r['knn_top1']:.1f} | "
              f"{100 * (r['knn_top1'] - r['knn_top1_init']):+.1f} | {'yes' if above else 'no'} | "
              f"{r['train_seconds'] / 60:.1f} |")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = {"data": args.data, "train_images": args.limit_train, "test_images": args.limit_test,
             "epochs": args.epochs, "backbone": args.backbone, "image_size": args.image_size, "knn_k": KNN_K,
             "knn_t": KNN_T,
             "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
                       f"{torch.get_num_threads()} torch threads)", "torch": torch.__version__}
    print("config:", json.dumps(setup), flush=True)
    t0 = time.perf_counter()
    data = load_dataset("folder", args.data, image_size=args.image_size, limit_train=args.limit_train,
                        limit_test=args.limit_test)
    pixels = pixel_knn_accuracy(data.train_x, data.train_y, data.test_x, data.test_y, data.num_classes, KNN_K, KNN_T)
    print(f"data: {tuple(data.train_x.shape)} train, {tuple(data.test_x.shape)} test in "
          f"{time.perf_counter() - t0:.1f} s; raw-pixel kNN {100 * pixels:.1f}%", flush=True)
    results = {**setup, "knn_top1_pixels": pixels, "methods": {}}
    for method in args.methods:
        results["methods"][method] = run_method(method, args, data)
        (out / "cpu_learning.json").write_text(json.dumps(results, indent=1))
        plot(results, out / "cpu_learning.png")
    print_table(results)
    print(f"wrote {out / 'cpu_learning.json'} and {out / 'cpu_learning.png'}")


if __name__ == "__main__":
    main()
