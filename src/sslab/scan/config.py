"""SCAN's settings in one dataclass: every field is a `sslab scan` flag and a key of RUN/scan/config.yaml.

Defaults and where each comes from (docs/methods.md "SCAN", and the reference implementation's CIFAR-10
configs, wvangansbeke/Unsupervised-Classification `configs/scan/scan_cifar10.yml` and
`configs/selflabel/selflabel_cifar10.yml`, called "ref." below).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from sslab.config import coerce, read_yaml_file
from sslab.errors import ConfigError
from sslab.scan.model import HEAD_INPUTS  # what the clustering heads read

STAGES = ("mine", "cluster", "selflabel")
AUGMENTS = ("strong", "weak", "none")  # strong: RandAugment + Cutout; weak: crop + flip; none: the image itself


def setting(default: Any, help: str) -> Any:
    """A config field with its flag's help text (the single place a setting is described)."""
    return field(default=default, metadata={"help": help})


@dataclass
class ScanConfig:
    # mining (docs/methods.md step 2)
    neighbors: int = setting(20, "K nearest neighbours mined per image, cosine on pretext features (docs: 20)")
    kmeans_init: int = setting(10, "k-means baseline restarts (docs/methods.md evaluation protocol: n_init >= 10)")
    # clustering (docs/methods.md step 3)
    num_clusters: Optional[int] = setting(None, "clusters C; none: the number of classes; more: over-clustering "
                                          "(ACC by majority mapping)")
    heads: int = setting(10, "clustering heads trained at once, the lowest-loss one kept (docs/methods.md: several; "
                         "ref. scan_cifar10.yml trains 1)")
    entropy_weight: float = setting(5.0, "w, weight of the entropy of the mean prediction (docs/methods.md, ref.: 5.0)")
    cluster_epochs: int = setting(50, "clustering epochs (ref. 50; docs/methods.md ~50-100)")
    batch_size: int = setting(128, "anchors per clustering step, one sampled neighbour each (ref. 128)")
    lr: float = setting(1e-4, "Adam learning rate of the clustering step, constant (ref. 1e-4)")
    weight_decay: float = setting(1e-4, "Adam weight decay of the clustering step (ref. 1e-4)")
    freeze_backbone: bool = setting(False, "train the heads only, in both steps (docs, ref.: backbone trainable)")
    cluster_augment: str = setting("strong", "views of anchors and neighbours: strong (RandAugment + Cutout, ref. "
                                   "'ours'), weak (crop + flip, ref. 'standard') or none")
    head_input: str = setting("features", "what the heads read: features (the backbone's output, ref.), l2 "
                              "(l2-normalised) or standardized (centred and scaled per dimension by the pretext "
                              "train features' mean and std); see docs/methods.md, The demo")
    include_self: bool = setting(True, "the anchor is one of its own K+1 candidate neighbours (ref. NeighborsDataset)")
    # self-labelling (docs/methods.md step 4)
    selflabel_epochs: int = setting(200, "self-labelling epochs (ref. 200)")
    selflabel_batch_size: int = setting(1000, "self-labelling batch (ref. 1000)")
    selflabel_lr: float = setting(1e-4, "Adam learning rate of self-labelling, constant (ref. 1e-4)")
    selflabel_weight_decay: float = setting(1e-4, "Adam weight decay of self-labelling (ref. 1e-4)")
    confidence: float = setting(0.99, "pseudo-label a sample when its max probability exceeds this (ref. 0.99)")
    class_balance: bool = setting(True, "weight each class's CE by its inverse frequency among confident samples "
                                  "(ref.)")
    selflabel_target_view: str = setting("none", "view the pseudo-labels come from: none (the image, ref.), weak "
                                         "or strong")
    selflabel_augment: str = setting("strong", "view trained on: strong (ref.), weak or none")
    # augmentation
    strong_ops: int = setting(4, "RandAugment ops per strong view (ref. num_strong_augs 4)")
    cutout: float = setting(0.5, "largest Cutout side as a fraction of the image side (ref. 16 px at 32); 0: off")
    flip_p: Optional[float] = setting(None, "horizontal flip probability of the views; none: the pretext run's")
    weak_crop_scale: tuple[float, float] = setting((0.2, 1.0), "weak view: RandomResizedCrop scale, + flip")
    # running
    seed: int = setting(0, "seed of the samplers, augmentations and k-means")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    precision: str = setting("auto", "auto (bf16 autocast on GPU, fp32 on CPU), bf16 or fp32")
    channels_last: Optional[bool] = setting(None, "channels-last memory format for the convolutions; none: on GPU only")
    fused: Optional[bool] = setting(None, "Adam's fused kernel (one launch for all parameters); none: on GPU only")
    eval_every: int = setting(1, "test metrics of the best head every N epochs, for monitoring only (0: off)")
    checkpoint_every: int = setting(1, "write the stage checkpoint every N epochs (and always at the end)")
    show_per_cluster: int = setting(10, "images per cluster in confident_images.png")
    time_limit: Optional[float] = setting(None, "stop with a checkpoint after this many seconds; rerunning continues")
    progress: bool = setting(True, "progress bar on a terminal; elsewhere a plain line every progress_every s")
    progress_every: float = setting(30.0, "seconds between plain progress lines when stderr is not a terminal")

    # ---- dict / YAML ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "scan config") -> "ScanConfig":
        cfg = cls()
        cfg.update(d, where)
        return cfg

    def update(self, d: dict[str, Any], where: str = "scan config") -> None:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping of field: value")
        known = {f.name for f in fields(self)}
        for key, value in d.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown field {key!r}; known: {', '.join(sorted(known))}")
            setattr(self, key, coerce(value, FIELD_TYPES[key], key))

    def save(self, path: Path) -> None:
        from sslab.checkpoint import atomic_write_bytes

        atomic_write_bytes(path, yaml.safe_dump(self.to_dict(), sort_keys=False).encode())

    @classmethod
    def load(cls, path: str | Path) -> "ScanConfig":
        d = read_yaml_file(path)
        return cls.from_dict(d.get("scan", d) if isinstance(d, dict) else d, where=str(path))

    def replace(self, **changes: Any) -> "ScanConfig":
        return dataclasses.replace(self, **changes)

    # ---- checks -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Reject values that cannot work, naming the flag to fix."""
        checks = [
            (self.neighbors >= 1, "--neighbors must be >= 1"),
            (self.kmeans_init >= 1, "--kmeans-init must be >= 1"),
            (self.num_clusters is None or self.num_clusters >= 2, "--num-clusters must be >= 2"),
            (self.heads >= 1, "--heads must be >= 1"),
            (self.entropy_weight >= 0, "--entropy-weight must be >= 0"),
            (self.cluster_epochs >= 0 and self.selflabel_epochs >= 0, "--cluster-epochs and --selflabel-epochs must be >= 0"),
            (self.batch_size >= 2 and self.selflabel_batch_size >= 2, "--batch-size and --selflabel-batch-size must be >= 2"),
            (self.lr > 0 and self.selflabel_lr > 0, "--lr and --selflabel-lr must be > 0"),
            (self.weight_decay >= 0 and self.selflabel_weight_decay >= 0, "weight decays must be >= 0"),
            (0 < self.confidence < 1, "--confidence must be in (0, 1)"),
            (self.head_input in HEAD_INPUTS, f"--head-input must be one of {', '.join(HEAD_INPUTS)}"),
            (self.cluster_augment in AUGMENTS, f"--cluster-augment must be one of {', '.join(AUGMENTS)}"),
            (self.selflabel_augment in AUGMENTS, f"--selflabel-augment must be one of {', '.join(AUGMENTS)}"),
            (self.selflabel_target_view in AUGMENTS, f"--selflabel-target-view must be one of {', '.join(AUGMENTS)}"),
            (self.strong_ops >= 0, "--strong-ops must be >= 0"),
            (0 <= self.cutout <= 1, "--cutout must be a fraction of the side in [0, 1]"),
            (self.flip_p is None or 0 <= self.flip_p <= 1, "--flip-p must be a probability in [0, 1]"),
            (0 < self.weak_crop_scale[0] <= self.weak_crop_scale[1] <= 1, "--weak-crop-scale must be 0 < min <= max <= 1"),
            (self.precision in ("auto", "bf16", "fp32"), "--precision must be auto, bf16 or fp32"),
            (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             "--device must be auto, cpu or cuda[:N]"),
            (self.eval_every >= 0 and self.show_per_cluster >= 1, "--eval-every must be >= 0, --show-per-cluster >= 1"),
            (self.checkpoint_every >= 1, "--checkpoint-every must be >= 1"),
            (self.time_limit is None or self.time_limit > 0, "--time-limit must be > 0 seconds"),
            (self.progress_every > 0, "--progress-every must be > 0 seconds"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


FIELD_TYPES: dict[str, Any] = typing.get_type_hints(ScanConfig)

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
