"""What every epoch loop needs, written once: pretraining (`train.fit`), SCAN's two training stages, the standard
linear probe and the semi-supervised fine-tune all run on `EpochLoop`.

- `BatchSource`: the global sample order of each epoch (a seeded CPU generator, the same on every rank) and
  this rank's slice of every global batch over device-resident uint8 data;
- `LoopPosition` + `loop_state` / `restore_position`: where a loop is (epoch, step, the epoch's order, the
  metric sums so far) and the generators, so a checkpoint taken at any step boundary resumes bitwise;
- `StopFlag`: SIGINT/SIGTERM and the time limit become a flag checked between steps (`Interrupted`);
- `EpochLoop.run`: the loop itself: steps, progress, NaN stop, checkpoint after a signal and after each epoch.

What a loop computes in one step, what it logs at the end of an epoch and what its checkpoint holds besides
the loop state stay with the loop (callbacks), so each reads as a recipe.
"""
from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sslab import device as dev
from sslab import distributed as ddp
from sslab.checkpoint import save_checkpoint
from sslab.errors import ConfigError, UserError
from sslab.jsonl import append_jsonl, keep_until
from sslab.progress import Progress

# Test hook: "N" or "N:SIGTERM" / "N:SIGKILL". After global step N (counted from 1) of a loop, rank 0 sends
# itself the signal (SIGINT by default), so tests can interrupt any loop at a chosen step. Unset in normal use.
TEST_SIGNAL_ENV = "SSLAB_TEST_SIGNAL_AT_STEP"

Log = Callable[[str], None]


class NonFiniteLoss(UserError):
    """The loss (or a weight) became NaN or inf; the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM or the time limit: a checkpoint was written (or the loop had not started); running
    `resume` (a command line) continues."""

    def __init__(self, run_dir: Path | None, signum: int, resume: str | None = None):
        name = signal.Signals(signum).name
        resume = resume or f"sslab train --resume {run_dir}"
        if signum == signal.SIGALRM and run_dir is not None:
            message = f"stopped at the --time-limit; checkpoint saved; continue with: {resume}"
        elif run_dir is None:
            message = f"interrupted by {name} before training started; no checkpoint was written"
        else:
            message = f"interrupted by {name}; checkpoint saved; continue with: {resume}"
        super().__init__(message)
        self.run_dir, self.signum = run_dir, signum

    @property
    def exit_code(self) -> int:
        return 0 if self.signum == signal.SIGALRM else 128 + self.signum  # the time limit is a planned stop


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps. Before `arm()` (no checkpoint yet)
    a signal stops at once with `Interrupted(None)`; after it, a second SIGINT aborts at once.
    `arm(time_limit)` also raises the flag (SIGALRM) after that many seconds: `--time-limit`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
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

    def asked(self) -> bool:
        """Whether any rank was signalled (every rank then stops after the same step)."""
        return ddp.any_rank(self.signum is not None)

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


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (a model's initial weights come from torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- data --------------------------------------------------------------------------------------------
class BatchSource:
    """Global batches of `batch_size` over `n` samples, the last partial batch dropped (BatchNorm and the
    losses need full batches; also what keeps every step's shapes static). Each epoch's order comes from a
    CPU generator seeded with `seed`, the same on every rank (or from `generator`, a single-process loop's
    own); rank r takes its `batch_size / world` slice."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device, rank: int = 0, world: int = 1,
                 flag: str = "--batch-size", generator: torch.Generator | None = None):
        if batch_size > n:
            raise ConfigError(f"{flag} {batch_size} is larger than the {n} training images; lower it")
        if batch_size % world:
            raise ConfigError(f"{flag} {batch_size} is the global batch and must be divisible by the {world} "
                              f"processes; use a multiple of {world}")
        self.n, self.batch_size, self.device, self.rank = n, batch_size, device, rank
        self.local_batch = batch_size // world
        self.steps_per_epoch = n // batch_size
        # a loop may draw its order from its own (device) generator, shared with its augmentations
        self.order_gen = generator if generator is not None else torch.Generator().manual_seed(seed)

    def order(self) -> torch.Tensor:
        """A new epoch's global sample order (N,), on the CPU (it goes into mid-epoch checkpoints)."""
        return torch.randperm(self.n, generator=self.order_gen, device=self.order_gen.device).cpu()

    def indices(self, order: torch.Tensor, step: int) -> torch.Tensor:
        """This rank's sample indices (local batch,) of step `step` of an epoch in `order` (on the device)."""
        first = step * self.batch_size + self.rank * self.local_batch
        return order[first:first + self.local_batch]


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A float batch in the memory format the model runs in (channels-last on the GPU)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ---- where a loop is, and its checkpoint -------------------------------------------------------------
@dataclass
class LoopPosition:
    """Where a loop is. `step_in_epoch > 0` means a checkpoint taken mid-epoch (after a signal)."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    perm: torch.Tensor | None = None  # this epoch's global sample order (CPU), when mid-epoch
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # this rank's per-epoch metric sums so far
    train_seconds: float = 0.0  # this epoch's, so far

    def describe(self) -> str:
        if self.step_in_epoch:
            return f"epoch {self.epoch + 1}, step {self.step_in_epoch}"
        return f"end of epoch {self.epoch}" if self.epoch else "the initial weights"


def loop_state(pos: LoopPosition, source: BatchSource, aug_gen: torch.Generator, world: int = 1) -> dict[str, Any]:
    """The part of a checkpoint that makes resuming exact: position, every generator, every rank's sums.
    Collective: every rank calls it (rank 0 writes the result)."""
    ranks = ddp.all_gather_object({"aug_gen": aug_gen.get_state(),
                                   "sums": {k: v.detach().cpu() for k, v in pos.sums.items()}})
    return {"loop": {"epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch,
                     "global_step": pos.epoch * source.steps_per_epoch + pos.step_in_epoch, "perm": pos.perm,
                     "train_seconds": pos.train_seconds, "world_size": world},
            "rng": {"torch": torch.get_rng_state(), "order_gen": source.order_gen.get_state(),
                    "numpy": np.random.get_state(), "python": random.getstate(), "cuda": dev.rng_state(source.device)},
            "ranks": ranks}


def restore_position(state: dict[str, Any], source: BatchSource, aug_gen: torch.Generator, reseed: Callable[[int], int],
                     world: int = 1, log: Log = print) -> LoopPosition:
    """Set the generators from a checkpoint of `loop_state`; the position to continue from.

    Exact when the number of processes is unchanged. With another number, the sample order, step and metric
    sums are restored exactly, and each rank's augmentation generator is reseeded with `reseed(global_step)`:
    the run goes on correctly but draws other augmentations than it would have."""
    rng, lp = state["rng"], state["loop"]
    epoch, step_in_epoch = int(lp["epoch"]), int(lp["step_in_epoch"])
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    dev.set_rng_state(rng.get("cuda"), source.device)
    if "order_gen" in rng:
        source.order_gen.set_state(rng["order_gen"])
    else:
        log("note: checkpoint from an older sslab; the sample order after resuming differs from the original run")
        source.order_gen.manual_seed(reseed(0) + epoch)
    ranks = state.get("ranks") or []
    step = int(lp.get("global_step", epoch * source.steps_per_epoch + step_in_epoch))
    sums: dict[str, torch.Tensor] = {}
    exact = len(ranks) == world
    if exact:
        sums = ranks[source.rank]["sums"]
        try:
            aug_gen.set_state(ranks[source.rank]["aug_gen"])
        except RuntimeError:  # a state from another device type (CPU <-> CUDA)
            exact = False
    if not exact:
        aug_gen.manual_seed(reseed(step))
        if ranks and not sums:  # the mean over the old ranks: the ranks' average at the epoch's end is unchanged
            keys = set.intersection(*(set(r["sums"]) for r in ranks))
            sums = {k: torch.stack([r["sums"][k] for r in ranks]).mean(0) for k in keys}
        elif not ranks:  # a checkpoint from before per-rank states
            sums = lp.get("sums") or {}
        if step > 0:
            log(f"note: resuming with {world} process(es) where the checkpoint had {len(ranks) or 'an unknown number'}"
                " (or on another device type): model, optimiser, sample order and step are exact; the augmentation"
                " stream is reseeded")
    return LoopPosition(epoch=epoch, step_in_epoch=step_in_epoch, perm=lp.get("perm"),
                        sums={k: v.to(source.device) for k, v in sums.items()},
                        train_seconds=float(lp.get("train_seconds", 0.0)))


class LoopCheckpoint:
    """The checkpoint file of a loop outside `train` (a SCAN stage, the standard probe, a fine-tune):
    `settings` it was made with, "done", the weights (`state()` -> dict, `load(dict)`), and `loop_state`.
    `resume()` continues from the file when its settings match, else starts over."""

    def __init__(self, path: Path, settings: dict[str, Any], source: BatchSource, gen: torch.Generator,
                 state: Callable[[], dict[str, Any]], load: Callable[[dict[str, Any]], None]):
        self.path, self.settings, self.source, self.gen = path, settings, source, gen
        self._state, self._load = state, load
        self.extra: dict[str, Any] = {}  # more to save (results so far, fixed statistics)

    def save(self, pos: LoopPosition, done: bool = False) -> None:
        save_checkpoint({"settings": self.settings, "done": done, "epoch": pos.epoch, **self._state(),
                         **loop_state(pos, self.source, self.gen), **self.extra}, self.path)

    def resume(self, state: dict[str, Any] | None, log: Log, what: str) -> LoopPosition:
        """The position to start from: `state` (a loaded checkpoint of this file, checked by the caller) or
        the start. Checkpoints from before the kit (epoch and generator only) resume at their epoch."""
        if state is None:
            return LoopPosition()
        self._load(state)
        self.extra = {k: state[k] for k in self.extra if k in state}
        if "loop" not in state:  # an older stage checkpoint: the end of an epoch, one generator
            self.gen.set_state(state["rng"]["gen"])
            pos = LoopPosition(epoch=int(state["epoch"]))
        else:
            pos = restore_position(state, self.source, self.gen, lambda step: step, log=log)
        log(f"{what}: resuming at {pos.describe()}")
        return pos


@dataclass
class LoopSettings:
    """How a library loop outside `train` (the standard probe, a fine-tune) checkpoints and stops: without a
    `checkpoint` path it only runs (nothing to resume); `stop` is the caller's StopFlag (a fresh one is never
    raised); `resume` the command that continues after an interruption."""

    checkpoint: Path | None = None
    stop: StopFlag = field(default_factory=StopFlag)
    resume: str = "the same command"
    progress: bool = True
    progress_every: float = 30.0


def matching_checkpoint(path: Path | None, settings: dict[str, Any], log: Log) -> dict[str, Any] | None:
    """The unfinished checkpoint at `path` when it was made with `settings`, else None (a mismatch is noted and
    the loop starts over)."""
    from sslab.checkpoint import load_checkpoint

    if path is None or not path.exists():
        return None
    state = load_checkpoint(path)
    if state.get("settings") != settings or state.get("done"):
        log(f"note: {path} was made with other settings; starting over")
        return None
    return state


# ---- metrics -----------------------------------------------------------------------------------------
def accumulate(sums: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """Add this step's metrics (detached tensors: scalars, or vectors such as per-head losses) to the epoch
    sums, on the device (no sync)."""
    for k, v in out.items():
        v = v.detach().float()
        sums[k] = sums[k] + v if k in sums else v.clone()


def epoch_means(sums: dict[str, torch.Tensor], steps: int) -> dict[str, Any]:
    """Per-step means of the epoch's sums, averaged over ranks (one all-reduce, one sync per epoch): floats
    for scalar metrics, lists for vector ones. Each rank's loss is the mean over its slice, so the rank
    average is the global batch's mean."""
    if not sums or not steps:
        return {}
    keys = sorted(sums)
    flat = ddp.mean_over_ranks(torch.cat([sums[k].reshape(-1) for k in keys])) / steps
    out, i = {}, 0
    for k in keys:
        size = sums[k].numel()
        values = flat[i:i + size].tolist()
        out[k] = values if sums[k].ndim else values[0]
        i += size
    return out


def finite_weights(model: torch.nn.Module) -> bool:
    """All parameters finite (one sync): a step can break the weights after the last finite loss."""
    params = [p.detach() for p in model.parameters()]
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True


def non_finite(means: dict[str, Any], model: torch.nn.Module) -> str | None:
    """What became NaN/inf ("the loss became nan", "weights became NaN/inf"), or None when all is finite."""
    bad = [k for k, v in means.items() if not all(math.isfinite(x) for x in (v if isinstance(v, list) else [v]))]
    if "loss" in bad:
        return f"the loss became {means['loss']}"
    if bad:
        return f"{bad[0]} became NaN/inf"
    return None if finite_weights(model) else "weights became NaN/inf"


class EpochLog:
    """A loop's metrics: one JSON line per epoch in `metrics_path` and TensorBoard scalars tagged
    `<stage>/<name>` (`train/loss`, `scan/cluster/loss`, ...) at the global step. Only rank 0 writes
    (`enabled`). `resumed_at` (an epoch, with `steps_per_epoch`): cut both back to what the checkpoint covers."""

    def __init__(self, metrics_path: Path, tensorboard_dir: Path, stage: str, enabled: bool = True,
                 resumed_at: int | None = None, steps_per_epoch: int = 1,
                 truncate: Callable[[int], None] | None = None, append: Callable[[dict[str, Any]], None] | None = None):
        self.path, self.stage, self.enabled = metrics_path, stage, enabled
        self._append = append or (lambda record: append_jsonl(metrics_path, record))  # the run folder's own
        self.writer = None
        if not enabled:
            return
        if resumed_at is not None:  # `truncate(epoch)`: the run folder's own, which also warns about gaps
            (truncate or (lambda epoch: keep_until(metrics_path, epoch)))(resumed_at)
        from torch.utils.tensorboard import SummaryWriter

        purge = resumed_at * steps_per_epoch + 1 if resumed_at is not None else None
        self.writer = SummaryWriter(str(tensorboard_dir), purge_step=purge)

    def append(self, record: dict[str, Any], step: int) -> None:
        """One epoch's record; its numbers also go to TensorBoard at `step`."""
        if not self.enabled:
            return
        self._append(record)
        for k, v in record.items():
            if k not in ("epoch", "step"):
                self.scalar(k, v, step, flush=False)
        self.writer.flush()

    def scalar(self, name: str, value: Any, step: int, flush: bool = True) -> None:
        if self.writer is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if math.isfinite(value):
            self.writer.add_scalar(f"{self.stage}/{name}", value, step)
            if flush:
                self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ---- the loop ----------------------------------------------------------------------------------------
@dataclass
class EpochLoop:
    """The epoch loop. `run(pos, step, save, end_epoch)`:

    - `step(indices, global_step) -> {"loss": ..., metrics}`: one optimiser step on this rank's batch
      (`indices` into the data, on the device); returned tensors are summed per epoch on the device;
    - `save(pos)`: write the checkpoint (called on every rank; after a signal mid-epoch and after every epoch);
    - `end_epoch(epoch, means, seconds)`: log the epoch (means averaged over steps and ranks).
    A NaN/inf mean or weight raises NonFiniteLoss before anything is saved (the last checkpoint stays the last
    good one); a signal or the time limit checkpoints and raises Interrupted with `resume`."""

    stage: str  # "train", "scan/cluster", ... (progress lines, messages)
    epochs: int
    source: BatchSource
    model: torch.nn.Module  # checked for finite weights each epoch
    stop: StopFlag
    checkpoint_path: Path
    resume: str  # the command that continues after an interruption
    nan_hint: str = "start again with a lower --lr"
    progress: bool = True
    progress_every: float = 30.0
    rank: int = 0
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None  # after each step (per-step logging)
    run_dir: Path | None = None  # the folder an Interrupted names (default: the checkpoint's)

    def run(self, pos: LoopPosition, step: Callable[[torch.Tensor, int], dict[str, torch.Tensor]],
            save: Callable[[LoopPosition], None], end_epoch: Callable[[int, dict[str, Any], float], None]) -> None:
        hook = test_signal_hook() if self.rank == 0 else None
        saved_at = pos.describe()
        spe = self.source.steps_per_epoch
        while pos.epoch < self.epochs:
            if pos.perm is None:
                pos.perm, pos.sums = self.source.order(), {}
            stopping = self._epoch(pos, step, hook)
            means = epoch_means(pos.sums, pos.step_in_epoch)
            what = non_finite(means, self.model)
            if what is not None:
                kept = (f"the last good checkpoint ({saved_at}) is kept in {self.checkpoint_path}; "
                        if self.checkpoint_path.exists() else "")
                raise NonFiniteLoss(f"{what} in epoch {pos.epoch + 1}; stopped; {kept}{self.nan_hint}")
            if stopping and pos.step_in_epoch < spe:
                save(pos)
                self.raise_if_asked()
            end_epoch(pos.epoch + 1, means, pos.train_seconds)
            pos.epoch, pos.step_in_epoch, pos.perm, pos.sums, pos.train_seconds = pos.epoch + 1, 0, None, {}, 0.0
            save(pos)
            saved_at = pos.describe()
            self.raise_if_asked()

    def _epoch(self, pos: LoopPosition, step: Callable[[torch.Tensor, int], dict[str, torch.Tensor]],
               hook: tuple[int, int] | None) -> bool:
        """Run the rest of the current epoch; True when a signal stopped it early."""
        spe = self.source.steps_per_epoch
        order = pos.perm.to(self.source.device)
        bar = Progress(self.stage, spe, epoch=pos.epoch + 1, epochs=self.epochs, initial=pos.step_in_epoch,
                       batch_size=self.source.batch_size, every=self.progress_every,
                       enabled=self.progress and self.rank == 0)
        tick, stopping = time.perf_counter(), False
        for i in range(pos.step_in_epoch, spe):
            global_step = pos.epoch * spe + i
            out = step(self.source.indices(order, i), global_step)
            accumulate(pos.sums, out)
            pos.step_in_epoch = i + 1
            bar.update(out["loss"])
            if self.on_step is not None:
                self.on_step(global_step + 1, out)
            if hook is not None and global_step + 1 == hook[0]:
                os.kill(os.getpid(), hook[1])
            if self.stop.asked():  # every rank stops after the same step
                stopping = True
                break
        dev.sync(self.source.device)
        pos.train_seconds += time.perf_counter() - tick
        bar.close()
        return stopping

    def raise_if_asked(self) -> None:
        if self.stop.asked():
            raise Interrupted(self.run_dir or self.checkpoint_path.parent, self.stop.signum or signal.SIGTERM,
                              self.resume)


__all__ = ["BatchSource", "EpochLog", "EpochLoop", "LoopCheckpoint", "LoopSettings", "matching_checkpoint", "Interrupted", "LoopPosition", "NonFiniteLoss", "StopFlag", "accumulate",
           "as_input", "epoch_means", "finite_weights", "loop_state", "non_finite", "restore_position",
           "test_signal_hook", "TEST_SIGNAL_ENV"]
