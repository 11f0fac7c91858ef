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
from dataclasses import asdict, dataclass, replace
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
from sslab.eval.linear import (
    ProbeWeights,
    confusion_matrix,
    fit_fast_probe,
    per_class_accuracy,
    predict,
    train_standard_probe,
)
from sslab.kit import LoopSettings, StopFlag
from sslab.plots import DATASET_NAMES, run_title
from sslab.pretrained import TrainedRun
from sslab.registry import DATASETS
from sslab.run import RunDir
from sslab.settings import check, setting

EVAL_JSON = "eval.json"
EVAL_DIR = "eval"
PROBE_FILE = "probe.pt"
PROBE_FORMAT = "sslab-probe-1"
PROTOCOLS = ("fast", "standard", "both")
CLASSIFIERS = ("logistic", "svm")
PROBE_PREFERENCE = ("linear-standard", "linear-fast")  # the probe Grad-CAM uses when not told

Log = Callable[[str], None]


@dataclass
class EvalOptions:
    protocol: str = setting("both", "the linear probe: fast (L-BFGS or SVM on cached features), standard (SGD through "
                            "the frozen backbone, crop + flip) or both", choices=PROTOCOLS)
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
    time_limit: Optional[float] = time_limit_setting("the trained protocols")

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
                      loop: LoopSettings | None = None) -> tuple[dict[str, Any], ProbeWeights]:
    """The standard probe; `fast` (the fast probe's record) and its probe explain a gap to it in rec["note"];
    `loop`: where it checkpoints (resumable) and what stops it."""
    n = int((data.train_y >= 0).sum())
    log(f"{prefix}linear-standard: {opts.probe_epochs} epochs of SGD on {n} train images (crop + flip) "
        f"on {next(backbone.parameters()).device}")
    result = train_standard_probe(backbone, data.train_x, data.train_y, data.num_classes, data.mean, data.std,
                                  opts.probe_epochs, opts.probe_batch_size, opts.probe_lr, crop_scale=crop_scale,
                                  flip_p=flip_p, seed=opts.seed, log=log, reference=fast_probe, loop=loop)
    query, query_y = _labelled(test_f, data.test_y.to(test_f.device))
    pred = predict(result.probe, query)
    rec = _record(prefix + "linear-standard", f"linear probe, standard ({opts.probe_epochs} epochs SGD, crop + flip)",
                  "softmax", dataset, pred, query_y.cpu().numpy(), list(data.classes),
                  {"train": n, "test": len(query)}, result.details)
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


def semi_protocol(backbone: torch.nn.Module, data: ImageData, opts: EvalOptions, crop_scale, flip_p, dataset: str,
                  log: Log, state: EvalState, trained: TrainedRun,
                  loops: Callable[[str], LoopSettings] | None = None) -> None:
    """Fine-tune on each label fraction not done yet; each result goes to eval.json as soon as it is known."""
    from sslab.eval.semi import finetune, labelled_subset, predict_finetuned

    test_x, test_y = _labelled(data.test_x, data.test_y)
    for fraction in opts.semi_fractions:
        name = f"semi-{100 * fraction:g}pct"
        if state.done(name):
            continue
        idx = labelled_subset(data.train_y, fraction, opts.seed, data.num_classes).to(data.train_x.device)
        log(f"semi-supervised {100 * fraction:g}% of the labels: fine-tuning on {len(idx)} images for "
            f"{opts.semi_epochs} epochs")
        net, head, details = finetune(backbone, data.train_x[idx], data.train_y[idx], data.num_classes, data.mean,
                                      data.std, opts.semi_epochs, opts.semi_batch_size, opts.semi_lr,
                                      crop_scale=crop_scale, flip_p=flip_p, seed=opts.seed, log=log,
                                      loop=loops(f"semi-{100 * fraction:g}pct") if loops else None)
        pred = predict_finetuned(net, head, test_x, data.mean, data.std)
        details.update({"labels_fraction": fraction, "subset": "stratified, seeded", "seed": opts.seed})
        rec = _record(name, f"semi-supervised fine-tuning (backbone + linear head) on {100 * fraction:g}% "
                      "of the train labels", "softmax", dataset, pred, test_y.cpu().numpy(),
                      list(data.classes), {"train": len(idx), "test": len(test_x)}, details)
        log(f"{name}: {100 * rec['accuracy']:.2f}%")
        state.add([rec], {}, list(data.classes), trained)
        del net, head


# ---- baselines: the raw pixels and the untrained network under the same protocols ----------------------------------
def baseline_protocols(trained: TrainedRun, data: ImageData, opts: EvalOptions, knn_k: int, knn_t: float,
                       log: Log = print) -> dict[str, Any]:
    """kNN and the fast probe on raw pixels and on the untrained network, same split and settings:
    {"knn": {"pixels": acc, "untrained": acc}, "linear-fast": {...}, "pixels_input": ..., "untrained_source": ...}."""
    from sslab.eval.baselines import (
        pixel_description,
        pixel_features,
        pixel_knn_accuracy,
        untrained_method,
    )

    info = trained.data_info
    classes = list(data.classes)
    out: dict[str, Any] = {"knn": {}, "pixels_input": pixel_description(data.train_x)}
    out["knn"]["pixels"] = pixel_knn_accuracy(data.train_x, data.train_y, *_labelled(data.test_x, data.test_y),
                                              len(classes), knn_k, knn_t)
    model, out["untrained_source"] = untrained_method(trained.run_dir, trained.cfg, info["channels"],
                                                      info["image_size"], trained.device)
    sets = {"pixels": (pixel_features(data.train_x), pixel_features(data.test_x)),
            "untrained": tuple(extract_features(model.backbone, x, info["mean"], info["std"])
                               for x in (data.train_x, data.test_x))}
    del model
    quiet = replace(opts, protocol="fast" if opts.protocol != "standard" else "none")
    for name, (train_f, test_f) in sets.items():
        recs, _ = feature_protocols(train_f, data.train_y, test_f, data.test_y, classes, data.name, quiet, knn_k, knn_t,
                                    log=lambda _: None)
        for r in recs:
            if r["name"] == "knn" and name == "pixels":
                continue  # the contract's pixel kNN (better of plain and centred) is above
            out.setdefault(r["name"], {})[name] = r["accuracy"]
    log("baselines: " + "; ".join(f"{k} pixels {_pct(v.get('pixels'))}, untrained {_pct(v.get('untrained'))}"
                                  for k, v in out.items() if isinstance(v, dict)))
    return out


def standard_baselines(trained: TrainedRun, data: ImageData, opts: EvalOptions, crop_scale, flip_p,
                       log: Log) -> dict[str, float | None]:
    """The standard probe, same settings and views, on the raw pixels and on the untrained network."""
    from sslab.eval.baselines import PixelVectors, untrained_method

    info = trained.data_info
    test_x, test_y = _labelled(data.test_x, data.test_y)
    untrained, _ = untrained_method(trained.run_dir, trained.cfg, info["channels"], info["image_size"], trained.device)
    nets = {"pixels": PixelVectors(int(np.prod(data.train_x.shape[1:]))).to(trained.device),
            "untrained": untrained.backbone}
    out: dict[str, float | None] = {}
    for name, net in nets.items():
        result = train_standard_probe(net, data.train_x, data.train_y, data.num_classes, data.mean, data.std,
                                      opts.probe_epochs, opts.probe_batch_size, opts.probe_lr, crop_scale=crop_scale,
                                      flip_p=flip_p, seed=opts.seed)
        pred = predict(result.probe, extract_features(net, test_x, data.mean, data.std))
        out[name] = float((pred == test_y.cpu().numpy()).mean()) if len(test_y) else None
    log(f"baselines: linear-standard pixels {_pct(out['pixels'])}, untrained {_pct(out['untrained'])}")
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def attach_baselines(records: list[dict[str, Any]], baselines: dict[str, Any]) -> None:
    """rec["baselines"] = {"pixels": acc, "untrained": acc} for the records a baseline exists for, and
    rec["below_baselines"] = the names of those the learned figure is below."""
    for rec in records:
        b = baselines.get(rec["name"])
        if isinstance(b, dict) and rec.get("accuracy") is not None:
            rec["baselines"] = dict(b)
            rec["below_baselines"] = [k for k, v in b.items() if v is not None and rec["accuracy"] < v]


# ---- the whole evaluation: each result written to eval.json as soon as it is known ----------------------------------
class EvalState:
    """eval.json while `eval` runs: written after every protocol ("complete": false until the end), so an
    interrupted eval keeps what it finished, and a rerun with the same options and checkpoint continues it."""

    def __init__(self, run: RunDir, header: dict[str, Any], log: Log):
        self.run, self.header, self.records, self.probes = run, header, [], {}
        self.baselines: dict[str, Any] | None = None
        earlier = _read_json(run.path / EVAL_JSON)
        if earlier and earlier.get("complete") is False and earlier.get("resume_key") == header["resume_key"]:
            self.records = earlier.get("results", [])
            self.baselines = earlier.get("baselines")
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
        self.probes.update(probes)
        if self.baselines:
            attach_baselines(self.records, self.baselines)
        save_probes(self.run.path / PROBE_FILE, self.probes, classes, trained, self.records)
        self.write(complete=False)

    def write(self, complete: bool, **extra: Any) -> dict[str, Any]:
        result = {**self.header, "results": self.records, "baselines": self.baselines, "probes": sorted(self.probes),
                  "complete": complete, **extra}
        self.run.write_json(EVAL_JSON, result)
        return result


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def evaluate_run(trained: TrainedRun, opts: EvalOptions, log: Log = print) -> dict[str, Any]:
    """Run the protocols `opts` asks for; write eval.json (after each one), the figures and probe.pt; return the
    eval.json dict."""
    opts.check()
    start = time.perf_counter()
    cfg, backbone, device = trained.cfg, trained.backbone, trained.device
    run = RunDir(trained.run_dir)
    data = trained.load_data().to(device)
    info = trained.data_info
    if data.channels != info["channels"] or data.image_size != info["image_size"]:
        raise CheckpointError(f"the run's data now loads as {data.channels}x{data.image_size}px but the model was "
                              f"trained on {info['channels']}x{info['image_size']}px; check --data-dir")
    mean, std = info["mean"], info["std"]  # the normalisation the backbone was trained with
    data.mean, data.std = tuple(mean), tuple(std)
    knn_k = opts.knn_k or cfg.train.knn_k
    knn_t = opts.knn_t or cfg.train.knn_t
    crop_scale, flip_p = cfg.augment.crop_scale, cfg.augment.flip_p
    classes = list(data.classes)
    log(f"eval: {run_title(cfg)}; {len(data.train_x)} train, {len(data.test_x)} test images on {device}")

    train_f = finite_features(extract_features(backbone, data.train_x, mean, std), f"the checkpoint of {run.path}")
    test_f = finite_features(extract_features(backbone, data.test_x, mean, std), f"the checkpoint of {run.path}")
    header = {"run_dir": str(run.path), "title": run_title(cfg), "method": cfg.method.method, "dataset": data.name,
              "dataset_name": DATASET_NAMES.get(data.name, data.name), "backbone": cfg.model.backbone,
              "device": str(device), "feature_dim": int(train_f.shape[1]), "classes": classes,
              "sizes": {"train": len(data.train_x), "test": len(data.test_x)},
              "normalisation": {"mean": list(mean), "std": list(std)}, "options": _jsonable(asdict(opts)),
              "resume_key": {"options": _jsonable({k: v for k, v in asdict(opts).items() if k != "time_limit"}), "checkpoint": dict(trained.state.get("loop") or {})
                             .get("step", trained.state.get("loop", {}).get("epoch"))}}
    state = EvalState(run, header, log)
    if not state.done("knn"):
        records, probes = feature_protocols(train_f, data.train_y, test_f, data.test_y, classes, data.name, opts,
                                            knn_k, knn_t, log=log)
        state.add(records, probes, classes, trained)
    if state.baselines is None:
        state.baselines = baseline_protocols(trained, data, opts, knn_k, knn_t, log)
        attach_baselines(state.records, state.baselines)
        state.write(complete=False)
    with StopFlag() as stop:  # the trained protocols resume after a signal or --time-limit: rerun the command
        stop.arm(opts.time_limit)

        def loops(name: str) -> LoopSettings:
            return LoopSettings(run.path / EVAL_DIR / f"{name}.pt", stop, f"sslab eval {run.path} (same options)")

        if opts.protocol in ("standard", "both") and not state.done("linear-standard"):
            rec, probe = standard_protocol(backbone, data, test_f, opts, crop_scale, flip_p, data.name, log=log,
                                           fast=state.record("linear-fast"), fast_probe=state.probes.get("linear-fast"),
                                           loop=loops("linear-standard"))
            state.baselines["linear-standard"] = standard_baselines(trained, data, opts, crop_scale, flip_p, log)
            state.add([rec], {"linear-standard": probe}, classes, trained)
        if opts.semi:
            semi_protocol(backbone, data, opts, crop_scale, flip_p, data.name, log=log, state=state, trained=trained,
                          loops=loops)
    transfer_info = transfer_protocols(trained, opts, knn_k, knn_t, crop_scale, flip_p, state, log)
    per_class = run.path / EVAL_DIR / "per-class.png"
    own = {r["name"]: r["per_class_accuracy"] for r in state.records if not r["name"].startswith("transfer-")}
    per_class_figure(own, classes, per_class, f"per-class accuracy: {run_title(cfg)}")
    figures = [r["confusion_png"] for r in state.records if r.get("confusion_png")] + [
        str(per_class.relative_to(run.path))]
    return state.write(complete=True, transfer=transfer_info, figures=figures, seconds=time.perf_counter() - start)


def transfer_protocols(trained: TrainedRun, opts: EvalOptions, knn_k: int, knn_t: float, crop_scale, flip_p,
                       state: EvalState, log: Log) -> dict[str, Any] | None:
    if not opts.transfer_dataset:
        return None
    info, backbone = trained.data_info, trained.backbone
    tdata = transfer_data(opts.transfer_dataset, opts.transfer_data_dir, info["channels"], info["image_size"],
                          opts.transfer_download, opts.seed).to(trained.device)
    transfer_info = {"dataset": tdata.name, "classes": list(tdata.classes), "channels": tdata.channels,
                     "image_size": tdata.image_size, "normalisation": "the transfer dataset's own train mean/std",
                     "preprocessing": "resized to the backbone's training size; grey repeated to RGB or RGB to "
                                      "grey (luma) to match the backbone's channels"}
    if state.done("transfer-knn") and (opts.protocol == "fast" or state.done("transfer-linear-standard")):
        return transfer_info
    log(f"transfer to {tdata.name}: {len(tdata.train_x)} train, {len(tdata.test_x)} test images, "
        f"{tdata.num_classes} classes")
    ttrain = extract_features(backbone, tdata.train_x, tdata.mean, tdata.std)
    ttest = extract_features(backbone, tdata.test_x, tdata.mean, tdata.std)
    trecs, _ = feature_protocols(ttrain, tdata.train_y, ttest, tdata.test_y, list(tdata.classes), tdata.name, opts,
                                 knn_k, knn_t, prefix="transfer-", log=log)
    if opts.protocol in ("standard", "both"):
        rec, _ = standard_protocol(backbone, tdata, ttest, opts, crop_scale, flip_p, tdata.name, "transfer-", log)
        trecs.append(rec)
    state.add(trecs, {}, list(state.header["classes"]), trained, class_names=list(tdata.classes))
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
           "EVAL_JSON", "EVAL_DIR", "PROBE_FILE"]
