"""LARS (You et al. 2017) for the large-batch recipes: SGD whose per-layer step is scaled by
trust * ||w|| / ||g + wd w||; biases and BN parameters (1-d tensors) are excluded from the scaling and decay.

The defaults are solo-learn's (its CIFAR SimCLR/BYOL recipes: `eta: 0.02, clip_lr: True,
exclude_bias_n_norm: True`): with `clip` the adapted per-layer lr is min(trust * ||w|| / ||g + wd w||, lr),
so the scheduled lr (warm-up, cosine) caps the step instead of multiplying it.
"""
from __future__ import annotations

import torch


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
