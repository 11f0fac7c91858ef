"""The one place where a run's settings follow its data: `fit_to_data(cfg, image_size, n_train, device)`.

A method's settings hold its published CIFAR recipe (its own file). Here, and only for the settings the user
did not give (`Config.given`), they are adapted to the data, and each change is printed when training starts:

1. **Large images.** Above SMALL_IMAGE_MAX (64) pixels a side, the method's published ImageNet recipe
   (`large_images` of its settings: SimSiam's third projector layer, SimCLR's batch 4096, ...).
2. **A short run.** The published recipes are written for 800 epochs on 50,000 images: 10 warm-up epochs are 1%
   of such a run, and batch 512 still gives 97 steps per epoch. A user's first run is often 10 epochs on a few
   thousand images: there the same warm-up fills the whole run and batch 512 gives a handful of steps per epoch.
   A run is SHORT when `--epochs` is given and below SHORT_RUN_EPOCHS; only then:
   - warm-up: at most a tenth of the run (10 epochs -> 1), but not below the method's `short_run_min_warmup`
     (MoCo v2: 1 epoch; without it the queries and keys fall onto one point in the first steps);
   - batch size: at most the largest power of two that leaves MIN_STEPS_PER_EPOCH steps per epoch (the lr
     follows, as every recipe's lr is per 256 images);
   - a queue (`queue_size`, MoCo v2): at most the largest power of two <= a quarter of the training images, so
     that it holds real keys for most of the run and not the random ones it starts with.
   - the augmentation, on images up to SMALL_IMAGE_MAX px: the method's `short_run_augment` (Barlow Twins:
     crops of at least 20% of the image instead of 8%; with its CIFAR recipe's crops it ends a 3-epoch CPU run
     below its untrained network, docs/benchmarks.md).
3. **The augmentation.** `--preset auto`: the method's preset for the image size (`<family>-small` up to 64 px,
   `<family>-large` above, with blur); the digit datasets get no flips (a mirrored 2 is not a digit).
4. **The device.** channels-last on a GPU unless `--channels-last` says otherwise.
5. **Small images.** Without `--backbone`, images below SMALL_BACKBONE_BELOW (32) pixels a side (8 px digits,
   28 px grey MNIST and Fashion-MNIST) get `simple-cnn-bn` instead of resnet18: a ResNet-18 is 11 M weights
   made for 32 px colour, slow on a CPU and no better there; on these images the 3-layer CNN with BatchNorm
   learns in a few CPU epochs (docs/methods.md, "Backbones").

A run of SHORT_RUN_EPOCHS or more epochs, or one that leaves `--epochs` to the recipe, keeps the published
recipe exactly. `sslab methods --image-size N` shows what step 1 and 3 give.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch

from sslab.augment.presets import AugmentConfig, augment_family, preset, preset_names
from sslab.config import Config
from sslab.errors import ConfigError
from sslab.models.resnet import SMALL_IMAGE_MAX
from sslab.settings import names_of, one_of

SMALL_BACKBONE_BELOW = 32  # images with a side below this get SMALL_BACKBONE unless --backbone is given
SMALL_BACKBONE = "simple-cnn-bn"
SHORT_RUN_EPOCHS = 100  # runs with fewer epochs get the short-run recipe
MIN_STEPS_PER_EPOCH = 32  # a short run on a small dataset lowers the batch to keep this many steps per epoch
MIN_BATCH = 64  # ... but never below this (BatchNorm and the contrastive losses need a batch)
QUEUE_SHARE = 4  # a short run's queue holds at most n_train / QUEUE_SHARE keys (rounded down to a power of two)
MIN_QUEUE = 256
# Grey digit datasets: a mirrored 2, 5 or 7 is not a digit (a mirrored shirt is still a shirt, so Fashion-MNIST
# keeps its flips). `--preset auto` gives these the method's augmentation without flips.
NO_FLIP_DATASETS = frozenset({"digits", "mnist"})

Log = Callable[[str], None]


def fit_to_data(cfg: Config, image_size: int, n_train: Optional[int] = None, device: Optional[torch.device] = None,
                log: Optional[Log] = None) -> Config:
    """A copy of `cfg` with the settings the user did not give adapted to images of `image_size` pixels, `n_train`
    training images (None: unknown) and `device`; one line per kind of change goes to `log`."""
    method = dataclasses.replace(cfg.method)
    changes = large_image_recipe(method, cfg.given, image_size)
    if changes and log is not None:
        log(f"recipe for images above {SMALL_IMAGE_MAX} px (the method's published ImageNet recipe; docs/methods.md): "
            + "; ".join(changes))
    changes = short_run_recipe(method, cfg.given, n_train)
    if changes and log is not None:
        log(f"short-run recipe ({method.epochs} < {SHORT_RUN_EPOCHS} epochs; docs/methods.md): " + "; ".join(changes))
    model = small_image_backbone(cfg, image_size, log)
    train = cfg.train
    if train.channels_last is None:
        train = dataclasses.replace(train, channels_last=device is not None and device.type == "cuda")
    augment = fit_augment(cfg, image_size)
    short = short_run_augment(cfg, image_size)
    if short:
        if log is not None:
            log(f"short-run augmentation ({cfg.method.method}, {cfg.method.epochs} < {SHORT_RUN_EPOCHS} epochs; "
                "docs/methods.md): " + "; ".join(f"{k} {getattr(augment, k)} -> {v}" for k, v in short.items()))
        augment = dataclasses.replace(augment, **short)
    return dataclasses.replace(cfg, method=method, model=model, augment=augment, train=train)


def small_image_backbone(cfg: Config, image_size: int, log: Optional[Log] = None) -> Any:
    """The model settings: SMALL_BACKBONE for images below SMALL_BACKBONE_BELOW px when --backbone was not given
    (module docstring, step 5), saying so on `log`; else `cfg.model` as it is."""
    if "backbone" in cfg.given or image_size >= SMALL_BACKBONE_BELOW or cfg.model.backbone == SMALL_BACKBONE:
        return cfg.model
    if log is not None:
        log(f"backbone: {SMALL_BACKBONE} for these {image_size} px images (no --backbone given; {cfg.model.backbone} "
            f"is made for {SMALL_BACKBONE_BELOW} px and larger and is slow on a CPU; docs/methods.md, Backbones)")
    return dataclasses.replace(cfg.model, backbone=SMALL_BACKBONE)


def large_image_recipe(method: Any, given: frozenset[str], image_size: int) -> list[str]:
    """Above SMALL_IMAGE_MAX px: the method's `large_images` settings, in place; one text per change."""
    if image_size <= SMALL_IMAGE_MAX:
        return []
    return [_set(method, name, value) for name, value in type(method).large_images.items()
            if name not in given and getattr(method, name) != value]


def short_run_recipe(method: Any, given: frozenset[str], n_train: Optional[int]) -> list[str]:
    """The short-run changes (module docstring), in place; one text per change (none when the run is not short)."""
    epochs = method.epochs
    if not is_short(method, given):
        return []
    changes = []
    cap = max(epochs // 10, min(type(method).short_run_min_warmup, epochs - 1))
    if "warmup_epochs" not in given and method.warmup_epochs > cap:
        why = f"at most a tenth of a {epochs}-epoch run" if cap == epochs // 10 else "this method's short-run minimum"
        changes.append(_set(method, "warmup_epochs", cap) + f" ({why})")
    if n_train is None:
        return changes
    batch = smaller_batch(method.batch_size, n_train)
    if "batch_size" not in given and batch != method.batch_size:
        changes.append(_set(method, "batch_size", batch) + f" ({n_train // batch} steps per epoch on {n_train} images; "
                       "the lr is per 256 images)")
    if "queue_size" in names_of(method) and "queue_size" not in given:
        queue = smaller_queue(method.queue_size, n_train)
        if queue != method.queue_size:
            changes.append(_set(method, "queue_size", queue) + f" (at most a quarter of the {n_train} training images, "
                           "so the queue holds real keys, not its random initial ones)")
    return changes


def short_run_augment(cfg: Config, image_size: int) -> dict[str, Any]:
    """The method's `short_run_augment` changes for a short run on images up to SMALL_IMAGE_MAX px with
    `--preset auto`, less the settings the user gave (module docstring, step 2)."""
    if not is_short(cfg.method, cfg.given) or image_size > SMALL_IMAGE_MAX or cfg.augment.preset != "auto":
        return {}
    return {k: v for k, v in type(cfg.method).short_run_augment.items() if k not in cfg.given}


def is_short(method: Any, given: frozenset[str]) -> bool:
    """A SHORT run (module docstring, step 2): `--epochs` given and below SHORT_RUN_EPOCHS."""
    return "epochs" in given and method.epochs < SHORT_RUN_EPOCHS


def _set(obj: Any, name: str, value: Any) -> str:
    old = getattr(obj, name)
    setattr(obj, name, value)
    return f"{name} {old} -> {value}"


def smaller_queue(queue: int, n_train: int) -> int:
    """The largest power of two <= `queue` and <= n_train / QUEUE_SHARE, but >= MIN_QUEUE."""
    return halved_to(queue, n_train // QUEUE_SHARE, MIN_QUEUE)


def smaller_batch(batch: int, n_train: int) -> int:
    """The largest power of two <= `batch` giving MIN_STEPS_PER_EPOCH steps per epoch, but >= MIN_BATCH."""
    return halved_to(batch, n_train // MIN_STEPS_PER_EPOCH, MIN_BATCH)


def halved_to(value: int, limit: int, floor: int) -> int:
    """`value` halved until it is <= `limit`, but not below `floor` (a value already below it is kept)."""
    while value > floor and value > limit:
        value //= 2
    return value


def auto_preset(cfg: Config, image_size: int) -> str:
    """The preset `--preset auto` picks: the method's family, "-small" up to SMALL_IMAGE_MAX px, "-large" above."""
    size = "small" if image_size <= SMALL_IMAGE_MAX else "large"
    return f"{augment_family(type(cfg.method))}-{size}"


def fit_augment(cfg: Config, image_size: int) -> AugmentConfig:
    """The augmentation settings: the preset's values (auto: `auto_preset`, no flips on the digit datasets),
    with the settings the user gave on top."""
    name = auto_preset(cfg, image_size) if cfg.augment.preset == "auto" else cfg.augment.preset
    try:
        base = preset(name)
    except KeyError:
        raise ConfigError(f"--preset {cfg.augment.preset!r} is not a preset; use auto or one of: "
                          f"{one_of(preset_names())}") from None
    given = {k: getattr(cfg.augment, k) for k in names_of(cfg.augment) if k in cfg.given and k != "preset"}
    if cfg.augment.preset == "auto" and cfg.data.dataset in NO_FLIP_DATASETS:
        given.setdefault("flip_p", 0.0)
    return dataclasses.replace(base, preset=cfg.augment.preset, **given)  # "auto" stays: config.yaml says so


__all__ = ["fit_to_data", "fit_augment", "small_image_backbone", "SMALL_BACKBONE", "SMALL_BACKBONE_BELOW", "auto_preset", "short_run_recipe", "short_run_augment", "large_image_recipe", "smaller_batch",
           "smaller_queue", "SHORT_RUN_EPOCHS", "NO_FLIP_DATASETS"]
