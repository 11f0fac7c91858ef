"""What every method shares, so a method file holds only its idea (heads, loss, forward).

A method is an `nn.Module` registered with `@METHODS.register(name)`:
- `__init__(backbone, cfg)`: `cfg` is the resolved MethodConfig (no None left in the fields it reads);
- `forward(views, clean=None) -> dict`: `views` is a list of `num_views` augmented batches, `clean` the
  un-augmented batch for methods with `needs_clean`; returns `loss` plus detached metrics, and `z` (one
  view's embeddings before normalisation) for the collapse monitor;
- `param_groups()`: parameter groups; a group with `fixed_lr=True` keeps the peak lr (SimSiam's predictor);
- `after_step(progress)`: called after every optimiser step with progress in [0, 1] (EMA updates);
- `recipe(dataset, image_size)`: the method's defaults for that data, as {section: {field: value}};
- `augment_family`: the augmentation presets it trains with (`preset: auto` picks <family>-small up to 64 px,
  <family>-large above); a method without one must be given `--preset`;
- `short_run_min_warmup`: warm-up epochs it keeps in a short run (methods/short_run.py), 0 unless it needs one.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.config import MethodConfig


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


class Method(nn.Module):
    num_views: int = 2
    needs_clean: bool = False
    augment_family: str = ""  # its augmentation preset family ("simsiam" -> simsiam-small / simsiam-large)
    short_run_min_warmup: int = 0  # warm-up epochs a short run keeps at least (methods/short_run.py)

    def __init__(self, backbone: nn.Module, cfg: MethodConfig):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "fixed_lr": False}]

    def after_step(self, progress: float) -> None:
        pass

    @staticmethod
    def recipe(dataset: str, image_size: int) -> dict[str, dict[str, Any]]:
        raise NotImplementedError
