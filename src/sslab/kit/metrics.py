"""A loop's numbers: per-epoch sums on the device (`accumulate`), their means over steps and ranks
(`epoch_means`), the NaN/inf check (`non_finite`), and the record of each epoch (`EpochLog`: metrics.jsonl and
TensorBoard)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from sslab import distributed as ddp
from sslab.jsonl import append_jsonl, keep_until


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
