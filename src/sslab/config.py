"""The run spec: what `sslab train` runs, in five sections, every setting a flag (`--batch-size 256`) and a YAML
key (`method: {batch_size: 256}`), declared once (sslab/settings.py):

    data      DataConfig          the images (here)
    model     ModelConfig         the backbone (here)
    method    <Method>Settings    the method's settings, defaults = its published recipe (its own file)
    augment   AugmentConfig       the augmentation (sslab/augment/presets.py)
    train     TrainConfig         seed, device, monitors, where the run goes (here)

`Config.given` holds the names of the settings the user gave (flags, YAML, the API); sslab/recipe.py adapts the
others to the data (image size, a short run), in one place. The saved `config.yaml` of a run holds every value
used. A `config.yaml` of sslab 0.1 (sections data, augment, model, method, optim, train, one MethodConfig
shared by every method) is translated once, by `upgrade_layout`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from sslab.augment.presets import AugmentConfig
from sslab import portable
from sslab.data import TEST_FRACTION, TRAIN_SPLITS  # importing sslab.data registers the datasets the data settings name
from sslab.device import DEVICE_HELP, PRECISION_HELP, PRECISIONS
from sslab.errors import ConfigError
from sslab.methods import METHODS, MethodSettings
from sslab.progress import DEFAULT_EVERY
from sslab.registry import BACKBONES, DATASETS
from sslab.streaming import PLACEMENT_HELP, PLACEMENTS
from sslab.settings import Rule, check, coerce, dump_yaml, flag, names_of, read_yaml_file, setting, shown, to_dict, \
    types_of

COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")  # reduce-overhead: CUDA graphs
STEMS = ("auto", "cifar", "imagenet")
KNN_T_MIN = 0.02  # below it exp(similarity / t) overflows float32 and the vote breaks (1/t > 88)


def is_device(name: str) -> bool:
    kind, _, index = name.partition(":")
    return name in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and index.isdigit())


def is_folder_name(name: Optional[str]) -> bool:
    """A plain folder name: no path separators, not '.' or '..', at most 255 bytes (the file systems' limit)."""
    return name is None or (name not in ("", ".", "..") and not any(c in name for c in ("/", "\\", "\0", os.sep))
                            and len(name.encode("utf-8", errors="replace")) <= 255
                            and portable.name_problem(name) is None)  # a run folder copied to Windows opens there


# ---- declarations several commands share (train, eval, scan) ------------------------------------------------
def device_setting() -> Any:
    return setting("auto", DEVICE_HELP + " (under torchrun, cuda is each process's own GPU)",
                   rule=Rule(is_device, "auto, cpu, cuda, cuda:N or mps"))


def precision_setting() -> Any:
    return setting("auto", PRECISION_HELP, choices=PRECISIONS)


def channels_last_setting() -> Any:
    return setting(None, "channels-last memory format for the convolutions; none: on a GPU only")


def progress_setting() -> Any:
    return setting(True, "a progress bar on a terminal; elsewhere a plain line every --progress-every seconds")


def progress_every_setting() -> Any:
    return setting(DEFAULT_EVERY, "seconds between plain progress lines when stderr is not a terminal", gt=0, le=86_400)


def time_limit_setting(what: str) -> Any:
    return setting(None, f"stop {what} with a checkpoint after this many seconds; rerunning continues; none: no limit",
                   gt=0, le=10**8)


def knn_k_setting(default: Optional[int], help: str) -> Any:
    return setting(default, help, ge=1, le=100_000)


def knn_t_setting(default: Optional[float], help: str) -> Any:
    return setting(default, help, ge=KNN_T_MIN, le=1000)


# ---- the sections --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    dataset: str = setting("digits", "the images to learn from", choices=DATASETS.names)
    data_dir: Optional[str] = setting(None, "the folder the dataset is read from; none: it is looked for in "
                                      "$SSLAB_DATA/<dataset>, ~/.cache/sslab/data/<dataset> and system folders such "
                                      "as /usr/share/datasets (config.yaml records the folder found)")
    download: bool = setting(False, "fetch the dataset from its official source (checksum checked) when it is missing")
    train_split: str = setting("train", "which images to train on (stl10: also its unlabelled images)",
                               choices=lambda: sorted({"train", *(s for splits in TRAIN_SPLITS.values() for s in splits)}))
    image_size: Optional[int] = setting(None, "resize every image to this side in pixels; none: the native size "
                                        "(image folders: the most common one)", ge=8, le=4096)
    store_size: Optional[int] = setting(None, "cache images with this side in pixels and random-resized-crop "
                                        "--image-size from them on the device (256 for 224 keeps 1.3x the bytes); "
                                        "none: the training size", ge=8, le=4096)
    test_fraction: float = setting(TEST_FRACTION, "datasets without a test split: the share held out as test images, "
                                   "stratified and seeded", ge=0, lt=1)
    strict: bool = setting(False, "refuse an image folder with unreadable images instead of skipping and listing them")
    limit_train: Optional[int] = setting(None, "keep this many training images, stratified (quick runs and tests); "
                                         "none: all", ge=2, le=10**9)
    limit_test: Optional[int] = setting(None, "keep this many test images, stratified; none: all", ge=0, le=10**9)
    cache_dir: Optional[str] = setting(None, "where decoded datasets are cached; none: $SSLAB_CACHE_DIR, else "
                                       "$XDG_CACHE_HOME/sslab/cache, else ~/.cache/sslab/cache (config.yaml records "
                                       "the folder used)")


@dataclass
class ModelConfig:
    backbone: str = setting("resnet18", "the encoder whose features are learned", choices=BACKBONES.names)
    stem: str = setting("auto", "the backbone's first layers; auto: the CIFAR stem (3x3 conv, no max-pool) up to "
                        "64 px, the ImageNet stem above", choices=STEMS)


@dataclass
class TrainConfig:
    seed: int = setting(0, "seed of the initial weights, the sample order and the augmentations", ge=0, lt=2**32)
    device: str = device_setting()
    precision: str = precision_setting()
    channels_last: Optional[bool] = channels_last_setting()
    data_on_device: str = setting("auto", PLACEMENT_HELP, choices=PLACEMENTS)
    compile: str = setting("off", "torch.compile the model's step (reduce-overhead adds CUDA graphs, GPU only)",
                           choices=COMPILE_MODES)
    fused: Optional[bool] = setting(None, "the fused SGD/AdamW kernel (one launch for all parameters; LARS has none); "
                                    "none: on a GPU only")
    knn_every: int = setting(1, "run the kNN monitor every N epochs (0: off)", ge=0, le=100_000)
    knn_k: int = knn_k_setting(200, "neighbours in the kNN monitor's vote")
    knn_t: float = knn_t_setting(0.1, "temperature of the kNN monitor's weighted vote")
    step_loss_every: int = setting(50, "log the loss to TensorBoard every N steps (0: off; each read waits for the "
                                   "device)", ge=0, le=10**9)
    checkpoint_every: int = setting(0, "also keep checkpoints/epoch_NNNN.pt every N epochs (0: only last.pt)", ge=0,
                                    le=100_000)
    collapse_threshold: float = setting(0.25, "warn when z_std * sqrt(d) falls below this (about 1 when healthy, 0 "
                                        "on collapse)", ge=0, le=10)
    out: str = setting("runs", "the folder run folders are made in")
    name: Optional[str] = setting(None, "the run folder's name inside --out; none: <method>-<dataset>-<backbone>-<time>",
                                  rule=Rule(is_folder_name, "a plain folder name of at most 255 bytes that Windows "
                                                            "accepts too (none of <>:\"/\\|?*, not CON or NUL, no "
                                                            "trailing dot or space)"))
    progress: bool = progress_setting()
    progress_every: float = progress_every_setting()
    time_limit: Optional[float] = time_limit_setting("training")


FIXED = {"data": DataConfig, "model": ModelConfig, "augment": AugmentConfig, "train": TrainConfig}
SECTIONS = ("data", "model", "method", "augment", "train")  # the order of config.yaml
FIELD_SECTION: dict[str, str] = {}  # setting name -> its section, for the sections every run has
for _section, _cls in FIXED.items():
    for _name in names_of(_cls):
        assert _name not in FIELD_SECTION, f"setting {_name} is declared in two sections"
        FIELD_SECTION[_name] = _section


def method_settings(name: str) -> type[MethodSettings]:
    """The settings class of method `name` (ConfigError for an unknown name); its settings must not share a name
    with a setting of the other sections (the flags are one namespace)."""
    settings = METHODS.get(name).Settings
    clash = sorted(set(names_of(settings)) & (set(FIELD_SECTION) | {"method"}))
    if clash:
        raise AssertionError(f"method {name}'s setting(s) {', '.join(clash)} clash with {FIELD_SECTION.get(clash[0])} "
                             "settings of the same name; rename them")
    return settings


def own_settings(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are settings of method `method` (for one set of small heads given to every
    method in a loop over methods: SimCLR has no predictor, BYOL no queue)."""
    own = set(names_of(method_settings(method)))
    return {k: v for k, v in values.items() if k in own}


# ---- the run spec --------------------------------------------------------------------------------------------
@dataclass
class Config:
    method: MethodSettings
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)  # set by the user

    @classmethod
    def from_values(cls, values: Mapping[str, Any], where: str | Mapping[str, str] = "config") -> "Config":
        """A run spec from settings by name (`method` the method's name), the others at their defaults. A setting
        that the chosen method does not have is refused, naming the method's settings. `where` says where the values
        come from, for messages: "command line" (they name the flags), a file's name, or one of those per setting."""
        if not isinstance(values, Mapping) or any(not isinstance(k, str) for k in values):
            raise ConfigError(f"{where}: expected settings by name, got {shown(values)}")
        if values.get("method") is None:
            raise ConfigError(f"no method given; pass --method ({', '.join(METHODS.names())})")
        name = coerce(values["method"], str, _label("method", where))
        settings_cls = method_settings(name)
        cfg = cls(method=settings_cls(), given=frozenset(values))
        for key, value in values.items():
            if key != "method":
                obj = cfg.section_of(key, where if isinstance(where, str) else where.get(key, "config"))
                setattr(obj, key, coerce(value, types_of(type(obj))[key], _label(key, where)))
        return cfg

    def section_of(self, name: str, where: str = "config") -> Any:
        """The section object that holds setting `name` (ConfigError naming the method's settings if none does)."""
        if name in FIELD_SECTION:
            return getattr(self, FIELD_SECTION[name])
        if name in names_of(self.method):
            return self.method
        method = self.method.method
        owners = [m for m in METHODS.names() if name in names_of(METHODS.get(m).Settings)]
        own = ", ".join(flag(n) for n in names_of(self.method))
        at = "" if where == "command line" else f"{where}: "
        if owners:
            raise ConfigError(f"{at}{flag(name)} is not a setting of {method} (it is one of {', '.join(owners)}); "
                              f"{method}'s settings: {own}")
        raise ConfigError(f"{at}unknown setting {shown(name)}; {method}'s settings: {own}; the others: "
                          "`sslab train --help`")

    def values(self) -> dict[str, Any]:
        """Every setting by name, `method` the method's name."""
        out = {"method": self.method.method}
        for section in SECTIONS:
            out.update({f.name: getattr(getattr(self, section), f.name) for f in fields(getattr(self, section))})
        return out

    def with_values(self, where: str = "config", **values: Any) -> "Config":
        """A copy with some settings changed (and marked given). A new method keeps only the given settings."""
        if values.get("method", self.method.method) == self.method.method:
            base = self.values()
        else:
            base = {k: v for k, v in self.values().items() if k in self.given}
        new = Config.from_values({**base, **values}, where)
        return dataclasses.replace(new, given=self.given | frozenset(values))

    def check(self) -> None:
        """Every setting within its range, in one pass: the first that is not raises one line naming its flag."""
        for section in SECTIONS:
            check(getattr(self, section))

    # ---- dict / YAML ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {s: to_dict(getattr(self, s)) for s in SECTIONS}
        out["method"] = {"method": self.method.method, **out["method"]}
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> "Config":
        """From {section: {setting: value}} (a YAML file's layout; sslab 0.1's is translated first). The settings
        present are the given ones."""
        return cls.from_values(flatten(upgrade_layout(d, where), where), where)

    def save(self, path: Path) -> None:
        path.write_bytes(dump_yaml(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(read_yaml_file(path), where=str(path))


def _label(key: str, where: str | Mapping[str, str]) -> str:
    """How a message names a setting: its flag for the command line, else where it is and its name."""
    place = where if isinstance(where, str) else where.get(key, "config")
    return flag(key) if place == "command line" else f"{place}: {FIELD_SECTION.get(key, 'method')}.{key}"


def flatten(d: dict[str, Any], where: str) -> dict[str, Any]:
    """{section: {setting: value}} -> {setting: value}, every setting in its own section."""
    out: dict[str, Any] = {}
    for section, values in d.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {shown(section)}; sections are {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping of setting: value")
        for key, value in values.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: {section}.{shown(key)} is not a setting name")
            home = FIELD_SECTION.get(key, "method")
            if home != section and section != "method" and key not in FIELD_SECTION and not any(
                    key in names_of(METHODS.get(m).Settings) for m in METHODS.names()):
                raise ConfigError(f"{where}: unknown setting {section}.{shown(key)}; the {section} settings: "
                                  f"{', '.join(names_of(FIXED[section]))}")
            if home != section:
                raise ConfigError(f"{where}: {section}.{shown(key)} belongs in section {home}")
            out[key] = value
    return out


# ---- sslab 0.1's layout ---------------------------------------------------------------------------------------
# where sslab 0.1 kept the settings that moved: the optimiser's and the run length in the method's settings
MOVED = {("optim", "optimizer"): "method", ("optim", "lr"): "method", ("optim", "momentum"): "method",
         ("optim", "weight_decay"): "method", ("optim", "warmup_epochs"): "method", ("optim", "min_lr"): "method",
         ("optim", "fused"): "train", ("train", "epochs"): "method", ("train", "batch_size"): "method"}
# sections whose None meant "the method's recipe decides" (the settings another method has were None too)
RECIPE_NONE = ("method", "optim", "augment")


def upgrade_layout(d: Any, where: str) -> dict[str, Any]:
    """A config dict in today's layout: sslab 0.1's (sections optim, train.epochs, ...; None for "the recipe
    decides" and for the settings of other methods; compile as true/false) translated, today's returned as is."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(d).__name__}")
    train = d.get("train")
    old = "optim" in d or (isinstance(train, dict) and any(("train", k) in MOVED for k in train))
    if not old:
        return d
    out: dict[str, Any] = {}
    for section, values in d.items():
        if not isinstance(values, dict):
            out[section] = values  # flatten() names the problem
            continue
        for key, value in values.items():
            if value is None and (section in RECIPE_NONE or (section, key) in MOVED):
                continue
            if (section, key) == ("train", "compile") and isinstance(value, bool):
                value = "default" if value else "off"
            out.setdefault(MOVED.get((section, key), section), {})[key] = value
    return out


__all__ = ["Config", "DataConfig", "ModelConfig", "AugmentConfig", "TrainConfig", "MethodSettings", "SECTIONS",
           "FIELD_SECTION", "COMPILE_MODES", "STEMS", "method_settings", "own_settings", "flatten", "upgrade_layout"]
