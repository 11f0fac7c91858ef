"""fit(): the training loop. Reads top to bottom: data -> config -> model -> optimiser -> run folder -> epochs.

The data sits on the training device as uint8; each step indexes a batch with a device-side permutation and
augments it there, so the hot path has no DataLoader, no per-image Python and no host-device sync. The loop
can stop and checkpoint at any step boundary (SIGINT/SIGTERM) and resume to the same numbers.
"""
from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sslab.augment import Augmenter, resolve_augment
from sslab.checkpoint import load_checkpoint, save_checkpoint
from sslab.config import Config
from sslab.data import load_from_config
from sslab.data.base import ImageData
from sslab.errors import CheckpointError, ConfigError, UserError
from sslab.eval.features import extract_features
from sslab.eval.knn import knn_accuracy
from sslab.methods import METHODS, Method
from sslab.methods.base import std_of_normalized
from sslab.models import create_backbone
from sslab.plots import plot_learning_curves
from sslab.run import RunDir


class NonFiniteLoss(UserError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: a checkpoint was written; `--resume` continues from it."""

    def __init__(self, run_dir: Path, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}; checkpoint saved; continue with: "
                         f"sslab train --resume {run_dir}")
        self.run_dir, self.signum = run_dir, signum


# ---- config resolution ------------------------------------------------------------------------------
def resolve(cfg: Config, image_size: int, device: torch.device | None = None) -> Config:
    """A copy of `cfg` with every None filled from the method's recipe and augmentation preset."""
    if cfg.method.method is None:
        raise ConfigError(f"no method given; pass --method ({', '.join(METHODS.names())})")
    method_cls = METHODS.get(cfg.method.method)
    out = Config.from_dict(cfg.to_dict())
    for section, values in method_cls.recipe(cfg.data.dataset, image_size).items():
        obj = getattr(out, section)
        for name, value in values.items():
            if getattr(obj, name) is None:
                setattr(obj, name, value)
    params = asdict(resolve_augment(out.augment, out.method.method, image_size))
    for f in fields(out.augment):
        if f.name in params and getattr(out.augment, f.name) is None:
            value = params[f.name]
            setattr(out.augment, f.name, tuple(value) if isinstance(value, list) else value)
    if out.train.channels_last is None:
        out.train.channels_last = device is not None and device.type == "cuda"
    return out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def build_method(cfg: Config, in_channels: int, image_size: int) -> Method:
    backbone = create_backbone(cfg.model.backbone, in_channels, image_size, cfg.model.stem)
    return METHODS.create(cfg.method.method, backbone, cfg.method)


def build_optimizer(model: Method, cfg: Config, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Callable[[int], float]]:
    """The optimiser and lr(step): linear warm-up, then cosine to min_lr (lr scaled by batch/256)."""
    o, t = cfg.optim, cfg.train
    peak = o.lr * t.batch_size / 256
    groups = [{"params": g["params"], "fixed_lr": g["fixed_lr"], "lr": peak} for g in model.param_groups() if g["params"]]
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
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


# ---- state saved in a checkpoint --------------------------------------------------------------------
@dataclass
class LoopState:
    """Where the loop is. `step_in_epoch > 0` means a checkpoint taken mid-epoch (after a signal)."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    perm: torch.Tensor | None = None  # this epoch's sample order, when mid-epoch
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # per-epoch metric sums so far
    knn_top1_init: float | None = None
    train_seconds: float = 0.0  # this epoch's, so far


def data_info(data: ImageData) -> dict[str, Any]:
    return {"dataset": data.name, "channels": data.channels, "image_size": data.image_size,
            "classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}


class SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (a second SIGINT aborts at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "SignalFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


# ---- the loop -------------------------------------------------------------------------------------
def fit(cfg: Config | None = None, resume: str | Path | None = None, data: ImageData | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a method; returns the summary (also in RUN/summary.json). `resume`: a run folder to continue."""
    state = None
    if resume is not None:
        run = RunDir(Path(resume))
        if not run.config_path.exists():
            raise CheckpointError(f"{resume} is not a run folder (no config.yaml); pass the folder `sslab train` made")
        cfg = run.config()
        state = load_checkpoint(run.last_checkpoint)
    assert cfg is not None
    device = pick_device(cfg.train.device)
    seed_everything(cfg.train.seed)

    # data, on the training device as uint8
    if data is None:
        t0 = time.perf_counter()
        data = load_from_config(cfg.data, cfg.train.seed)
        log(f"data: {data.name} {tuple(data.train_x.shape)} train, {tuple(data.test_x.shape)} test, "
            f"{data.num_classes} classes, loaded in {time.perf_counter() - t0:.1f} s")
    cfg = resolve(cfg, data.image_size, device)
    cfg.validate()
    t = cfg.train
    n_train = len(data.train_x)
    if t.batch_size > n_train:
        raise ConfigError(f"--batch-size {t.batch_size} is larger than the {n_train} training images; lower it")
    data = data.to(device)

    # model and optimiser
    model = build_method(cfg, data.channels, data.image_size).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = n_train // t.batch_size  # drop the last partial batch (BN needs full batches)
    opt, lr_at = build_optimizer(model, cfg, steps_per_epoch)
    peak_lr = cfg.optim.lr * t.batch_size / 256
    augment = Augmenter(resolve_augment(cfg.augment, cfg.method.method, data.image_size), data.image_size,
                        data.mean, data.std)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    forward = torch.compile(model) if t.compile else model
    gen = torch.Generator(device=device)
    gen.manual_seed(t.seed)

    # run folder (checked writable before any training) and resume state
    loop = LoopState()
    if state is None:
        run = RunDir.create(cfg)
        log(f"run folder: {run.path}")
    else:
        loop = restore(state, cfg, model, opt, gen)
        run.truncate_metrics(loop.epoch)
        log(f"resuming {run.path} at epoch {loop.epoch + 1}" + (f", step {loop.step_in_epoch}" if loop.step_in_epoch else ""))
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(run.tensorboard_dir), purge_step=loop.epoch + 1 if state is not None else None)

    def knn_now() -> float | None:
        if data.test_x.shape[0] == 0 or (data.train_y >= 0).sum() == 0:
            return None
        bank = extract_features(model.backbone, data.train_x, data.mean, data.std, bf16=bf16, channels_last=t.channels_last)
        queries = extract_features(model.backbone, data.test_x, data.mean, data.std, bf16=bf16, channels_last=t.channels_last)
        return knn_accuracy(bank, data.train_y, queries, data.test_y, data.num_classes, t.knn_k, t.knn_t)

    def checkpoint(extra_paths: list[Path] = ()) -> None:
        payload = {"method": cfg.method.method, "backbone": cfg.model.backbone, "config": cfg.to_dict(),
                   "data": data_info(data), "model": model.state_dict(), "optimizer": opt.state_dict(),
                   "loop": {"epoch": loop.epoch, "step_in_epoch": loop.step_in_epoch,
                            "perm": None if loop.perm is None else loop.perm.cpu(),
                            "sums": {k: v.detach().cpu() for k, v in loop.sums.items()},
                            "knn_top1_init": loop.knn_top1_init, "train_seconds": loop.train_seconds},
                   "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state(), "numpy": np.random.get_state(),
                           "python": random.getstate(),
                           "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}}
        for path in [run.last_checkpoint, *extra_paths]:
            save_checkpoint(payload, path)

    if state is None and t.knn_every > 0:
        loop.knn_top1_init = knn_now()
        if loop.knn_top1_init is not None:
            log(f"kNN top-1 before training: {100 * loop.knn_top1_init:.2f}%")
    if state is None:
        checkpoint()  # a run folder always holds a loadable checkpoint

    from tqdm import tqdm
    show_bar = t.progress and sys.stderr.isatty()
    started = time.perf_counter()
    with SignalFlag() as stop:
        while loop.epoch < t.epochs:
            epoch = loop.epoch + 1
            if loop.perm is None:
                loop.perm = torch.randperm(n_train, device=device, generator=gen)
                loop.sums = {}
            perm = loop.perm.to(device)
            model.train()
            bar = tqdm(total=steps_per_epoch, initial=loop.step_in_epoch, desc=f"epoch {epoch}/{t.epochs}",
                       disable=not show_bar, leave=False, dynamic_ncols=True)
            tick = time.perf_counter()
            for i in range(loop.step_in_epoch, steps_per_epoch):
                step = loop.epoch * steps_per_epoch + i
                idx = perm[i * t.batch_size:(i + 1) * t.batch_size]
                x = data.train_x[idx]  # B x C x H x W uint8, on the device
                views = [augment(x, gen) for _ in range(model.num_views)]
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
                if stop.signum is not None:
                    break
            if device.type == "cuda":
                torch.cuda.synchronize()
            loop.train_seconds += time.perf_counter() - tick
            bar.close()

            means = {k: (v / loop.step_in_epoch).item() for k, v in loop.sums.items()} if loop.step_in_epoch else {}
            if any(not math.isfinite(v) for v in means.values()):
                raise NonFiniteLoss(f"loss became {means.get('loss')} in epoch {epoch}; the last good checkpoint "
                                    f"{run.last_checkpoint} is kept; lower --lr or use --precision fp32")
            if stop.signum is not None and loop.step_in_epoch < steps_per_epoch:
                checkpoint()
                writer.close()
                plot_learning_curves(run, cfg)
                raise Interrupted(run.path, stop.signum)

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
            run.append_metrics(record)
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    writer.add_scalar(k, v, epoch)
            writer.flush()
            log(format_epoch(record, t.epochs))
            loop.epoch, loop.step_in_epoch, loop.perm, loop.sums, loop.train_seconds = epoch, 0, None, {}, 0.0
            keep = [run.checkpoints_dir / f"epoch_{epoch:04d}.pt"] if t.checkpoint_every and epoch % t.checkpoint_every == 0 else []
            checkpoint(keep)
            if epoch == t.epochs or epoch % max(1, t.epochs // 20) == 0:
                plot_learning_curves(run, cfg)
            if stop.signum is not None:
                writer.close()
                raise Interrupted(run.path, stop.signum)

    writer.close()
    records = run.read_metrics()
    knns = [r["knn_top1"] for r in records if r.get("knn_top1") is not None]
    summary = {"run_dir": str(run.path), "method": cfg.method.method, "dataset": data.name,
               "backbone": cfg.model.backbone, "epochs": t.epochs, "batch_size": t.batch_size,
               "device": device_name(device), "final_loss": records[-1]["loss"] if records else None,
               "knn_top1_init": loop.knn_top1_init, "knn_top1": knns[-1] if knns else None,
               "knn_top1_best": max(knns) if knns else None,
               "epoch_seconds_median": float(np.median([r["epoch_seconds"] for r in records])) if records else None,
               "images_per_second_median": float(np.median([r["images_per_second"] for r in records])) if records else None,
               "wall_seconds_this_session": time.perf_counter() - started,
               "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    run.write_summary(summary)
    plot_learning_curves(run, cfg)
    return summary


def accumulate(sums: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """Add this step's scalars to the epoch sums, on the device (no sync)."""
    scalars = {k: v.detach().float() for k, v in out.items() if k != "z" and v.ndim == 0}
    if "z" in out:
        scalars["z_std"] = std_of_normalized(out["z"])
    for k, v in scalars.items():
        sums[k] = sums[k] + v if k in sums else v.clone()


def restore(state: dict[str, Any], cfg: Config, model: Method, opt: torch.optim.Optimizer,
            gen: torch.Generator) -> LoopState:
    if state.get("method") != cfg.method.method or state.get("backbone") != cfg.model.backbone:
        raise CheckpointError(f"checkpoint is for {state.get('method')}/{state.get('backbone')}, but the run is "
                              f"{cfg.method.method}/{cfg.model.backbone}; resume with the run folder it came from")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint does not fit this model ({str(e).splitlines()[0][:120]}); "
                              "resume with the run folder it came from") from None
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["gen"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    lp = state["loop"]
    device = next(model.parameters()).device
    return LoopState(epoch=lp["epoch"], step_in_epoch=lp["step_in_epoch"], perm=lp["perm"],
                     sums={k: v.to(device) for k, v in lp["sums"].items()}, knn_top1_init=lp["knn_top1_init"],
                     train_seconds=lp["train_seconds"])


def format_epoch(r: dict[str, Any], epochs: int) -> str:
    knn = f"knn {100 * r['knn_top1']:.2f}%" if r.get("knn_top1") is not None else "knn -"
    z = f"z_std {r['z_std']:.4f}" if r.get("z_std") is not None else ""
    return (f"epoch {r['epoch']}/{epochs} loss {r['loss']:.4f} lr {r['lr']:.4g} {knn} {z} "
            f"{r['epoch_seconds']:.1f} s {r['images_per_second']:.0f} img/s")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
