"""`sslab eval RUN` on the demo's run folder: what a new user pays after `sslab demo`, on this machine.

Times the real command line (a fresh process each time, so start-up is counted), with the default options:

1. cold: an empty cache folder, so the raw-pixel and untrained-network baselines are computed (and stored);
2. warm: the same command on a copy of the run folder, the baselines read from the store;
3. with --check-estimate N: `--protocol standard --probe-epochs N` against the estimate eval printed for it,
   to see how well "about N min" from a few timed steps predicts the real probe (the baselines are not timed:
   they are made and stored first).

Without --run it first trains the demo's run (SimCLR, simple-cnn-bn, 3 epochs on Fashion-MNIST mini: the
demo's first step). Prints the configuration, device, load average and figures, and writes OUT/eval_demo.json.

    nice -n 10 python bench/eval_demo.py --out /tmp/eval_demo
    nice -n 10 python bench/eval_demo.py --out /tmp/eval_demo --run /tmp/demo/simclr-...   # an existing demo run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

import torch  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the run copies, the cache and eval_demo.json")
    ap.add_argument("--run", help="an existing demo run folder (default: train one into OUT/train)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads of the eval processes (default: 2)")
    ap.add_argument("--check-estimate", type=int, default=0, metavar="EPOCHS",
                    help="also time the standard probe for this many epochs against its estimate (default: 0, skip)")
    return ap.parse_args()


def train_demo_run(out: Path) -> Path:
    from sslab.demo import demo_config
    from sslab.pretrain import fit

    summary = fit(demo_config(str(out)), log=lambda message: None)
    return Path(summary["run_dir"])


def timed_eval(run: Path, cache: Path, threads: int, *flags: str) -> dict:
    """One `python -m sslab eval RUN --device cpu FLAGS` process: wall seconds, exit code, its output."""
    env = {**os.environ, "SSLAB_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start, cpu = time.perf_counter(), children_cpu_seconds()
    done = subprocess.run([sys.executable, "-m", "sslab", "eval", str(run), "--device", "cpu", *flags],
                          capture_output=True, text=True, env=env)
    seconds, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"eval failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "stdout": done.stdout,
            "eval": json.loads((run / "eval.json").read_text())}


def children_cpu_seconds() -> float:
    """User + system CPU seconds of the finished child processes: on a shared machine the wall time grows
    with the load, the CPU time hardly (a quiet machine with T threads takes between cpu / T and cpu)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fresh_copy(run: Path, to: Path) -> Path:
    if to.exists():
        shutil.rmtree(to)
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("eval", "eval.json", "probe.pt"))
    return to


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else train_demo_run(out / "train")
    cache = out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    print(f"eval_demo: run {run}; device cpu, {args.threads} threads; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average before "
          f"{open('/proc/loadavg').read().split()[:3] if Path('/proc/loadavg').exists() else '?'}")
    cold = timed_eval(fresh_copy(run, out / "cold"), cache, args.threads)
    warm = timed_eval(fresh_copy(run, out / "warm"), cache, args.threads)
    result = {"run": str(run), "threads": args.threads, "torch": torch.__version__,
              "cold_seconds": cold["seconds"], "warm_seconds": warm["seconds"],
              "cold_cpu_seconds": cold["cpu_seconds"], "warm_cpu_seconds": warm["cpu_seconds"],
              "results": {r["name"]: r["accuracy"] for r in cold["eval"]["results"]},
              "baselines": {k: v for k, v in cold["eval"]["baselines"].items() if k in ("knn", "linear-fast")},
              "standard_probe": cold["eval"].get("standard_probe")}
    for timing, what in ((cold, "default options; cold: baselines computed"), (warm, "second run: baselines stored")):
        print(f"sslab eval RUN ({what}): {timing['seconds']:.1f} s wall, {timing['cpu_seconds']:.1f} s CPU")
    print(f"results {json.dumps(result['results'])}; baselines {json.dumps(result['baselines'])}")
    if result["standard_probe"]:
        print(f"eval's line on the standard probe: {result['standard_probe']['hint']}")
    if args.check_estimate:
        result["estimate_check"] = check_estimate(run, out, cache, args.threads, args.check_estimate)
    result["load_average_after"] = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else None
    (out / "eval_demo.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average after {result['load_average_after']}; wrote {out / 'eval_demo.json'}")


def check_estimate(run: Path, out: Path, cache: Path, threads: int, epochs: int) -> dict:
    """The standard probe for `epochs` epochs (its own clock, in eval.json) against eval's estimate of it."""
    flags = ["--protocol", "standard", "--probe-epochs", str(epochs)]
    timed_eval(fresh_copy(run, out / "estimate-baselines"), cache, threads, *flags)  # stores its baselines
    done = timed_eval(fresh_copy(run, out / "estimate"), cache, threads, *flags)
    details = next(r for r in done["eval"]["results"] if r["name"] == "linear-standard")["details"]
    check = {"epochs": epochs, "estimated_seconds": done["eval"]["estimates"]["linear-standard"],
             "measured_seconds": round(details["seconds"], 1)}
    print(f"standard probe, {epochs} epochs: estimated {check['estimated_seconds']} s from a few timed steps, "
          f"took {check['measured_seconds']} s")
    return check


if __name__ == "__main__":
    main()
