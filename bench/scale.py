"""Any size of data, on the CPU: cache build speed, the streaming feed against resident indexing, and the
anonymous memory of streaming a cache several times larger than a batch.

Stages (`--stages`, default all):
  build   decode an image folder into the memory-mapped cache with 1 worker process and with every core:
          CIFAR-10 (the JPEG folder unpacked from --cifar-tar) and a synthetic folder of photo-sized JPEGs
          (--synthetic-images of 320x256, stored at 224 px): seconds and files/s of each
  feed    random batches of a cache: indexing it in place (resident on the CPU) against the StreamingFeed (a
          background thread gathers the next batch while the step runs), images/s, at 32 px (CIFAR-10's shape,
          batch 512) and 224 px (batch 128)
  memory  a synthetic cache of --memory-gb GB at 224 px (written chunk by chunk), streamed once through the
          feed in random order: peak RssAnon above the start and the feed's stated bound, RssFile (file-backed)
It prints its config and machine, and writes one JSON (`--out`, default scale.json).

    python bench/scale.py --cifar-tar ../shared/data/cifar10-jpeg.tar.gz --out scale.json
    python bench/scale.py --stages memory --memory-gb 3.2
    python bench/scale.py --smoke        # everything in miniature (seconds)

Figures and commands: docs/benchmarks.md ("Any size of data"), discussed in docs/scale.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sslab.data import load_dataset  # noqa: E402
from sslab.data.base import ImageData, gather  # noqa: E402
from sslab.data.cache import EntryWriter, read_entry  # noqa: E402
from sslab.data.parallel import default_workers  # noqa: E402
from sslab.streaming import StreamingFeed, feed_memory_bound  # noqa: E402

STAGES = ("build", "feed", "memory")
DEFAULT_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def machine() -> dict[str, Any]:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "workers": default_workers(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "loadavg_at_start": load}


def rss_kib(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


# ---- build ------------------------------------------------------------------------------------------------
def synthetic_folder(root: Path, n: int, size: tuple[int, int] = (256, 320), classes: int = 10, seed: int = 0) -> Path:
    """Photo-like JPEGs (smooth colour fields with noise, quality 90) in root/train/<class>/ and root/val/<class>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        split = "val" if i % 10 == 9 else "train"
        folder = root / split / f"class{(i // 10) % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.005, 0.05, 3)
        phase = rng.uniform(0, 6.3, 3)
        img = np.stack([127 + 100 * np.sin(f[c] * (xx + yy * (c + 1)) + phase[c]) for c in range(3)], axis=-1)
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def time_build(folder: Path, workers: int, image_size: int | None, cache_dir: Path) -> dict[str, Any]:
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    data = load_dataset("folder", folder, image_size=image_size, workers=workers, cache_dir=cache_dir, test_fraction=0)
    seconds = time.perf_counter() - t0
    files = len(data.train_x) + len(data.test_x)
    t0 = time.perf_counter()
    load_dataset("folder", folder, image_size=image_size, workers=workers, cache_dir=cache_dir, test_fraction=0)
    return {"workers": workers, "files": files, "seconds": seconds, "files_per_s": files / seconds,
            "cache_bytes": data.nbytes, "reload_seconds": time.perf_counter() - t0}


def stage_build(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sets = []
    if args.cifar_tar and Path(args.cifar_tar).exists():
        with tarfile.open(args.cifar_tar) as tar:
            tar.extractall(work / "cifar", filter="data")
        sets.append(("cifar10", next((work / "cifar").iterdir()), None))
    sets.append(("synthetic224", synthetic_folder(work / "synthetic", args.synthetic_images), 224))
    for name, folder, size in sets:
        out[name] = [time_build(folder, workers, size, work / "cache-build") for workers in sorted({1, args.workers})]
        for r in out[name]:
            print(f"build {name:>12}: {r['files']:,} files, {r['workers']:>2} worker(s): {r['seconds']:.1f} s "
                  f"({r['files_per_s']:.0f} files/s); reload {r['reload_seconds']:.2f} s", flush=True)
    return out


# ---- feed -------------------------------------------------------------------------------------------------
def feed_speed(images: torch.Tensor, batch: int, steps: int) -> dict[str, float]:
    """images/s of gathering random batches in place (`index_select`, what the resident path does on the CPU)
    and through the StreamingFeed, each followed by a small stand-in step (a float conversion and a mean). On
    the CPU there is no copy to overlap, so this shows what the feed's thread and hand-over cost."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(images), (batch,), generator=g) for _ in range(steps)]

    def step(x: torch.Tensor) -> None:
        x.float().mean()

    for i in range(0, len(images), 4096):  # every page mapped and in the page cache: both timings start warm
        images[i:i + 4096].max()
    t0 = time.perf_counter()
    for indices in batches:
        step(gather(images, indices))  # index_select: on the CPU ~100x faster than images[indices]
    resident = steps * batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with StreamingFeed(images, "cpu", depth=2) as feed:
        feed.prefetch(batches[0])
        for i, indices in enumerate(batches):
            if i + 1 < len(batches):
                feed.prefetch(batches[i + 1])
            step(feed.batch(indices))
    streamed = steps * batch / (time.perf_counter() - t0)
    return {"batch": batch, "steps": steps, "resident_images_per_s": resident, "streamed_images_per_s": streamed}


def stage_feed(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = {}  # random images: a gather's speed does not depend on what the pixels show
    caches = {"32px": synthetic_cache(work / "feed-32", args.feed_images * 10, (3, 32, 32)),  # CIFAR-10's shape
              "224px": synthetic_cache(work / "feed-224", args.feed_images, (3, 224, 224))}
    for name, data in caches.items():
        batch = 512 if data.image_size <= 64 else 128
        out[name] = feed_speed(data.train_x, batch, args.feed_steps)
        r = out[name]
        print(f"feed  {name:>12}: batch {batch}, in place {r['resident_images_per_s']:.0f} img/s, streamed "
              f"{r['streamed_images_per_s']:.0f} img/s", flush=True)
    return out


# ---- memory -----------------------------------------------------------------------------------------------
def synthetic_cache(entry: Path, n: int, shape: tuple[int, int, int], chunk: int = 1024) -> ImageData:
    """A cache entry of `n` random images written chunk by chunk (never whole in memory), then mapped."""
    if (entry / "header.json").exists():
        return read_entry(entry, verify=False)[0]
    writer = EntryWriter(entry, resume=False)
    writer.reserve(n * int(np.prod(shape)), "synthetic cache")
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 0)):
        writer.start_split(split, shape)
        for i in range(0, count, chunk):
            k = min(chunk, count - i)
            writer.append(split, rng.integers(0, 256, (k, *shape), dtype=np.uint8), rng.integers(0, 10, k), k)
    writer.finish("synthetic", [str(c) for c in range(10)], [])
    return read_entry(entry, verify=False)[0]


def stage_memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    shape = (3, 224, 224)
    n = int(args.memory_gb * 1e9 / np.prod(shape))
    t0 = time.perf_counter()
    data = synthetic_cache(work / "memory-cache", n, shape)
    written = time.perf_counter() - t0
    batch = args.memory_batch
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    steps = [order[i:i + batch] for i in range(0, n - batch + 1, batch)]
    file0 = rss_kib("RssFile") or 0
    with StreamingFeed(data.train_x, "cpu", depth=2) as feed:
        feed.batch(steps[0])
        anon0 = rss_kib("RssAnon") or 0
        peak = anon0
        t0 = time.perf_counter()
        feed.prefetch(steps[1])
        for i, indices in enumerate(steps[1:], start=1):
            if i + 1 < len(steps):
                feed.prefetch(steps[i + 1])
            feed.batch(indices).float().mean()
            peak = max(peak, rss_kib("RssAnon") or 0)
        seconds = time.perf_counter() - t0
    bound = feed_memory_bound(batch, shape, depth=2)
    result = {"images": n, "cache_gb": data.nbytes / 1e9, "batch": batch, "write_seconds": written,
              "stream_seconds": seconds, "images_per_s": (len(steps) - 1) * batch / seconds,
              "rss_anon_start_mib": anon0 / 1024, "rss_anon_peak_growth_mib": (peak - anon0) / 1024,
              "bound_mib": bound / 2**20, "rss_file_growth_gib": ((rss_kib("RssFile") or 0) - file0) / 2**20}
    print(f"memory: streamed a {result['cache_gb']:.2f} GB cache ({n:,} images of 224 px) in batches of {batch}: "
          f"RssAnon grew {result['rss_anon_peak_growth_mib']:.0f} MiB at most (bound {result['bound_mib']:.0f} MiB), "
          f"RssFile grew {result['rss_file_growth_gib']:.2f} GiB; {result['images_per_s']:.0f} img/s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--cifar-tar", default=str(DEFAULT_CIFAR), help="the CIFAR-10 JPEG tarball (skipped if absent)")
    ap.add_argument("--synthetic-images", type=int, default=3000, help="photo-sized JPEGs of the synthetic folder")
    ap.add_argument("--workers", type=int, default=default_workers(), help="the 'all workers' build (default: cores)")
    ap.add_argument("--feed-images", type=int, default=4000, help="images of the 224 px cache the feed reads")
    ap.add_argument("--feed-steps", type=int, default=60, help="batches timed per feed measurement")
    ap.add_argument("--memory-gb", type=float, default=3.2, help="size of the streamed synthetic cache")
    ap.add_argument("--memory-batch", type=int, default=128, help="batch of the memory stage")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no OpenMP barriers, which a loaded "
                    "machine stretches into noise; the feed's own cost is what the feed stage shows)")
    ap.add_argument("--work", help="scratch folder (default: a temp folder, removed after; needs memory-gb + 1 GB)")
    ap.add_argument("--out", default="scale.json", help="JSON file to write")
    ap.add_argument("--smoke", action="store_true", help="every stage in miniature")
    args = ap.parse_args(argv)
    if args.smoke:
        args.synthetic_images, args.feed_images, args.feed_steps, args.memory_gb = 60, 300, 5, 0.05
        args.cifar_tar = None
    stages = [s for s in args.stages.split(",") if s]
    torch.set_num_threads(args.threads)
    config = {k: v for k, v in vars(args).items()}
    info = machine()
    print(f"config: {config}\nmachine: {info}", flush=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sslab-scale-"))
    results: dict[str, Any] = {"config": config, "machine": info, "stages": {}}
    try:
        for stage in stages:
            results["stages"][stage] = {"build": stage_build, "feed": stage_feed, "memory": stage_memory}[stage](args, work)
            Path(args.out).write_text(json.dumps(results, indent=1))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
