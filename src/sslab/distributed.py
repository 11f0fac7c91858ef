"""torch.distributed for `torchrun --nproc_per_node N -m sslab train ...`. In a single process every helper
here is the identity (or a no-op), so the training loop reads the same with one process or many.

Process group: `init_from_env()` reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
the backend is NCCL on CUDA and gloo on the CPU. A second, gloo, group carries the small control messages
(the stop flag checked every step, Python objects such as generator states), so they never wait on the GPU.

Contrastive losses must see the negatives of every rank: `gather_with_grad` concatenates a tensor from all
ranks along dim 0 (rank order) and keeps the gradient of this rank's slice, so each rank can compute the
loss over the global batch. Its backward sums the incoming gradients over ranks and returns this rank's
slice: with every rank computing the same global loss and DDP averaging parameter gradients over ranks,
the result is exactly the gradient of the global loss (the scheme of SimCLR's and solo-learn's GatherLayer).

BatchNorm over the global batch: on CUDA, torch's `nn.SyncBatchNorm`. torch's SyncBatchNorm refuses CPU
tensors, so on the CPU (gloo) `SyncBatchNorm` below does the same with two all-reduces per layer: the
global mean, then the global variance; both all-reduces pass the gradient back (the backward of a sum over
ranks is a sum over ranks), so the gradient is that of batch norm over the concatenated batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from sslab.errors import ConfigError, UserError

T = TypeVar("T")
_control_group: Any = None  # gloo group for flags and objects (the default group when it is gloo already)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# ---- process group ------------------------------------------------------------------------------------
@dataclass
class DistributedRun:
    """What `init_from_env` set up; `close()` destroys the group if this call created it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    def close(self) -> None:
        global _control_group
        if self.created and is_distributed():
            dist.destroy_process_group()
            _control_group = None


def init_from_env(device_name: str) -> DistributedRun:
    """Join torchrun's process group when WORLD_SIZE > 1 (no-op otherwise, or when a group already exists).

    `device_name` is --device: under torchrun `cuda`/`auto` mean this process's GPU, cuda:LOCAL_RANK."""
    global _control_group
    if is_distributed():
        return DistributedRun(rank(), world_size(), int(os.environ.get("LOCAL_RANK", rank())))
    if not launched_by_torchrun():
        return DistributedRun()
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not; start multi-process runs with "
                          "torchrun --nproc_per_node N -m sslab train ...")
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if device_name not in ("cuda", "auto"):
            raise ConfigError(f"--device {device_name} names one GPU, but under torchrun each process takes "
                              "cuda:LOCAL_RANK; pass --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)")
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started more processes per node than the {torch.cuda.device_count()} "
                              "visible GPU(s); lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    _control_group = dist.new_group(backend="gloo") if use_cuda else dist.group.WORLD
    return DistributedRun(dist.get_rank(), dist.get_world_size(), local_rank, created=True)


def _control() -> Any:
    return _control_group if _control_group is not None else dist.group.WORLD


# ---- collectives used by the training loop ------------------------------------------------------------
def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one (a CPU all-reduce; never syncs the GPU)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control())
    return bool(t.item())


def barrier() -> None:
    if world_size() > 1:
        dist.barrier(group=_control())


def all_gather_object(obj: T) -> list[T]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small objects: generator states, metric sums)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_control())
    return out


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control())
    return box[0]


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The average of `x` over ranks (a new tensor; `x` is left alone)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def rank0_first(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0, then on the others (rank 0 fills a cache the others read). A UserError on rank 0
    is raised on every rank, so no rank waits forever for one that stopped."""
    if world_size() == 1:
        return fn()
    failure: tuple[type, str] | None = None
    result: Any = None
    if is_main():
        try:
            result = fn()
        except UserError as e:
            failure = (type(e), str(e))
    failure = broadcast_object(failure)
    if failure is not None:
        kind, message = failure
        raise kind(message)
    return result if is_main() else fn()


def on_rank0(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 only; its result (or its UserError) reaches every rank."""
    if world_size() == 1:
        return fn()
    result: Any = None
    failure: tuple[type, str] | None = None
    if is_main():
        try:
            result = fn()
        except UserError as e:
            failure = (type(e), str(e))
    result, failure = broadcast_object((result, failure))
    if failure is not None:
        kind, message = failure
        raise kind(message)
    return result


# ---- gathering embeddings -----------------------------------------------------------------------------
class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.n = x.shape[0]
        return torch.cat(parts)  # (world * N) x ...

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum over ranks of d(loss_r)/d(gathered)
        return grad[rank() * ctx.n:(rank() + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """cat([x from rank 0, x from rank 1, ...]); the gradient flows back to this rank's x. Same N on every rank."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """cat([x from rank 0, x from rank 1, ...]) without gradient (MoCo's keys for the queue)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# ---- batch norm over the global batch -----------------------------------------------------------------
class _SumOverRanks(torch.autograd.Function):
    """y = sum_r x_r on every rank; dL/dx_r = sum_s dL_s/dy (the loss is the sum of the ranks' losses)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return x if world_size() == 1 else _SumOverRanks.apply(x)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (1d or 2d) whose training-mode statistics are those of the batch over all ranks.

    Same parameters and buffers as nn.BatchNorm*d (checkpoints load into either). Written with plain
    tensor ops and a differentiable all-reduce, so it runs on any backend (gloo included); used on the
    CPU, where torch's SyncBatchNorm refuses to run. In eval mode it is ordinary batch norm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))  # all but the channel dim
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * world_size()  # values per channel over all ranks (same N per rank)
        xf = x.float()
        mean = sum_over_ranks(xf.sum(dims)) / count  # C
        var = sum_over_ranks(((xf - mean.view(shape)) ** 2).sum(dims)) / count  # C, biased (as BN normalises)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1), alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` synced over ranks: torch's SyncBatchNorm on CUDA, ours elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, device=module.running_mean.device if
                            module.running_mean is not None else None)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel and torch.compile wrappers (its state dict has no prefix)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


__all__ = ["is_distributed", "rank", "world_size", "is_main", "init_from_env", "DistributedRun", "any_rank",
           "barrier", "all_gather_object", "broadcast_object", "mean_over_ranks", "rank0_first", "on_rank0",
           "gather_with_grad", "gather_no_grad", "sum_over_ranks", "SyncBatchNorm", "convert_sync_batchnorm",
           "unwrap"]
