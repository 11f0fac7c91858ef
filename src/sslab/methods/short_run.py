"""The short-run recipe: what changes in a method's published recipe when a run is far shorter than it.

The published recipes (docs/methods.md) are written for 800 epochs on 50,000 images: 10 warm-up epochs are
1% of such a run, and batch 512 still gives 97 steps per epoch. A user's first run is often 10 epochs on a
few thousand images: there the same warm-up fills the whole run (the lr is still rising at the last step)
and batch 512 gives a handful of steps per epoch. A run is SHORT when its epoch count is given and below
SHORT_RUN_EPOCHS; only then, and only for the values the user did not set, `short_run_recipe` changes:

- warm-up: at most a tenth of the run (10 epochs -> 1);
- batch size: at most the largest power of two that leaves MIN_STEPS_PER_EPOCH steps per epoch (the lr
  follows, as every recipe's lr is per 256 images).

A run of SHORT_RUN_EPOCHS or more epochs, or one without `--epochs` (the recipe's 800), keeps the published
recipe exactly. The changes are written to the run's config.yaml and printed when training starts.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

SHORT_RUN_EPOCHS = 100  # runs with fewer epochs get the short-run recipe
MIN_STEPS_PER_EPOCH = 32  # a short run on a small dataset lowers the batch to keep this many steps per epoch
MIN_BATCH = 64  # ... but never below this (BatchNorm and the contrastive losses need a batch)

Recipe = dict[str, dict[str, Any]]


def is_short_run(epochs: Optional[int]) -> bool:
    return epochs is not None and epochs < SHORT_RUN_EPOCHS


def short_run_recipe(recipe: Recipe, epochs: Optional[int], n_train: Optional[int],
                     user_set: frozenset[str] = frozenset()) -> tuple[Recipe, list[str]]:
    """`recipe` adapted to a run of `epochs` epochs on `n_train` images, and one line per change (empty
    when the run is not short). Fields named in `user_set` ("warmup_epochs", "batch_size") were set by the
    user and are left alone."""
    if not is_short_run(epochs):
        return recipe, []
    out = copy.deepcopy(recipe)
    changes: list[str] = []
    optim, train = out.setdefault("optim", {}), out.setdefault("train", {})
    warmup = optim.get("warmup_epochs", 0)
    if "warmup_epochs" not in user_set and warmup > epochs // 10:
        optim["warmup_epochs"] = epochs // 10
        changes.append(f"warmup_epochs {warmup} -> {epochs // 10} (at most a tenth of a {epochs}-epoch run)")
    batch = train.get("batch_size")
    if "batch_size" not in user_set and batch is not None and n_train is not None:
        small = smaller_batch(batch, n_train)
        if small != batch:
            train["batch_size"] = small
            changes.append(f"batch_size {batch} -> {small} ({n_train // small} steps per epoch on {n_train} "
                           "images; the lr is per 256 images)")
    return out, changes


def smaller_batch(batch: int, n_train: int) -> int:
    """The largest power of two <= `batch` giving MIN_STEPS_PER_EPOCH steps per epoch, but >= MIN_BATCH."""
    while batch > MIN_BATCH and n_train // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    return batch
