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

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.distributed import gather_no_grad
from sslab.methods.base import (
    MAX_WIDTH,
    Method,
    MethodSettings,
    ProjectorSettings,
    StepProgress,
    ViewSpec,
    ema_update,
    frozen_copy,
    no_decay_groups,
)
from sslab.methods.byol import byol_momentum
from sslab.methods.crops import DINO_GLOBAL_SCALE, DINO_LOCAL_SCALE, asymmetric_pair, by_size, check_local_crops, multi_crop
from sslab.models.resnet import SMALL_IMAGE_MAX
from sslab.registry import METHODS
from sslab.settings import setting


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


@dataclass
class DINOSettings(MethodSettings, ProjectorSettings):
    """solo-learn's CIFAR DINO (scripts/pretrain/cifar/dino.yaml and solo/methods/dino.py, ResNet-18, 89.52% linear
    at 1000 ep): LARS (eta 0.02, clipped, BN/bias excluded) lr 0.3 per 256, wd 1e-6, warm-up 10 epochs then cosine;
    head 2048 -> bottleneck 256 -> 4096 prototypes, last layer's norm fixed; student temperature 0.1, teacher 0.04
    rising linearly to 0.07 over the first 50 epochs; centre momentum 0.9; teacher EMA 0.9995 -> 1 by cosine; the
    last layer frozen for the first epoch; 2 crops. Batch 512, 800 epochs as the other recipes here."""

    num_prototypes: int = setting(4096, "K, the output width of the DINO head (its prototypes)", ge=1, le=MAX_WIDTH * 4)
    student_temp: float = setting(0.1, "temperature of the student's softmax", ge=1e-3, le=100)
    teacher_temp: float = setting(0.07, "temperature of the teacher's softmax after its warm-up (sharpening)",
                                  ge=1e-3, le=100)
    warmup_teacher_temp: float = setting(0.04, "the teacher's temperature at the first epoch", ge=1e-3, le=100)
    warmup_teacher_temp_epochs: int = setting(50, "epochs over which the teacher's temperature rises linearly to "
                                              "teacher_temp", ge=0, le=100_000)
    center_momentum: float = setting(0.9, "momentum of the EMA of the teacher's outputs subtracted before its "
                                     "softmax (centring)", ge=0, lt=1)
    ema: float = setting(0.9995, "tau_base, the teacher's EMA momentum at the start (it rises to 1 by cosine)", ge=0,
                         le=1)
    freeze_last_layer_epochs: int = setting(1, "epochs during which the head's last layer gets no update", ge=0,
                                            le=100_000)
    local_crops: int = setting(0, "local views per image (multi-crop), of 3/7 of the image's side; 0: the 2 global "
                               "views only", ge=0, le=64)
    proj_dim: int = 256
    optimizer: str = "lars"
    lr: float = 0.3
    weight_decay: float = 1e-6

    # solo-learn's asymmetric recipe: jitter (0.4, 0.4, 0.2, 0.1), the second view solarized (view_specs)
    augment = {"jitter": (0.4, 0.4, 0.2, 0.1)}
    # ImageNet (ViT-S/16, 224 px; the official main_dino.py defaults): AdamW lr 5e-4 per 256, wd 0.04, batch 1024,
    # 100 epochs, cosine to 1e-6 (a fraction 5e-4 of the peak 2e-3); 65536 prototypes; teacher temperature 0.04
    # without warm-up; EMA 0.996; 2 x 224 + 8 x 96 crops
    large_images = {"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.04, "batch_size": 1024, "epochs": 100,
                    "min_lr": 5e-4, "num_prototypes": 65536, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
                    "ema": 0.996, "local_crops": 8}


def head_outputs(head: DINOHead, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the bottleneck embedding (B, bottleneck), the K logits (B, K)): DINOHead.forward, keeping the former."""
    h = head.mlp(features)
    return h, head.last_layer(F.normalize(h, dim=-1))


@METHODS.register("dino")
class DINO(Method):
    Settings = DINOSettings

    def __init__(self, backbone, cfg: DINOSettings):
        super().__init__(backbone, cfg)
        check_local_crops(backbone, cfg.local_crops)
        self.num_views = 2 + cfg.local_crops
        self.head = DINOHead(backbone.out_dim, cfg.num_prototypes, cfg.proj_hidden, cfg.proj_dim)
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.num_prototypes))  # 1 x K
        self.register_buffer("current_teacher_temp", torch.tensor(cfg.warmup_teacher_temp))  # set by before_step

    def view_specs(self, image_size: int) -> list[ViewSpec]:
        large = image_size > SMALL_IMAGE_MAX  # the official blur 1.0 / 0.1 (+ solarize) on the globals, 0.5 locally
        return multi_crop(image_size, self.cfg.local_crops, DINO_GLOBAL_SCALE, DINO_LOCAL_SCALE,
                          asymmetric_pair(image_size), {"blur_p": 0.5} if large else {})

    def forward(self, views, clean=None):
        groups = by_size(views)  # views of one size go through the backbone together
        outs = [head_outputs(self.head, self.backbone(torch.cat([views[i] for i in g]))) for g in groups]
        student = [s for (_, logits), g in zip(outs, groups) for s in logits.chunk(len(g))]  # V x (B, K)
        z = outs[0][0][:views[0].shape[0]]  # the first view's bottleneck embedding
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(views[:2]))).chunk(2)  # 2 x (B, K)
        student = [s.float() for s in student]
        teacher = [t.float() for t in teacher]
        loss = dino_loss(student, teacher, self.center, self.cfg.student_temp, self.current_teacher_temp)
        if self.training:  # the centre of the global batch's teacher outputs, after the loss
            self.center.copy_(updated_center(self.center, [gather_no_grad(torch.cat(teacher))],
                                             self.cfg.center_momentum))
        return {"loss": loss, "z": z.detach()}

    def param_groups(self):
        trainable = [p for p in [*self.backbone.parameters(), *self.head.parameters()] if p.requires_grad]
        return no_decay_groups(trainable, fixed_lr=False)

    def before_step(self, progress: StepProgress) -> None:
        c = self.cfg
        epoch = progress.step // progress.steps_per_epoch
        self.current_teacher_temp.fill_(teacher_temperature(epoch, c.warmup_teacher_temp, c.teacher_temp,
                                                            c.warmup_teacher_temp_epochs))

    def after_backward(self, progress: StepProgress) -> None:
        if progress.epoch < self.cfg.freeze_last_layer_epochs:  # official: "cancel_gradients_last_layer"
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_step(self, progress: StepProgress) -> None:
        tau = byol_momentum(self.cfg.ema, progress.done)
        ema_update(self.teacher_backbone, self.backbone, tau)
        ema_update(self.teacher_head, self.head, tau)
