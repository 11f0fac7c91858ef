"""Where a loop is and what it resumes from: the sample order of each epoch (`BatchSource`), the position
(`LoopPosition`), and the part of a checkpoint that makes a resume exact (`loop_state` / `restore_position`:
position, every generator, every rank's metric sums), for `train` and for the loops that keep a checkpoint file
of their own (`LoopCheckpoint`: a SCAN stage, the standard probe, a fine-tune)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sslab import device as dev
from sslab import distributed as ddp
from sslab.checkpoint import load_checkpoint, save_checkpoint
from sslab.config import progress_every_setting, progress_setting
from sslab.errors import ConfigError
from sslab.kit.signals import StopFlag

Log = Callable[[str], None]


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (a model's initial weights come from torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    source.order_gen.set_state(rng["order_gen"])
    ranks = state["ranks"]
    step = int(lp["global_step"])
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
        if not sums:  # the mean over the old ranks: the ranks' average at the epoch's end is unchanged
            keys = set.intersection(*(set(r["sums"]) for r in ranks))
            sums = {k: torch.stack([r["sums"][k] for r in ranks]).mean(0) for k in keys}
        if step > 0:
            log(f"note: resuming with {world} process(es) where the checkpoint had {len(ranks)}"
                " (or on another device type): model, optimiser, sample order and step are exact; the augmentation"
                " stream is reseeded")
    return LoopPosition(epoch=epoch, step_in_epoch=step_in_epoch, perm=lp.get("perm"),
                        sums={k: v.to(source.device) for k, v in sums.items()},
                        train_seconds=float(lp["train_seconds"]))


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
        the start."""
        if state is None:
            return LoopPosition()
        self._load(state)
        self.extra = {k: state[k] for k in self.extra if k in state}
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
    progress: bool = progress_setting()
    progress_every: float = progress_every_setting()


def matching_checkpoint(path: Path | None, settings: dict[str, Any], log: Log) -> dict[str, Any] | None:
    """The unfinished checkpoint at `path` when it was made with `settings`, else None (a mismatch is noted and
    the loop starts over)."""
    if path is None or not path.exists():
        return None
    state = load_checkpoint(path)
    if state.get("settings") != settings or state.get("done"):
        log(f"note: {path} was made with other settings; starting over")
        return None
    return state
