"""DINO (Caron et al., ICCV 2021): "self-distillation with no labels".

student = backbone + DINOHead; teacher = EMA of the student, never trained. The teacher sees the 2 global crops,
the student every crop (2 global + N local, multi-crop). Both heads end in K "prototype" logits; the teacher's
are centred and sharpened, and the student learns to predict them:
    P_t = softmax((g_t(x) - c) / tau_t),   log P_s = log_softmax(g_s(x') / tau_s),
    L = mean over pairs (global crop i of the teacher, crop v != i of the student) of mean_b -sum_k P_t log P_s,
    c <- m c + (1 - m) mean over the teacher's outputs of this batch (all ranks), after the loss.
"Centering prevents one dimension to dominate but encourages collapse to the uniform distribution, while the
sharpening has the opposite effect" (paper, section 3.1). Official defaults: tau_s = 0.1, tau_t = 0.04 (linear
warm-up from `warmup_teacher_temp` over the first epochs), m = 0.9.

DINOHead (official `vision_transformer.py`): 3-layer MLP with GELU (hidden 2048, bottleneck 256), l2-normalise,
then a weight-normalised Linear(256, K, no bias) whose norms g are fixed at 1 (`norm_last_layer=True`), so the
logits are cosines between the bottleneck vector and K unit prototypes.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def dino_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """Cross-entropy of every student crop against every teacher crop but its own.

    student: V logits (B, K) (the 2 global crops first, then the local ones); teacher: the 2 global crops'
    logits (B, K) from the teacher (detached here); center: (1, K). Pairs with v == i (the same crop) are
    skipped; the loss is the mean over the remaining 2V - 2 pairs of the batch-mean cross-entropy."""
    log_p = [F.log_softmax(s / student_temp, dim=-1) for s in student]  # V x (B, K)
    targets = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher]  # 2 x (B, K)
    total, terms = 0.0, 0
    for i, p_t in enumerate(targets):
        for v, lp_s in enumerate(log_p):
            if v == i:
                continue  # the teacher and the student on the same crop
            total = total + torch.sum(-p_t * lp_s, dim=-1).mean()
            terms += 1
    return total / terms


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: Sequence[torch.Tensor], momentum: float = 0.9) -> torch.Tensor:
    """c <- m c + (1 - m) mean_b over every teacher output (the caller gathers them from every rank first)."""
    batch_center = torch.cat(list(teacher)).mean(dim=0, keepdim=True)  # 1 x K
    return center * momentum + batch_center * (1 - momentum)


def teacher_temperature(epoch: int, warmup_temp: float, final_temp: float, warmup_epochs: int) -> float:
    """The official schedule `concat(linspace(warmup_temp, final_temp, warmup_epochs), final_temp...)[epoch]`:
    linear over the first `warmup_epochs` epochs (reaching `final_temp` at the last of them), then constant."""
    if epoch >= warmup_epochs:
        return final_temp
    if warmup_epochs == 1:
        return warmup_temp  # linspace(a, b, 1) == [a]
    return warmup_temp + (final_temp - warmup_temp) * epoch / (warmup_epochs - 1)


class WeightNormLinear(nn.Module):
    """y = x W^T with rows W_k = g_k v_k / |v_k| (Salimans & Kingma's weight norm, as `nn.utils.weight_norm` on a
    Linear without bias). `fixed_norm`: g stays 1 (DINO's `norm_last_layer`: "we normalize the last layer ...
    which improves stability")."""

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """MLP (Linear-GELU x (layers - 1), Linear to `bottleneck`) -> l2-normalise -> WeightNormLinear(bottleneck, K).
    `batchnorm`: BN after the hidden Linears (official `use_bn_in_head`, off by default)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256, layers: int = 3,
                 batchnorm: bool = False, norm_last_layer: bool = True):
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-2], dims[1:-1]):
            blocks += [nn.Linear(d_in, d_out), *([nn.BatchNorm1d(d_out)] if batchnorm else []), nn.GELU()]
        blocks.append(nn.Linear(dims[-2], dims[-1]))
        self.mlp = nn.Sequential(*blocks)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):  # official _init_weights: trunc_normal(std .02), zero bias
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck, out_dim, fixed_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)  # B x bottleneck, unit rows
        return self.last_layer(x)  # B x K
