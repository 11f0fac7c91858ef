"""One dataclass tree for a run. Every field is a command-line flag (`--batch-size 256`) and a YAML key
(`train: {batch_size: 256}`); the resolved tree is saved as `config.yaml` in every run folder.

A field left at `None` means "the method's recipe for this dataset decides" (docs/methods.md); `resolve()`
fills those in, so the saved config always shows the values that were really used.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from sslab.errors import ConfigError


@dataclass
class DataConfig:
    dataset: str = "digits"  # the images to learn from
    data_dir: Optional[str] = None  # where the dataset lives; None: ~/.cache/sslab/data/<dataset>
    download: bool = False  # fetch from the official source (with checksum) when missing
    train_split: str = "train"  # which STL-10 images to train on
    image_size: Optional[int] = None  # resize every image to this size; None: native (folders: most common)
    store_size: Optional[int] = None  # cache images this large; training crops --image-size from them (256 for 224); None: the training size
    test_fraction: float = 0.2  # sets without a test split: share held out, stratified and seeded
    strict: bool = False  # refuse a folder with corrupt images instead of skipping and listing them
    limit_train: Optional[int] = None  # keep N training images, stratified (quick runs and tests)
    limit_test: Optional[int] = None  # keep N test images, stratified
    # where decoded datasets are cached; None: $SSLAB_CACHE_DIR, else $XDG_CACHE_HOME/sslab/cache, else
    # ~/.cache/sslab/cache (never the data folder unless given here); the run's config.yaml records the one used
    cache_dir: Optional[str] = None


@dataclass
class AugmentConfig:
    preset: str = "auto"  # auto: the method's preset for this image size; or a preset name
    crop_scale: Optional[tuple[float, float]] = None  # random resized crop: min,max share of the image area
    crop_ratio: Optional[tuple[float, float]] = None  # random resized crop: min,max aspect ratio
    flip_p: Optional[float] = None  # probability of a horizontal flip
    jitter: Optional[tuple[float, float, float, float]] = None  # brightness, contrast, saturation, hue
    jitter_p: Optional[float] = None  # probability of the colour jitter
    grayscale_p: Optional[float] = None  # probability of turning a view grey
    blur_p: Optional[float] = None  # probability of a Gaussian blur
    blur_sigma: Optional[tuple[float, float]] = None  # blur sigma range min,max in pixels
    solarize_p: Optional[float] = None  # probability of solarizing a view
    solarize_threshold: Optional[float] = None  # solarize pixels above this (0-1)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # the encoder whose features are learned
    stem: str = "auto"  # first layers; auto: cifar stem (3x3, no max-pool) at <= 64 px, imagenet stem above


@dataclass
class MethodConfig:
    method: Optional[str] = None  # the self-supervised method (`sslab methods` shows their recipes)
    proj_layers: Optional[int] = None  # layers of the projector MLP
    proj_hidden: Optional[int] = None  # hidden width of the projector
    proj_dim: Optional[int] = None  # output width of the projector (the embedding z)
    pred_hidden: Optional[int] = None  # hidden width of the predictor (SimSiam, PhiNet, BYOL)
    fixed_predictor_lr: Optional[bool] = None  # SimSiam/PhiNet: predictor h keeps the base lr
    temperature: Optional[float] = None  # contrastive methods
    ema: Optional[float] = None  # EMA momentum of target/slow/key encoders
    lam: Optional[float] = None  # PhiNet/X-PhiNet weight of the MSE term
    third_view: Optional[str] = None  # PhiNet's x0: the clean image or a third strong view
    queue_size: Optional[int] = None  # MoCo v2


@dataclass
class OptimConfig:
    optimizer: Optional[str] = None  # the optimiser
    lr: Optional[float] = None  # base lr for batch 256; the run uses lr * batch_size / 256
    momentum: Optional[float] = None  # SGD/LARS momentum
    weight_decay: Optional[float] = None  # L2 weight decay
    warmup_epochs: Optional[int] = None  # linear lr warm-up before the cosine decay
    min_lr: float = 0.0  # cosine schedule floor, as a fraction of the peak lr
    fused: Optional[bool] = None  # fused SGD/AdamW kernel (one launch for all parameters); None: on GPU only; LARS: none


@dataclass
class TrainConfig:
    epochs: Optional[int] = None  # passes over the training images
    batch_size: Optional[int] = None  # images per step, over all processes (the last partial batch is dropped)
    seed: int = 0  # seed of the model init, the sample order and the augmentations
    device: str = "auto"  # where to train (auto: a GPU when there is one; cuda:N under torchrun is per rank)
    precision: str = "auto"  # auto: bf16 autocast on a GPU, fp32 on the CPU; bf16 also on the CPU
    channels_last: Optional[bool] = None  # channels-last memory format; None: on a GPU only
    compile: str = "off"  # torch.compile the model's step; reduce-overhead adds CUDA graphs (GPU)
    knn_every: int = 1  # kNN monitor every N epochs (0: off)
    knn_k: int = 200  # neighbours of the kNN monitor
    knn_t: float = 0.1  # temperature of the kNN monitor's weighted vote
    step_loss_every: int = 50  # TensorBoard train/step_loss every N steps (0: off; each reads the loss from the device)
    checkpoint_every: int = 0  # keep checkpoints/epoch_NNNN.pt every N epochs (last.pt is always written)
    collapse_threshold: float = 0.25  # warn when z_std * sqrt(d) falls below this (1.0 when healthy)
    out: str = "runs"  # where run folders are created
    name: Optional[str] = None  # run folder name; None: <method>-<dataset>-<backbone>-<timestamp>
    progress: bool = True  # progress bar on a terminal; elsewhere a plain line every progress_every seconds
    progress_every: float = 30.0  # seconds between plain progress lines when stderr is not a terminal
    time_limit: Optional[float] = None  # stop with a checkpoint after this many seconds of training; --resume continues


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ---- dict / YAML ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        return {s.name: {f.name: plain(getattr(getattr(self, s.name), f.name)) for f in fields(getattr(self, s.name))}
                for s in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = cls()
        cfg.update(d)
        return cfg

    def update(self, d: dict[str, Any], where: str = "config") -> None:
        """Set fields from a nested dict ({section: {field: value}}), type-checked."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(d).__name__}")
        for section, values in d.items():
            if section not in SECTIONS:
                raise ConfigError(f"{where}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: section {section!r} must be a mapping of field: value")
            obj = getattr(self, section)
            known = {f.name: f for f in fields(obj)}
            for key, value in values.items():
                if key not in known:
                    raise ConfigError(f"{where}: unknown field {section}.{key}; known: {', '.join(known)}")
                if (section, key) == ("train", "compile") and isinstance(value, bool):
                    value = "default" if value else "off"  # the YAML of older runs: compile: true/false
                setattr(obj, key, coerce(value, FIELD_TYPES[section][key], f"{section}.{key}"))

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        d = read_yaml_file(path)
        cfg = cls()
        cfg.update(d, where=str(path))
        return cfg

    # ---- checks -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Reject values that cannot work, with the flag to fix. Called after `resolve()`."""
        t, o = self.train, self.optim
        checks = [
            (t.epochs is None or t.epochs >= 1, "--epochs must be >= 1"),
            (t.batch_size is None or t.batch_size >= 2, "--batch-size must be >= 2 (the losses compare samples)"),
            (o.lr is None or o.lr > 0, "--lr must be > 0"),
            (o.weight_decay is None or o.weight_decay >= 0, "--weight-decay must be >= 0"),
            (o.warmup_epochs is None or o.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
            (0 <= self.data.test_fraction < 1, "--test-fraction must be in [0, 1)"),
            (self.data.limit_train is None or self.data.limit_train >= 2, "--limit-train must be >= 2"),
            (self.data.image_size is None or self.data.image_size >= 8, "--image-size must be >= 8"),
            (t.knn_every >= 0 and t.checkpoint_every >= 0 and t.step_loss_every >= 0,
             "--knn-every, --checkpoint-every and --step-loss-every must be >= 0"),
            (t.knn_k >= 1 and t.knn_t > 0, "--knn-k must be >= 1 and --knn-t > 0"),
            (t.time_limit is None or t.time_limit > 0, "--time-limit must be > 0 seconds"),
            (t.progress_every > 0, "--progress-every must be > 0 seconds"),
            (t.precision in ("auto", "bf16", "fp32"), "--precision must be auto, bf16 or fp32"),
            (t.compile in COMPILE_MODES, f"--compile must be one of {', '.join(COMPILE_MODES)}"),
            (self.model.stem in STEMS, f"--stem must be {one_of(STEMS)}"),
            (t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "--device must be auto, cpu or cuda[:N]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def one_of(choices: typing.Sequence[str]) -> str:
    """"a, b or c": the choices of an option, for messages and help texts."""
    choices = list(choices)
    return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]


def read_yaml_file(path: str | Path) -> Any:
    """The contents of a YAML config file ({} when empty); ConfigError when missing or malformed."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing YAML file to --config") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; pass a YAML file") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e}); pass a readable YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (not UTF-8); pass a YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    except RecursionError:  # YAML nested thousands of levels deep
        raise ConfigError(f"config file {path} is nested too deeply to be a config; fix the file") from None


COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")  # reduce-overhead: CUDA graphs
STEMS = ("auto", "cifar", "imagenet")
# the fields a method's recipe fills in when left at None (METHODS.md)
RECIPE_FIELDS = {*(f.name for f in fields(AugmentConfig) if f.name != "preset"),
                 *(f.name for f in fields(MethodConfig) if f.name != "method"),
                 *(f.name for f in fields(OptimConfig) if f.name != "min_lr"), "epochs", "batch_size"}
THIRD_VIEWS = ("clean", "strong")
SECTIONS = [f.name for f in fields(Config)]
_SECTION_TYPES = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]
FIELD_TYPES: dict[str, dict[str, Any]] = {
    s: typing.get_type_hints(_SECTION_TYPES[s]) for s in SECTIONS
}
FLAG_TO_FIELD: dict[str, tuple[str, str]] = {}
for _s in SECTIONS:
    for _f in FIELD_TYPES[_s]:
        assert _f not in FLAG_TO_FIELD, f"config field name {_f} is used in two sections"
        FLAG_TO_FIELD[_f] = (_s, _f)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a YAML or flag value to the field's type, or raise a ConfigError naming the field."""
    base, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"{name} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if typing.get_origin(base) is tuple:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError
            args = typing.get_args(base)
            if len(args) == 2 and args[1] is Ellipsis:  # tuple[float, ...]: any length, at least one
                args = (args[0],) * len(items) if items else ()
            if len(items) != len(args) or not items:
                raise ValueError
            return tuple(coerce(v, a, name) for v, a in zip(items, args))
    except (ValueError, TypeError, OverflowError):
        pass
    else:
        raise AssertionError(f"unsupported config type {tp} for {name}")
    raise ConfigError(f"{name}: {value!r} is not a valid {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    base, optional = _unwrap_optional(tp)
    if typing.get_origin(base) is tuple:
        name = "comma-separated list of " + ", ".join(a.__name__ for a in typing.get_args(base) if a is not Ellipsis)
    else:
        name = base.__name__
    return name + (" (or none)" if optional else "")


def field_help(cls: type) -> dict[str, str]:
    """What each field of a dataclass does: its `metadata["help"]`, else the comment after it in the class
    body (so each setting is described once, beside its default)."""
    import inspect
    import re

    comments, above = {}, []  # a field's trailing comment, else the comment lines just above it
    for line in inspect.getsource(cls).splitlines():
        if line.strip().startswith("#"):
            above.append(line.strip().lstrip("#").strip())
            continue
        m = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.+))?$", line)
        if m:
            comments[m.group(1)] = (m.group(2) or " ".join(above)).strip()
        above = []
    return {f.name: f.metadata.get("help") or comments.get(f.name, "") for f in fields(cls)}


def add_dataclass_flags(group: Any, cls: type, choices: dict[str, typing.Sequence[str]] | None = None,
                        from_recipe: typing.Collection[str] = (), skip: typing.Collection[str] = ()) -> None:
    """One flag per field of the dataclass `cls` (`--batch-size`, `--download`/`--no-download`), with the
    field's help, its choices and its default (for the fields in `from_recipe`: "from the method recipe")."""
    choices = choices or {}
    helps, types_ = field_help(cls), typing.get_type_hints(cls)
    instance = cls()
    for f in fields(cls):
        if f.name in skip:
            continue
        tp, flag = types_[f.name], "--" + f.name.replace("_", "-")
        base, _ = _unwrap_optional(tp)
        default = getattr(instance, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parts = [helps[f.name]] if helps[f.name] else []
        if f.name in choices:
            parts.append(f"choices: {', '.join(choices[f.name])}")
        parts.append(f"default: {'from the method recipe' if f.name in from_recipe else shown}")
        text = "; ".join(parts).replace("%", "%%")
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
        else:
            metavar = f.name.upper() if f.name not in choices else "{" + ",".join(choices[f.name]) + "}"
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=text,
                               metavar=metavar if len(metavar) <= 48 else f.name.upper())


def dataclass_from_args(cls: type, args: argparse.Namespace, base: Any = None) -> Any:
    """An instance of `cls` (or `base`) with the fields whose flags were given, converted to the field types."""
    obj = base if base is not None else cls()
    types_ = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in vars(args):
            setattr(obj, f.name, coerce(getattr(args, f.name), types_[f.name], "--" + f.name.replace("_", "-")))
    return obj


def config_choices() -> dict[str, typing.Sequence[str]]:
    """The choices of the fields that have them (registries read when a parser is built)."""
    import sslab.data  # noqa: F401  (registration)
    import sslab.methods  # noqa: F401
    import sslab.models  # noqa: F401
    from sslab.augment import preset_names
    from sslab.data.stl10 import TRAIN_SPLITS
    from sslab.device import PRECISIONS
    from sslab.optim import OPTIMIZERS
    from sslab.registry import BACKBONES, DATASETS, METHODS

    return {"dataset": DATASETS.names(), "method": METHODS.names(), "backbone": BACKBONES.names(),
            "optimizer": OPTIMIZERS, "precision": PRECISIONS, "compile": COMPILE_MODES, "stem": STEMS,
            "preset": ["auto", *preset_names()], "third_view": THIRD_VIEWS, "train_split": TRAIN_SPLITS,
            "device": ("auto", "cpu", "cuda", "cuda:N")}


def add_config_flags(parser: argparse.ArgumentParser, sections: typing.Sequence[str] = tuple(SECTIONS)) -> None:
    """One flag per config field of `sections` (default: all): `--batch-size`, `--download`/`--no-download`."""
    parser.add_argument("--config", help="YAML file with config sections; flags override it")
    choices = config_choices()
    for section in sections:
        add_dataclass_flags(parser.add_argument_group(f"{section} config"), _SECTION_TYPES[section], choices,
                            RECIPE_FIELDS)


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """The config from `--config FILE` (if given) overridden by the flags that were set."""
    cfg = base if base is not None else (Config.load(args.config) if getattr(args, "config", None) else Config())
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if key in FLAG_TO_FIELD:
            section, name = FLAG_TO_FIELD[key]
            overrides.setdefault(section, {})[name] = value
    cfg.update(overrides, where="command line")
    return cfg


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of `cfg` with some fields changed: `replace(cfg, train={"epochs": 5})`."""
    new = Config.from_dict(cfg.to_dict())
    new.update(sections, where="replace")
    return new


__all__ = ["Config", "DataConfig", "AugmentConfig", "ModelConfig", "MethodConfig", "OptimConfig", "TrainConfig",
           "add_config_flags", "config_from_args", "replace", "dataclasses"]
