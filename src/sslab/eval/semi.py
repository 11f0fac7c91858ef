"""Semi-supervised evaluation (SimCLR, Chen et al. 2020, section 6): fine-tune the whole backbone plus a
linear head on a small labelled subset (1% and 10% of the train labels), then score on the test split.

The subset is stratified (each class keeps its share, rounded so the total is exact) and seeded. Training:
SGD with Nesterov momentum, cosine lr, crop + flip views made on the device. A copy of the backbone is
fine-tuned; the run's model is left as it was. Hyper-parameters are fixed, not tuned on the test split.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.data.prepare import stratified_subset
from sslab.eval.features import autocast_for, extract_features, normalize_images
from sslab.eval.linear import crop_flip_augmenter, run_probe_loop
from sslab.kit import BatchSource, LoopSettings, matching_checkpoint
from sslab.optim import cosine_lr, set_lr


def labelled_subset(labels: torch.Tensor, fraction: float, seed: int, num_classes: int) -> torch.Tensor:
    """Sorted indices of round(fraction * labelled) labelled images (at least one per class), stratified, seeded."""
    labelled = torch.nonzero(labels.cpu() >= 0).flatten()
    n = max(num_classes, int(round(fraction * len(labelled))))
    keep = stratified_subset(labels.cpu()[labelled], min(n, len(labelled)), seed)
    return labelled[keep]


def finetune(backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
             mean: Sequence[float], std: Sequence[float], epochs: int, batch_size: int, lr: float,
             weight_decay: float = 5e-4, crop_scale: tuple[float, float] | None = None, flip_p: float | None = None,
             seed: int = 0, bf16: bool | None = None, log: Callable[[str], None] | None = None,
             loop: LoopSettings | None = None, identity: dict | None = None,
             keep_checkpoint: bool = False, name: str = "fine-tune") -> tuple[nn.Module, nn.Module, dict]:
    """Fine-tune a copy of `backbone` and a linear head on (images, labels); returns (backbone, head, details).

    The head is a linear layer behind a BatchNorm without affine parameters (folded at test time into its
    running statistics); backbone BatchNorms train as in pre-training. One lr for backbone and head
    (not scaled with the batch: the subsets are small), cosine to 0 per step. Runs on the kit's epoch loop:
    with `loop.checkpoint` it resumes exactly after a signal or `--time-limit`, and a NaN loss stops it.
    `name`, `identity` and `keep_checkpoint` as in `train_standard_probe`.
    """
    start = time.perf_counter()
    device = next(backbone.parameters()).device
    images, labels = images.to(device), labels.to(device)
    n = len(images)
    torch.manual_seed(seed)
    gen = torch.Generator(device=device)  # sample order and views
    gen.manual_seed(seed)
    source = BatchSource(n, min(batch_size, n), seed, device, flag="--semi-batch-size", generator=gen)
    total = epochs * source.steps_per_epoch
    net = copy.deepcopy(backbone).eval()
    for p in net.parameters():
        p.requires_grad_(True)
    dim = extract_features(net, images[:2], mean, std, bf16=False).shape[1]
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes)).to(device)
    net.train()
    peak = lr  # not scaled by batch / 256: the labelled subsets make small batches
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=peak, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    augment = crop_flip_augmenter(images.shape[-1], mean, std, crop_scale, flip_p)

    def step(idx: torch.Tensor, global_step: int) -> dict[str, torch.Tensor]:
        views = augment(images[idx], gen)
        set_lr(opt, cosine_lr(global_step, total, peak))
        with autocast_for(device, bf16):
            logits = head(net(views).float())
        loss = F.cross_entropy(logits.float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    loop = loop or LoopSettings()
    say = log or (lambda message: None)
    settings = {"protocol": "semi", "n": n, "labels_sum": int(labels.sum()), "epochs": epochs,
                "batch_size": source.batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
                "augment": repr(augment.params), **({"identity": identity} if identity else {})}
    state = matching_checkpoint(loop.checkpoint, settings, say)
    losses, _ = run_probe_loop(name, epochs, source, nn.ModuleDict({"net": net, "head": head}), opt, gen, settings,
                               state, loop, step, {}, say, every=max(1, epochs // 3), keep_checkpoint=keep_checkpoint)
    recalibrate_batchnorm(nn.Sequential(net, head), images, mean, std, source.batch_size)
    net.eval()
    head.eval()
    details = {"epochs": epochs, "batch_size": source.batch_size, "steps": total,
               "optimizer": "sgd nesterov momentum 0.9", "lr": peak, "base_lr": lr, "weight_decay": weight_decay,
               "schedule": "cosine per step", "head": "BatchNorm1d(affine=False) + Linear",
               "augmentation": {"crop_scale": list(augment.params.crop_scale), "flip_p": augment.params.flip_p},
               "train_loss_by_epoch": losses, "seconds": time.perf_counter() - start}
    return net, head, details


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                          batch_size: int) -> None:
    """Set every BatchNorm's running statistics to the exact average over `images` (un-augmented, in
    batches of `batch_size` as in training) under the final weights."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i in range(0, len(images) - batch_size + 1, batch_size):
        model(normalize_images(images[i:i + batch_size], mean, std))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


@torch.no_grad()
def predict_finetuned(net: nn.Module, head: nn.Module, images: torch.Tensor, mean: Sequence[float],
                      std: Sequence[float]) -> np.ndarray:
    feats = extract_features(net, images, mean, std)
    return head(feats).argmax(dim=1).cpu().numpy()


__all__ = ["labelled_subset", "finetune", "predict_finetuned"]
