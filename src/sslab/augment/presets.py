"""Augmentation settings (`AugmentConfig`), the presets built from them, and the `Augmenter` that applies them
to a batch of uint8 images.

`AugmentConfig`'s defaults are the standard augmentation of SimCLR-style methods; a method changes it with its
settings' `augment` (and `large_augment` above 64 px): its family's presets `<family>-small` and `<family>-large`.
Which preset a run uses, and for which image size, is decided in sslab/recipe.py. `Augmenter(params, out_size,
mean, std)` is the callable the training loop runs on device-resident uint8 batches: crop -> flip -> colour
jitter -> grayscale -> blur -> solarize -> normalise, every op batched with per-sample random parameters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch

from sslab.augment import ops
from sslab.methods import METHODS, MethodSettings
from sslab.settings import Rule, check, setting

PROBABILITY = {"ge": 0, "le": 1}
ORDERED = Rule(lambda pair: pair[0] <= pair[1], "two numbers min,max with min <= max")
JITTER = Rule(lambda j: j[3] <= 0.5, "brightness, contrast, saturation >= 0 and hue in [0, 0.5]")


@dataclass
class AugmentConfig:
    """Every augmentation setting; the defaults are the standard augmentation (SimCLR's, small images)."""

    preset: str = setting("auto", "the preset the other settings start from; auto: the method's own for the image "
                          "size (sslab/recipe.py)", choices=lambda: ["auto", *preset_names()])
    crop_scale: tuple[float, float] = setting((0.08, 1.0), "random resized crop: min,max share of the image area",
                                              gt=0, le=1, rule=ORDERED)
    crop_ratio: tuple[float, float] = setting((3 / 4, 4 / 3), "random resized crop: min,max aspect ratio", gt=0,
                                              le=100, rule=ORDERED)
    flip_p: float = setting(0.5, "probability of a horizontal flip", **PROBABILITY)
    jitter: tuple[float, float, float, float] = setting((0.4, 0.4, 0.4, 0.1), "colour jitter strengths: "
                                                        "brightness, contrast, saturation, hue", ge=0, le=10,
                                                        rule=JITTER)
    jitter_p: float = setting(0.8, "probability of the colour jitter", **PROBABILITY)
    grayscale_p: float = setting(0.2, "probability of turning a view grey", **PROBABILITY)
    blur_p: float = setting(0.0, "probability of a Gaussian blur", **PROBABILITY)
    blur_sigma: tuple[float, float] = setting((0.1, 2.0), "Gaussian blur sigma range min,max in pixels", gt=0, le=100,
                                              rule=ORDERED)
    solarize_p: float = setting(0.0, "probability of solarizing a view", **PROBABILITY)
    solarize_threshold: float = setting(0.5, "solarize pixels above this value (0-1)", **PROBABILITY)


AugmentParams = AugmentConfig  # the name of concrete values for an Augmenter: the same settings, none left open

LARGE_IMAGE_BLUR = {"blur_p": 0.5}  # above 64 px every method's views are blurred (sigma: blur_sigma)
# Crop and flip only: the standard linear-probe protocol's augmentation.
CROP_FLIP = AugmentConfig("crop-flip", jitter_p=0.0, grayscale_p=0.0)
PRESETS: dict[str, AugmentConfig] = {CROP_FLIP.preset: CROP_FLIP}  # presets that belong to no method


def augment_family(settings: type[MethodSettings]) -> str:
    """The method whose augmentation a method's settings use: the nearest settings class (itself or a base) that
    declares `augment` or `large_augment` (PhiNet: SimSiam's), else the method itself (the standard augmentation)."""
    for klass in settings.__mro__:
        if klass is MethodSettings:
            break
        if "augment" in vars(klass) or "large_augment" in vars(klass):
            return klass.method
    return settings.method


def preset_names() -> list[str]:
    families = sorted({augment_family(METHODS.get(m).Settings) for m in METHODS.names()})
    return sorted([*PRESETS, *(f"{f}-{size}" for f in families for size in ("small", "large"))])


def preset(name: str) -> AugmentConfig:
    """A preset by name: "crop-flip", or "<family>-small" (the standard augmentation with the method's `augment`)
    and "<family>-large" (plus blur and its `large_augment`). KeyError for another name."""
    if name in PRESETS:
        return PRESETS[name]
    family, _, size = name.rpartition("-")
    if size not in ("small", "large") or family not in METHODS or augment_family(METHODS.get(family).Settings) != family:
        raise KeyError(name)
    settings = METHODS.get(family).Settings
    changes: Mapping[str, Any] = settings.augment
    if size == "large":
        changes = {**changes, **LARGE_IMAGE_BLUR, **settings.large_augment}
    return dataclasses.replace(AugmentConfig(name), **changes)


def check_params(p: AugmentConfig) -> None:
    """Every value within its range (one line naming the flag otherwise)."""
    check(p, skip=("preset",))


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
