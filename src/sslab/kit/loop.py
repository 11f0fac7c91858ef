"""The epoch loop (`EpochLoop`): steps, progress, the NaN stop, a checkpoint after a signal and after each epoch.

What a loop computes in one step, what it logs at the end of an epoch and what its checkpoint holds besides the
loop state stay with the loop that uses it (callbacks), so each reads as a recipe. `STEP_OBSERVERS` are called
after every step of every loop (`observer(loop, global_step)`): tests install one that sends a signal at a chosen
step (tests/signal_hook.py); profilers can too.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sslab import device as dev
from sslab.kit.metrics import accumulate, epoch_means, non_finite
from sslab.kit.position import BatchSource, LoopPosition
from sslab.kit.signals import Interrupted, NonFiniteLoss, StopFlag
from sslab.progress import Progress

STEP_OBSERVERS: list[Callable[["EpochLoop", int], None]] = []


@dataclass(kw_only=True)
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
    progress: bool  # --progress, --progress-every
    progress_every: float
    nan_hint: str = "start again with a lower --lr"
    rank: int = 0
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None  # after each step (per-step logging)
    run_dir: Path | None = None  # the folder an Interrupted names (default: the checkpoint's)
    # (the epoch's CPU order, its first step) before its steps: a streamed feed gathers the next batches from it
    on_epoch_start: Callable[[torch.Tensor, int], None] | None = None

    def run(self, pos: LoopPosition, step: Callable[[torch.Tensor, int], dict[str, torch.Tensor]],
            save: Callable[[LoopPosition], None], end_epoch: Callable[[int, dict[str, Any], float], None]) -> None:
        saved_at = pos.describe()
        spe = self.source.steps_per_epoch
        while pos.epoch < self.epochs:
            if pos.perm is None:
                pos.perm, pos.sums = self.source.order(), {}
            stopping = self._epoch(pos, step)
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

    def _epoch(self, pos: LoopPosition, step: Callable[[torch.Tensor, int], dict[str, torch.Tensor]]) -> bool:
        """Run the rest of the current epoch; True when a signal stopped it early."""
        spe = self.source.steps_per_epoch
        order = pos.perm.to(self.source.device)
        bar = Progress(self.stage, spe, epoch=pos.epoch + 1, epochs=self.epochs, initial=pos.step_in_epoch,
                       batch_size=self.source.batch_size, every=self.progress_every,
                       enabled=self.progress and self.rank == 0)
        if self.on_epoch_start is not None:
            self.on_epoch_start(pos.perm, pos.step_in_epoch)
        tick, stopping = time.perf_counter(), False
        for i in range(pos.step_in_epoch, spe):
            global_step = pos.epoch * spe + i
            out = step(self.source.indices(order, i), global_step)
            accumulate(pos.sums, out)
            pos.step_in_epoch = i + 1
            bar.update(out["loss"])
            if self.on_step is not None:
                self.on_step(global_step + 1, out)
            for observe in STEP_OBSERVERS:
                observe(self, global_step + 1)
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


__all__ = ["EpochLoop", "STEP_OBSERVERS"]
