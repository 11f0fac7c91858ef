"""Host and GPU memory of training on a big dataset: does the process hold more than one copy of the data?

Writes synthetic STL-10 binaries (`stl10_binary/unlabeled_X.bin`: N x 3 x 96 x 96 uint8, 2.76 GB at the real
N = 100,000; plus a small labelled test split), then trains `sslab train --dataset stl10 --train-split
unlabeled` in a child process for a few steps (stopped after --steps by tests/hooks's SSLAB_TEST_SIGNAL_AT_STEP hook, as
Ctrl-C would: a mid-epoch checkpoint is written) and reads the child's peak RSS (os.wait4). Each size is
trained twice: the first run decodes the binaries and writes the data cache, the second loads the cache.
A small dataset (--baseline-n) trained the same way gives the memory that is not data (torch, model,
activations); the rest, divided by the data size, is the number of copies of the data the process held.

    python bench/big_dataset_memory.py                       # N = 100,000 (needs ~6 GB of disk, ~10 min on CPU)
    python bench/big_dataset_memory.py --n 20000 --steps 3   # quicker
    python bench/big_dataset_memory.py --device cuda         # also reports peak GPU memory (summary.json)

Results and the commands that produced them: docs/reliability.md ("Big datasets").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
HOOKS = Path(__file__).resolve().parents[1] / "tests" / "hooks"  # the step-signal hook that stops the run
IMAGE_BYTES = 3 * 96 * 96
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_stl10(root: Path, n_unlabeled: int, n_test: int, seed: int = 0, chunk: int = 5000) -> None:
    """Synthetic STL-10 binaries, written in chunks (this process never holds the whole array)."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("unlabeled_X.bin", n_unlabeled), ("train_X.bin", 0), ("test_X.bin", n_test)):
        with open(folder / name, "wb") as f:
            for i in range(0, n, chunk):
                f.write(rng.bytes(min(chunk, n - i) * IMAGE_BYTES))
    (folder / "train_y.bin").write_bytes(b"")
    (folder / "test_y.bin").write_bytes(rng.integers(1, 11, n_test, dtype=np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(CLASSES) + "\n")


def train_once(root: Path, out: Path, args: argparse.Namespace) -> dict:
    """Train in a child process; its peak RSS and wall time."""
    cmd = [sys.executable, "-m", "sslab", "train", "--method", args.method, "--dataset", "stl10", "--data-dir", str(root),
           "--train-split", "unlabeled", "--backbone", args.backbone, "--batch-size", str(args.batch_size),
           "--epochs", "1", "--knn-k", "20", "--no-progress", "--device", args.device, "--out", str(out),
           "--cache-dir", str(root / "decoded-cache")]  # beside the synthetic data, removed with it
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HOOKS}", "SSLAB_TEST_SIGNAL_AT_STEP": str(args.steps)}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, env=env, stdout=out_file, stderr=err_file, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone: ru_maxrss is its peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        stdout, stderr = out_file.read(), err_file.read()
    if proc.returncode not in (0, 130):  # 130: stopped after --steps, as planned
        raise SystemExit(f"training failed ({proc.returncode}):\n{stderr[-3000:]}")
    gpu = None
    summaries = list(out.glob("*/summary.json"))
    if summaries:
        gpu = json.loads(summaries[-1].read_text()).get("peak_gpu_memory_gib")
    return {"peak_rss_gib": usage.ru_maxrss * 1024 / 2**30, "wall_s": time.perf_counter() - t0, "gpu_gib": gpu,
            "log": stdout.strip().splitlines()[:2]}


def peak_rss_of(root: Path, args: argparse.Namespace, label: str) -> list[dict]:
    results = []
    for attempt in ("decode + write cache", "load from cache"):
        out = Path(tempfile.mkdtemp(prefix="sslab-mem-runs-"))
        r = train_once(root, out, args)
        shutil.rmtree(out, ignore_errors=True)
        r.update(label=label, run=attempt)
        print(f"  {label:>8} images, {attempt:22s} peak RSS {r['peak_rss_gib']:.2f} GiB  ({r['wall_s']:.0f} s)"
              + (f"  peak GPU {r['gpu_gib']:.2f} GiB" if r["gpu_gib"] else ""), flush=True)
        results.append(r)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="unlabelled training images (STL-10: 100,000)")
    ap.add_argument("--baseline-n", type=int, default=2_000, help="a small dataset, for the memory that is not data")
    ap.add_argument("--n-test", type=int, default=1_000)
    ap.add_argument("--steps", type=int, default=5, help="training steps before the run is stopped")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--method", default="simsiam")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", help="where the synthetic data goes (default: a temp folder, removed after)")
    args = ap.parse_args()

    print(f"config: {vars(args)}")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    base = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="sslab-mem-data-"))
    try:
        rows = []
        for n in (args.baseline_n, args.n):
            root = base / f"n{n}"
            t0 = time.perf_counter()
            write_stl10(root, n, args.n_test)
            print(f"wrote {n} x 3 x 96 x 96 uint8 ({n * IMAGE_BYTES / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            rows += [(n, r) for r in peak_rss_of(root, args, f"{n:,}")]
            shutil.rmtree(root, ignore_errors=True)
        data_gib = (args.n - args.baseline_n) * IMAGE_BYTES / 2**30
        print(f"\ndata: {args.n * IMAGE_BYTES / 2**30:.2f} GiB at {args.n:,} images")
        for run in ("decode + write cache", "load from cache"):
            small = next(r for n, r in rows if n == args.baseline_n and r["run"] == run)
            big = next(r for n, r in rows if n == args.n and r["run"] == run)
            extra = big["peak_rss_gib"] - small["peak_rss_gib"]
            print(f"{run:22s}: peak RSS {big['peak_rss_gib']:.2f} GiB; {extra:.2f} GiB more than at "
                  f"{args.baseline_n:,} images = {extra / data_gib:.2f} x the extra data")
    finally:
        if not args.root:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
