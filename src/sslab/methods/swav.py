"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski, Joulin; NeurIPS 2020): "Swapping Assignments between Views".

f = backbone + projector, z = normalize(f(x)); scores s = z C^T against K unit prototypes C (a Linear without
bias, re-normalised before every step). For each of the 2 global crops ("crops_for_assign") the codes q come
from the Sinkhorn-Knopp algorithm on its scores (together with a queue of past embeddings' scores when there is
one), and every OTHER crop, local ones included, predicts them:
    L = mean over assigned crops i of [ sum_{v != i} -mean_b sum_k q_i log softmax(s_v / tau) ] / (V - 1)
(official `main_swav.py`). Sinkhorn-Knopp (official `distributed_sinkhorn`): Q = exp(s / eps)^T (K x B), scaled to
sum 1, then `iterations` times rows to 1/K and columns to 1/B; the codes are the columns scaled to sum 1.
"we use ... epsilon = 0.05 ... 3 iterations" (section 4, implementation details). No gradient flows through q.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.distributed import gather_no_grad, rank
from sslab.methods.base import MAX_WIDTH, Method, MethodSettings, ProjectorSettings, StepProgress, ViewSpec
from sslab.methods.crops import SWAV_GLOBAL_SCALE, SWAV_LOCAL_SCALE, by_size, check_local_crops, multi_crop
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.settings import setting


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes (B, K), rows summing to 1, for scores (B, K): the equipartitioned assignment of the batch to
    the K prototypes. Computed in float32 (exp(s / 0.05) of bf16 scores would overflow its precision)."""
    q = torch.exp(scores.to(torch.promote_types(scores.dtype, torch.float32)) / epsilon).T  # K x B
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)  # each prototype gets total weight 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample gets total weight 1/B
        q /= b
    return (q * b).T  # B x K


def swapped_prediction(scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor],
                       temperature: float = 0.1) -> torch.Tensor:
    """scores: V crops' (B, K) scores (the assigned crops first); codes: the codes of crops 0 .. len(codes) - 1.
    Each other crop predicts each assigned crop's codes; mean over pairs as the official loss."""
    log_p = [F.log_softmax(s / temperature, dim=1) for s in scores]
    loss = 0.0
    for i, q in enumerate(codes):
        sub = sum(-(q * log_p[v]).sum(dim=1).mean() for v in range(len(scores)) if v != i)
        loss = loss + sub / (len(scores) - 1)
    return loss / len(codes)


def swav_codes(scores: torch.Tensor, queue_scores: torch.Tensor | None, epsilon: float = 0.05,
               iterations: int = 3) -> torch.Tensor:
    """Sinkhorn codes of the batch's scores (B, K), with the queue's scores (Q, K) stacked in front when given
    ("the codes are computed ... using the features of the batch and the stored features", section 4.1) and
    dropped from the result."""
    s = scores.detach() if queue_scores is None else torch.cat([queue_scores.detach(), scores.detach()])
    return sinkhorn(s, epsilon, iterations)[-scores.shape[0]:]


def swav_loss(scores: Sequence[torch.Tensor], queue_scores: Sequence[torch.Tensor] | None = None,
              temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3,
              assigned: int = 2) -> torch.Tensor:
    """The whole loss: codes for the first `assigned` crops (with their queue scores when given), then
    `swapped_prediction` over every crop."""
    codes = [swav_codes(scores[i], None if queue_scores is None else queue_scores[i], epsilon, iterations)
             for i in range(assigned)]
    return swapped_prediction(scores, codes, temperature)


def swav_projector(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU-Linear (official `hidden_mlp` 2048, `feat_dim` 128)."""
    return mlp([in_dim, hidden, out_dim])


def swav_prototypes(dim: int, count: int) -> nn.Linear:
    """K prototypes as the rows of a Linear without bias (official `nmb_prototypes` 3000)."""
    return nn.Linear(dim, count, bias=False)


@torch.no_grad()
def normalise_prototypes_(prototypes: nn.Linear) -> None:
    """Unit rows, in place: the official loop does this before every forward."""
    prototypes.weight.copy_(F.normalize(prototypes.weight, dim=1))


@dataclass
class SwAVSettings(MethodSettings, ProjectorSettings):
    """solo-learn's CIFAR SwAV (scripts/pretrain/cifar/swav.yaml, ResNet-18, 89.17% linear at 1000 ep): LARS
    (eta 0.02, clipped, BN/bias excluded) lr 0.6 per 256, wd 1e-6, warm-up 10 epochs then cosine; projector
    2048 -> 128; 3000 prototypes; temperature 0.1; Sinkhorn epsilon 0.05, 3 iterations; a queue of 3840
    embeddings per assigned crop from epoch 50; prototypes frozen for the first 2 epochs; 2 crops. Batch 512,
    800 epochs as the other recipes here."""

    num_prototypes: int = setting(3000, "K, the prototypes (cluster centres) the codes assign images to", ge=1,
                                  le=MAX_WIDTH * 4)
    temperature: float = setting(0.1, "temperature of the softmax over the prototype scores", ge=1e-3, le=100)
    sinkhorn_epsilon: float = setting(0.05, "epsilon of Sinkhorn-Knopp (lower: harder codes)", gt=0, le=10)
    sinkhorn_iterations: int = setting(3, "iterations of Sinkhorn-Knopp", ge=1, le=1000)
    queue_size: int = setting(3840, "past embeddings per assigned view whose scores join the codes' computation "
                              "(0: no queue)", ge=0, le=2**22)
    queue_start_epoch: int = setting(50, "epoch from which the queue is filled (and used once full)", ge=0,
                                     le=100_000)
    freeze_prototypes_epochs: int = setting(2, "epochs during which the prototypes get no update", ge=0, le=100_000)
    local_crops: int = setting(0, "local views per image (multi-crop), of 3/7 of the image's side; 0: the 2 global "
                               "views only", ge=0, le=64)
    proj_dim: int = 128
    optimizer: str = "lars"
    lr: float = 0.6
    weight_decay: float = 1e-6

    # solo-learn's symmetric recipe (augmentations/symmetric.yaml): jitter (0.8, 0.8, 0.8, 0.2), blur p 0.5
    augment = {"jitter": (0.8, 0.8, 0.8, 0.2), "blur_p": 0.5}
    # ImageNet (ResNet-50, 224 px; the official swav_800ep_pretrain.sh): LARS lr 4.8 at batch 4096 (0.3 per 256)
    # decaying to 0.0048 (a fraction 1e-3), batch 4096, 800 epochs, no queue, prototypes frozen for about one epoch
    # (313 iterations), 2 x 224 + 6 x 96 crops
    large_images = {"lr": 0.3, "min_lr": 1e-3, "batch_size": 4096, "epochs": 800, "queue_size": 0,
                    "freeze_prototypes_epochs": 1, "local_crops": 6}


@METHODS.register("swav")
class SwAV(Method):
    Settings = SwAVSettings

    def __init__(self, backbone, cfg: SwAVSettings):
        super().__init__(backbone, cfg)
        check_local_crops(backbone, cfg.local_crops)
        self.num_views = 2 + cfg.local_crops
        self.projector = swav_projector(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.prototypes = swav_prototypes(cfg.proj_dim, cfg.num_prototypes)
        self.register_buffer("queue", torch.zeros(2, cfg.queue_size, cfg.proj_dim))  # 2 x Q x d, newest first
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # rows holding embeddings
        self.register_buffer("queue_on", torch.tensor(cfg.queue_start_epoch == 0))  # set by before_step

    def view_specs(self, image_size: int) -> list[ViewSpec]:
        return multi_crop(image_size, self.cfg.local_crops, SWAV_GLOBAL_SCALE, SWAV_LOCAL_SCALE)

    def forward(self, views, clean=None):
        c = self.cfg
        groups = by_size(views)  # views of one size go through the backbone together
        embedded = [F.normalize(self.projector(self.backbone(torch.cat([views[i] for i in g]))), dim=1) for g in groups]
        z = [v for e, g in zip(embedded, groups) for v in e.chunk(len(g))]  # V x (B, d)
        scores = [self.prototypes(v).float() for v in z]  # V x (B, K)
        queue_scores = self.queue_scores()
        codes = [self.codes(scores[i], None if queue_scores is None else queue_scores[i]) for i in range(2)]
        loss = swapped_prediction(scores, codes, c.temperature)
        if self.training and c.queue_size > 0 and bool(self.queue_on):
            self.enqueue(torch.stack([gather_no_grad(z[0].detach()), gather_no_grad(z[1].detach())]))
        return {"loss": loss, "z": z[0].detach()}

    @torch.no_grad()
    def queue_scores(self) -> torch.Tensor | None:
        """2 x (Q, K): the queue's embeddings scored against today's prototypes, once the queue is on and full."""
        size = self.cfg.queue_size
        if size == 0 or not bool(self.queue_on) or int(self.queue_filled) < size:
            return None
        return (self.queue.to(self.prototypes.weight.dtype) @ self.prototypes.weight.T).float()

    def codes(self, scores: torch.Tensor, queue_scores: torch.Tensor | None) -> torch.Tensor:
        """This rank's rows of the codes of the global batch (Sinkhorn over every rank's scores, as the official
        code's all-reduced sums)."""
        b = scores.shape[0]
        codes = swav_codes(gather_no_grad(scores.detach()), queue_scores, self.cfg.sinkhorn_epsilon,
                           self.cfg.sinkhorn_iterations)
        return codes[rank() * b:(rank() + 1) * b]

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor) -> None:
        """z: 2 x B x d. The newest rows go first, the oldest fall off the end (the official shift)."""
        size = self.queue.shape[1]
        self.queue.copy_(torch.cat([z.to(self.queue.dtype), self.queue], dim=1)[:, :size])
        self.queue_filled.copy_((self.queue_filled + z.shape[1]).clamp(max=size))

    @torch.no_grad()
    def before_step(self, progress: StepProgress) -> None:
        normalise_prototypes_(self.prototypes)  # official: before every step
        self.queue_on.fill_(progress.epoch >= self.cfg.queue_start_epoch)

    def after_backward(self, progress: StepProgress) -> None:
        if progress.epoch < self.cfg.freeze_prototypes_epochs:  # official: "cancel gradients for the prototypes"
            self.prototypes.weight.grad = None
