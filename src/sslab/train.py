"""fit(): the training loop. Reads top to bottom: data -> config -> model -> optimiser -> run folder -> epochs.

The data sits on the training device as uint8; each step indexes a batch with a permutation and augments it
there, so the hot path has no DataLoader, no per-image Python and no host-device sync.

Reliability (docs/reliability.md):
- the loop can stop and checkpoint at any step boundary (SIGINT/SIGTERM) and `--resume` continues to the
  same numbers: the checkpoint holds the model, the optimiser, the epoch's sample order, the generators'
  states and the epoch's metric sums so far; checkpoints are written atomically, so `kill -9` loses at
  most the current epoch;
- a NaN/inf loss (or weight) stops the run before it is checkpointed, so `last.pt` stays the last good one;
- under torchrun (WORLD_SIZE > 1) each process takes its slice of every global batch (`--batch-size` is
  the global batch), BatchNorm is synced over processes, and rank 0 alone writes the run folder.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from sslab import distributed as ddp
from sslab.augment import Augmenter, resolve_augment
from sslab.checkpoint import first_line, load_checkpoint, save_checkpoint
from sslab.config import Config, replace
from sslab.data import load_from_config
from sslab.data.base import ImageData
from sslab.errors import CheckpointError, ConfigError, UserError
from sslab.eval.features import extract_features
from sslab.eval.knn import knn_accuracy
from sslab.methods import METHODS, Method
from sslab.methods.base import std_of_normalized
from sslab.methods.short_run import SHORT_RUN_EPOCHS, short_run_recipe
from sslab.models import BACKBONES, create_backbone
from sslab.plots import plot_learning_curves
from sslab.registry import DATASETS
from sslab.run import RunDir, check_out_dir, check_resume_state, resume_config, run_locks

# Test hook: "N" or "N:SIGTERM" / "N:SIGKILL". After global step N (counted from 1), rank 0 sends itself the
# signal (SIGINT by default), so tests can interrupt a run at a chosen step. Unset in normal use.
TEST_SIGNAL_ENV = "SSLAB_TEST_SIGNAL_AT_STEP"


class NonFiniteLoss(UserError):
    """The loss (or a weight) became NaN or inf; the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: a checkpoint was written (or training had not started); `--resume` continues."""

    def __init__(self, run_dir: Path | None, signum: int):
        name = signal.Signals(signum).name
        if signum == signal.SIGALRM and run_dir is not None:
            message = f"stopped at the --time-limit; checkpoint saved; continue with: sslab train --resume {run_dir}"
        elif run_dir is None:
            message = f"interrupted by {name} before training started; no checkpoint was written"
        else:
            message = f"interrupted by {name}; checkpoint saved; continue with: sslab train --resume {run_dir}"
        super().__init__(message)
        self.run_dir, self.signum = run_dir, signum


# ---- config resolution ------------------------------------------------------------------------------
def resolve(cfg: Config, image_size: int, device: torch.device | None = None, n_train: int | None = None,
            log: Callable[[str], None] | None = None) -> Config:
    """A copy of `cfg` with every None filled from the method's recipe (the short-run recipe for a run of
    few epochs, see methods/short_run.py; `log` gets one line per change) and augmentation preset."""
    if cfg.method.method is None:
        raise ConfigError(f"no method given; pass --method ({', '.join(METHODS.names())})")
    method_cls = METHODS.get(cfg.method.method)
    out = Config.from_dict(cfg.to_dict())
    user_set = frozenset(k for k, v in {**asdict(cfg.optim), **asdict(cfg.train)}.items() if v is not None)
    recipe, changes = short_run_recipe(method_cls.recipe(cfg.data.dataset, image_size), cfg.train.epochs, n_train,
                                       user_set)
    if changes and log is not None:
        log(f"short-run recipe ({cfg.train.epochs} < {SHORT_RUN_EPOCHS} epochs; docs/methods.md): " + "; ".join(changes))
    for section, values in recipe.items():
        obj = getattr(out, section)
        for name, value in values.items():
            if getattr(obj, name) is None:
                setattr(obj, name, value)
    params = asdict(resolve_augment(out.augment, out.method.method, image_size, out.data.dataset))
    for f in fields(out.augment):
        if f.name in params and getattr(out.augment, f.name) is None:
            value = params[f.name]
            setattr(out.augment, f.name, tuple(value) if isinstance(value, list) else value)
    if out.train.channels_last is None:
        out.train.channels_last = device is not None and device.type == "cuda"
    return out


def check_names(cfg: Config) -> None:
    """Unknown method, backbone, dataset or optimiser names: one line each, before any data is loaded."""
    if cfg.method.method is not None:
        METHODS.get(cfg.method.method)
    BACKBONES.get(cfg.model.backbone)
    DATASETS.get(cfg.data.dataset)
    if cfg.optim.optimizer not in (None, "sgd", "adamw", "lars"):
        raise ConfigError(f"unknown --optimizer {cfg.optim.optimizer!r}; use sgd, adamw or lars")


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """--device as a torch.device; under torchrun (`local_rank` given) `cuda`/`auto` is cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name} asks for GPU {device.index} but {torch.cuda.device_count()} "
                              "are visible; use cuda:0 ... or --device cuda")
    return device


def build_method(cfg: Config, in_channels: int, image_size: int) -> Method:
    backbone = create_backbone(cfg.model.backbone, in_channels, image_size, cfg.model.stem)
    return METHODS.create(cfg.method.method, backbone, cfg.method)


def build_optimizer(model: Method, cfg: Config, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Callable[[int], float]]:
    """The optimiser and lr(step): linear warm-up, then cosine to min_lr (lr scaled by batch/256)."""
    o, t = cfg.optim, cfg.train
    peak = o.lr * t.batch_size / 256
    groups = [{"params": g["params"], "fixed_lr": g["fixed_lr"], "lr": peak} for g in model.param_groups() if g["params"]]
    fused = {"fused": True} if (next(model.parameters()).is_cuda if o.fused is None else o.fused) else {}
    if o.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=peak, momentum=o.momentum, weight_decay=o.weight_decay, **fused)
    elif o.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=peak, weight_decay=o.weight_decay, **fused)
    elif o.optimizer == "lars":
        from sslab.optim import LARS
        opt = LARS(groups, lr=peak, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        raise ConfigError(f"unknown --optimizer {o.optimizer!r}; use sgd, adamw or lars")
    total = t.epochs * steps_per_epoch
    warmup = o.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        floor = o.min_lr * peak
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, lr_at


def set_lr(opt: torch.optim.Optimizer, lr: float, peak: float) -> None:
    for g in opt.param_groups:
        g["lr"] = peak if g["fixed_lr"] else lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of rank `rank`'s augmentation generator (`step` > 0: reseeded at that step, after a resume with
    another number of processes). Never `seed` itself, which seeds the sample order."""
    return seed + 1 + rank + 100_003 * step


# ---- state saved in a checkpoint --------------------------------------------------------------------
@dataclass
class LoopState:
    """Where the loop is. `step_in_epoch > 0` means a checkpoint taken mid-epoch (after a signal)."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    perm: torch.Tensor | None = None  # this epoch's global sample order (CPU), when mid-epoch
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # this rank's per-epoch metric sums so far
    knn_top1_init: float | None = None
    train_seconds: float = 0.0  # this epoch's, so far


def data_info(data: ImageData) -> dict[str, Any]:
    return {"dataset": data.name, "train_images": len(data.train_x), "test_images": len(data.test_x),
            "channels": data.channels, "image_size": data.image_size,
            "classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}


class SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps. Before `arm()` (no checkpoint yet)
    a signal stops at once with `Interrupted(None)`; after it, a second SIGINT aborts at once.
    `arm(time_limit)` also raises the flag (SIGALRM) after that many seconds: `--time-limit`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "SignalFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def arm(self, time_limit: float | None = None) -> None:
        self.armed = True
        if time_limit and signal.SIGALRM in self._old:
            signal.setitimer(signal.ITIMER_REAL, time_limit)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.armed:
            raise Interrupted(None, signum)
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        if signal.SIGALRM in self._old:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for s, old in self._old.items():
            signal.signal(s, old)


def test_signal_hook() -> tuple[int, int] | None:
    """(step, signal) from SSLAB_TEST_SIGNAL_AT_STEP, or None."""
    value = os.environ.get(TEST_SIGNAL_ENV)
    if not value:
        return None
    step, _, name = value.partition(":")
    try:
        return int(step), int(getattr(signal, name or "SIGINT"))
    except (ValueError, AttributeError):
        raise ConfigError(f"{TEST_SIGNAL_ENV}={value!r}: expected N or N:SIGINT|SIGTERM|SIGKILL") from None


@contextlib.contextmanager
def distributed_session(device_name: str) -> Iterator[ddp.DistributedRun]:
    """The torchrun process group for the length of a run (one process: nothing to do)."""
    run = ddp.init_from_env(device_name)
    try:
        yield run
    finally:
        run.close()


# ---- the loop -------------------------------------------------------------------------------------
def fit(cfg: Config | None = None, resume: str | Path | None = None, data: ImageData | None = None,
        log: Callable[[str], None] = print, time_limit: float | None = None) -> dict[str, Any]:
    """Train a method; returns the summary (also in RUN/summary.json). `resume`: a run folder to continue
    (with its saved config); `time_limit` overrides `train.time_limit` for this session."""
    run: RunDir | None = None
    if resume is not None:
        run = RunDir.existing(resume)
        cfg, resume_notes = resume_config(run.config(), cfg)  # changes but --epochs, --time-limit, ... are refused
    if cfg is None:
        raise ConfigError("fit() needs a config, or a run folder to resume")
    if time_limit is not None:
        cfg = replace(cfg, train={"time_limit": time_limit})
    with run_locks(), distributed_session(cfg.train.device) as group, SignalFlag() as stop:
        rank, world = group.rank, group.world_size
        if rank != 0:
            log = _quiet
        state = None
        if run is not None:
            ddp.on_rank0(lambda: run.lock().save_config(cfg))  # one process per run folder at a time
            for note in resume_notes:  # "resuming with --epochs 5 (was 3); ..."
                log(note)
            if run.last_checkpoint.exists():
                state = load_checkpoint(run.last_checkpoint)
            else:  # stopped between config.yaml and the first checkpoint: start it again, in its folder
                log(f"no checkpoint in {run.path} yet (it stopped before the first one); starting it from the beginning")
        check_names(cfg)
        if run is None:
            ddp.on_rank0(lambda: check_out_dir(cfg.train.out))  # before a long data load, not after
        else:
            ddp.on_rank0(run.check_writable)
        device = pick_device(cfg.train.device, group.local_rank if world > 1 else None)
        seed_everything(cfg.train.seed)

        # data, on the training device as uint8 (rank 0 loads first: it fills the cache the others read)
        if data is None:
            t0 = time.perf_counter()
            data_cfg, seed = cfg.data, cfg.train.seed
            data = ddp.rank0_first(lambda: load_from_config(data_cfg, seed))
            log(f"data: {data.name} {tuple(data.train_x.shape)} train, {tuple(data.test_x.shape)} test, "
                f"{data.num_classes} classes, loaded in {time.perf_counter() - t0:.1f} s")
        cfg = resolve(cfg, data.image_size, device, n_train=len(data.train_x), log=log if state is None else None)
        cfg.validate()
        t = cfg.train
        n_train = len(data.train_x)
        if t.batch_size > n_train:
            raise ConfigError(f"--batch-size {t.batch_size} is larger than the {n_train} training images; lower it")
        if t.batch_size % world:
            raise ConfigError(f"--batch-size {t.batch_size} is the global batch and must be divisible by the "
                              f"{world} processes; use a multiple of {world}")
        local_batch = t.batch_size // world
        data = data.to(device)

        # model and optimiser; with several processes BatchNorm sees the global batch
        model = build_method(cfg, data.channels, data.image_size).to(device)
        if world > 1:
            model = ddp.convert_sync_batchnorm(model, device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        steps_per_epoch = n_train // t.batch_size  # drop the last partial batch (BN needs full batches)
        opt, lr_at = build_optimizer(model, cfg, steps_per_epoch)
        peak_lr = cfg.optim.lr * t.batch_size / 256
        augment = Augmenter(resolve_augment(cfg.augment, cfg.method.method, data.image_size), data.image_size,
                            data.mean, data.std)
        bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
        order_gen = torch.Generator().manual_seed(t.seed)  # the global sample order: the same on every rank
        aug_gen = torch.Generator(device=device)  # this rank's augmentations
        aug_gen.manual_seed(augment_seed(t.seed, rank))

        # run folder (checked writable, with room for the checkpoints, before any training) and resume state
        loop = LoopState()
        if run is None:
            need = checkpoint_bytes(model, opt) * (2 + (t.epochs // t.checkpoint_every if t.checkpoint_every else 0))
            run = RunDir(ddp.on_rank0(lambda: RunDir.create(cfg, need_bytes=need).path))
            log(f"run folder: {run.path}")
        elif state is None:
            ddp.on_rank0(lambda: run.truncate_metrics(-1))
        else:
            check_resume_state(state, cfg, data_info(data))
            loop = restore(state, cfg, model, opt, order_gen, aug_gen, rank, world, steps_per_epoch, log)
            if rank == 0:
                run.truncate_metrics(loop.epoch)
                run.remove_temp_files()
            log(f"resuming {run.path} at epoch {loop.epoch + 1}" + (f", step {loop.step_in_epoch}" if loop.step_in_epoch else ""))
        stop.arm(t.time_limit)  # from here on a signal (or the time limit) is answered with a checkpoint
        forward: Any = model
        if world > 1:  # buffers are kept equal by construction (synced BN stats, gathered MoCo keys)
            forward = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        if t.compile:
            forward = torch.compile(forward)
        writer = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run.tensorboard_dir), purge_step=loop.epoch + 1 if state is not None else None)

        def knn_now() -> float | None:  # every rank computes it (the same number; no rank waits on another)
            if data.test_x.shape[0] == 0 or (data.train_y >= 0).sum() == 0:
                return None
            bank = extract_features(model.backbone, data.train_x, data.mean, data.std, bf16=bf16, channels_last=t.channels_last)
            queries = extract_features(model.backbone, data.test_x, data.mean, data.std, bf16=bf16, channels_last=t.channels_last)
            return knn_accuracy(bank, data.train_y, queries, data.test_y, data.num_classes, t.knn_k, t.knn_t)

        saved_at = [describe_position(loop)]

        def checkpoint(extra_paths: list[Path] = ()) -> None:
            """Rank 0 writes the global state plus every rank's generator and sums; the others wait."""
            saved_at[0] = describe_position(loop)
            ranks = ddp.all_gather_object({"aug_gen": aug_gen.get_state(),
                                           "sums": {k: v.detach().cpu() for k, v in loop.sums.items()}})

            def write() -> None:
                payload = {"method": cfg.method.method, "backbone": cfg.model.backbone, "config": cfg.to_dict(),
                           "data": data_info(data), "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "loop": {"epoch": loop.epoch, "step_in_epoch": loop.step_in_epoch,
                                    "global_step": loop.epoch * steps_per_epoch + loop.step_in_epoch,
                                    "perm": loop.perm, "knn_top1_init": loop.knn_top1_init,
                                    "train_seconds": loop.train_seconds, "world_size": world},
                           "rng": {"torch": torch.get_rng_state(), "order_gen": order_gen.get_state(),
                                   "numpy": np.random.get_state(), "python": random.getstate(),
                                   "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                           "ranks": ranks}
                for path in [run.last_checkpoint, *extra_paths]:
                    save_checkpoint(payload, path)

            ddp.on_rank0(write)

        def stop_if_asked() -> None:
            if ddp.any_rank(stop.signum is not None):
                if writer is not None:
                    writer.close()
                raise Interrupted(run.path, stop.signum or signal.SIGTERM)

        if state is None and t.knn_every > 0:
            loop.knn_top1_init = knn_now()
            if loop.knn_top1_init is not None:
                log(f"kNN top-1 before training: {100 * loop.knn_top1_init:.2f}%")
        if state is None:
            checkpoint()  # a run folder always holds a loadable checkpoint
        stop_if_asked()

        from tqdm import tqdm
        show_bar = t.progress and rank == 0 and sys.stderr.isatty()
        hook = test_signal_hook() if rank == 0 else None
        started = time.perf_counter()
        while loop.epoch < t.epochs:
            epoch = loop.epoch + 1
            if loop.perm is None:
                loop.perm = torch.randperm(n_train, generator=order_gen)
                loop.sums = {}
            perm = loop.perm.to(device)
            model.train()
            bar = tqdm(total=steps_per_epoch, initial=loop.step_in_epoch, desc=f"epoch {epoch}/{t.epochs}",
                       disable=not show_bar, leave=False, dynamic_ncols=True)
            stopping = False
            tick = time.perf_counter()
            for i in range(loop.step_in_epoch, steps_per_epoch):
                step = loop.epoch * steps_per_epoch + i
                first = i * t.batch_size + rank * local_batch  # this rank's slice of the global batch
                x = data.train_x[perm[first:first + local_batch]]  # B x C x H x W uint8, on the device
                views = [augment(x, aug_gen) for _ in range(model.num_views)]
                clean = augment.clean(x) if model.needs_clean else None
                if t.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                    clean = clean.contiguous(memory_format=torch.channels_last) if clean is not None else None
                lr = lr_at(step)
                set_lr(opt, lr, peak_lr)
                with autocast:
                    out = forward(views, clean)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
                model.after_step((step + 1) / (t.epochs * steps_per_epoch))
                accumulate(loop.sums, out)
                loop.step_in_epoch = i + 1
                if show_bar:
                    bar.update(1)
                    if (i + 1) % max(1, steps_per_epoch // 10) == 0:
                        bar.set_postfix(loss=f"{out['loss'].item():.4f}", lr=f"{lr:.4g}")
                if hook is not None and step + 1 == hook[0]:
                    os.kill(os.getpid(), hook[1])
                if ddp.any_rank(stop.signum is not None):  # every rank stops after the same step
                    stopping = True
                    break
            if device.type == "cuda":
                torch.cuda.synchronize()
            loop.train_seconds += time.perf_counter() - tick
            bar.close()

            # never checkpoint a diverged model: the last good checkpoint stays last.pt
            means = epoch_means(loop.sums, loop.step_in_epoch)
            bad = [k for k, v in means.items() if not math.isfinite(v)] or ([] if finite_weights(model) else ["weights"])
            if bad:
                what = f"the loss became {means['loss']}" if "loss" in bad else f"{bad[0]} became NaN/inf"
                raise NonFiniteLoss(f"{what} in epoch {epoch}; stopped; the last good checkpoint ({saved_at[0]}) "
                                    f"is kept in {run.last_checkpoint}; start a new run with a lower --lr "
                                    "(or --precision fp32)")
            if stopping and loop.step_in_epoch < steps_per_epoch:
                checkpoint()
                if rank == 0:
                    plot_curves(run, cfg, log)
                stop_if_asked()

            # end of epoch: monitors, metrics, checkpoint
            knn_tick = time.perf_counter()
            knn = knn_now() if t.knn_every > 0 and (epoch % t.knn_every == 0 or epoch == t.epochs) else None
            knn_seconds = time.perf_counter() - knn_tick
            z_dim = model.cfg.proj_dim if model.cfg.proj_dim else 1
            record = {"epoch": epoch, "step": epoch * steps_per_epoch, "loss": means.pop("loss"),
                      "lr": lr_at(epoch * steps_per_epoch - 1), "knn_top1": knn, "z_std": means.pop("z_std", None),
                      **means, "epoch_seconds": loop.train_seconds, "knn_seconds": knn_seconds,
                      "images_per_second": steps_per_epoch * t.batch_size / max(loop.train_seconds, 1e-9)}
            if record["z_std"] is not None and record["z_std"] * math.sqrt(z_dim) < t.collapse_threshold:
                record["collapse_warning"] = True
                log(f"warning: representations may be collapsing (z_std {record['z_std']:.4f}, "
                    f"{record['z_std'] * math.sqrt(z_dim):.2f} x 1/sqrt(d)); lower --lr or --weight-decay")
            if rank == 0:
                run.append_metrics(record)
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                        writer.add_scalar(k, v, epoch)
                writer.flush()
            log(format_epoch(record, t.epochs))
            loop.epoch, loop.step_in_epoch, loop.perm, loop.sums, loop.train_seconds = epoch, 0, None, {}, 0.0
            keep = [run.checkpoints_dir / f"epoch_{epoch:04d}.pt"] if t.checkpoint_every and epoch % t.checkpoint_every == 0 else []
            checkpoint(keep)
            if rank == 0 and (epoch == t.epochs or epoch % max(1, t.epochs // 20) == 0):
                plot_curves(run, cfg, log)
            stop_if_asked()

        def finish() -> dict[str, Any]:
            writer.close()
            records = run.read_metrics()
            knns = [r["knn_top1"] for r in records if r.get("knn_top1") is not None]
            summary = {"run_dir": str(run.path), "method": cfg.method.method, "dataset": data.name,
                       "backbone": cfg.model.backbone, "epochs": t.epochs, "batch_size": t.batch_size,
                       "processes": world, "device": device_name(device),
                       "final_loss": records[-1]["loss"] if records else None,
                       "knn_top1_init": loop.knn_top1_init, "knn_top1": knns[-1] if knns else None,
                       "knn_top1_best": max(knns) if knns else None,
                       "epoch_seconds_median": float(np.median([r["epoch_seconds"] for r in records])) if records else None,
                       "images_per_second_median": float(np.median([r["images_per_second"] for r in records])) if records else None,
                       "wall_seconds_this_session": time.perf_counter() - started,
                       "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
            run.write_summary(summary)
            plot_curves(run, cfg, log)
            return summary

        return ddp.on_rank0(finish)


def plot_curves(run: RunDir, cfg: Config, log: Callable[[str], None]) -> None:
    """The learning-curve PNGs; a failure to draw them is reported, not fatal (metrics.jsonl has the numbers)."""
    try:
        plot_learning_curves(run, cfg)
    except (OSError, ValueError) as e:
        log(f"warning: could not draw the plots in {run.plots_dir} ({first_line(e)})")


def describe_position(loop: LoopState) -> str:
    if loop.step_in_epoch:
        return f"epoch {loop.epoch + 1}, step {loop.step_in_epoch}"
    return f"end of epoch {loop.epoch}" if loop.epoch else "the initial weights"


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def accumulate(sums: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """Add this step's scalars to the epoch sums, on the device (no sync)."""
    scalars = {k: v.detach().float() for k, v in out.items() if k != "z" and v.ndim == 0}
    if "z" in out:
        scalars["z_std"] = std_of_normalized(out["z"])
    for k, v in scalars.items():
        sums[k] = sums[k] + v if k in sums else v.clone()


def epoch_means(sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    """Per-step means of the epoch's sums, averaged over ranks (one all-reduce, one sync per epoch). Each
    rank's loss is the mean over its slice, so the rank average is the global batch's mean; z_std is the
    rank average of per-slice values."""
    if not sums or not steps:
        return {}
    keys = sorted(sums)
    stacked = ddp.mean_over_ranks(torch.stack([sums[k] for k in keys])) / steps
    return dict(zip(keys, stacked.tolist()))


def finite_weights(model: torch.nn.Module) -> bool:
    """All parameters finite (one sync): a step can break the weights after the last finite loss."""
    params = [p.detach() for p in model.parameters()]
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True


def checkpoint_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """About the size of one checkpoint: the state dict plus the optimiser's per-parameter buffers
    (momentum: 1, Adam: 2)."""
    state = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    per_param = 2 if isinstance(opt, torch.optim.AdamW) else 1
    trained = sum(p.numel() * p.element_size() for g in opt.param_groups for p in g["params"])
    return state + per_param * trained


def restore(state: dict[str, Any], cfg: Config, model: Method, opt: torch.optim.Optimizer,
            order_gen: torch.Generator, aug_gen: torch.Generator, rank: int = 0, world: int = 1,
            steps_per_epoch: int | None = None, log: Callable[[str], None] = print) -> LoopState:
    """Load a checkpoint into the model, optimiser and generators; the loop state to continue from.

    Exact when the number of processes is unchanged. With another number, the model, optimiser, sample
    order, step and metric sums are restored exactly, and each rank's augmentation generator is reseeded
    from (seed, rank, step): the run goes on correctly but draws other augmentations than it would have."""
    if state.get("method") != cfg.method.method or state.get("backbone") != cfg.model.backbone:
        raise CheckpointError(f"checkpoint is for {state.get('method')}/{state.get('backbone')}, but the run is "
                              f"{cfg.method.method}/{cfg.model.backbone}; resume with the run folder it came from")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng, lp = state["rng"], state["loop"]
        epoch, step_in_epoch = int(lp["epoch"]), int(lp["step_in_epoch"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint does not fit this model ({first_line(e)}); "
                              "resume with the run folder it came from") from None
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    device = next(model.parameters()).device
    if rng.get("cuda") is not None and device.type == "cuda":
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state(rng["cuda"], device)
    if "order_gen" in rng:
        order_gen.set_state(rng["order_gen"])
    else:
        log("note: checkpoint from an older sslab; the sample order after resuming differs from the original run")
        order_gen.manual_seed(cfg.train.seed + epoch)
    ranks = state.get("ranks") or []
    step = int(lp.get("global_step", epoch * (steps_per_epoch or 0) + step_in_epoch))
    sums: dict[str, torch.Tensor] = {}
    exact = len(ranks) == world
    if exact:
        sums = ranks[rank]["sums"]
        try:
            aug_gen.set_state(ranks[rank]["aug_gen"])
        except RuntimeError:  # a state from another device type (CPU <-> CUDA)
            exact = False
    if not exact:
        aug_gen.manual_seed(augment_seed(cfg.train.seed, rank, step))
        if ranks and not sums:  # the mean over the old ranks: the ranks' average at the epoch's end is unchanged
            keys = set.intersection(*(set(r["sums"]) for r in ranks))
            sums = {k: torch.stack([r["sums"][k] for r in ranks]).mean(0) for k in keys}
        elif not ranks:  # a checkpoint from before per-rank states
            sums = lp.get("sums") or {}
        if step > 0:
            log(f"note: resuming with {world} process(es) where the checkpoint had {len(ranks) or 'an unknown number'}"
                " (or on another device type): model, optimiser, sample order and step are exact; the augmentation"
                " stream is reseeded")
    return LoopState(epoch=epoch, step_in_epoch=step_in_epoch, perm=lp.get("perm"),
                     sums={k: v.to(device) for k, v in sums.items()}, knn_top1_init=lp.get("knn_top1_init"),
                     train_seconds=float(lp.get("train_seconds", 0.0)))


def format_epoch(r: dict[str, Any], epochs: int) -> str:
    knn = f"knn {100 * r['knn_top1']:.2f}%" if r.get("knn_top1") is not None else "knn -"
    z = f"z_std {r['z_std']:.4f}" if r.get("z_std") is not None else ""
    return (f"epoch {r['epoch']}/{epochs} loss {r['loss']:.4f} lr {r['lr']:.4g} {knn} {z} "
            f"{r['epoch_seconds']:.1f} s {r['images_per_second']:.0f} img/s")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
