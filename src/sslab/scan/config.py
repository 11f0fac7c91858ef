"""SCAN's settings in one dataclass: every field is a `sslab scan` flag and a key of RUN/scan/config.yaml.

Defaults and where each comes from (docs/methods.md "SCAN", and the reference implementation's CIFAR-10
configs, wvangansbeke/Unsupervised-Classification `configs/scan/scan_cifar10.yml` and
`configs/selflabel/selflabel_cifar10.yml`, called "ref." below).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sslab.checkpoint import atomic_write_bytes
from sslab.config import (
    channels_last_setting,
    device_setting,
    precision_setting,
    progress_every_setting,
    progress_setting,
    time_limit_setting,
)
from sslab.settings import Rule, check, dump_yaml, from_dict, read_yaml_file, setting, to_dict, types_of, update

STAGES = ("mine", "cluster", "selflabel")
AUGMENTS = ("strong", "weak", "none")  # strong: RandAugment + Cutout; weak: crop + flip; none: the image itself
HEAD_INPUTS = ("features", "l2", "standardized")  # what the clustering heads read (sslab/scan/model.py)
ORDERED = Rule(lambda pair: pair[0] <= pair[1], "two numbers min,max with min <= max")


@dataclass
class ScanConfig:
    # mining (docs/methods.md step 2)
    neighbors: int = setting(20, "K nearest neighbours mined per image, cosine on pretext features (docs: 20)", ge=1,
                             le=1000)
    kmeans_init: int = setting(10, "k-means baseline restarts (docs/methods.md evaluation protocol: n_init >= 10)",
                               ge=1, le=1000)
    # clustering (docs/methods.md step 3)
    num_clusters: Optional[int] = setting(None, "clusters C; none: the number of classes; more: over-clustering "
                                          "(ACC by majority mapping)", ge=2, le=10_000)
    heads: int = setting(10, "clustering heads trained at once, the lowest-loss one kept (docs/methods.md: several; "
                         "ref. scan_cifar10.yml trains 1)", ge=1, le=1000)
    entropy_weight: float = setting(5.0, "w, weight of the entropy of the mean prediction (docs/methods.md, ref.: 5.0)",
                                    ge=0, le=1000)
    cluster_epochs: int = setting(50, "clustering epochs (ref. 50; docs/methods.md ~50-100)", ge=0, le=100_000)
    batch_size: int = setting(128, "anchors per clustering step, one sampled neighbour each (ref. 128)", ge=2, le=2**20)
    lr: float = setting(1e-4, "Adam learning rate of the clustering step, constant (ref. 1e-4)", gt=0, le=100)
    weight_decay: float = setting(1e-4, "Adam weight decay of the clustering step (ref. 1e-4)", ge=0, le=1)
    freeze_backbone: bool = setting(False, "train the heads only, in both steps (docs, ref.: backbone trainable)")
    cluster_augment: str = setting("strong", "views of anchors and neighbours: strong (RandAugment + Cutout, ref. "
                                   "'ours'), weak (crop + flip, ref. 'standard') or none", choices=AUGMENTS)
    head_input: str = setting("features", "what the heads read: features (the backbone's output, ref.), l2 "
                              "(l2-normalised) or standardized (centred and scaled per dimension by the pretext "
                              "train features' mean and std); see docs/methods.md, The demo", choices=HEAD_INPUTS)
    include_self: bool = setting(True, "the anchor is one of its own K+1 candidate neighbours (ref. NeighborsDataset)")
    # self-labelling (docs/methods.md step 4)
    selflabel_epochs: int = setting(200, "self-labelling epochs (ref. 200)", ge=0, le=100_000)
    selflabel_batch_size: int = setting(1000, "self-labelling batch (ref. 1000)", ge=2, le=2**20)
    selflabel_lr: float = setting(1e-4, "Adam learning rate of self-labelling, constant (ref. 1e-4)", gt=0, le=100)
    selflabel_weight_decay: float = setting(1e-4, "Adam weight decay of self-labelling (ref. 1e-4)", ge=0, le=1)
    confidence: float = setting(0.99, "pseudo-label a sample when its max probability exceeds this (ref. 0.99)", gt=0,
                                lt=1)
    class_balance: bool = setting(True, "weight each class's CE by its inverse frequency among confident samples "
                                  "(ref.)")
    selflabel_target_view: str = setting("none", "view the pseudo-labels come from: none (the image, ref.), weak "
                                         "or strong", choices=AUGMENTS)
    selflabel_augment: str = setting("strong", "view trained on: strong (ref.), weak or none", choices=AUGMENTS)
    # augmentation
    strong_ops: int = setting(4, "RandAugment ops per strong view (ref. num_strong_augs 4)", ge=0, le=100)
    cutout: float = setting(0.5, "largest Cutout side as a fraction of the image side (ref. 16 px at 32); 0: off",
                            ge=0, le=1)
    flip_p: Optional[float] = setting(None, "horizontal flip probability of the views; none: the pretext run's", ge=0,
                                     le=1)
    weak_crop_scale: tuple[float, float] = setting((0.2, 1.0), "weak view: RandomResizedCrop scale, + flip", gt=0, le=1,
                                                   rule=ORDERED)
    # running
    seed: int = setting(0, "seed of the samplers, augmentations and k-means", ge=0, lt=2**32)
    device: str = device_setting()
    precision: str = precision_setting()
    channels_last: Optional[bool] = channels_last_setting()
    fused: Optional[bool] = setting(None, "Adam's fused kernel (one launch for all parameters); none: on GPU only")
    eval_every: int = setting(1, "test metrics of the best head every N epochs, for monitoring only (0: off)", ge=0,
                              le=100_000)
    checkpoint_every: int = setting(1, "write the stage checkpoint every N epochs (and always at the end)", ge=1,
                                    le=100_000)
    show_per_cluster: int = setting(10, "images per cluster in confident_images.png", ge=1, le=100)
    time_limit: Optional[float] = time_limit_setting("the stage")
    progress: bool = progress_setting()
    progress_every: float = progress_every_setting()

    # ---- dict / YAML ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "scan config") -> "ScanConfig":
        return from_dict(cls, d, where)

    def update(self, d: dict[str, Any], where: str = "scan config") -> None:
        update(self, d, where)

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, dump_yaml(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "ScanConfig":
        d = read_yaml_file(path)
        return cls.from_dict(d.get("scan", d) if isinstance(d, dict) else d, where=str(path))

    def replace(self, **changes: Any) -> "ScanConfig":
        return dataclasses.replace(self, **changes)

    # ---- checks -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Every setting within its declared range; the first that is not: one line naming its flag."""
        check(self)


FIELD_TYPES: dict[str, Any] = types_of(ScanConfig)

# which fields each stage's result depends on (a stage is redone only with --restart; a finished stage whose
# fields changed is refused, so a rerun never mixes two settings silently)
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "mine": ("neighbors", "kmeans_init", "num_clusters", "seed"),
    "cluster": ("heads", "head_input", "entropy_weight", "cluster_epochs", "batch_size", "lr", "weight_decay", "freeze_backbone",
                "cluster_augment", "include_self", "strong_ops", "cutout", "flip_p", "weak_crop_scale"),
    "selflabel": ("selflabel_epochs", "selflabel_batch_size", "selflabel_lr", "selflabel_weight_decay", "confidence",
                  "class_balance", "selflabel_target_view", "selflabel_augment"),
}


def stage_settings(cfg: ScanConfig, stage: str) -> dict[str, Any]:
    """The settings a stage's result depends on: its own fields and those of the stages before it."""
    names = [n for s in STAGES[:STAGES.index(stage) + 1] for n in STAGE_FIELDS[s]]
    d = cfg.to_dict()
    return {n: d[n] for n in names}
