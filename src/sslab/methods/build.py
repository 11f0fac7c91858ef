"""From a config to a method: recipe resolution (`resolve`), name checks and construction (`build_method`).

Every command that makes a method (`train`, `scan`, `eval` via `load_trained`, `preview-augment`) comes here,
so a config resolves the same way everywhere.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Callable

import torch

from sslab.augment import resolve_augment
from sslab.config import Config, one_of
from sslab.errors import ConfigError
from sslab.methods.base import Method
from sslab.methods.short_run import SHORT_RUN_EPOCHS, short_run_recipe
from sslab.models import BACKBONES, create_backbone
from sslab.optim import OPTIMIZERS
from sslab.registry import DATASETS, METHODS


def resolve(cfg: Config, image_size: int, device: torch.device | None = None, n_train: int | None = None,
            log: Callable[[str], None] | None = None) -> Config:
    """A copy of `cfg` with every None filled from the method's recipe (the short-run recipe for a run of
    few epochs, see methods/short_run.py; `log` gets one line per change) and augmentation preset."""
    if cfg.method.method is None:
        raise ConfigError(f"no method given; pass --method ({', '.join(METHODS.names())})")
    method_cls = METHODS.get(cfg.method.method)
    out = Config.from_dict(cfg.to_dict())
    user_set = frozenset(k for k, v in {**asdict(cfg.method), **asdict(cfg.optim), **asdict(cfg.train)}.items()
                         if v is not None)
    recipe, changes = short_run_recipe(method_cls.recipe(cfg.data.dataset, image_size), cfg.train.epochs, n_train,
                                       user_set, method_cls.short_run_min_warmup)
    if changes and log is not None:
        log(f"short-run recipe ({cfg.train.epochs} < {SHORT_RUN_EPOCHS} epochs; docs/methods.md): " + "; ".join(changes))
    for section, values in recipe.items():
        obj = getattr(out, section)
        for name, value in values.items():
            if getattr(obj, name) is None:
                setattr(obj, name, value)
    params = asdict(resolve_augment(out.augment, out.method.method, image_size, out.data.dataset))
    for f in fields(out.augment):
        if f.name in params and getattr(out.augment, f.name) is None:
            value = params[f.name]
            setattr(out.augment, f.name, tuple(value) if isinstance(value, list) else value)
    if out.train.channels_last is None:
        out.train.channels_last = device is not None and device.type == "cuda"
    return out


def check_names(cfg: Config) -> None:
    """Unknown method, backbone, dataset or optimiser names: one line each, before any data is loaded."""
    if cfg.method.method is not None:
        METHODS.get(cfg.method.method)
    BACKBONES.get(cfg.model.backbone)
    DATASETS.get(cfg.data.dataset)
    if cfg.optim.optimizer not in (None, *OPTIMIZERS):
        raise ConfigError(f"unknown --optimizer {cfg.optim.optimizer!r}; use {one_of(OPTIMIZERS)}")


def build_method(cfg: Config, in_channels: int, image_size: int) -> Method:
    """The resolved config's method around a fresh backbone (initialised from the global torch seed)."""
    backbone = create_backbone(cfg.model.backbone, in_channels, image_size, cfg.model.stem)
    return METHODS.create(cfg.method.method, backbone, cfg.method)


__all__ = ["resolve", "check_names", "build_method"]
