"""Augmentation recipes (docs/methods.md) and the `Augmenter` that applies one to a batch of uint8 images.

`resolve_augment(cfg, method, image_size)` turns an `AugmentConfig` (fields at None mean "the preset
decides") into concrete `AugmentParams`; `Augmenter(params, out_size, mean, std)` is the callable the
training loop runs on device-resident uint8 batches: crop -> flip -> colour jitter -> grayscale ->
blur -> solarize -> normalise, every op batched with per-sample random parameters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Optional, Sequence

import torch

from sslab.augment import ops
from sslab.config import AugmentConfig
from sslab.errors import ConfigError

SMALL_IMAGE_MAX = 64  # images up to this side use the CIFAR-style recipes (no blur)


@dataclass(frozen=True)
class AugmentParams:
    """Concrete values of every augmentation setting (the fields of `AugmentConfig`, none left None)."""

    preset: str  # the preset the values came from (before any explicit overrides)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5


def _with_blur(p: AugmentParams, name: str) -> AugmentParams:
    """The large-image (> 64 px) variant of a recipe: Gaussian blur p 0.5, sigma (0.1, 2.0)."""
    return dataclasses.replace(p, preset=name, blur_p=0.5, blur_sigma=(0.1, 2.0))


# SimSiam CIFAR-10 (docs/methods.md): RandomResizedCrop(scale 0.2-1.0), hflip, ColorJitter(0.4,0.4,0.4,0.1)
# p=0.8, grayscale p=0.2, no blur at 32 px. PhiNet and X-PhiNet use SimSiam's augmentation.
_SIMSIAM = AugmentParams("simsiam-small", crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1))
# SimCLR small images (solo-learn cifar/simclr): scale 0.08-1, jitter 0.4,0.4,0.4,0.1 p 0.8, gray 0.2, no blur.
_SIMCLR = AugmentParams("simclr-small", crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1))
# BYOL small images: scale 0.08-1, jitter 0.4,0.4,0.2,0.1 p 0.8, gray 0.2, solarize p 0.1
# (one symmetric recipe for both views; BYOL's paper uses asymmetric blur/solarize probabilities).
_BYOL = AugmentParams("byol-small", crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), solarize_p=0.1)
# MoCo v2+ small images (solo-learn scripts/pretrain/cifar/mocov2plus.yaml): scale 0.08-1, jitter
# 0.4,0.4,0.4,0.1 p 0.8, gray 0.2, no blur, no solarization.
_MOCOV2 = AugmentParams("mocov2-small", crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1))
# Crop and flip only: the standard linear-probe protocol's augmentation.
_CROP_FLIP = AugmentParams("crop-flip", crop_scale=(0.08, 1.0), jitter_p=0.0, grayscale_p=0.0)

PRESETS: dict[str, AugmentParams] = {p.preset: p for p in (_SIMSIAM, _SIMCLR, _BYOL, _MOCOV2, _CROP_FLIP)}
PRESETS.update({name.replace("-small", "-large"): _with_blur(p, name.replace("-small", "-large"))
                for name, p in list(PRESETS.items()) if name.endswith("-small")})

# Grey digit datasets: a mirrored 2, 5 or 7 is not a digit (a mirrored shirt is still a shirt, so
# Fashion-MNIST keeps its flips). `preset: auto` gives these the method's recipe without flips.
NO_FLIP_DATASETS = frozenset({"digits", "mnist"})


def preset_names() -> list[str]:
    return sorted(PRESETS)


def auto_preset(method: Optional[str], image_size: int) -> str:
    """The preset `preset: auto` picks: the registered method's `augment_family` (SimSiam's without a
    method), "-small" up to 64 px, "-large" above. An unregistered method, or one without a family, is an error."""
    import sslab.methods  # noqa: F401  (registration)
    from sslab.registry import METHODS

    family = METHODS.get(method).augment_family if method is not None else "simsiam"
    if not family:
        raise ConfigError(f"method {method!r} declares no augmentation (augment_family); pass --preset "
                          f"({', '.join(preset_names())})")
    return f"{family}-{'small' if image_size <= SMALL_IMAGE_MAX else 'large'}"


def resolve_augment(cfg: AugmentConfig, method: Optional[str], image_size: int,
                    dataset: Optional[str] = None) -> AugmentParams:
    """Fill the None fields of `cfg` from its preset ("auto": by method and image size, and no flips for
    the digit datasets in NO_FLIP_DATASETS) and check them."""
    name = auto_preset(method, image_size) if cfg.preset == "auto" else cfg.preset
    if name not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {cfg.preset!r}; --preset must be auto or one of: "
                          f"{', '.join(preset_names())}")
    explicit = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "preset"}
    explicit = {k: tuple(v) if isinstance(v, list) else v for k, v in explicit.items() if v is not None}
    if cfg.preset == "auto" and dataset in NO_FLIP_DATASETS:
        explicit.setdefault("flip_p", 0.0)
    params = dataclasses.replace(PRESETS[name], **explicit)
    check_params(params)
    return params


def check_params(p: AugmentParams) -> None:
    """Reject values the ops cannot use, naming the flag to fix."""
    checks = [
        (0 < p.crop_scale[0] <= p.crop_scale[1] <= 1, "--crop-scale must be two numbers 0 < min <= max <= 1"),
        (0 < p.crop_ratio[0] <= p.crop_ratio[1], "--crop-ratio must be two numbers 0 < min <= max"),
        (all(v >= 0 for v in p.jitter[:3]) and 0 <= p.jitter[3] <= 0.5,
         "--jitter must be brightness, contrast, saturation >= 0 and hue in [0, 0.5]"),
        (0 < p.blur_sigma[0] <= p.blur_sigma[1], "--blur-sigma must be two numbers 0 < min <= max"),
        (0 <= p.solarize_threshold <= 1, "--solarize-threshold must be in [0, 1]"),
    ]
    for flag in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
        checks.append((0 <= getattr(p, flag) <= 1, f"--{flag.replace('_', '-')} must be a probability in [0, 1]"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


class Augmenter:
    """One strong view per call: uint8 (B, C, H, W) of any size -> normalised (B, C, out, out).

    crop (resized to `out_size`, flip folded into the same resampling) -> colour jitter -> grayscale ->
    blur -> solarize -> normalise with the dataset's `mean`/`std`. Steps whose probability is 0 are
    skipped. The uint8 images are converted to float once; the work runs on their device, and
    `generator` must live there too. `dtype` is the output's (e.g. torch.bfloat16 to halve the memory
    of the views on the GPU); the ops themselves run in float32.
    """

    def __init__(self, params: AugmentParams, out_size: int, mean: Sequence[float], std: Sequence[float],
                 dtype: torch.dtype = torch.float32):
        check_params(params)
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels and std {len(std)}")
        self.params = params
        self.out_size = int(out_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.dtype = dtype
        self.blur_kernel = ops.default_blur_kernel(self.out_size)

    @classmethod
    def from_config(cls, cfg: AugmentConfig, method: Optional[str], out_size: int, mean: Sequence[float],
                    std: Sequence[float], dtype: torch.dtype = torch.float32) -> "Augmenter":
        return cls(resolve_augment(cfg, method, out_size), out_size, mean, std, dtype)

    def __repr__(self) -> str:
        return f"Augmenter({self.params}, out_size={self.out_size}, dtype={self.dtype})"

    def _normalize_(self, x: torch.Tensor) -> torch.Tensor:
        """In place on our own float32 buffer, then one cast to the output dtype."""
        C = x.shape[1]
        if len(self.mean) not in (1, C):
            raise ValueError(f"images have {C} channels but mean/std have {len(self.mean)}")
        inv_std = tuple(1 / s for s in self.std)
        shift = tuple(-m / s for m, s in zip(self.mean, self.std))
        x.mul_(ops.channel_constant(inv_std, x.device, x.dtype)).add_(ops.channel_constant(shift, x.device, x.dtype))
        return x.to(self.dtype)

    @staticmethod
    def _as_float(x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """float32 images and the factor that maps their values to [0, 1] (uint8: 1/255, applied later)."""
        if x.dtype == torch.uint8:
            return x.to(torch.float32), 1 / 255
        return x.to(torch.float32), 1.0

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        p = self.params
        B, C, H, W = x.shape
        boxes = ops.sample_crop_boxes(B, H, W, p.crop_scale, p.crop_ratio, generator, x.device)  # (B, 4)
        flip = ops.random_mask(B, p.flip_p, x, generator)
        xf, to_unit = self._as_float(x)
        v = ops.resized_crop(xf, boxes, self.out_size, flip=flip)  # (B, C, out, out)
        if to_unit != 1.0:
            v.mul_(to_unit)  # scale after the crop: fewer pixels (the resampling is linear)
        if p.jitter_p > 0 and any(j > 0 for j in p.jitter):
            v = ops.color_jitter(v, *p.jitter, p=p.jitter_p, generator=generator)
        if p.grayscale_p > 0 and C > 1:
            v = ops.random_grayscale(v, p.grayscale_p, generator)
        if p.blur_p > 0:
            v = ops.gaussian_blur(v, p.blur_sigma, p.blur_p, generator, kernel_size=self.blur_kernel)
        if p.solarize_p > 0:
            v = ops.solarize(v, p.solarize_threshold, p.solarize_p, generator)
        return self._normalize_(v)

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """The un-augmented view (PhiNet's x0): `ops.center_resize`, bicubic as in PhiNet's reference code
        (Resize(int(s * 8/7), BICUBIC) + CenterCrop(s)), then normalise."""
        xf = x if x.dtype == torch.uint8 else x.to(torch.float32)
        v = ops.center_resize(xf, self.out_size, mode="bicubic")
        return self._normalize_(v)
