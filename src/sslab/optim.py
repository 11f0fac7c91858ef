"""LARS (You et al. 2017) for the large-batch recipes: SGD whose per-layer step is scaled by
trust * ||w|| / ||g + wd w||; biases and BN parameters (1-d tensors) are excluded from the scaling and decay.

The defaults are solo-learn's (its CIFAR SimCLR/BYOL recipes: `eta: 0.02, clip_lr: True,
exclude_bias_n_norm: True`): with `clip` the adapted per-layer lr is min(trust * ||w|| / ||g + wd w||, lr),
so the scheduled lr (warm-up, cosine) caps the step instead of multiplying it.

Also the one learning-rate schedule every loop uses (`cosine_lr`) and the optimiser factory (`make_optimizer`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from sslab.device import fused_options
from sslab.settings import one_of
from sslab.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw", "lars")


def cosine_lr(step: int, total: int, peak: float, warmup: int = 0, floor: float = 0.0) -> float:
    """lr at `step` (counted from 0) of `total`: linear warm-up to `peak` over `warmup` steps, then a half
    cosine from `peak` down to `floor` at the last step (SGDR without restarts, Loshchilov & Hutter 2017)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(opt: torch.optim.Optimizer, lr: float, peak: float | None = None) -> None:
    """Set every group's lr; a group marked `fixed_lr` (SimSiam's predictor) keeps `peak`."""
    for g in opt.param_groups:
        g["lr"] = peak if g.get("fixed_lr") and peak is not None else lr


def make_optimizer(name: str, groups: Iterable[dict[str, Any]], lr: float, momentum: float,
                   weight_decay: float, device: torch.device | None = None,
                   fused: bool | None = None) -> torch.optim.Optimizer:
    """sgd (momentum), adamw or lars over parameter `groups` (dicts with "params"; empty groups are dropped).
    `fused`: the fused SGD/AdamW kernel; None: on a GPU only (LARS has none)."""
    groups = [{**g, "lr": lr} for g in groups if g["params"]]
    fused = fused_options(device, fused) if device is not None else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fused)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ConfigError(f"unknown --optimizer {name!r}; use {one_of(OPTIMIZERS)}")


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust: float = 0.02,
                 clip: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, clip=clip))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = p.norm(), d.norm()
                    ratio = group["trust"] * w_norm / d_norm
                    if group.get("clip", False):
                        ratio = torch.clamp(ratio / group["lr"], max=1.0)  # layer lr = min(trust ratio, lr)
                    scale = torch.where((w_norm > 0) & (d_norm > 0), ratio, 1.0)
                    d = d * scale
                buf = self.state[p].get("momentum")
                if buf is None:
                    buf = self.state[p]["momentum"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
