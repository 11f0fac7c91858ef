"""The short-run recipe: what changes in a method's published recipe when a run is far shorter than it.

The published recipes (docs/methods.md) are written for 800 epochs on 50,000 images: 10 warm-up epochs are
1% of such a run, and batch 512 still gives 97 steps per epoch. A user's first run is often 10 epochs on a
few thousand images: there the same warm-up fills the whole run (the lr is still rising at the last step)
and batch 512 gives a handful of steps per epoch. A run is SHORT when its epoch count is given and below
SHORT_RUN_EPOCHS; only then, and only for the values the user did not set, `short_run_recipe` changes:

- warm-up: at most a tenth of the run (10 epochs -> 1), but not below the method's `short_run_min_warmup`
  (MoCo v2: 1 epoch; without it the queries and keys fall onto one point in the first steps);
- batch size: at most the largest power of two that leaves MIN_STEPS_PER_EPOCH steps per epoch (the lr
  follows, as every recipe's lr is per 256 images);
- a queue of negatives (MoCo v2): at most the largest power of two <= a quarter of the training images, so
  that it holds real keys for most of the run and not the random ones it starts with (32,768 keys take
  3.3 epochs of 10,000 images to replace).

A run of SHORT_RUN_EPOCHS or more epochs, or one without `--epochs` (the recipe's 800), keeps the published
recipe exactly. The changes are written to the run's config.yaml and printed when training starts.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

SHORT_RUN_EPOCHS = 100  # runs with fewer epochs get the short-run recipe
MIN_STEPS_PER_EPOCH = 32  # a short run on a small dataset lowers the batch to keep this many steps per epoch
MIN_BATCH = 64  # ... but never below this (BatchNorm and the contrastive losses need a batch)
QUEUE_SHARE = 4  # a short run's queue holds at most n_train / QUEUE_SHARE keys (rounded down to a power of two)
MIN_QUEUE = 256

Recipe = dict[str, dict[str, Any]]


def is_short_run(epochs: Optional[int]) -> bool:
    return epochs is not None and epochs < SHORT_RUN_EPOCHS


def short_run_recipe(recipe: Recipe, epochs: Optional[int], n_train: Optional[int],
                     user_set: frozenset[str] = frozenset(), min_warmup: int = 0) -> tuple[Recipe, list[str]]:
    """`recipe` adapted to a run of `epochs` epochs on `n_train` images, and one line per change (empty
    when the run is not short). Fields named in `user_set` ("warmup_epochs", "batch_size", "queue_size")
    were set by the user and are left alone; `min_warmup` is the method's floor for the warm-up."""
    if not is_short_run(epochs):
        return recipe, []
    out = copy.deepcopy(recipe)
    changes: list[str] = []
    optim, train = out.setdefault("optim", {}), out.setdefault("train", {})
    warmup, cap = optim.get("warmup_epochs", 0), max(epochs // 10, min(min_warmup, epochs - 1))
    if "warmup_epochs" not in user_set and warmup > cap:
        optim["warmup_epochs"] = cap
        why = f"at most a tenth of a {epochs}-epoch run" if cap == epochs // 10 else "this method's short-run minimum"
        changes.append(f"warmup_epochs {warmup} -> {cap} ({why})")
    batch = train.get("batch_size")
    if "batch_size" not in user_set and batch is not None and n_train is not None:
        small = smaller_batch(batch, n_train)
        if small != batch:
            train["batch_size"] = small
            changes.append(f"batch_size {batch} -> {small} ({n_train // small} steps per epoch on {n_train} "
                           "images; the lr is per 256 images)")
    method = out.get("method", {})
    queue = method.get("queue_size")
    if "queue_size" not in user_set and queue is not None and n_train is not None:
        small = smaller_queue(queue, n_train)
        if small != queue:
            method["queue_size"] = small
            changes.append(f"queue_size {queue} -> {small} (at most a quarter of the {n_train} training images, "
                           "so the queue holds real keys, not its random initial ones)")
    return out, changes


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
