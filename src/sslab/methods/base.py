"""The method form: what every method shares, so a method file holds only its idea.

A method is one file in this folder with two classes:

- its settings, a dataclass subclass of `MethodSettings` whose defaults are its published recipe: its own
  settings (heads, loss knobs) declared with `setting(default, help, range)`, and the shared ones whose
  published value differs re-declared with the value alone (`lr: float = 0.03`). Class attributes (not
  settings) carry the rest of the recipe: `augment` (its augmentation, as changes to the standard one),
  `large_images` and `large_augment` (the published ImageNet recipe, used above SMALL_IMAGE_MAX pixels) and
  `short_run_min_warmup`. `sslab/recipe.py` applies them, in one place, with the short-run recipe.
- the method, an `nn.Module` registered with `@METHODS.register(name)`, with `Settings = ItsSettings`:
  - `__init__(backbone, cfg)`: builds its heads from `cfg`, an instance of its settings;
  - `forward(views, clean=None) -> dict`: `views` the augmented batches of `view_specs()`, `clean` the
    un-augmented batch when `needs_clean`; returns `loss`, detached scalar metrics, and `z` (one view's
    embeddings) for the collapse monitor;
  - `view_specs(image_size)`: the views a step makes (count, size, augmentation changes per view; default:
    `num_views` views at the image size); multi-crop methods return several sizes;
  - `param_groups()`: parameter groups with per-group options: `fixed_lr` (keeps the peak lr, SimSiam's
    predictor), `weight_decay` (e.g. 0 for biases and norms, `no_decay_groups`);
  - `before_step(progress)`, `after_backward(progress)`, `after_step(progress)`: per-step schedules, with a
    `StepProgress` (step, epoch, fraction of the run): a teacher temperature before the forward, a layer kept
    frozen for the first epochs after the backward, an EMA update after the optimiser step. A value the forward
    reads and a schedule changes belongs in a buffer set in place (`self.temp.fill_(t)`), so that a compiled
    forward is not recompiled at every step.

Nothing else in `src/` changes to add a method: `sslab.methods` imports every module of this folder.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.optim import OPTIMIZERS
from sslab.settings import setting

MAX_WIDTH = 65536  # widest head layer a setting accepts


@dataclass
class MethodSettings:
    """The settings every method has: optimiser, schedule, batch and length. A method's own settings class
    re-declares those whose published value differs (`lr: float = 0.03`), keeping their help and range."""

    optimizer: str = setting("sgd", "the optimiser", choices=OPTIMIZERS)
    lr: float = setting(0.05, "base learning rate per 256 images (a run uses lr * batch_size / 256)", gt=0, le=100)
    momentum: float = setting(0.9, "momentum of SGD and LARS", ge=0, lt=1)
    weight_decay: float = setting(1e-4, "L2 weight decay", ge=0, le=1)
    warmup_epochs: int = setting(10, "epochs of linear learning-rate warm-up before the cosine decay", ge=0,
                                 le=100_000)
    min_lr: float = setting(0.0, "floor of the cosine schedule, as a fraction of the peak learning rate", ge=0, le=1)
    epochs: int = setting(800, "passes over the training images", ge=1, le=100_000)
    batch_size: int = setting(512, "images per step, over all processes (the last partial batch is dropped)", ge=2,
                              le=2**20)

    method: ClassVar[str] = ""  # the method's registered name (set by METHODS.register)
    # its augmentation, as changes to the standard one (sslab.config.AugmentConfig), on images up to 64 px
    augment: ClassVar[Mapping[str, Any]] = {}
    # the published ImageNet recipe (224 px): the settings that differ on images above 64 px, and the augmentation
    # changes there (every method also gets Gaussian blur above 64 px: sslab/recipe.py)
    large_images: ClassVar[Mapping[str, Any]] = {}
    large_augment: ClassVar[Mapping[str, Any]] = {}
    short_run_min_warmup: ClassVar[int] = 0  # warm-up epochs a short run keeps at least (sslab/recipe.py)
    # augmentation changes a short run makes on images up to 64 px, where the CIFAR recipe's fails to learn in a
    # few epochs (measured; sslab/recipe.py, docs/methods.md)
    short_run_augment: ClassVar[Mapping[str, Any]] = {}


@dataclass
class ProjectorSettings:
    """The projector MLP most methods put on the backbone's features."""

    proj_hidden: int = setting(2048, "hidden width of the projector MLP", ge=1, le=MAX_WIDTH)
    proj_dim: int = setting(2048, "output width of the projector MLP (the embedding z)", ge=1, le=MAX_WIDTH)


@dataclass
class PredictorSettings:
    """The predictor MLP of the methods without negatives (SimSiam, PhiNet, BYOL)."""

    pred_hidden: int = setting(512, "hidden width of the predictor MLP", ge=1, le=MAX_WIDTH)


@dataclass(frozen=True)
class ViewSpec:
    """One view a training step makes of every image: `size` pixels a side, with `changes` to the augmentation
    settings for this view only (e.g. {"crop_scale": (0.05, 0.4)} for a local crop of multi-crop)."""

    size: int
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepProgress:
    """Where a step is in the run: `step` counted from 0 over the whole run."""

    step: int
    steps_per_epoch: int
    total_steps: int

    @property
    def epoch(self) -> float:
        """Epochs done before this step (fractional): 0.0 at the first step, 1.0 at the first of epoch 2."""
        return self.step / self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """Share of the run done before this step, in [0, 1)."""
        return self.step / self.total_steps

    @property
    def done(self) -> float:
        """Share of the run done after this step, in (0, 1] (what `after_step` schedules read)."""
        return (self.step + 1) / self.total_steps


class Method(nn.Module):
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    num_views: int = 2
    needs_clean: bool = False

    def __init__(self, backbone: nn.Module, cfg: MethodSettings):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg

    def view_specs(self, image_size: int) -> list[ViewSpec]:
        return [ViewSpec(image_size)] * self.num_views

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "fixed_lr": False}]

    def before_step(self, progress: StepProgress) -> None:
        pass

    def after_backward(self, progress: StepProgress) -> None:
        pass

    def after_step(self, progress: StepProgress) -> None:
        pass


# ---- pieces methods share -------------------------------------------------------------------------------------
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -mean_i cos(p_i, z_i). The caller detaches z where the method stops the gradient."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


def std_of_normalized(z: torch.Tensor) -> torch.Tensor:
    """Collapse signal: std over the batch of l2-normalised z, per dimension, averaged (~1/sqrt(d) healthy)."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """xi_target <- m * xi_target + (1 - m) * xi_online for parameters; BN buffers are copied."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that never receives gradient (EMA targets, slow encoders, key encoders)."""
    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def no_decay_groups(params: list[nn.Parameter], **options: Any) -> list[dict[str, Any]]:
    """Two parameter groups: weights with weight decay, and biases and norm parameters (1-d) without it, as the
    AdamW and LARS recipes of ViTs and DINO do; `options` go into both groups (e.g. fixed_lr=False)."""
    decay = [p for p in params if p.ndim > 1]
    flat = [p for p in params if p.ndim <= 1]
    return [{"params": decay, **options}, {"params": flat, "weight_decay": 0.0, **options}]


__all__ = ["MethodSettings", "ProjectorSettings", "PredictorSettings", "ViewSpec", "StepProgress", "Method",
           "negative_cosine", "std_of_normalized", "ema_update", "frozen_copy", "no_decay_groups", "MAX_WIDTH"]
