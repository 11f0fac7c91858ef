"""`sslab eval`: every protocol of docs/methods.md on a trained run, written to the run folder.

    RUN/eval.json                    one record per protocol: name, protocol, classifier, accuracy,
                                     per-class accuracy, sizes, settings, the raw-pixel and untrained-network
                                     baselines and a note where a figure falls short for a known reason;
                                     written after every protocol ("complete": false until the end), so
                                     an interrupted eval keeps its results and a rerun continues it
    RUN/eval/confusion-NAME.png      confusion matrix with class names, per protocol
    RUN/eval/per-class.png           per-class accuracy of every protocol on the run's dataset
    RUN/probe.pt                     the trained linear probes (linear maps on backbone features), for Grad-CAM

Features of the train and test splits are extracted once (no augmentation) and shared by kNN and the fast
probe; the standard probe and the semi-supervised fine-tuning make their own augmented views on the device.
"""
from __future__ import annotations

import io
import pickle
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from sslab.analysis.figures import confusion_figure, per_class_figure
from sslab.augment import rgb_to_grayscale
from sslab.config import knn_k_setting, knn_t_setting, time_limit_setting
from sslab.checkpoint import atomic_write_bytes, load_safely
from sslab.data.base import ImageData
from sslab.errors import CheckpointError, ConfigError, DataError
from sslab.eval.features import extract_features, finite_features
from sslab.eval.knn import knn_predict
from sslab.eval.baselines import SOURCE_LABELS, SOURCES, RunBaselines, baseline_folder, pixel_description
from sslab.eval.linear import (
    DEFAULT_C_GRIDS,
    ProbeWeights,
    confusion_matrix,
    fit_fast_probe,
    per_class_accuracy,
    predict,
    standard_probe_seconds,
    train_standard_probe,
)
from sslab.eval.stopping import EvalInterrupted, EvalStop, resume_command
from sslab.eval.store import BaselineStore, data_fingerprint, network_fingerprint
from sslab.kit import Interrupted, LoopSettings
from sslab.plots import DATASET_NAMES, run_title
from sslab.pretrained import TrainedRun
from sslab.registry import DATASETS
from sslab.run import RunDir
from sslab.settings import check, setting

EVAL_JSON = "eval.json"
EVAL_DIR = "eval"
PROBE_FILE = "probe.pt"
PROBE_FORMAT = "sslab-probe-1"
PROTOCOLS = ("auto", "fast", "standard", "both")
CLASSIFIERS = ("logistic", "svm")
PROBE_PREFERENCE = ("linear-standard", "linear-fast")  # the probe Grad-CAM uses when not told

Log = Callable[[str], None]


@dataclass
class EvalOptions:
    protocol: str = setting("auto", "the linear probe: fast (L-BFGS or SVM on cached features), standard (SGD through "
                            "the frozen backbone, crop + flip), both, or auto (fast on the CPU, both on a GPU)",
                            choices=PROTOCOLS)
    classifier: str = setting("logistic", "the fast probe's classifier: logistic regression or a linear SVM",
                              choices=CLASSIFIERS)
    c_grid: Optional[tuple[float, ...]] = setting(None, "values of C tried on the validation split; none: the "
                                                  "classifier's grid", gt=0, le=1e6)
    val_fraction: float = setting(0.1, "share of the training images held out to choose C", ge=0, lt=1)
    probe_epochs: int = setting(100, "epochs of the standard probe", ge=1, le=100_000)
    probe_batch_size: int = setting(256, "batch of the standard probe", ge=2, le=2**20)
    probe_lr: float = setting(0.3, "the standard probe's learning rate per 256 images", gt=0, le=100)
    knn_k: Optional[int] = knn_k_setting(None, "neighbours of the kNN vote; none: the run's --knn-k")
    knn_t: Optional[float] = knn_t_setting(None, "temperature of the kNN vote; none: the run's --knn-t")
    semi: bool = setting(False, "also fine-tune backbone + linear head on a share of the labels")
    semi_fractions: tuple[float, ...] = setting((0.01, 0.1), "label fractions for --semi", gt=0, le=1)
    semi_epochs: int = setting(30, "fine-tuning epochs for --semi", ge=1, le=100_000)
    semi_lr: float = setting(0.05, "fine-tuning learning rate for --semi", gt=0, le=100)
    semi_batch_size: int = setting(64, "fine-tuning batch for --semi", ge=2, le=2**20)
    transfer_dataset: Optional[str] = setting(None, "also evaluate the backbone on this dataset (kNN + probes)",
                                              choices=lambda: [*DATASETS.names()])
    transfer_data_dir: Optional[str] = setting(None, "where the transfer dataset lives")
    transfer_download: bool = setting(False, "download the transfer dataset if missing")
    seed: int = setting(0, "seed of every random choice", ge=0, lt=2**32)
    time_limit: Optional[float] = time_limit_setting("the evaluation (a probe with its checkpoint)")

    def check(self) -> None:
        """Every option within its declared range, and --transfer-data-dir only with a transfer dataset."""
        check(self)
        if self.transfer_data_dir is not None and self.transfer_dataset is None:
            raise ConfigError("--transfer-data-dir needs --transfer-dataset NAME")


# ---- data for transfer ----------------------------------------------------------------------------------------
def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, channels, H, W): grey repeated to RGB, RGB to grey by luma (ITU-R 601-2)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if x.shape[1] == 3 and channels == 1:
        return rgb_to_grayscale(x.float()).round_().clamp_(0, 255).to(torch.uint8)
    raise DataError(f"cannot turn {x.shape[1]}-channel images into {channels}-channel ones")


def transfer_data(name: str, data_dir: str | None, channels: int, image_size: int, download: bool = False,
                  seed: int = 0) -> ImageData:
    """Another dataset, made to look like the run's input: same channel count and image size; normalised
    later with its own train statistics (recomputed after the channel change)."""
    from sslab.data import load_dataset

    data = load_dataset(name, data_dir, download=download, image_size=image_size, seed=seed)
    if len(data.test_x) == 0:
        raise DataError(f"{name} has no test split to evaluate the transfer on; add one or lower --test-fraction")
    return ImageData(data.name, match_channels(data.train_x, channels), data.train_y,
                     match_channels(data.test_x, channels), data.test_y, data.classes)


# ---- protocols on cached features ---------------------------------------------------------------------------------
def _record(name: str, protocol: str, classifier: str, dataset: str, pred: np.ndarray, labels: np.ndarray,
            classes: list[str], sizes: dict[str, int], details: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "protocol": protocol, "classifier": classifier, "dataset": dataset,
            "accuracy": float((pred == labels).mean()) if len(labels) else None,
            "per_class_accuracy": per_class_accuracy(pred, labels, classes), "sizes": sizes,
            "details": details, "_pred": pred, "_labels": labels}


def _labelled(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = y >= 0
    return x[keep], y[keep]


def feature_protocols(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                      classes: list[str], dataset: str, opts: EvalOptions, knn_k: int, knn_t: float, prefix: str = "",
                      log: Log = print) -> tuple[list[dict[str, Any]], dict[str, ProbeWeights]]:
    """kNN and (if asked) the fast linear probe on extracted features."""
    records, probes = [], {}
    bank, bank_y = _labelled(train_f, train_y)
    query, query_y = _labelled(test_f, test_y)
    if len(bank) == 0 or len(query) == 0:
        raise DataError(f"{dataset} needs labelled train and test images for evaluation")
    y = query_y.cpu().numpy()
    pred = knn_predict(bank, bank_y.to(bank.device), query, len(classes), knn_k, knn_t).argmax(dim=1).cpu().numpy()
    records.append(_record(prefix + "knn", "kNN (l2-normalised features, cosine, weighted vote)", "knn", dataset, pred,
                           y, classes, {"train": len(bank), "test": len(query)},
                           {"k": min(knn_k, len(bank)), "t": knn_t, "bank": "train split, no augmentation"}))
    log(f"{prefix}knn (k={min(knn_k, len(bank))}): {100 * records[-1]['accuracy']:.2f}%")
    if opts.protocol in ("fast", "both"):
        result = fit_fast_probe(bank, bank_y, len(classes), opts.classifier, opts.c_grid, opts.val_fraction, opts.seed)
        pred = predict(result.probe, query)
        n_val = result.details["validation_size"]
        records.append(_record(prefix + "linear-fast", "linear probe, fast (features cached once, no augmentation)",
                               opts.classifier, dataset, pred, y, classes,
                               {"train": len(bank) - n_val, "validation": n_val, "refit": len(bank), "test": len(query)},
                               result.details))
        probes[prefix + "linear-fast"] = result.probe
        log(f"{prefix}linear-fast ({opts.classifier}, C={result.details['c']:g}): {100 * records[-1]['accuracy']:.2f}%")
    return records, probes


def standard_protocol(backbone: torch.nn.Module, data: ImageData, test_f: torch.Tensor, opts: EvalOptions,
                      crop_scale: tuple[float, float] | None, flip_p: float | None, dataset: str, prefix: str = "",
                      log: Log = print, fast: dict[str, Any] | None = None, fast_probe: ProbeWeights | None = None,
                      loop: LoopSettings | None = None, identity: dict[str, Any] | None = None,
                      ) -> tuple[dict[str, Any], ProbeWeights]:
    """The standard probe; `fast` (the fast probe's record) and its probe explain a gap to it in rec["note"];
    `loop`: where it checkpoints (resumable; kept for the caller to remove) and what stops it; `identity`: what
    its checkpoint must match besides the settings (the network's and the data's fingerprints)."""
    n = int((data.train_y >= 0).sum())
    seconds = standard_probe_seconds(backbone, data.train_x, data.train_y, data.mean, data.std, opts.probe_epochs,
                                     opts.probe_batch_size, crop_scale, flip_p)
    log(f"{prefix}linear-standard: {opts.probe_epochs} epochs of SGD on {n} train images (crop + flip) "
        f"on {next(backbone.parameters()).device}, {minutes(seconds)}")
    result = train_standard_probe(backbone, data.train_x, data.train_y, data.num_classes, data.mean, data.std,
                                  opts.probe_epochs, opts.probe_batch_size, opts.probe_lr, crop_scale=crop_scale,
                                  flip_p=flip_p, seed=opts.seed, log=log, reference=fast_probe, loop=loop,
                                  name=prefix + "linear-standard", identity=identity, keep_checkpoint=loop is not None)
    query, query_y = _labelled(test_f, data.test_y.to(test_f.device))
    pred = predict(result.probe, query)
    rec = _record(prefix + "linear-standard", f"linear probe, standard ({opts.probe_epochs} epochs SGD, crop + flip)",
                  "softmax", dataset, pred, query_y.cpu().numpy(), list(data.classes),
                  {"train": n, "test": len(query)}, result.details)
    rec["_estimated_seconds"] = seconds  # eval.json "estimates": a wall time, kept out of the results
    rec["note"] = standard_probe_note(rec["accuracy"], fast["accuracy"] if fast else None, result.details)
    log(f"{prefix}linear-standard: {100 * rec['accuracy']:.2f}%" + (f" ({rec['note']})" if rec["note"] else ""))
    return rec, result.probe


GAP = 0.05  # a standard probe this far below the fast one gets a note saying why


def standard_probe_note(acc: float | None, fast_acc: float | None, details: dict[str, Any]) -> str | None:
    """Why the standard probe is below the fast one, from what it measured; None when it is not."""
    if acc is None or fast_acc is None or acc >= fast_acc - GAP:
        return None
    parts = []
    ref = details.get("reference_accuracy_on_views")
    if ref is not None and ref < fast_acc - 2 * GAP:
        parts.append(f"it trains on crop + flip views, which this backbone maps far from the clean images: the fast "
                     f"probe classifies one pass of those views at {100 * ref:.1f}%")
    train_acc = details.get("train_accuracy_last_epoch")
    if train_acc is not None:
        parts.append(f"after {details['steps']} SGD steps it classifies the views at {100 * train_acc:.1f}%"
                     + (" (few steps: more --probe-epochs would help)" if details["steps"] < 1000 else ""))
    return f"{100 * (fast_acc - acc):.1f} points below the fast probe: " + "; ".join(parts)


def semi_protocol(ctx: "EvalContext") -> None:
    """Fine-tune on each label fraction not done yet; each result goes to eval.json as soon as it is known."""
    from sslab.eval.semi import finetune, labelled_subset, predict_finetuned

    data, opts, state = ctx.data, ctx.opts, ctx.state
    test_x, test_y = _labelled(data.test_x, data.test_y)
    for fraction in opts.semi_fractions:
        name = f"semi-{100 * fraction:g}pct"
        if state.done(name):
            continue
        idx = labelled_subset(data.train_y, fraction, opts.seed, data.num_classes).to(data.train_x.device)
        ctx.log(f"semi-supervised {100 * fraction:g}% of the labels: fine-tuning on {len(idx)} images for "
                f"{opts.semi_epochs} epochs")
        loop = ctx.loop(name, f"the semi-supervised fine-tune on {100 * fraction:g}% of the labels")
        net, head, details = finetune(ctx.trained.backbone, data.train_x[idx], data.train_y[idx], data.num_classes,
                                      data.mean, data.std, opts.semi_epochs, opts.semi_batch_size, opts.semi_lr,
                                      crop_scale=ctx.crop_scale, flip_p=ctx.flip_p, seed=opts.seed, log=ctx.log,
                                      loop=loop, identity=ctx.identity, keep_checkpoint=True, name=name)
        pred = predict_finetuned(net, head, test_x, data.mean, data.std)
        details.update({"labels_fraction": fraction, "subset": "stratified, seeded", "seed": opts.seed})
        rec = _record(name, f"semi-supervised fine-tuning (backbone + linear head) on {100 * fraction:g}% "
                      "of the train labels", "softmax", data.name, pred, test_y.cpu().numpy(),
                      list(data.classes), {"train": len(idx), "test": len(test_x)}, details)
        ctx.log(f"{name}: {100 * rec['accuracy']:.2f}%")
        state.add([rec], {}, list(data.classes), ctx.trained)
        loop.checkpoint.unlink(missing_ok=True)
        del net, head


# ---- baselines: the raw pixels and the untrained network under the same protocols ----------------------------------
def feature_baselines(ctx: "EvalContext") -> None:
    """kNN and (when run) the fast probe on the raw pixels and the untrained network, same split and settings,
    from the baseline store or computed and stored; into eval.json's "baselines" and beside each figure."""
    opts, b = ctx.opts, ctx.state.baselines
    protocols: dict[str, tuple[dict[str, Any], Any]] = {}
    if "knn" not in b:
        protocols["knn"] = ({"k": ctx.knn_k, "t": ctx.knn_t},
                            lambda source, key: ctx.baselines.knn_accuracy(source, ctx.knn_k, ctx.knn_t))
    if opts.protocol in ("fast", "both") and "linear-fast" not in b:
        grid = sorted(opts.c_grid if opts.c_grid else DEFAULT_C_GRIDS[opts.classifier])
        protocols["linear-fast"] = (
            {"classifier": opts.classifier, "c_grid": list(grid), "val_fraction": opts.val_fraction, "seed": opts.seed},
            lambda source, key: ctx.baselines.fast_accuracy(source, opts.classifier, grid, opts.val_fraction,
                                                            opts.seed))
    if protocols:
        ctx.stop.stage_is("the baselines (raw pixels, untrained network) of " + " and ".join(protocols))
        ctx.record_baselines(*ctx.baselines.measure(protocols))


def standard_settings(ctx: "EvalContext") -> dict[str, Any]:
    """What a standard probe's result depends on besides its features (the key of its stored baselines)."""
    o = ctx.opts
    return {"epochs": o.probe_epochs, "batch_size": o.probe_batch_size, "lr": o.probe_lr, "seed": o.seed,
            "crop_scale": list(ctx.crop_scale) if ctx.crop_scale else None, "flip_p": ctx.flip_p}


def standard_baselines(ctx: "EvalContext") -> None:
    """The standard probe, same settings and views, on the raw pixels and the untrained network: from the
    store, else trained on the kit's loop (progress lines, checkpoint, exact resume) and stored."""
    if "linear-standard" in ctx.state.baselines:
        return
    settings = standard_settings(ctx)
    loops = {s: ctx.loop(f"baseline-{s}-linear-standard", f"the {SOURCE_LABELS[s]}'s standard probe") for s in SOURCES}
    n = int((ctx.data.train_y >= 0).sum())

    def compute(source: str, key: dict[str, Any]) -> float | None:
        ctx.log(f"{SOURCE_LABELS[source]}: linear-standard, {settings['epochs']} epochs of SGD on {n} images (computed "
                "once, then stored for later runs)")
        ctx.stop.stage_is(f"the {SOURCE_LABELS[source]}'s standard probe", loops[source].checkpoint)
        return ctx.baselines.standard_accuracy(source, settings, key, loops[source], ctx.log)

    ctx.stop.stage_is("the standard probe's baselines")
    ctx.record_baselines(*ctx.baselines.measure({"linear-standard": (settings, compute)}))
    for loop in loops.values():
        loop.checkpoint.unlink(missing_ok=True)


def attach_baselines(records: list[dict[str, Any]], baselines: dict[str, Any]) -> None:
    """rec["baselines"] = {"pixels": acc, "untrained": acc} for the records a baseline exists for, and
    rec["below_baselines"] = the names of those the learned figure is below."""
    for rec in records:
        b = baselines.get(rec["name"])
        if isinstance(b, dict) and rec.get("accuracy") is not None and set(b) <= set(SOURCES):
            rec["baselines"] = dict(b)
            rec["below_baselines"] = [k for k, v in b.items() if v is not None and rec["accuracy"] < v]


# ---- the standard probe: run, or said how to run and what it costs ---------------------------------------------------
def standard_stage(ctx: "EvalContext") -> None:
    opts, state = ctx.opts, ctx.state
    if opts.protocol not in ("standard", "both"):
        return
    if not state.done("linear-standard"):
        loop = ctx.loop("linear-standard", "the standard probe")
        rec, probe = standard_protocol(ctx.trained.backbone, ctx.data, ctx.test_f, opts, ctx.crop_scale, ctx.flip_p,
                                       ctx.data.name, log=ctx.log, fast=state.record("linear-fast"),
                                       fast_probe=state.probes.get("linear-fast"), loop=loop, identity=ctx.identity)
        state.add([rec], {"linear-standard": probe}, list(ctx.data.classes), ctx.trained)
        loop.checkpoint.unlink(missing_ok=True)
    standard_baselines(ctx)


def minutes(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    return f"about {seconds / 60:.0f} min" if seconds < 90 * 60 else f"about {seconds / 3600:.1f} h"


def standard_probe_hint(ctx: "EvalContext") -> dict[str, Any]:
    """What the standard probe would cost here, measured on a few of its steps (and its baselines, unless
    stored), and the command that runs it: {"seconds", "baseline_seconds", "command", "hint"}."""
    o, d = ctx.opts, ctx.data
    mean, std = d.mean, d.std

    def cost(net: torch.nn.Module) -> float:
        return standard_probe_seconds(net, d.train_x, d.train_y, mean, std, o.probe_epochs, o.probe_batch_size,
                                      ctx.crop_scale, ctx.flip_p)

    ctx.stop.stage_is("timing a few steps of the standard probe")
    seconds = cost(ctx.trained.backbone)
    settings = standard_settings(ctx)
    missing = [s for s in SOURCES if ctx.baselines.store.get(ctx.baselines.key(s, "linear-standard", settings)) is None]
    baseline_seconds = sum(seconds if s == "untrained" else cost(ctx.baselines.net(s)) for s in missing)
    command = resume_command(ctx.run.path, replace(ctx.user_opts, protocol="both"), ctx.device_flag)
    where = "this CPU" if ctx.trained.device.type == "cpu" else str(ctx.trained.device)
    hint = (f"the standard linear probe ({o.probe_epochs} epoch{'s' if o.probe_epochs != 1 else ''} of SGD on crop + flip views) was left out on the "
            f"CPU: {minutes(seconds)} on {where}"
            + (f", plus {minutes(baseline_seconds)} once for its baselines" if baseline_seconds else "")
            + f"; run it with: {command}")
    return {"seconds": round(seconds, 1), "baseline_seconds": round(baseline_seconds, 1), "command": command,
            "hint": hint}


# ---- the whole evaluation: each result written to eval.json as soon as it is known ----------------------------------
class EvalState:
    """eval.json while `eval` runs: written after every protocol ("complete": false until the end), so an
    interrupted eval keeps what it finished, and a rerun with the same options and checkpoint continues it."""

    def __init__(self, run: RunDir, header: dict[str, Any], log: Log):
        self.run, self.header, self.records, self.probes = run, header, [], {}
        self.baselines: dict[str, Any] = {}
        self.estimates: dict[str, float] = {}  # a trained protocol's wall time as estimated before it ran
        earlier = _read_json(run.path / EVAL_JSON)
        if earlier and earlier.get("complete") is False and earlier.get("resume_key") == header["resume_key"]:
            self.records = earlier.get("results", [])
            self.baselines = earlier.get("baselines") or {}
            self.estimates = earlier.get("estimates") or {}
            saved = _load_probes(run.path / PROBE_FILE)
            self.probes = {n: p for n, p in saved.items() if self.done(n)}
            log(f"eval: continuing an interrupted eval; kept {', '.join(r['name'] for r in self.records) or 'nothing'}")

    def done(self, name: str) -> bool:
        return any(r["name"] == name for r in self.records)

    def record(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r["name"] == name), None)

    def add(self, records: list[dict[str, Any]], probes: dict[str, ProbeWeights], classes: list[str],
            trained: TrainedRun, class_names: list[str] | None = None) -> None:
        for rec in records:
            if not rec["name"].startswith("semi-"):
                confusion_png(self.run, trained.cfg, rec, class_names or classes)
            self.records.append({k: v for k, v in rec.items() if not k.startswith("_")})
            if "_estimated_seconds" in rec:
                self.estimates[rec["name"]] = round(rec["_estimated_seconds"], 1)
        self.probes.update(probes)
        attach_baselines(self.records, self.baselines)
        save_probes(self.run.path / PROBE_FILE, self.probes, classes, trained, self.records)
        self.write(complete=False)

    def write(self, complete: bool, **extra: Any) -> dict[str, Any]:
        result = {**self.header, "results": self.records, "baselines": self.baselines or None,
                  "probes": sorted(self.probes), "estimates": self.estimates or None, "complete": complete, **extra}
        self.run.write_json(EVAL_JSON, result)
        return result


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) else None  # a JSON list (edited by hand) is no eval.json


@dataclass
class EvalContext:
    """One eval: the run, its data on the device, the options as given (`user_opts`) and as run (`opts`, the
    protocol resolved), the stop, the results so far (`state`) and the baselines (made on first use)."""

    trained: TrainedRun
    user_opts: EvalOptions
    opts: EvalOptions
    data: ImageData
    run: RunDir
    knn_k: int
    knn_t: float
    log: Log
    stop: EvalStop
    device_flag: str | None = None
    identity: dict[str, str] = field(default_factory=dict)  # the trained network's and the data's fingerprints
    state: EvalState | None = None
    train_f: torch.Tensor | None = None
    test_f: torch.Tensor | None = None
    _baselines: RunBaselines | None = None

    @property
    def crop_scale(self) -> tuple[float, float] | None:
        return self.trained.cfg.augment.crop_scale

    @property
    def flip_p(self) -> float | None:
        return self.trained.cfg.augment.flip_p

    @property
    def baselines(self) -> RunBaselines:
        if self._baselines is None:
            self._baselines = RunBaselines(self.trained, self.data, BaselineStore(baseline_folder(), self.log), self.log)
            self.state.baselines.update({"pixels_input": pixel_description(self.data.train_x),
                                         "untrained_source": self._baselines.untrained_source,
                                         "store": str(baseline_folder())})
        return self._baselines

    def loop(self, name: str, stage: str) -> LoopSettings:
        """The kit loop settings of a trained stage: its checkpoint in RUN/eval/, this eval's stop and resume."""
        path = self.run.path / EVAL_DIR / f"{name}.pt"
        self.stop.stage_is(stage, path)
        return LoopSettings(path, self.stop, self.stop.resume)

    def record_baselines(self, accuracy: dict[str, Any], computed: dict[str, Any]) -> None:
        b = self.state.baselines
        b.update(accuracy)
        for protocol, when in computed.items():
            b.setdefault("computed", {})[protocol] = when
        attach_baselines(self.state.records, b)
        self.state.write(complete=False)


def resolve_protocol(protocol: str, device: torch.device) -> str:
    """auto: kNN and the fast probe on the CPU (minutes), the standard probe too on a GPU."""
    if protocol != "auto":
        return protocol
    return "fast" if device.type == "cpu" else "both"


def evaluate_run(trained: TrainedRun, opts: EvalOptions, log: Log = print, device_flag: str | None = None
                 ) -> dict[str, Any]:
    """Run the protocols `opts` asks for; write eval.json (after each one), the figures and probe.pt; return the
    eval.json dict. A signal or the time limit stops any stage with EvalInterrupted (trained stages after
    their step, with a checkpoint); running the same command again continues. `device_flag`: the --device
    given, for the commands it prints."""
    opts.check()
    stop = EvalStop(opts.time_limit, resume_command(trained.run_dir, opts, device_flag))
    with stop:
        try:
            return _evaluate(trained, opts, log, stop, device_flag)
        except EvalInterrupted:
            raise
        except Interrupted as e:  # a kit loop stopped after its step and saved its checkpoint
            raise stop.interrupted(e.signum, checkpoint=True) from None


def _evaluate(trained: TrainedRun, user_opts: EvalOptions, log: Log, stop: EvalStop,
              device_flag: str | None) -> dict[str, Any]:
    start = time.perf_counter()
    ctx = prepare(trained, user_opts, log, stop, device_flag)
    state, classes = ctx.state, list(ctx.data.classes)
    if not state.done("knn"):
        stop.stage_is("kNN and the fast probe")
        records, probes = feature_protocols(ctx.train_f, ctx.data.train_y, ctx.test_f, ctx.data.test_y, classes,
                                            ctx.data.name, ctx.opts, ctx.knn_k, ctx.knn_t, log=log)
        state.add(records, probes, classes, trained)
    feature_baselines(ctx)
    standard_stage(ctx)
    extra = {}
    if user_opts.protocol == "auto" and ctx.opts.protocol == "fast":
        extra["standard_probe"] = standard_probe_hint(ctx)
    if ctx.opts.semi:
        semi_protocol(ctx)
    transfer_info = transfer_protocols(ctx)
    stop.stage_is("drawing the figures")
    per_class = ctx.run.path / EVAL_DIR / "per-class.png"
    own = {r["name"]: r["per_class_accuracy"] for r in state.records if not r["name"].startswith("transfer-")}
    per_class_figure(own, classes, per_class, f"per-class accuracy: {run_title(trained.cfg)}")
    figures = [r["confusion_png"] for r in state.records if r.get("confusion_png")] + [
        str(per_class.relative_to(ctx.run.path))]
    result = state.write(complete=True, transfer=transfer_info, figures=figures,
                         seconds=time.perf_counter() - start, **extra)
    if "standard_probe" in extra:
        log(extra["standard_probe"]["hint"])
    return result


def prepare(trained: TrainedRun, user_opts: EvalOptions, log: Log, stop: EvalStop,
            device_flag: str | None) -> EvalContext:
    """The run's data on its device, the features of both splits, and eval.json's header (continuing an
    interrupted eval with the same options and checkpoint)."""
    cfg, device = trained.cfg, trained.device
    stop.stage_is("loading the data")
    data = trained.load_data().to(device)
    info = trained.data_info
    if data.channels != info["channels"] or data.image_size != info["image_size"]:
        raise CheckpointError(f"the run's data now loads as {data.channels}x{data.image_size}px but the model was "
                              f"trained on {info['channels']}x{info['image_size']}px; check --data-dir")
    data.mean, data.std = tuple(info["mean"]), tuple(info["std"])  # the normalisation the backbone was trained with
    opts = replace(user_opts, protocol=resolve_protocol(user_opts.protocol, device))
    ctx = EvalContext(trained, user_opts, opts, data, RunDir(trained.run_dir), opts.knn_k or cfg.train.knn_k,
                      opts.knn_t or cfg.train.knn_t, log, stop, device_flag)
    auto = " (auto: the standard probe runs on a GPU)" if user_opts.protocol == "auto" and opts.protocol == "fast" else ""
    log(f"eval: {run_title(cfg)}; {len(data.train_x)} train, {len(data.test_x)} test images on {device}; "
        f"linear probe: {opts.protocol}{auto}")
    stop.stage_is("extracting features")
    what = f"the checkpoint of {ctx.run.path}"
    ctx.train_f = finite_features(extract_features(trained.backbone, data.train_x, data.mean, data.std), what)
    ctx.test_f = finite_features(extract_features(trained.backbone, data.test_x, data.mean, data.std), what)
    ctx.identity = {"network": network_fingerprint(trained.backbone), "data": data_fingerprint(data)}
    loop_state = dict(trained.state.get("loop") or {})
    header = {"run_dir": str(ctx.run.path), "title": run_title(cfg), "method": cfg.method.method, "dataset": data.name,
              "dataset_name": DATASET_NAMES.get(data.name, data.name), "backbone": cfg.model.backbone,
              "device": str(device), "feature_dim": int(ctx.train_f.shape[1]), "classes": list(data.classes),
              "sizes": {"train": len(data.train_x), "test": len(data.test_x)},
              "normalisation": {"mean": list(data.mean), "std": list(data.std)},
              "options": _jsonable(asdict(user_opts)), "protocol_used": opts.protocol,
              "resume_key": {"options": _jsonable({k: v for k, v in asdict(user_opts).items() if k != "time_limit"}),
                             "checkpoint": loop_state.get("step", loop_state.get("epoch"))}}
    ctx.state = EvalState(ctx.run, header, log)
    stop.kept = lambda: [r["name"] for r in ctx.state.records]
    return ctx


def transfer_protocols(ctx: EvalContext) -> dict[str, Any] | None:
    """kNN, the fast and (when asked) the standard probe of the backbone on another dataset; each result to
    eval.json as soon as it is known."""
    opts, state, trained = ctx.opts, ctx.state, ctx.trained
    if not opts.transfer_dataset:
        return None
    info, backbone = trained.data_info, trained.backbone
    ctx.stop.stage_is(f"loading the transfer dataset {opts.transfer_dataset}")
    tdata = transfer_data(opts.transfer_dataset, opts.transfer_data_dir, info["channels"], info["image_size"],
                          opts.transfer_download, opts.seed).to(trained.device)
    transfer_info = {"dataset": tdata.name, "classes": list(tdata.classes), "channels": tdata.channels,
                     "image_size": tdata.image_size, "normalisation": "the transfer dataset's own train mean/std",
                     "preprocessing": "resized to the backbone's training size; grey repeated to RGB or RGB to "
                                      "grey (luma) to match the backbone's channels"}
    standard = opts.protocol in ("standard", "both")
    if state.done("transfer-knn") and (not standard or state.done("transfer-linear-standard")):
        return transfer_info
    ctx.log(f"transfer to {tdata.name}: {len(tdata.train_x)} train, {len(tdata.test_x)} test images, "
            f"{tdata.num_classes} classes")
    ctx.stop.stage_is(f"kNN and the fast probe on {tdata.name}")
    ttrain = extract_features(backbone, tdata.train_x, tdata.mean, tdata.std)
    ttest = extract_features(backbone, tdata.test_x, tdata.mean, tdata.std)
    classes, names = list(state.header["classes"]), list(tdata.classes)
    if not state.done("transfer-knn"):
        trecs, _ = feature_protocols(ttrain, tdata.train_y, ttest, tdata.test_y, names, tdata.name, opts,
                                     ctx.knn_k, ctx.knn_t, prefix="transfer-", log=ctx.log)
        state.add(trecs, {}, classes, trained, class_names=names)
    if standard and not state.done("transfer-linear-standard"):
        loop = ctx.loop("transfer-linear-standard", f"the standard probe on {tdata.name}")
        identity = {"network": ctx.identity["network"], "data": data_fingerprint(tdata)}
        rec, _ = standard_protocol(backbone, tdata, ttest, opts, ctx.crop_scale, ctx.flip_p, tdata.name, "transfer-",
                                   ctx.log, loop=loop, identity=identity)
        state.add([rec], {}, classes, trained, class_names=names)
        loop.checkpoint.unlink(missing_ok=True)
    return transfer_info


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def confusion_png(run: RunDir, cfg, rec: dict[str, Any], names: list[str]) -> None:
    """RUN/eval/confusion-NAME.png for one record (rec["_pred"], rec["_labels"]); sets rec["confusion_png"]."""
    m = confusion_matrix(rec["_pred"], rec["_labels"], len(names))
    path = run.path / EVAL_DIR / f"confusion-{rec['name']}.png"
    where = f" on {DATASET_NAMES.get(rec['dataset'], rec['dataset'])}" if rec["name"].startswith("transfer-") else ""
    confusion_figure(m, names, path, f"{rec['name']}{where} ({100 * rec['accuracy']:.1f}%)\n{run_title(cfg)}")
    rec["confusion_png"] = str(path.relative_to(run.path))


def save_probes(path: Path, probes: dict[str, ProbeWeights], classes: list[str], trained: TrainedRun,
                records: list[dict[str, Any]]) -> None:
    accuracy = {r["name"]: r["accuracy"] for r in records}
    payload = {"format": PROBE_FORMAT, "classes": classes, "backbone": trained.cfg.model.backbone,
               "probes": {name: {**p.to_dict(), "accuracy": accuracy.get(name)} for name, p in probes.items()}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_probes(path: Path) -> dict[str, ProbeWeights]:
    """The probes of an earlier (interrupted) eval, {} when there is no readable probe.pt."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return {n: ProbeWeights(p["weight"].float(), p["bias"].float()) for n, p in payload["probes"].items()}
    except (OSError, RuntimeError, KeyError, TypeError, AttributeError, pickle.UnpicklingError):
        return {}


def load_probe(run_dir: Path, name: str = "auto") -> tuple[str, ProbeWeights, list[str]] | None:
    """The probe `name` from RUN/probe.pt ("auto": standard, else fast); None when `eval` has not saved one."""
    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        return None
    payload = load_safely(path, what="probe file", advice="run `sslab eval` again")
    if (not isinstance(payload, dict) or payload.get("format") != PROBE_FORMAT
            or not isinstance(payload.get("probes"), dict)):
        raise CheckpointError(f"{path} is not a probe written by `sslab eval`; run `sslab eval` again")
    probes = payload["probes"]
    if name == "auto":
        name = next((n for n in PROBE_PREFERENCE if n in probes), None)
        if name is None:
            return None
    elif name not in probes:
        raise ConfigError(f"no probe {name!r} in {path}; it holds: {', '.join(sorted(probes)) or 'none'}")
    try:
        p = probes[name]
        return name, ProbeWeights(p["weight"].float(), p["bias"].float()), [str(c) for c in payload["classes"]]
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path} is not a probe written by `sslab eval`; run `sslab eval` again") from None


__all__ = ["EvalOptions", "evaluate_run", "match_channels", "transfer_data", "load_probe", "feature_protocols",
           "resolve_protocol", "EVAL_JSON", "EVAL_DIR", "PROBE_FILE"]
