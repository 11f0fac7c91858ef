"""fit(): self-supervised pretraining as a recipe: run spec -> data -> model -> optimiser -> run folder -> epochs.

The data sits on the training device as uint8; each step indexes a batch with a permutation and augments it
there, so the hot path has no DataLoader, no per-image Python and no host-device sync. The epoch loop, exact
resume, the NaN stop, signals and the time limit are the kit's (`sslab.kit`, docs/reliability.md); reading a run
folder back is sslab/resume.py's, and adapting the spec to the data sslab/recipe.py's:
- the loop can stop and checkpoint at any step boundary (SIGINT/SIGTERM) and `--resume` continues to the
  same numbers; checkpoints are written atomically, so `kill -9` loses at most the current epoch;
- a NaN/inf loss (or weight) stops the run before it is checkpointed, so `last.pt` stays the last good one;
- under torchrun (WORLD_SIZE > 1) each process takes its slice of every global batch (`--batch-size` is
  the global batch), BatchNorm is synced over processes, and rank 0 alone writes the run folder.
"""
from __future__ import annotations

import contextlib
import gc
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from sslab import device as dev
from sslab import distributed as ddp
from sslab.augment.views import ViewMaker
from sslab.checkpoint import first_line, save_checkpoint
from sslab.config import Config
from sslab.data import load_from_config, rows_of
from sslab.data.base import ImageData, ImageRows, Images
from sslab.errors import ConfigError
from sslab.eval.baselines import pixel_knn_accuracy
from sslab.eval.features import KNN_BANK_MAX, PIXEL_KNN_MAX_BYTES, bank_rows, extract_features
from sslab.eval.knn import knn_accuracy
from sslab.kit import (
    BatchSource,
    EpochLog,
    EpochLoop,
    Interrupted,
    LoopPosition,
    NonFiniteLoss,
    StopFlag,
    as_input,
    loop_state,
    seed_everything,
)
from sslab.methods import Method
from sslab.methods.base import StepProgress, std_of_normalized
from sslab.methods.build import build_method
from sslab.optim import cosine_lr, make_optimizer, set_lr
from sslab.plots import plot_learning_curves
from sslab.recipe import fit_to_data
from sslab.resume import Resumed, open_run
from sslab.run import RunDir, check_out_dir, run_locks
from sslab.streaming import StreamedImages, StreamingFeed, decide_placement

Log = Callable[[str], None]


# ---- the recipe ---------------------------------------------------------------------------------------
def fit(cfg: Config | None = None, resume: str | Path | None = None, data: ImageData | None = None,
        log: Log = print, changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train a method; returns the summary (also in RUN/summary.json). `resume`: a run folder to continue with its
    own spec, and `changes` to it (the settings `--resume` may change: --epochs, --time-limit, --device, ...)."""
    resumed = open_run(resume, changes) if resume is not None else None
    if resumed is None and cfg is None:
        raise ConfigError("fit() needs a run spec (sslab.config.Config), or a run folder to resume")
    cfg = resumed.cfg if resumed is not None else cfg
    cfg.check()  # every setting within its range, before any work
    with (run_locks(), distributed_session(cfg.train.device) as group, StopFlag() as stop,
          contextlib.ExitStack() as on_exit):  # on_exit: closes a streaming feed
        # The run has its own frame: when it returns, its DDP wrapper (which holds the process group) is freed
        # before the group is destroyed, so the group's gloo threads end here, not at interpreter exit.
        return train_in_session(cfg, resumed, data, group, stop, on_exit, log)


def train_in_session(cfg: Config, resumed: Resumed | None, data: ImageData | None, group: ddp.DistributedRun,
                     stop: StopFlag, on_exit: contextlib.ExitStack, log: Log) -> dict[str, Any]:
    """`fit` inside its process group, stop flag and exit stack: the run from the data to the summary."""
    rank, world = group.rank, group.world_size
    log = log if rank == 0 else _quiet
    ddp.on_rank0(lambda: check_out_dir(cfg.train.out) if resumed is None else resumed.run.lock(announce=False).check_writable())
    device = dev.pick_device(cfg.train.device, group.local_rank if world > 1 else None)
    seed_everything(cfg.train.seed)
    data = data if data is not None else load_data(cfg, log)
    cfg = fit_to_data(cfg, data.train_size, len(data.train_x), device, log if resumed is None else None)
    cfg.check()
    t, m = cfg.train, cfg.method
    source = BatchSource(len(data.train_x), m.batch_size, t.seed, device, rank, world)
    if resumed is not None:
        resumed.check(data_info(data))
    data, images = place_data(data, t.data_on_device, device, source, on_exit, log)
    model = build_model(cfg, data, device, world)
    opt, lr_at = build_optimizer(model, cfg, source.steps_per_epoch)
    aug_gen = torch.Generator(device=device)  # this rank's augmentations
    aug_gen.manual_seed(augment_seed(t.seed, rank))
    precision = dev.Precision.for_device(t.precision, device)
    log(f"device: {dev.device_name(device)}; {precision.describe()}")
    monitor = KnnMonitor(model, data, t.knn_k, t.knn_t, precision, t.channels_last, t.seed, log)
    run, pos, baselines = start_or_resume(resumed, cfg, data, model, opt, source, aug_gen, world, log)
    if resumed is not None and resumed.state is not None:
        precision.load_state_dict(resumed.state.get("precision"))  # the fp16 scaler's scale, as it was
    stop.arm(t.time_limit)  # from here on a signal (or the time limit) is answered with a checkpoint
    epochs = EpochLog(run.metrics_path, run.tensorboard_dir, "train", rank == 0,
                      pos.epoch if resumed is not None and resumed.state is not None else None,
                      source.steps_per_epoch, run.truncate_metrics, run.append_metrics)
    step = TrainStep(model=model, forward=compiled(model, cfg, device, world), opt=opt, images=images,
                     views=ViewMaker(model.view_specs(data.train_size), cfg.augment, data.train_size, data.mean,
                                     data.std),
                     aug_gen=aug_gen, lr_at=lr_at, peak_lr=m.lr * m.batch_size / 256,
                     precision=precision,
                     channels_last=t.channels_last, steps_per_epoch=source.steps_per_epoch,
                     total_steps=m.epochs * source.steps_per_epoch)

    def save(p: LoopPosition) -> None:
        payload = {**run_state(cfg, data, model), "optimizer": opt.state_dict(), "precision": precision.state_dict(),
                   **loop_state(p, source, aug_gen, world)}
        payload["loop"].update(baselines)
        keep = [run.checkpoints_dir / f"epoch_{p.epoch:04d}.pt"] if due(t.checkpoint_every, p) else []
        ddp.on_rank0(lambda: [save_checkpoint(payload, path) for path in [run.last_checkpoint, *keep]])

    loop = EpochLoop(stage="train", epochs=m.epochs, source=source, model=model, stop=stop,
                     checkpoint_path=run.last_checkpoint, resume=f"sslab train --resume {run.path}",
                     nan_hint="start a new run with a lower --lr (or --precision fp32)", progress=t.progress,
                     progress_every=t.progress_every, rank=rank, on_step=step_loss_logger(epochs, t.step_loss_every),
                     run_dir=run.path, on_epoch_start=getattr(images, "start_epoch", None))
    if resumed is None or resumed.state is None:  # step 0: the untrained network and the baselines
        ddp.on_rank0(lambda: save_checkpoint(run_state(cfg, data, model), run.checkpoints_dir / "init.pt"))
        baselines = measure_baselines(monitor, data, t, log)
        save(pos)  # a run folder always holds a loadable checkpoint
        epochs.append({"epoch": 0, "step": 0, "knn_top1": baselines["knn_top1_init"], **baselines}, 0)
    loop.raise_if_asked()

    def end_epoch(epoch: int, means: dict[str, Any], seconds: float) -> None:
        record = epoch_record(epoch, means, seconds, source, lr_at, monitor, cfg, step.z_dim, log)
        epochs.append(record, record["step"])
        log(format_epoch(record, m.epochs))
        if rank == 0 and (epoch == m.epochs or epoch % max(1, m.epochs // 20) == 0):
            plot_curves(run, cfg, log)

    started = time.perf_counter()
    try:
        loop.run(pos, step, save, end_epoch)
    finally:
        epochs.close()
    return ddp.on_rank0(lambda: finish(run, cfg, data, device, world, baselines, started, log))


# ---- the steps of the recipe ----------------------------------------------------------------------------
def start_or_resume(resumed: Resumed | None, cfg: Config, data: ImageData, model: Method, opt: torch.optim.Optimizer,
                    source: BatchSource, aug_gen: torch.Generator, world: int,
                    log: Log) -> tuple[RunDir, LoopPosition, dict[str, Any]]:
    """A new run folder (checked for room for the checkpoints), or the resumed run's checkpoint loaded into the
    model, optimiser and generators, and the resume accepted: (run folder, position, the run's baselines)."""
    if resumed is None:
        run = RunDir(ddp.on_rank0(lambda: RunDir.create(cfg, need_bytes=needed_bytes(model, opt, cfg)).path))
        log(f"run folder: {run.path}")
        return run, LoopPosition(), {}
    pos, baselines = resumed.restore(model, opt, source, aug_gen,
                                     lambda step: augment_seed(cfg.train.seed, source.rank, step), world, log)
    ddp.on_rank0(lambda: resumed.accept(cfg))
    for note in resumed.notes:
        log(note)
    if resumed.state is None:
        log(f"no checkpoint in {resumed.run.path} yet (it stopped before the first one); starting it from the beginning")
    else:
        log(f"resuming {resumed.run.path} at epoch {pos.epoch + 1}"
            + (f", step {pos.step_in_epoch}" if pos.step_in_epoch else ""))
    return resumed.run, pos, baselines


def load_data(cfg: Config, log: Log) -> ImageData:
    """The dataset as uint8 tensors (rank 0 loads first: it fills the cache the others read)."""
    t0 = time.perf_counter()
    data_cfg, seed = cfg.data, cfg.train.seed
    data = ddp.rank0_first(lambda: load_from_config(data_cfg, seed))
    log(f"data: {data.name} {tuple(data.train_x.shape)} train, {tuple(data.test_x.shape)} test, "
        f"{data.num_classes} classes, loaded in {time.perf_counter() - t0:.1f} s")
    return data


def place_data(data: ImageData, mode: str, device: torch.device, source: BatchSource, on_exit: contextlib.ExitStack,
               log: Log) -> tuple[ImageData, torch.Tensor | StreamedImages]:
    """The data where `--data-on-device` (auto: its size against the device's free memory) puts it, and the
    training images as the step indexes them: the tensor on the device (resident), or `StreamedImages` that
    gather each step's batch from the host's mapped cache a step ahead (the feed is closed by `on_exit`)."""
    rows = any(isinstance(x, ImageRows) for x in (data.train_x, data.test_x))
    placement = decide_placement(mode, data.nbytes, device, rows_of_cache=rows)
    log(placement.reason)
    if placement.resident:
        data = data.to(device)
        return data, data.train_x
    feed = on_exit.enter_context(StreamingFeed(data.train_x, device))
    return data.labels_to(device), StreamedImages(feed, source.indices, source.steps_per_epoch)


def build_model(cfg: Config, data: ImageData, device: torch.device, world: int) -> Method:
    """The method on `device`; with several processes BatchNorm sees the global batch."""
    model = build_method(cfg, data.channels, data.train_size).to(device)
    if world > 1:
        model = ddp.convert_sync_batchnorm(model, device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(model: Method, cfg: Config, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Callable[[int], float]]:
    """The optimiser and lr(step): linear warm-up, then cosine to min_lr (lr scaled by batch/256)."""
    m = cfg.method
    peak = m.lr * m.batch_size / 256
    opt = make_optimizer(m.optimizer, model.param_groups(), peak, m.momentum, m.weight_decay,
                         next(model.parameters()).device, cfg.train.fused)
    total, warmup = m.epochs * steps_per_epoch, m.warmup_epochs * steps_per_epoch
    return opt, lambda step: cosine_lr(step, total, peak, warmup, m.min_lr * peak)


def compiled(model: Method, cfg: Config, device: torch.device, world: int) -> Callable[..., dict[str, torch.Tensor]]:
    """What a step calls: the model, wrapped for several processes and compiled as `--compile` asks.
    Buffers are kept equal by construction (synced BN stats, gathered MoCo keys), so DDP does not broadcast them."""
    forward: Any = model
    if world > 1:
        with warnings.catch_warnings():  # torch >= 2.13 renames the flag; 2.11 knows only this one
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.* is deprecated", category=FutureWarning)
            forward = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if dev.is_gpu(device) else None, broadcast_buffers=False)
    mode = cfg.train.compile
    if mode != "off":
        forward = torch.compile(forward, mode=None if mode == "default" else mode)
    return forward


@dataclass(kw_only=True)
class TrainStep:
    """One optimiser step on a batch of sample indices -> the step's metrics (device tensors, no sync)."""

    model: Method
    forward: Callable[..., dict[str, torch.Tensor]]  # the model, wrapped (DDP) and compiled as asked
    opt: torch.optim.Optimizer
    views: ViewMaker
    aug_gen: torch.Generator
    images: torch.Tensor | StreamedImages  # the training images: uint8 on the device, or streamed to it
    lr_at: Callable[[int], float]
    peak_lr: float
    precision: dev.Precision  # autocast and, in fp16, the gradient scaler
    channels_last: bool
    steps_per_epoch: int
    total_steps: int
    z_dim: int = 1  # the width of the method's embedding z (the collapse check), read from the first step

    def __call__(self, indices: torch.Tensor, global_step: int) -> dict[str, torch.Tensor]:
        model, progress = self.model, StepProgress(global_step, self.steps_per_epoch, self.total_steps)
        x = self.images[indices]  # B x C x H x W uint8, on the device
        views = [as_input(v, self.channels_last) for v in self.views(x, self.aug_gen)]
        clean = as_input(self.views.clean(x), self.channels_last) if model.needs_clean else None
        set_lr(self.opt, self.lr_at(global_step), self.peak_lr)
        model.before_step(progress)
        with self.precision.autocast():
            out = self.forward(views, clean)
        self.opt.zero_grad(set_to_none=True)
        skipped = self.precision.backward_and_step(out["loss"], self.opt, lambda: model.after_backward(progress))
        model.after_step(progress)
        metrics = {k: v.detach() for k, v in out.items() if k != "z" and v.ndim == 0}
        if "z" in out:
            self.z_dim = out["z"].shape[1]
            metrics["z_std"] = std_of_normalized(out["z"].detach())
        return metrics if skipped is None else without_skipped_step(metrics, skipped)


SKIPPED = "scaler_skipped"  # the epoch's share of steps the fp16 gradient scaler skipped (a metric of its sums)
DROPPED = "scaler_dropped"  # the share of skipped steps whose metrics were inf/NaN, left out of the means


def without_skipped_step(metrics: dict[str, torch.Tensor], skipped: torch.Tensor) -> dict[str, torch.Tensor]:
    """A step's metrics in fp16. The gradient scaler skips a step whose scaled gradients are inf/NaN: normal
    while it calibrates its scale (it starts at 2^16 and halves at each skip). Such a step counts in `SKIPPED`;
    when its metrics are inf/NaN too they add 0 to the epoch's sums and count in `DROPPED`, so they are not
    taken for the NaN stop, and `taken_step_means` divides by the steps kept. No sync: all on the device."""
    finite = torch.stack([torch.isfinite(v).all() for v in metrics.values()]).all()
    dropped = ((skipped > 0) & ~finite).float()
    out = {k: torch.where(dropped > 0, torch.zeros_like(v), v) for k, v in metrics.items()}
    out[SKIPPED], out[DROPPED] = skipped, dropped
    return out


def taken_step_means(means: dict[str, Any], steps: int, epoch: int) -> dict[str, Any]:
    """The epoch's means over the steps kept, and `skipped_steps` (the steps the scaler skipped); unchanged
    without a scaler. An epoch whose every step had an inf/NaN loss is the NaN stop (the last checkpoint is kept)."""
    if SKIPPED not in means:
        return means
    skipped, dropped = means.pop(SKIPPED), means.pop(DROPPED)
    if round(dropped * steps) >= steps:
        raise NonFiniteLoss(f"the loss was inf/NaN at every step of epoch {epoch} in fp16 (the gradient scaler "
                            "skipped them all); start a new run with --precision bf16 or fp32, or a lower --lr")
    scale = 1 / (1 - dropped)
    out = {k: [x * scale for x in v] if isinstance(v, list) else v * scale for k, v in means.items()}
    out["skipped_steps"] = round(skipped * steps)
    return out


def step_loss_logger(log: EpochLog, every: int) -> Callable[[int, dict[str, torch.Tensor]], None] | None:
    """TensorBoard `train/step_loss` every `every` steps (each reads the loss from the device once)."""
    if not every or not log.enabled:
        return None

    def on_step(step: int, out: dict[str, torch.Tensor]) -> None:
        if step % every == 0:
            log.scalar("step_loss", out["loss"].item(), step)

    return on_step


class KnnMonitor:
    """kNN top-1 of the backbone's test features against its train features (every rank computes it: the
    same number; no rank waits on another). None without a labelled test split. The features are extracted in
    chunks wherever the images are (on the device, or streamed from the mapped cache); a bank of more than
    KNN_BANK_MAX training images is a stated, seeded, stratified subset of them."""

    def __init__(self, model: Method, data: ImageData, k: int, t: float, precision: dev.Precision,
                 channels_last: bool, seed: int, log: Log):
        self.model, self.data, self.k, self.t = model, data, k, t
        self.precision, self.channels_last = precision, channels_last
        self.rows, note = bank_rows(data.train_y, KNN_BANK_MAX, seed)
        if note is not None and self.usable():
            log(note)

    def usable(self) -> bool:
        return self.data.test_x.shape[0] > 0 and bool((self.data.train_y >= 0).any())

    def bank(self) -> tuple[Images, torch.Tensor]:
        """The bank's training images and labels (all of them, or the bounded subset's rows)."""
        d = self.data
        if self.rows is None:
            return d.train_x, d.train_y
        return rows_of(d.train_x, self.rows), d.train_y[self.rows.to(d.train_y.device)]

    def __call__(self) -> float | None:
        if not self.usable():
            return None
        d, (bank_x, bank_y) = self.data, self.bank()
        with self.precision.autocast():  # the training precision (fp16 needs no scaler without a backward pass)
            bank, queries = (extract_features(self.model.backbone, x, d.mean, d.std, bf16=False,
                                              channels_last=self.channels_last, crop=d.crop_size)
                             for x in (bank_x, d.test_x))
        return knn_accuracy(bank, bank_y, queries, d.test_y, d.num_classes, self.k, self.t)

    def pixels(self, log: Log) -> float | None:
        """kNN of the raw pixels, the same bank, k and t, computed where the images are; None (with a line that
        says why) when their float32 pixels would take more than PIXEL_KNN_MAX_BYTES."""
        d, (bank_x, bank_y) = self.data, self.bank()
        pixel_bytes = 4 * (bank_x.numel() + d.test_x.numel())
        if pixel_bytes > PIXEL_KNN_MAX_BYTES:
            log(f"kNN of the raw pixels skipped: their float32 vectors would take {pixel_bytes / 2**30:.0f} GiB")
            return None
        bank_x, test_x = (x if isinstance(x, torch.Tensor) else x[torch.arange(len(x))] for x in (bank_x, d.test_x))
        return pixel_knn_accuracy(bank_x, bank_y.to(bank_x.device), test_x, d.test_y.to(test_x.device),
                                  d.num_classes, self.k, self.t)


def measure_baselines(monitor: KnnMonitor, data: ImageData, t: Any, log: Log) -> dict[str, float | None]:
    """kNN of the untrained network and of the raw pixels, same split, k and t as the monitor; once per run."""
    if t.knn_every == 0:
        return {"knn_top1_init": None, "knn_top1_pixels": None}
    init = monitor()
    pixels = monitor.pixels(log)
    if init is not None:
        log(f"kNN before training: {percent(init)} (raw pixels {percent(pixels)})")
    return {"knn_top1_init": init, "knn_top1_pixels": pixels}


def epoch_record(epoch: int, means: dict[str, Any], seconds: float, source: BatchSource, lr_at: Callable[[int], float],
                 monitor: KnnMonitor, cfg: Config, z_dim: int, log: Log) -> dict[str, Any]:
    """One line of metrics.jsonl: the epoch's means, lr, kNN (when due), timing and the collapse check (`z_dim`:
    the width of the embedding z)."""
    t, steps = cfg.train, source.steps_per_epoch
    means = taken_step_means(means, steps, epoch)
    tick = time.perf_counter()
    knn = monitor() if t.knn_every > 0 and (epoch % t.knn_every == 0 or epoch == cfg.method.epochs) else None
    record = {"epoch": epoch, "step": epoch * steps, "loss": means.pop("loss"), "lr": lr_at(epoch * steps - 1),
              "knn_top1": knn, "z_std": means.pop("z_std", None), **means, "epoch_seconds": seconds,
              "knn_seconds": time.perf_counter() - tick,
              "images_per_second": steps * source.batch_size / max(seconds, 1e-9)}
    if record["z_std"] is not None and record["z_std"] * math.sqrt(z_dim) < t.collapse_threshold:
        record["collapse_warning"] = True
        log(f"warning: representations may be collapsing (z_std {record['z_std']:.4f}, "
            f"{record['z_std'] * math.sqrt(z_dim):.2f} x 1/sqrt(d)); lower --lr or --weight-decay")
    return record


def finish(run: RunDir, cfg: Config, data: ImageData, device: torch.device, world: int,
           baselines: dict[str, Any], started: float, log: Log) -> dict[str, Any]:
    """summary.json (and the final plots) from metrics.jsonl."""
    records = run.epoch_metrics()
    knns = [r["knn_top1"] for r in records if r.get("knn_top1") is not None]

    def median(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]  # timing is optional in a record
        return float(np.median(values)) if values else None

    summary = {"run_dir": str(run.path), "method": cfg.method.method, "dataset": data.name,
               "backbone": cfg.model.backbone, "epochs": cfg.method.epochs, "batch_size": cfg.method.batch_size,
               "processes": world, "device": dev.device_name(device),
               "final_loss": records[-1]["loss"] if records else None,
               "knn_top1_init": baselines.get("knn_top1_init"), "knn_top1_pixels": baselines.get("knn_top1_pixels"),
               "knn_top1": knns[-1] if knns else None, "knn_top1_best": max(knns) if knns else None,
               "epoch_seconds_median": median("epoch_seconds"), "images_per_second_median": median("images_per_second"),
               "wall_seconds_this_session": time.perf_counter() - started,
               "peak_gpu_memory_gib": dev.peak_memory_gib(device)}
    run.write_summary(summary)
    plot_curves(run, cfg, log)
    return summary


# ---- checkpoints --------------------------------------------------------------------------------------
def run_state(cfg: Config, data: ImageData, model: Method) -> dict[str, Any]:
    """What every checkpoint of a run holds besides the loop: what the weights are, and the weights.
    Alone it is checkpoints/init.pt, the network before training (the "untrained" baseline)."""
    return {"method": cfg.method.method, "backbone": cfg.model.backbone, "config": cfg.to_dict(),
            "data": data_info(data), "model": model.state_dict(), "loop": {"epoch": 0, "step_in_epoch": 0}}


def needed_bytes(model: Method, opt: torch.optim.Optimizer, cfg: Config) -> int:
    """Room the run's checkpoints take: last.pt, init.pt and the kept epoch_NNNN.pt files."""
    state = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    per_param = 2 if isinstance(opt, torch.optim.AdamW) else 1  # momentum: 1 buffer, Adam: 2
    trained = sum(p.numel() * p.element_size() for g in opt.param_groups for p in g["params"])
    every = cfg.train.checkpoint_every
    return (state + per_param * trained) * (2 + (cfg.method.epochs // every if every else 0))


def due(every: int, pos: LoopPosition) -> bool:
    """Keep an epoch_NNNN.pt at the end of every `every`-th epoch (0: never)."""
    return bool(every) and pos.step_in_epoch == 0 and pos.epoch > 0 and pos.epoch % every == 0


# ---- small helpers ------------------------------------------------------------------------------------
def augment_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of rank `rank`'s augmentation generator (`step` > 0: reseeded at that step, after a resume with
    another number of processes). Never `seed` itself, which seeds the sample order."""
    return seed + 1 + rank + 100_003 * step


def data_info(data: ImageData) -> dict[str, Any]:
    return {"dataset": data.name, "train_images": len(data.train_x), "test_images": len(data.test_x),
            "channels": data.channels, "image_size": data.image_size,
            "classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}


@contextlib.contextmanager
def distributed_session(device_name: str) -> Iterator[ddp.DistributedRun]:
    """The torchrun process group for the length of a run (one process: nothing to do)."""
    run = ddp.init_from_env(device_name)
    try:
        yield run
        ddp.barrier()  # a run that ended well: every rank is done with the group before any rank leaves it
    finally:
        if run.created:
            gc.collect()  # anything in a reference cycle that still holds the group lets go of it first
        run.close()


def plot_curves(run: RunDir, cfg: Config, log: Log) -> None:
    """The learning-curve PNGs; a failure to draw them is reported, not fatal (metrics.jsonl has the numbers)."""
    try:
        plot_learning_curves(run, cfg)
    except (OSError, ValueError) as e:
        log(f"warning: could not draw the plots in {run.plots_dir} ({first_line(e)})")


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_epoch(r: dict[str, Any], epochs: int) -> str:
    knn = f"knn {100 * r['knn_top1']:.2f}%" if r.get("knn_top1") is not None else "knn -"
    z = f"z_std {r['z_std']:.4f}" if r.get("z_std") is not None else ""
    skipped = f" ({r['skipped_steps']} steps skipped by the fp16 scaler)" if r.get("skipped_steps") else ""
    return (f"epoch {r['epoch']}/{epochs} loss {r['loss']:.4f} lr {r['lr']:.4g} {knn} {z} "
            f"{r['epoch_seconds']:.1f} s {r['images_per_second']:.0f} img/s{skipped}")


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


__all__ = ["fit", "Interrupted", "NonFiniteLoss", "data_info", "augment_seed", "TrainStep"]
