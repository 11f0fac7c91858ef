"""The few torch.distributed helpers the methods need. In a single process every one is the identity.

Contrastive losses must see the negatives of every rank: `gather_with_grad` concatenates a tensor from all
ranks along dim 0 (rank order) and keeps the gradient of this rank's slice, so each rank can compute the
loss over the global batch. Its backward sums the incoming gradients over ranks and returns this rank's
slice: with every rank computing the same global loss and DDP averaging parameter gradients over ranks,
the result is exactly the gradient of the global loss (the scheme of SimCLR's and solo-learn's GatherLayer).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


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


__all__ = ["is_distributed", "rank", "world_size", "gather_with_grad", "gather_no_grad"]
