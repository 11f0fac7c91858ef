"""Every GPU figure of docs/benchmarks.md from one command, in at most 8 minutes on one H100/H200.

Stages, each stopped on its own time budget (seconds of wall time, `--budget-STAGE N`):
  speed     SimSiam, ResNet-18, CIFAR-10, batch 512: s/epoch, images/s, peak memory, eager and compiled
            (compile time = first compiled epoch - steady compiled epoch), then the peer pipeline
            (lightly, PIL transforms, DataLoader workers) in this same process, and the ratio of epoch times
  methods   the same figures for SimCLR and BYOL (eager, a few epochs each; `--methods` names any others)
  stl96     96 px throughput and memory on synthetic STL-10-sized data (random uint8 images), batch 256
  accuracy  a time-boxed run of the fastest recipe: as many epochs as fit the budget at the measured
            s/epoch, kNN top-1 against wall time (where "88% kNN in 9 minutes" stands)
  after     `sslab eval`, `analyze`, `scan` and `report` on that run, each timed
  resume    an interrupt-and-resume: two uninterrupted runs and one SIGINTed mid-epoch then resumed; every
            epoch's loss within docs/reliability.md's GPU tolerance, kNN within 2 points
  streaming the speed stage's CIFAR-10 run streamed from the host's mapped cache (--data-on-device never)
            against it resident; ResNet-50 SimSiam at 224 px on a synthetic mapped cache, resident and streamed
It prints its config and the device, writes one JSON (`OUT/gpu_suite.json`, rewritten after every stage,
so a run cut short keeps what it measured) and the rows of docs/benchmarks.md (`OUT/gpu_suite_rows.md`).

    python bench/gpu_suite.py --data /tmp/c10/cifar10-jpeg --peer .data/peer_lightly_simsiam.py --out OUT
    python bench/gpu_suite.py --smoke --device cpu --out /tmp/suite     # every stage in miniature (CI runs it)
    python bench/gpu_suite.py --render OUT/gpu_suite.json --docs docs/benchmarks.md   # fill the docs table

`bench/gpu_run.sh` is the one device command (unpack the data, install the peer's wheels, run this).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import runpy
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "hooks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/scale.py's synthetic cache

from sslab.cli import main as sslab_main  # noqa: E402
from sslab.config import Config, own_settings  # noqa: E402
from sslab.data import load_dataset  # noqa: E402
from sslab.data.base import ImageData  # noqa: E402
from sslab.device import device_name, peak_memory_gib, pick_device, reset_peak_memory  # noqa: E402
from sslab.run import RunDir  # noqa: E402
from sslab.kit import Interrupted  # noqa: E402
from sslab.methods import METHODS  # noqa: E402
from signal_at_step import signal_at_step  # noqa: E402
from sslab.pretrain import fit  # noqa: E402
from scale import synthetic_cache  # noqa: E402

STAGES = ("speed", "methods", "stl96", "accuracy", "after", "resume", "streaming")
# seconds per stage on one H100/H200 (465; the data load takes the rest of 8 minutes). The accuracy stage gets
# whatever the whole budget leaves after the later stages' reserve (so also what the earlier stages did not use).
BUDGETS = {"speed": 165, "methods": 55, "stl96": 25, "accuracy": 105, "after": 70, "resume": 45, "streaming": 50}
SMOKE_BUDGETS = {s: 300.0 for s in STAGES}  # plumbing, not speed: a loaded CI machine must not cut stages short
DOCS_BEGIN, DOCS_END = "<!-- gpu-suite:begin -->", "<!-- gpu-suite:end -->"


@dataclass
class Scale:
    """Sizes of the runs: the real ones, or a miniature for `--smoke` (CI on 2 CPU cores)."""

    backbone: str = "resnet18"
    batch_size: int = 512
    speed_epochs: int = 4
    method_epochs: int = 3
    stl_images: int = 20480
    stl_batch: int = 256
    stl_epochs: int = 2
    resume_images: int = 10240
    resume_epochs: int = 3
    stream_epochs: int = 2  # each streamed/resident run of the streaming stage
    stream_backbone: str = "resnet50"
    stream_images: int = 4096  # synthetic, 0.6 GB at 224 px
    stream_size: int = 224
    stream_batch: int = 128
    knn_k: int = 200
    heads: dict[str, int] = field(default_factory=dict)  # method overrides (smaller projector/predictor)
    accuracy_max_epochs: int | None = None
    eval_flags: tuple[str, ...] = ("--protocol", "both", "--probe-epochs", "5")
    analyze_flags: tuple[str, ...] = ("--max-points", "2000", "--n-init", "3")
    scan_flags: tuple[str, ...] = ("--cluster-epochs", "3", "--selflabel-epochs", "2", "--eval-every", "0",
                                   "--no-progress")


SMOKE = Scale(backbone="simple-cnn", batch_size=32, speed_epochs=2, method_epochs=1, stl_images=32, stl_batch=16,
              stl_epochs=1, resume_images=96, resume_epochs=2, knn_k=10, accuracy_max_epochs=2, stream_epochs=1,
              stream_backbone="simple-cnn", stream_images=48, stream_size=32, stream_batch=16,
              heads={"proj_hidden": 64, "proj_dim": 64, "pred_hidden": 16},
              eval_flags=("--protocol", "both", "--probe-epochs", "1", "--probe-batch-size", "32"),
              analyze_flags=("--max-points", "60", "--n-init", "1", "--map-size", "200"),
              scan_flags=("--cluster-epochs", "1", "--selflabel-epochs", "1", "--batch-size", "32",
                          "--selflabel-batch-size", "32", "--heads", "2", "--kmeans-init", "1", "--neighbors", "5",
                          "--eval-every", "0", "--no-progress"))


# ---- the device, without CUDA calls on a CPU (sslab.device holds the CUDA lines) ---------------------------
def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---- the suite ------------------------------------------------------------------------------------------
@dataclass
class Suite:
    args: argparse.Namespace
    scale: Scale
    device: torch.device
    out: Path
    runs: Path
    budgets: dict[str, float]
    started: float = field(default_factory=time.perf_counter)
    data: ImageData | None = None
    data_dir: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def base_config(self, method: str, epochs: int, name: str, **train: Any) -> dict[str, dict[str, Any]]:
        return {"data": {"dataset": "folder", "data_dir": str(self.data_dir)},
                "model": {"backbone": self.scale.backbone}, "method": {"method": method, **own_settings(method, self.scale.heads)},
                "train": {"epochs": epochs, "batch_size": self.scale.batch_size, "device": self.args.device,
                          "knn_k": self.scale.knn_k, "knn_every": 0, "out": str(self.runs), "name": name,
                          "progress": False, **train}}

    def train(self, cfg: dict[str, dict[str, Any]], budget: float, data: ImageData | None = None) -> dict[str, Any]:
        """One fit() stopped at `budget` seconds; the speed figures of its metrics.jsonl."""
        name = cfg["train"]["name"]

        def log(message: str) -> None:
            print(f"[{name}] {message}", flush=True)

        reset_peak_memory(self.device)
        t0 = time.perf_counter()
        stopped = False
        try:
            summary = fit(Config.from_dict(cfg).with_values(time_limit=max(budget, 1.0)),
                          data=data if data is not None else self.data, log=log)
            run_dir = Path(summary["run_dir"])
        except Interrupted as e:
            stopped, run_dir = True, Path(e.run_dir)
            log("stopped at the stage's time budget")
        return {"run_dir": str(run_dir), "wall_s": time.perf_counter() - t0, "stopped_at_budget": stopped,
                "peak_gpu_gib": peak_memory_gib(self.device), **epoch_figures(run_dir, cfg["train"]["batch_size"])}

    def compile_setting(self) -> Any:
        """`train.compile`: the mode name asked for."""
        return self.args.compile_mode

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)


def epoch_figures(run_dir: Path, batch_size: int) -> dict[str, Any]:
    """s/epoch (first, and median of the rest), images/s and kNN from a run's metrics.jsonl (the epoch-0
    record of the untrained network has no loss: it is the baseline, not an epoch)."""
    records = RunDir(run_dir).read_metrics()
    baseline = next((r for r in records if r.get("epoch") == 0), {})
    epochs = [r for r in records if "loss" in r]
    if not epochs:
        return {"epochs": 0}
    seconds = [r["epoch_seconds"] for r in epochs]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    knn = [(r["epoch"], r["knn_top1"]) for r in epochs if r.get("knn_top1") is not None]
    return {"epochs": len(epochs), "epoch_s_first": seconds[0], "epoch_s_median": steady,
            "images_per_s": statistics.median(r["images_per_second"] for r in epochs[1:] or epochs),
            "final_loss": epochs[-1]["loss"], "knn_top1": knn[-1][1] if knn else None,
            "knn_top1_init": baseline.get("knn_top1_init"), "knn_top1_pixels": baseline.get("knn_top1_pixels"),
            "knn_seconds": statistics.median(r["knn_seconds"] for r in epochs if r.get("knn_top1") is not None)
            if knn else None}


# ---- stage 1: SimSiam eager and compiled, and the peer -------------------------------------------------
def stage_speed(suite: Suite, budget: float) -> dict[str, Any]:
    end = time.perf_counter() + budget
    s = suite.scale
    eager = suite.train(suite.base_config("simsiam", s.speed_epochs, "speed-simsiam-eager", knn_every=s.speed_epochs),
                        budget * 0.25)
    with capture_only(suite.args.smoke):
        compiled = suite.train(suite.base_config("simsiam", s.speed_epochs, "speed-simsiam-compiled",
                                                 compile=suite.compile_setting()), (end - time.perf_counter()) * 0.5)
    if compiled.get("epochs", 0) > 1:
        compiled["compile_s"] = max(0.0, compiled["epoch_s_first"] - compiled["epoch_s_median"])
    peer = run_peer(suite)
    result = {"eager": eager, "compiled": compiled, "compile_mode": suite.args.compile_mode, "peer": peer}
    ours = [r["epoch_s_median"] for r in (eager, compiled) if r.get("epochs", 0) > 1]
    if ours and peer.get("epoch_s_median"):
        result["speedup_vs_peer"] = peer["epoch_s_median"] / min(ours)
        result["ours_vs_peer_bf16_floor"] = min(ours) / peer["floor_bf16_cl_epoch_s"]
    return result


@contextlib.contextmanager
def capture_only(smoke: bool):
    """In --smoke, torch.compile with backend "eager": TorchDynamo captures the step's graphs (graph breaks and
    guards are exercised) but inductor generates no code, which takes minutes on two loaded CPU cores."""
    if not smoke:
        yield
        return
    real = torch.compile

    def compile_eager(model=None, **kwargs: Any):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("mode", "options", "backend")}
        return real(model, backend="eager", **kwargs) if model is not None else real(backend="eager", **kwargs)

    torch.compile = compile_eager
    try:
        yield
    finally:
        torch.compile = real


def run_peer(suite: Suite) -> dict[str, Any]:
    """The peer script in this process (its JSON), or in `--smoke` without lightly a stub of the same shape."""
    peer_json = suite.runs / "peer.json"
    if suite.args.peer and suite.device.type == "cuda" and peer_importable():
        argv = sys.argv
        sys.argv = [suite.args.peer, "--data", str(suite.data_dir), "--epochs", str(suite.args.peer_epochs),
                    "--workers", str(suite.args.peer_workers), "--json", str(peer_json)]
        try:
            runpy.run_path(suite.args.peer, run_name="__main__")
        finally:
            sys.argv = argv
        return json.loads(peer_json.read_text())
    if not suite.args.smoke:
        raise RuntimeError("the peer needs a GPU, torchvision and lightly (pip install --no-index --target DIR "
                           ".data/wheels/*.whl; PYTHONPATH=DIR) and --peer PATH/peer_lightly_simsiam.py")
    return peer_stub(suite)


def peer_importable() -> bool:
    try:
        import lightly  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def peer_stub(suite: Suite) -> dict[str, Any]:
    """What the peer does, in miniature and without lightly: a per-image Python augmentation loop feeding a
    backbone and a projector under a negative-cosine loss. It only proves the suite's plumbing; its numbers are
    not the peer's."""
    from sslab.models import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone(suite.scale.backbone, 3, suite.data.image_size, "auto")
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.out_dim, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    for batch in suite.data.train_x[: suite.scale.batch_size * 2].split(suite.scale.batch_size):
        z1, z2 = (model(torch.stack([img.flip(-1) if torch.rand(()) < 0.5 else img for img in batch]).float() / 255)
                  for _ in range(2))  # per-image Python on purpose: that is the peer's data path
        loss = -torch.nn.functional.cosine_similarity(z1, z2.detach()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    epoch_s = time.perf_counter() - start
    return {"peer": "stub (lightly not importable; --smoke only)", "stub": True, "epoch_s_median": epoch_s,
            "floor_fp32_epoch_s": epoch_s, "floor_bf16_cl_epoch_s": epoch_s, "knn_top1": None,
            "device": device_label(suite.device)}


# ---- stage 2: SimCLR and BYOL ---------------------------------------------------------------------------
def stage_methods(suite: Suite, budget: float) -> dict[str, Any]:
    end = time.perf_counter() + budget
    result = {}
    methods = suite.args.methods.split(",")
    for i, method in enumerate(methods):
        share = (end - time.perf_counter()) / (len(methods) - i)
        result[method] = suite.train(suite.base_config(method, suite.scale.method_epochs, f"methods-{method}"), share)
    return result


# ---- stage 3: 96 px -------------------------------------------------------------------------------------
def synthetic_stl(n: int, seed: int = 0) -> ImageData:
    """STL-10-sized images (3 x 96 x 96 uint8, random) with 10 random labels: throughput and memory only."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 96, 96), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageData("synthetic-stl10", x, y, x[:0], y[:0], [str(i) for i in range(10)], (0.45,) * 3, (0.25,) * 3)


def stage_stl96(suite: Suite, budget: float) -> dict[str, Any]:
    s = suite.scale
    cfg = suite.base_config("simsiam", s.stl_epochs, "stl96-simsiam", batch_size=s.stl_batch)
    cfg["data"] = {"dataset": "stl10"}
    run = suite.train(cfg, budget, data=synthetic_stl(s.stl_images))
    return {"simsiam": run, "images": s.stl_images, "image_size": 96}


# ---- stage 4: the time-boxed accuracy run ---------------------------------------------------------------
def stage_accuracy(suite: Suite, budget: float) -> dict[str, Any]:
    """As many epochs as fit `budget` at the s/epoch the speed stage measured (eager or compiled, whichever
    is faster), kNN about ten times along the way; then kNN against cumulative wall time."""
    speed = suite.results.get("stages", {}).get("speed", {})
    runs = [r for r in (speed.get("eager", {}), speed.get("compiled", {})) if r.get("epochs", 0) > 1]
    best = min(runs, key=lambda r: r["epoch_s_median"], default=None)
    compiled = best is not None and best is speed.get("compiled")
    s_epoch = best["epoch_s_median"] if best else suite.args.fallback_epoch_s
    knn_s = (speed.get("eager", {}).get("knn_seconds") or 0.0)
    fixed = (best.get("compile_s", 0.0) if compiled else 0.0) + suite.args.accuracy_overhead_s
    epochs = max(1, int((budget - fixed) / (s_epoch + knn_s / 5)))
    epochs = min(epochs, suite.scale.accuracy_max_epochs or epochs)
    knn_every = max(1, epochs // 10)
    cfg = suite.base_config(suite.args.accuracy_method, epochs, "accuracy", knn_every=knn_every,
                            compile=suite.compile_setting() if compiled else False)
    with capture_only(suite.args.smoke):
        run = suite.train(cfg, budget)
    return {"run": run, "method": suite.args.accuracy_method, "epochs_planned": epochs, "compiled": compiled,
            "curve": knn_curve(Path(run["run_dir"]))}


def knn_curve(run_dir: Path) -> list[dict[str, float]]:
    """(minutes of training + monitoring, epoch, kNN top-1) at every epoch that measured kNN."""
    points, minutes = [], 0.0
    for r in RunDir(run_dir).read_metrics():
        if "loss" not in r:
            continue
        minutes += (r["epoch_seconds"] + (r.get("knn_seconds") or 0.0)) / 60
        if r.get("knn_top1") is not None:
            points.append({"minutes": round(minutes, 3), "epoch": r["epoch"], "knn_top1": r["knn_top1"]})
    return points


# ---- stage 5: eval, analyze, scan, report on that run ---------------------------------------------------
def stage_after(suite: Suite, budget: float) -> dict[str, Any]:
    stages = suite.results.get("stages", {})
    run = (stages.get("accuracy", {}).get("run") or stages.get("speed", {}).get("eager") or {}).get("run_dir")
    if not run:
        raise RuntimeError("no trained run to evaluate: the accuracy and speed stages both failed")
    s, dev = suite.scale, ["--device", suite.args.device]
    commands = {"eval": ["eval", run, *dev, *s.eval_flags], "analyze": ["analyze", run, *dev, *s.analyze_flags],
                "scan": ["scan", run, "--device", suite.args.device, *s.scan_flags], "report": ["report", run]}
    end = time.perf_counter() + budget
    result: dict[str, Any] = {"run_dir": run}
    for name, argv in commands.items():
        if time.perf_counter() > end:
            result[name] = {"skipped": "over the stage's budget"}
            continue
        print(f"$ sslab {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        code = sslab_main(argv)
        result[name] = {"exit_code": code, "seconds": time.perf_counter() - t0, "argv": argv}
        if code != 0:
            raise RuntimeError(f"sslab {name} exited with {code}")
    result["figures"] = after_figures(Path(run))
    return result


def after_figures(run: Path) -> dict[str, Any]:
    """The headline numbers the commands wrote: probe accuracies, k-means and SCAN ACC."""
    def read(path: Path) -> Any:
        return json.loads(path.read_text()) if path.exists() else None

    evals = read(run / "eval.json") or []
    records = evals.get("results", []) if isinstance(evals, dict) else evals
    scan = read(run / "scan" / "scan.json") or {}
    analysis = read(run / "analysis.json") or {}
    return {"eval": {r.get("name"): r.get("accuracy") for r in records if isinstance(r, dict)},
            "scan_acc": {k: (scan.get(k) or {}).get("acc") for k in ("kmeans", "scan", "selflabel")},
            "analysis_keys": sorted(analysis)[:12]}


# ---- stage 6: interrupt and resume ----------------------------------------------------------------------
def stage_resume(suite: Suite, budget: float) -> dict[str, Any]:
    """Two uninterrupted runs (the run-to-run noise) and one SIGINTed mid-epoch, then resumed."""
    s, end = suite.scale, time.perf_counter() + budget
    data = subset(suite.data, s.resume_images)
    steps = len(data.train_x) // s.batch_size
    at = steps + steps // 2  # mid-way through the second epoch

    def share(parts: int) -> float:
        return (end - time.perf_counter()) / parts

    runs = {}
    for i, name in enumerate(("reference", "second_reference")):
        cfg = suite.base_config("simsiam", s.resume_epochs, f"resume-{name}", knn_every=1)
        runs[name] = suite.train(cfg, share(3 - i), data=data)["run_dir"]
    cfg = suite.base_config("simsiam", s.resume_epochs, "resume-interrupted", knn_every=1)
    with signal_at_step(at):  # SIGINT after step `at`, as Ctrl-C would (the tests' step hook)
        first = suite.train(cfg, share(1), data=data)
    if not first["stopped_at_budget"] or first["epochs"] != 1:
        raise RuntimeError(f"the run was not interrupted at step {at} (epochs done: {first['epochs']})")
    try:
        fit(resume=first["run_dir"], data=data, log=lambda m: print(f"[resume] {m}", flush=True),
            changes={"time_limit": max(share(1), 1.0)})
    except Interrupted:
        raise RuntimeError("the resumed run did not finish within the stage's budget (--budget-resume)") from None
    runs["resumed"] = first["run_dir"]
    return {"interrupted_at_step": at, **resume_verdict(*(runs[k] for k in ("reference", "second_reference",
                                                                               "resumed")))}


def resume_verdict(reference: str, second: str, resumed: str) -> dict[str, Any]:
    """docs/reliability.md: every epoch |loss(resumed) - loss(ref)| <= max(3 |loss(ref2) - loss(ref)|, 1e-4),
    kNN top-1 within 2 points."""
    def epochs(run: str) -> list[dict[str, Any]]:
        return [r for r in RunDir(Path(run)).read_metrics() if "loss" in r]

    ref, ref2, res = epochs(reference), epochs(second), epochs(resumed)
    rows = []
    for a, b, c in zip(ref, ref2, res):
        limit = max(3 * abs(b["loss"] - a["loss"]), 1e-4)
        knn_gap = abs((c.get("knn_top1") or 0.0) - (a.get("knn_top1") or 0.0))
        rows.append({"epoch": a["epoch"], "loss_gap": abs(c["loss"] - a["loss"]), "loss_limit": limit,
                     "knn_gap": knn_gap, "ok": abs(c["loss"] - a["loss"]) <= limit and knn_gap <= 0.02})
    ok = len(rows) == len(ref) == len(res) > 0 and all(r["ok"] for r in rows)
    return {"epochs": rows, "within_tolerance": ok}


def subset(data: ImageData, n: int, seed: int = 0) -> ImageData:
    """`n` training images drawn at random (an image folder lists them class by class), all test images."""
    keep = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return ImageData(data.name, data.train_x[keep], data.train_y[keep], data.test_x, data.test_y, data.classes,
                     data.mean, data.std)


# ---- stage 7: streamed against resident ----------------------------------------------------------------
def stage_streaming(suite: Suite, budget: float) -> dict[str, Any]:
    """The speed stage's eager CIFAR-10 recipe streamed from the host's memory-mapped cache (its resident figures
    are the speed stage's), then SimSiam on a synthetic mapped cache at 224 px, resident and streamed."""
    s, end = suite.scale, time.perf_counter() + budget
    cifar = suite.train(suite.base_config("simsiam", s.stream_epochs, "streaming-cifar", data_on_device="never"),
                        budget / 3)
    resident = suite.results.get("stages", {}).get("speed", {}).get("eager", {})
    shape = (3, s.stream_size, s.stream_size)
    big = synthetic_cache(suite.runs / f"streaming-cache-{s.stream_size}px", s.stream_images, shape)
    result = {"cifar_streamed": cifar, "cifar_resident_images_per_s": resident.get("images_per_s"),
              "large": {"images": s.stream_images, "image_size": s.stream_size, "backbone": s.stream_backbone,
                        "batch": s.stream_batch, "cache_gb": big.nbytes / 1e9}}
    for i, placement in enumerate(("always", "never")):
        cfg = suite.base_config("simsiam", s.stream_epochs, f"streaming-{s.stream_size}px-{placement}",
                                batch_size=s.stream_batch, data_on_device=placement)
        cfg["model"]["backbone"], cfg["data"] = s.stream_backbone, {"dataset": "folder"}
        result["large"][placement] = suite.train(cfg, (end - time.perf_counter()) / (2 - i), data=big)
    return result


STAGE_FUNCTIONS: dict[str, Callable[[Suite, float], dict[str, Any]]] = {
    "speed": stage_speed, "methods": stage_methods, "stl96": stage_stl96, "accuracy": stage_accuracy,
    "after": stage_after, "resume": stage_resume, "streaming": stage_streaming}


# ---- running the stages ---------------------------------------------------------------------------------
def run_stages(suite: Suite, stages: list[str]) -> None:
    """Each stage on its budget; a failing stage is recorded (with its traceback) and the next one runs."""
    suite.results["stages"] = {}
    for i, name in enumerate(stages):
        budget = stage_budget(suite, name, stages[i + 1:])
        print(f"\n== {name} (budget {budget:.0f} s; {suite.left():.0f} s left of {suite.args.budget:.0f})", flush=True)
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            result = {"status": "ok", **STAGE_FUNCTIONS[name](suite, budget)}
        except Exception as e:  # noqa: BLE001  (a GPU run must keep the figures of the other stages)
            traceback.print_exc()
            result = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result["budget_s"] = budget
        result["stage_seconds"], result["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - cpu0
        suite.results["stages"][name] = result
        write_outputs(suite)


def stage_budget(suite: Suite, name: str, later: list[str]) -> float:
    """The stage's own budget, cut so the stages after it keep theirs; the accuracy run takes all that the
    whole budget leaves after reserving theirs (so what the earlier stages did not use goes to it)."""
    reserve = sum(suite.budgets[s] for s in later)
    if name == "accuracy":
        return max(suite.budgets[name] / 4, suite.left() - reserve)
    return max(5.0, min(suite.budgets[name], suite.left() - reserve))


def write_outputs(suite: Suite) -> None:
    suite.results["total_seconds"] = time.perf_counter() - suite.started
    (suite.out / "gpu_suite.json").write_text(json.dumps(suite.results, indent=1, default=str))
    (suite.out / "gpu_suite_rows.md").write_text(render_table(suite.results) + "\n")


def header(suite: Suite) -> dict[str, Any]:
    cuda = torch.version.cuda if suite.device.type == "cuda" else None
    return {"device": device_label(suite.device), "torch": torch.__version__, "cuda": cuda,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "smoke": suite.args.smoke, "command": " ".join(["python", *sys.argv]), "budgets_s": suite.budgets,
            "scale": {k: v for k, v in vars(suite.scale).items()}, "compile_mode": suite.args.compile_mode}


def write_smoke_data(root: Path, per_class: int = 16, test_per_class: int = 4, size: int = 16) -> Path:
    """A tiny CIFAR-10-like image folder (train/<class>/*.png, test/<class>/*.png): classes differ in colour."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            tint = torch.tensor([c * 25, 255 - c * 25, (c * 70) % 256]).view(3, 1, 1)
            for i in range(n):
                noise = torch.randint(0, 80, (3, size, size), generator=g)
                pixels = (tint * 0.7 + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="CIFAR-10 image folder (train/<class>, test/<class>): the unpacked "
                                   "cifar10-jpeg.tar.gz; not needed with --smoke")
    ap.add_argument("--peer", help="peer_lightly_simsiam.py (needs lightly and torchvision on the path)")
    ap.add_argument("--out", default="gpu-suite-out", help="where the JSON and the table rows go")
    ap.add_argument("--runs", default=None, help="where the run folders go (default: OUT/runs)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--smoke", action="store_true", help="every stage in miniature: synthetic data, a tiny model, "
                                                         "the peer stubbed when lightly is missing")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole suite (default: 480; smoke: 1800)")
    for stage in STAGES:
        ap.add_argument(f"--budget-{stage}", type=float, default=None,
                        help=f"seconds for the {stage} stage (default: {BUDGETS[stage]}; smoke: 60)")
    ap.add_argument("--compile-mode", default="default",
                    choices=["default", "max-autotune", "reduce-overhead"], help="torch.compile mode (default: default)")
    ap.add_argument("--peer-epochs", type=int, default=4, help="epochs of the peer (default: 4)")
    ap.add_argument("--peer-workers", type=int, default=16, help="DataLoader workers of the peer (default: 16)")
    ap.add_argument("--methods", default="simclr,byol",
                    help="comma-separated methods of the methods stage, sharing its budget; any of: "
                         f"{', '.join(METHODS.names())} (default: simclr,byol)")
    ap.add_argument("--accuracy-method", default="simsiam", help="method of the time-boxed run (default: simsiam)")
    ap.add_argument("--accuracy-overhead-s", type=float, default=12.0,
                    help="seconds the accuracy run spends outside epochs (model build, kNN at 0, plots)")
    ap.add_argument("--fallback-epoch-s", type=float, default=3.0,
                    help="s/epoch to plan the accuracy run with when the speed stage did not measure one")
    ap.add_argument("--render", metavar="JSON", help="only turn a suite JSON into the table (with --docs: into "
                                                       "docs/benchmarks.md between the gpu-suite markers)")
    ap.add_argument("--docs", metavar="MD", help="with --render: the Markdown file whose table to fill")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        table = render_table(results)
        if args.docs:
            fill_docs(Path(args.docs), table)
        print(table)
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not (args.data or args.smoke):
        print(f"gpu_suite: error: {'unknown stage(s) ' + ', '.join(unknown) if unknown else 'pass --data DIR (or --smoke)'}",
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budgets = {s: (SMOKE_BUDGETS if args.smoke else BUDGETS)[s] if getattr(args, f"budget_{s}") is None
               else getattr(args, f"budget_{s}") for s in STAGES}
    if args.budget is None:
        args.budget = sum(SMOKE_BUDGETS.values()) if args.smoke else 480.0
    runs = Path(args.runs).resolve() if args.runs else out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    suite = Suite(args, SMOKE if args.smoke else Scale(), pick_device(args.device), out, runs, budgets)
    suite.data_dir = write_smoke_data(runs / "smoke-data") if args.smoke and not args.data else Path(args.data).resolve()
    suite.results["header"] = header(suite)
    print("config:", json.dumps(suite.results["header"]), flush=True)
    t0 = time.perf_counter()
    suite.data = load_dataset("folder", suite.data_dir)
    suite.results["data"] = {"dir": str(suite.data_dir), "train": list(suite.data.train_x.shape),
                             "test": list(suite.data.test_x.shape), "load_s": time.perf_counter() - t0}
    print(f"data: {suite.results['data']}", flush=True)
    threads = torch.get_num_threads()
    if args.smoke and suite.device.type == "cpu":
        torch.set_num_threads(1)  # tiny tensors: a second thread only waits (15x slower on a loaded 2-core machine)
    try:
        run_stages(suite, stages)
    finally:
        torch.set_num_threads(threads)
    print("\n" + render_table(suite.results), flush=True)
    failed = [n for n, r in suite.results["stages"].items() if r["status"] != "ok"]
    print(f"\n{len(stages) - len(failed)}/{len(stages)} stages ok in {suite.results['total_seconds']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; results in {out / 'gpu_suite.json'}", flush=True)
    return 1 if failed else 0


# ---- the rows of docs/benchmarks.md ---------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: Any, fmt: str = ".2f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def speed_cell(r: dict[str, Any]) -> str:
    if not r or not r.get("epochs"):
        return "not measured"
    text = (f"{_num(r.get('epoch_s_median'))} s/epoch (first {_num(r.get('epoch_s_first'), '.1f')} s), "
            f"{_num(r.get('images_per_s'), ',.0f')} img/s, peak {_num(r.get('peak_gpu_gib'), '.1f', ' GiB')}")
    if r.get("compile_s") is not None:
        text += f"; compile {r['compile_s']:.0f} s"
    if r.get("knn_top1") is not None:
        text += f"; kNN {_pct(r['knn_top1'])} after {r['epochs']} epochs"
    return text + (" (stopped at its budget)" if r.get("stopped_at_budget") else "")


def stage_rows(name: str, r: dict[str, Any], scale: dict[str, Any]) -> list[tuple[str, str]]:
    if r.get("status") != "ok":
        return [(name, f"failed: {r.get('error', 'not run')}".replace("|", "/"))]
    setup = f"{scale.get('backbone', '?')}, batch {scale.get('batch_size', '?')}"
    if name == "speed":
        p = r.get("peer", {})
        rows = [(f"SimSiam {setup}, eager", speed_cell(r["eager"])),
                (f"the same, compiled ({r.get('compile_mode')})", speed_cell(r["compiled"])),
                (f"peer: {p.get('peer', '-')}", f"{_num(p.get('epoch_s_median'))} s/epoch; kNN {_pct(p.get('knn_top1'))}; "
                 f"compute floor {_num(p.get('floor_fp32_epoch_s'))} s fp32, {_num(p.get('floor_bf16_cl_epoch_s'))} s "
                 "bf16 + channels-last")]
        if r.get("speedup_vs_peer"):
            rows.append(("ours against the peer", f"{r['speedup_vs_peer']:.2f}x faster per epoch; "
                         f"{r['ours_vs_peer_bf16_floor']:.2f}x the peer's bf16 compute floor"))
        return rows
    if name == "methods":
        return [(f"{m} {setup}, eager", speed_cell(r.get(m, {}))) for m in ("simclr", "byol")]
    if name == "stl96":
        return [(f"SimSiam {scale.get('backbone', '?')} 96 px, batch {scale.get('stl_batch', '?')}, {r['images']} "
                 "synthetic images", speed_cell(r["simsiam"]))]
    if name == "accuracy":
        return [accuracy_row(r)]
    if name == "after":
        times = ", ".join(f"{k} {r[k]['seconds']:.0f} s" if "seconds" in r.get(k, {}) else f"{k} skipped"
                          for k in ("eval", "analyze", "scan", "report"))
        f = r.get("figures", {})
        accs = ", ".join(f"{k} {_pct(v)}" for k, v in {**f.get("eval", {}), **{f"SCAN {k}": v for k, v in
                                                                               f.get("scan_acc", {}).items()}}.items())
        return [("eval, analyze, scan, report on that run", f"{times}; {accs}")]
    if name == "streaming":
        return streaming_rows(r)
    worst = max(r["epochs"], key=lambda e: e["loss_gap"] / e["loss_limit"], default=None)
    detail = (f"; worst epoch {worst['epoch']}: loss gap {worst['loss_gap']:.2e} (limit {worst['loss_limit']:.2e}), "
              f"kNN gap {100 * worst['knn_gap']:.1f} points") if worst else ""
    return [(f"SIGINT at step {r['interrupted_at_step']}, then --resume",
             ("within" if r["within_tolerance"] else "OUTSIDE") + " docs/reliability.md's tolerance" + detail)]


def streaming_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    cifar, big = r["cifar_streamed"], r["large"]
    resident = r.get("cifar_resident_images_per_s")
    ratio = (f"; {cifar['images_per_s'] / resident:.2f}x the resident run's images/s" if resident and
             cifar.get("images_per_s") else "")
    setup = f"SimSiam {big['backbone']} {big['image_size']} px, batch {big['batch']}, {big['images']} synthetic images"
    return [("the speed stage's run, streamed from the mapped cache", speed_cell(cifar) + ratio),
            (f"{setup}, resident", speed_cell(big.get("always", {}))),
            (f"{setup}, streamed", speed_cell(big.get("never", {})))]


def accuracy_row(r: dict[str, Any]) -> tuple[str, str]:
    run, curve = r["run"], r.get("curve", [])
    minutes = curve[-1]["minutes"] if curve else None
    points = ", ".join(f"{p['minutes']:.1f} min {_pct(p['knn_top1'])}" for p in curve[-4:])
    hit = next((p for p in curve if p["knn_top1"] >= 0.88), None)
    goal = f"88% reached at {hit['minutes']:.1f} min" if hit else "88% not reached"
    return (f"time-boxed {r['method']}{' (compiled)' if r['compiled'] else ''}, {run.get('epochs')} epochs",
            f"kNN {_pct(run.get('knn_top1'))} after {_num(minutes, '.1f')} min (untrained "
            f"{_pct(run.get('knn_top1_init'))}, pixels {_pct(run.get('knn_top1_pixels'))}); {points}; {goal}")


def render_table(results: dict[str, Any]) -> str:
    h = results.get("header", {})
    data = results.get("data", {}).get("dir", "?")
    lines = [f"Measured on {h.get('device', '?')}, torch {h.get('torch', '?')}, {h.get('date', '?')}"
             f"{' (SMOKE: miniature sizes, not figures)' if h.get('smoke') else ''}; data {Path(data).name} "
             f"(bf16 autocast and channels-last on a GPU, the defaults); the whole suite "
             f"{results.get('total_seconds', 0):.0f} s; `{h.get('command', '')}`", "",
             "| stage | measurement | figure |", "| --- | --- | --- |"]
    for name in STAGES:
        r = results.get("stages", {}).get(name)
        rows = stage_rows(name, r, h.get("scale", {})) if r is not None else [("-", "not run")]
        lines += [f"| {name} | {what} | {figure} |" for what, figure in rows]
    return "\n".join(lines)


def fill_docs(path: Path, table: str) -> None:
    """Replace what lies between the gpu-suite markers of `path` with `table`."""
    text = path.read_text()
    start, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if start < 0 or end < start:
        raise SystemExit(f"gpu_suite: error: {path} has no {DOCS_BEGIN} ... {DOCS_END} block to fill")
    path.write_text(text[:start + len(DOCS_BEGIN)] + "\n" + table + "\n" + text[end:])


if __name__ == "__main__":
    raise SystemExit(main())
