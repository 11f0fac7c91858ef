"""Batched augmentation on the device: ops (crop, flip, colour, blur, ...) and the recipes built from them."""
from sslab.augment.ops import (
    GRAY_WEIGHTS,
    JITTER_OPS,
    adjust_brightness,
    adjust_color,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur,
    center_resize,
    color_jitter,
    default_blur_kernel,
    gaussian_blur,
    gaussian_kernels,
    horizontal_flip,
    normalize,
    random_grayscale,
    random_mask,
    random_resized_crop,
    resized_crop,
    rgb_to_grayscale,
    sample_crop_boxes,
    sample_jitter_params,
    solarize,
    to_float,
)
from sslab.augment.presets import PRESETS, AugmentConfig, AugmentParams, Augmenter, preset, preset_names

__all__ = [
    "GRAY_WEIGHTS", "JITTER_OPS", "PRESETS", "AugmentConfig", "AugmentParams", "Augmenter", "adjust_brightness",
    "adjust_color", "adjust_contrast", "adjust_hue", "adjust_saturation", "blur", "center_resize", "color_jitter",
    "default_blur_kernel", "gaussian_blur", "gaussian_kernels", "horizontal_flip", "normalize", "preset", "preset_names",
    "random_grayscale", "random_mask", "random_resized_crop", "resized_crop", "rgb_to_grayscale",
    "sample_crop_boxes", "sample_jitter_params", "solarize", "to_float",
]
