"""Batched augmentation: each op against its definition (torchvision's transforms, written out here by hand),
its statistics against the probabilities it was given, and the recipes against METHODS.md."""
from __future__ import annotations

import colorsys
import dataclasses
import itertools
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sslab.augment import (
    PRESETS,
    preset,
    preset_names,
    AugmentParams,
    Augmenter,
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
    random_resized_crop,
    resized_crop,
    rgb_to_grayscale,
    sample_crop_boxes,
    sample_jitter_params,
    solarize,
    to_float,
)
from sslab.augment.presets import check_params
from sslab.config import AugmentConfig, Config
from sslab.errors import ConfigError
from sslab.recipe import auto_preset, fit_to_data


def resolve_augment(method: str | None, size: int, dataset: str | None = None, **settings) -> AugmentConfig:
    """The augmentation a run of `method` (None: simsiam) on `dataset` at `size` px trains with, the augmentation
    `settings` given (checked as a run checks them)."""
    spec = Config.from_values({"method": method or "simsiam", "dataset": dataset or "cifar10", **settings})
    spec.check()
    return fit_to_data(spec, size).augment

RATIO = (3 / 4, 4 / 3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def torchvision_box(height: int, width: int, scale, ratio, rng: random.Random):
    """torchvision's RandomResizedCrop.get_params, transcribed with Python's `random` as the source."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def fallback_box(height: int, width: int, ratio):
    """torchvision's centred fallback box, at least one pixel wide and high (torchvision can give 0)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    h, w = max(h, 1), max(w, 1)
    return (height - h) // 2, (width - w) // 2, h, w


def check_boxes(boxes: torch.Tensor, height: int, width: int, scale, ratio) -> None:
    """Every box lies inside the image; a box that is not the fallback has an area in scale * image area
    and an aspect in ratio, up to the rounding of w and h to integers (|w - sqrt(T r)| <= 1/2)."""
    top, left, h, w = boxes.double().unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    fallback = torch.tensor(fallback_box(height, width, ratio), dtype=torch.float64)
    drawn = ~(boxes.double() == fallback).all(dim=1)
    area = height * width
    h, w = h[drawn], w[drawn]
    assert ((w - 0.5) * (h - 0.5) <= scale[1] * area + 1e-9).all()
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area - 1e-9).all()
    assert ((w - 0.5) / (h + 0.5) <= ratio[1] + 1e-9).all()
    assert ((w + 0.5) / (h - 0.5).clamp_min(1e-9) >= ratio[0] - 1e-9).all()


# ---- crop -----------------------------------------------------------------------------------------
def test_crop_boxes_inside_image_and_within_scale_and_ratio():
    for height, width, scale in [(32, 32, (0.08, 1.0)), (32, 32, (0.2, 1.0)), (96, 64, (0.08, 1.0)), (20, 64, (0.08, 0.5))]:
        boxes = sample_crop_boxes(5000, height, width, scale, RATIO, gen())
        assert boxes.shape == (5000, 4) and boxes.dtype == torch.int64
        check_boxes(boxes, height, width, scale, RATIO)


@settings(max_examples=40, deadline=None, database=None)
@given(height=st.integers(1, 300), width=st.integers(1, 300), s0=st.floats(0.01, 1.0), s1=st.floats(0.01, 1.0),
       r0=st.floats(0.2, 5.0), r1=st.floats(0.2, 5.0), seed=st.integers(0, 2**31))
def test_crop_boxes_property(height, width, s0, s1, r0, r1, seed):
    scale, ratio = (min(s0, s1), max(s0, s1)), (min(r0, r1), max(r0, r1))
    check_boxes(sample_crop_boxes(200, height, width, scale, ratio, gen(seed)), height, width, scale, ratio)


def test_crop_boxes_fall_back_to_centre_box_clamped_to_ratio():
    # a 20 x 64 image (aspect 3.2) cannot hold 90-100% of its area at aspect <= 4/3: always the fallback,
    # the full height at aspect 4/3, centred
    boxes = sample_crop_boxes(500, 20, 64, (0.9, 1.0), RATIO, gen())
    assert (boxes == torch.tensor([0, (64 - 27) // 2, 20, 27])).all()
    tall = sample_crop_boxes(50, 64, 20, (0.9, 1.0), RATIO, gen())
    assert (tall == torch.tensor([(64 - 27) // 2, 0, 27, 20])).all()


def test_crop_box_statistics_match_torchvision_loop():
    """Mean area fraction, mean log-aspect and fallback rate against the transcribed torchvision loop."""
    n, rng = 20000, random.Random(0)
    for height, width, scale in [(32, 32, (0.08, 1.0)), (32, 32, (0.2, 1.0)), (24, 48, (0.08, 1.0))]:
        ours = sample_crop_boxes(n, height, width, scale, RATIO, gen(1)).double()
        ref = torch.tensor([torchvision_box(height, width, scale, RATIO, rng) for _ in range(n)], dtype=torch.float64)
        for boxes_a, boxes_b in [(ours, ref)]:
            frac_a = (boxes_a[:, 2] * boxes_a[:, 3]).mean() / (height * width)
            frac_b = (boxes_b[:, 2] * boxes_b[:, 3]).mean() / (height * width)
            assert abs(frac_a - frac_b) < 0.012, (height, width, scale, frac_a, frac_b)
            log_a = torch.log(boxes_a[:, 3] / boxes_a[:, 2]).mean()
            log_b = torch.log(boxes_b[:, 3] / boxes_b[:, 2]).mean()
            assert abs(log_a - log_b) < 0.01
            full = lambda b: ((b[:, 2] == height) & (b[:, 3] == width)).double().mean()  # noqa: E731
            assert abs(full(boxes_a) - full(boxes_b)) < 0.01


def test_crop_area_fraction_is_uniform_without_rejections():
    # ratio 1 on a large square: every first candidate fits, so area / image area ~ U(scale)
    boxes = sample_crop_boxes(20000, 1024, 1024, (0.2, 1.0), (1.0, 1.0), gen()).double()
    frac = boxes[:, 2] * boxes[:, 3] / 1024**2
    assert abs(frac.mean() - 0.6) < 0.005
    assert abs(frac.var() - 0.8**2 / 12) < 0.003
    assert (boxes[:, 2] == boxes[:, 3]).all()


def test_crop_position_is_uniform_over_valid_offsets():
    boxes = sample_crop_boxes(17000, 32, 32, (0.25, 0.25), (1.0, 1.0), gen())  # always 16 x 16
    assert (boxes[:, 2:] == 16).all()
    counts = torch.bincount(boxes[:, 0], minlength=17)
    assert len(counts) == 17 and (counts > 800).all() and (counts < 1200).all()  # 1000 expected each
    assert abs(boxes[:, 1].double().mean() - 8.0) < 0.15


def test_resized_crop_full_box_is_identity():
    x = torch.rand(3, 3, 20, 28)
    boxes = torch.tensor([[0, 0, 20, 28]] * 3)
    torch.testing.assert_close(resized_crop(x, boxes, (20, 28)), x, atol=1e-5, rtol=0)


def test_resized_crop_selects_the_right_sub_range():
    H, W = 30, 40
    rows = torch.arange(H, dtype=torch.float32).view(H, 1).expand(H, W)
    cols = torch.arange(W, dtype=torch.float32).view(1, W).expand(H, W)
    x = torch.stack((rows, cols, 50 * rows + cols)).unsqueeze(0).repeat(2, 1, 1, 1)  # (2, 3, H, W)
    boxes = torch.tensor([[3, 5, 10, 12], [17, 20, 13, 20]])
    out = resized_crop(x, boxes, (10, 12))
    torch.testing.assert_close(out[0], x[0, :, 3:13, 5:17], atol=1e-4, rtol=0)  # same size: the exact pixels
    # 13 x 20 box shrunk to 10 x 12: the centres map linearly onto the box: value = left - 1/2 + (j + 1/2) w / out
    j = torch.arange(12, dtype=torch.float32)
    torch.testing.assert_close(out[1, 1, 0], 20 - 0.5 + (j + 0.5) * 20 / 12, atol=1e-4, rtol=0)
    i = torch.arange(10, dtype=torch.float32)
    torch.testing.assert_close(out[1, 0, :, 0], 17 - 0.5 + (i + 0.5) * 13 / 10, atol=1e-4, rtol=0)
    # enlarged 2x: the sampled values stay inside the box (its edge pixels replicated) and average to its centre
    big = resized_crop(x, boxes[:1], (20, 24))[0, 1]
    assert abs(big.min() - 5) < 1e-4 and abs(big.max() - 16) < 1e-4 and abs(big.mean() - 10.5) < 1e-4


def test_resized_crop_equals_crop_then_interpolate():
    """torchvision's resized_crop: cut the box out, then bilinear resize (no antialias here), per sample."""
    x = torch.rand(6, 3, 30, 40)
    boxes = torch.tensor([[3, 5, 10, 12], [0, 0, 30, 40], [7, 2, 20, 13], [29, 39, 1, 1], [0, 10, 30, 5], [12, 0, 4, 40]])
    for size in [(8, 9), (24, 24), (30, 40)]:
        out = resized_crop(x, boxes, size)
        for b, (t, l, h, w) in enumerate(boxes.tolist()):
            ref = F.interpolate(x[b:b + 1, :, t:t + h, l:l + w], size=size, mode="bilinear", align_corners=False)
            torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=0)


def test_resized_crop_flip_mirrors_the_output():
    x = torch.rand(4, 3, 16, 16)
    boxes = sample_crop_boxes(4, 16, 16, (0.2, 1.0), RATIO, gen())
    flip = torch.tensor([True, False, True, False])
    out = resized_crop(x, boxes, 24, flip=flip)
    plain = resized_crop(x, boxes, 24)
    torch.testing.assert_close(out[flip], plain[flip].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[~flip], plain[~flip])


def test_random_resized_crop_shape_and_constant_image():
    x = torch.full((8, 3, 40, 60), 0.3)
    out = random_resized_crop(x, 32, generator=gen())
    assert out.shape == (8, 3, 32, 32)
    torch.testing.assert_close(out, torch.full_like(out, 0.3))


def test_center_resize_matches_resize_then_centre_crop():
    # 256 px -> 224: Resize(256) is the identity, CenterCrop(224) keeps rows/cols 16..239
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    torch.testing.assert_close(center_resize(x, 224), to_float(x)[:, :, 16:240, 16:240], atol=1e-5, rtol=0)
    # 32 px: Resize(36) then CenterCrop(32) at offset 2: column j samples input (j + 2.5) * 32/36 - 0.5
    cols = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    j = torch.arange(32, dtype=torch.float32)
    torch.testing.assert_close(center_resize(cols, 32)[0, 0, 5], (j + 2.5) * 32 / 36 - 0.5, atol=1e-4, rtol=0)
    torch.testing.assert_close(center_resize(x[:, :, :32, :32], 32, resize_ratio=1.0), to_float(x[:, :, :32, :32]),
                               atol=1e-5, rtol=0)
    assert center_resize(torch.zeros(2, 1, 40, 60, dtype=torch.uint8), 32).shape == (2, 1, 32, 32)


def test_bicubic_center_resize_is_a_sharper_resampling_kept_in_range():
    # PhiNet's clean view: Resize(int(s * 8/7), BICUBIC) + CenterCrop(s)
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    torch.testing.assert_close(center_resize(x, 224, mode="bicubic"), to_float(x)[:, :, 16:240, 16:240], atol=1e-5,
                               rtol=0)  # integer sample positions: bicubic is exact too
    edge = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    edge[..., 16:] = 255
    bicubic, bilinear = center_resize(edge, 32, mode="bicubic"), center_resize(edge, 32)
    assert 0 <= bicubic.min() and bicubic.max() <= 1  # the overshoot at the edge is clamped
    row_c, row_l = bicubic[0, 0, 0], bilinear[0, 0, 0]
    assert not torch.allclose(row_c, row_l)
    ramp_c, ramp_l = (row_c > 0.5).nonzero()[0].item(), (row_l > 0.5).nonzero()[0].item()
    assert abs(ramp_c - ramp_l) <= 1  # the edge stays in place
    i = ramp_l  # the first column past the edge: bicubic's transition is steeper than bilinear's
    assert row_c[i - 1] < row_l[i - 1] - 0.005 and row_c[i] > row_l[i] + 0.005


def test_clean_view_is_bicubic():
    aug = Augmenter(resolve_augment("phinet", 32), 32, (0.0,), (1.0,))
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(aug.clean(x), center_resize(x, 32, mode="bicubic"))


# ---- flip -----------------------------------------------------------------------------------------
def test_horizontal_flip_probability_and_per_sample():
    x = torch.rand(2000, 1, 4, 5)
    assert torch.equal(horizontal_flip(x, 0.0, gen()), x)
    assert torch.equal(horizontal_flip(x, 1.0, gen()), x.flip(-1))
    out = horizontal_flip(x, 0.5, gen())
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped ^ kept).all()  # every sample is one or the other, whole
    assert abs(flipped.double().mean() - 0.5) < 0.04


# ---- colour ---------------------------------------------------------------------------------------
def solid(*rgb: float, size: int = 4) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).contiguous()


def test_hue_rotation_of_known_colours():
    red = solid(1, 0, 0)
    torch.testing.assert_close(adjust_hue(red, 1 / 3), solid(0, 1, 0), atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(red, -1 / 3), solid(0, 0, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(red, 0.5), solid(0, 1, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(solid(0.4, 0.4, 0.4), 0.3), solid(0.4, 0.4, 0.4))  # grey has no hue
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(adjust_hue(x, 0.0), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(adjust_hue(x, 0.2), -0.2), x, atol=1e-5, rtol=0)


def test_hue_matches_colorsys_per_pixel():
    x = torch.rand(4, 3, 6, 6)
    x[0, :, 0, 0] = torch.tensor([0.5, 0.5, 0.2])  # ties between channels
    x[0, :, 0, 1] = torch.tensor([0.3, 0.7, 0.7])
    shift = torch.tensor([0.1, -0.1, 0.5, -0.37])
    out = adjust_hue(x, shift).double().numpy()
    ref = np.empty_like(out)
    xs = x.double().numpy()
    for b, i, j in itertools.product(range(4), range(6), range(6)):
        h, s, v = colorsys.rgb_to_hsv(*xs[b, :, i, j])
        ref[b, :, i, j] = colorsys.hsv_to_rgb((h + float(shift[b])) % 1.0, s, v)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_brightness_contrast_saturation_against_formulas():
    x = torch.rand(3, 3, 8, 8)
    f = torch.tensor([0.0, 0.7, 1.6])
    xd = x.double().numpy()
    fd = f.double().numpy().reshape(3, 1, 1, 1)
    gray = 0.299 * xd[:, 0:1] + 0.587 * xd[:, 1:2] + 0.114 * xd[:, 2:3]
    np.testing.assert_allclose(adjust_brightness(x, f).numpy(), np.clip(fd * xd, 0, 1), atol=1e-6)
    mean = gray.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(adjust_contrast(x, f).numpy(), np.clip(fd * xd + (1 - fd) * mean, 0, 1), atol=1e-6)
    np.testing.assert_allclose(adjust_saturation(x, f).numpy(), np.clip(fd * xd + (1 - fd) * gray, 0, 1), atol=1e-6)


def test_colour_adjustments_on_known_images():
    torch.testing.assert_close(adjust_brightness(solid(0.5, 0.2, 0.4), 1.5), solid(0.75, 0.3, 0.6))
    torch.testing.assert_close(adjust_brightness(solid(0.5, 0.8, 0.4), 2.0), solid(1.0, 1.0, 0.8))  # clamped
    x = torch.rand(2, 3, 8, 8)
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(adjust_contrast(x, 0.0), mean.expand_as(x))
    grey = adjust_saturation(x, 0.0)
    torch.testing.assert_close(grey, rgb_to_grayscale(x).expand_as(x))
    assert torch.equal(adjust_saturation(x[:, :1], 0.0), x[:, :1])  # 1 channel: no-op
    assert torch.equal(adjust_hue(x[:, :1], 0.3), x[:, :1])


def sequential_jitter(x, factors, order):
    """torchvision's ColorJitter.forward for one image at a time: the ops in `order`, one after the other."""
    fns = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    out = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1]
        for op in order[b].tolist():
            xb = fns[op](xb, factors[b:b + 1, op])
        out.append(xb)
    return torch.cat(out)


@pytest.mark.parametrize("channels", [3, 1])
def test_adjust_color_matches_sequential_reference(channels):
    x = torch.rand(48, channels, 8, 8)
    factors, order = sample_jitter_params(48, 0.8, 0.8, 0.8, 0.4, gen())
    torch.testing.assert_close(adjust_color(x, factors, order), sequential_jitter(x, factors, order), atol=1e-5, rtol=0)
    factors[:, 3] = 0
    torch.testing.assert_close(adjust_color(x, factors, order, with_hue=False),
                               sequential_jitter(x, factors, order), atol=1e-5, rtol=0)


def test_jitter_order_matters_and_every_order_occurs():
    x = torch.tensor([0.2, 0.8]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    factors = torch.tensor([[2.0, 0.5, 1.0, 0.0]])
    b_then_c = adjust_color(x, factors, torch.tensor([[0, 1, 2, 3]]))
    c_then_b = adjust_color(x, factors, torch.tensor([[1, 0, 2, 3]]))
    torch.testing.assert_close(b_then_c[0, 0, 0], torch.tensor([0.55, 0.85]))
    torch.testing.assert_close(c_then_b[0, 0, 0], torch.tensor([0.7, 1.0]))
    red = solid(1, 0, 0)
    hue_sat = adjust_color(red, torch.tensor([[1.0, 1.0, 0.5, 1 / 3]]), torch.tensor([[3, 2, 0, 1]]))
    sat_hue = adjust_color(red, torch.tensor([[1.0, 1.0, 0.5, 1 / 3]]), torch.tensor([[2, 3, 0, 1]]))
    assert (hue_sat - sat_hue).abs().max() > 0.1
    _, order = sample_jitter_params(24000, 0.4, 0.4, 0.4, 0.1, gen())
    counts = torch.unique(order, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 850 and counts.max() < 1150  # 1000 each expected


def test_jitter_factor_ranges():
    factors, _ = sample_jitter_params(10000, 0.4, 1.5, 0.2, 0.1, gen())
    lo, hi = factors.min(0).values, factors.max(0).values
    assert lo[0] >= 0.6 and hi[0] <= 1.4 and lo[1] >= 0.0 and hi[1] <= 2.5 and lo[2] >= 0.8 and hi[2] <= 1.2
    assert lo[3] >= -0.1 and hi[3] <= 0.1 and lo[3] < -0.099 and hi[3] > 0.099
    torch.testing.assert_close(factors.mean(0), torch.tensor([1.0, 1.25, 1.0, 0.0]), atol=0.02, rtol=0)


def test_color_jitter_uses_its_sampled_params_and_probability():
    x = torch.rand(4000, 3, 4, 4)
    out = color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=gen(3))
    g = gen(3)
    factors, order = sample_jitter_params(4000, 0.4, 0.4, 0.4, 0.1, g)
    applied = torch.rand(4000, generator=g) < 0.8
    expected = torch.where(applied.view(-1, 1, 1, 1), adjust_color(x, factors, order), x)
    torch.testing.assert_close(out, expected)
    unchanged = (out == x).flatten(1).all(1)
    assert abs(unchanged.double().mean() - 0.2) < 0.025
    assert torch.equal(color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.0, generator=gen()), x)
    assert out.min() >= 0 and out.max() <= 1


def test_grayscale_weights_and_probability():
    eye = torch.eye(3).view(3, 3, 1, 1)
    torch.testing.assert_close(rgb_to_grayscale(eye).flatten(), torch.tensor([0.299, 0.587, 0.114]))
    x = torch.rand(2000, 3, 4, 4)
    out = random_grayscale(x, 1.0, gen())
    torch.testing.assert_close(out, rgb_to_grayscale(x).expand_as(x))
    assert torch.equal(random_grayscale(x, 0.0, gen()), x)
    grey = (random_grayscale(x, 0.2, gen())[:, 0] != x[:, 0]).flatten(1).any(1)
    assert abs(grey.double().mean() - 0.2) < 0.03
    x1 = torch.rand(5, 1, 4, 4)
    assert torch.equal(random_grayscale(x1, 1.0, gen()), x1)


# ---- blur, solarize, normalise --------------------------------------------------------------------
def test_blur_kernel_size_and_kernel_formula():
    assert [default_blur_kernel(s) for s in (224, 96, 64, 32, 8)] == [23, 9, 7, 3, 3]
    k = gaussian_kernels(torch.tensor([0.5, 2.0]), 9)
    t = torch.arange(9.0) - 4
    ref = torch.exp(-t**2 / (2 * torch.tensor([[0.25], [4.0]])))
    torch.testing.assert_close(k, ref / ref.sum(1, keepdim=True))


def test_blur_uses_each_samples_own_sigma():
    x = torch.rand(3, 3, 12, 12)
    sigma = torch.tensor([0.3, 1.0, 2.5])
    out = blur(x, sigma, 7)
    for b in range(3):  # reference: one image at a time, 2-d kernel, reflect padding
        k1 = gaussian_kernels(sigma[b:b + 1], 7)[0]
        k2 = (k1[:, None] * k1[None, :]).expand(3, 1, 7, 7)
        ref = F.conv2d(F.pad(x[b:b + 1], (3, 3, 3, 3), mode="reflect"), k2, groups=3)
        torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=0)


def test_blur_keeps_constants_and_means_and_smooths_more_with_larger_sigma():
    c = torch.full((2, 3, 16, 16), 0.37)
    torch.testing.assert_close(gaussian_blur(c, (0.1, 2.0), 1.0, gen()), c)
    x = torch.rand(2, 3, 32, 32)

    def tv(y):
        return (y.diff(dim=-1).abs().mean() + y.diff(dim=-2).abs().mean()).item()

    weak, strong = blur(x, torch.full((2,), 0.5), 9), blur(x, torch.full((2,), 2.0), 9)
    assert tv(strong) < tv(weak) < tv(x)
    torch.testing.assert_close(strong.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.01, rtol=0)
    assert torch.equal(gaussian_blur(x, (0.1, 2.0), 0.0, gen()), x)
    many = torch.rand(1000, 1, 8, 8)
    blurred = (gaussian_blur(many, (0.5, 2.0), 0.5, gen()) != many).flatten(1).any(1)
    assert abs(blurred.double().mean() - 0.5) < 0.05
    assert blur(torch.rand(2, 1, 4, 4), torch.ones(2), 23).shape == (2, 1, 4, 4)  # kernel cut to fit


def test_solarize_definition():
    x = torch.tensor([0.0, 0.39, 0.4, 0.7, 1.0]).view(1, 1, 1, 5).repeat(1000, 3, 1, 1)
    out = solarize(x, 0.4, 1.0, gen())
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.39, 0.6, 0.3, 0.0]))
    assert torch.equal(solarize(x, 0.4, 0.0, gen()), x)
    changed = (solarize(x, 0.4, 0.1, gen()) != x).flatten(1).any(1)
    assert abs(changed.double().mean() - 0.1) < 0.03


def test_normalize():
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    ref = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x, mean, std), ref)
    torch.testing.assert_close(normalize(x, (0.5,), (0.5,)), 2 * x - 1)
    assert normalize(x, mean, std, dtype=torch.bfloat16).dtype == torch.bfloat16


# ---- determinism ----------------------------------------------------------------------------------
def simsiam(out: int = 32, **fields) -> Augmenter:
    params = resolve_augment("simsiam", out, **fields)
    return Augmenter(params, out, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def test_augmenter_is_seeded_and_per_sample():
    aug = simsiam()
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a, b, c = aug(x, gen(1)), aug(x, gen(1)), aug(x, gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    same = x[:1].expand(16, 3, 32, 32)
    views = aug(same, gen(1)).flatten(1)
    assert torch.cdist(views, views).add(torch.eye(16) * 1e3).min() > 1e-3  # no two samples got the same draw


# ---- Augmenter ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 3, 32, 32), (8, 1, 32, 32), (8, 3, 40, 56), (4, 3, 96, 96)])
def test_augmenter_shapes_channels_and_sizes(shape):
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    C = shape[1]
    mean, std = (0.5,) * C, (0.25,) * C
    params = resolve_augment("byol", 64)  # every op on, solarize included
    for dtype in (torch.float32, torch.bfloat16):
        aug = Augmenter(dataclasses.replace(params, blur_p=0.5), 32, mean, std, dtype=dtype)
        out = aug(x, gen())
        assert out.shape == (shape[0], C, 32, 32) and out.dtype == dtype and torch.isfinite(out.float()).all()
        assert out.float().min() >= -2 - 1e-2 and out.float().max() <= 2 + 1e-2  # [0, 1] normalised by 0.5, 0.25
        clean = aug.clean(x)
        assert clean.shape == (shape[0], C, 32, 32) and clean.dtype == dtype


def test_augmenter_normalises_mean_valued_images_to_zero():
    mean = (100 / 255, 150 / 255, 50 / 255)
    x = torch.tensor([100, 150, 50], dtype=torch.uint8).view(1, 3, 1, 1).expand(6, 3, 40, 40).contiguous()
    aug = Augmenter(PRESETS["crop-flip"], 32, mean, (0.2, 0.3, 0.4))
    torch.testing.assert_close(aug(x, gen()), torch.zeros(6, 3, 32, 32), atol=1e-5, rtol=0)
    torch.testing.assert_close(aug.clean(x), torch.zeros(6, 3, 32, 32), atol=1e-5, rtol=0)
    assert torch.equal(x, torch.tensor([100, 150, 50], dtype=torch.uint8).view(1, 3, 1, 1).expand(6, 3, 40, 40))


def test_augmenter_pipeline_equals_ops_in_order():
    """crop (+ flip in the same resampling) -> jitter -> grayscale -> blur -> solarize -> normalise."""
    params = dataclasses.replace(resolve_augment("byol", 96), blur_p=0.5)
    aug = Augmenter(params, 24, (0.5,) * 3, (0.25,) * 3)
    x = torch.randint(0, 256, (32, 3, 30, 30), dtype=torch.uint8)
    g = gen(5)
    boxes = sample_crop_boxes(32, 30, 30, params.crop_scale, params.crop_ratio, g)
    flip = torch.rand(32, generator=g) < params.flip_p
    v = resized_crop(to_float(x), boxes, 24, flip=flip)
    v = color_jitter(v, *params.jitter, p=params.jitter_p, generator=g)
    v = random_grayscale(v, params.grayscale_p, g)
    v = gaussian_blur(v, params.blur_sigma, params.blur_p, g, kernel_size=default_blur_kernel(24))
    v = solarize(v, params.solarize_threshold, params.solarize_p, g)
    torch.testing.assert_close(aug(x, gen(5)), normalize(v, (0.5,) * 3, (0.25,) * 3), atol=1e-4, rtol=0)


def test_augmenter_never_reads_tensor_values_on_the_host():
    """On the meta device tensors have no values: any `.item()`, `.tolist()` or Python branch on a tensor
    (each a host-device sync on a GPU) would raise here."""
    x = torch.empty(8, 3, 40, 48, dtype=torch.uint8, device="meta")
    for method, size in [("simsiam", 32), ("byol", 96)]:
        aug = Augmenter(resolve_augment(method, size), size, (0.5,) * 3, (0.25,) * 3)
        assert aug(x).shape == (8, 3, size, size) and aug.clean(x).shape == (8, 3, size, size)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augmenter_on_cuda_matches_its_own_seed():
    aug = simsiam(96)
    x = torch.randint(0, 256, (64, 3, 96, 96), dtype=torch.uint8, device="cuda")
    g1, g2 = torch.Generator(device="cuda").manual_seed(0), torch.Generator(device="cuda").manual_seed(0)
    a, b = aug(x, g1), aug(x, g2)
    assert a.device.type == "cuda" and torch.equal(a, b)
    assert aug.clean(x).device.type == "cuda"


# ---- presets --------------------------------------------------------------------------------------
def test_simsiam_preset_is_the_methods_md_cifar_recipe():
    p = resolve_augment("simsiam", 32)
    assert (p.crop_scale, p.flip_p, p.jitter, p.jitter_p, p.grayscale_p, p.blur_p, p.solarize_p) == \
        ((0.2, 1.0), 0.5, (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.0, 0.0)
    assert p.crop_ratio == pytest.approx(RATIO)
    for method in ("phinet", "xphinet", None):  # PhiNet and X-PhiNet declare SimSiam's augmentation
        assert dataclasses.replace(resolve_augment(method, 32), preset="") == \
            dataclasses.replace(p, preset="")
    with pytest.raises(ConfigError, match="unknown method 'something-new'"):  # no silent fallback
        resolve_augment("something-new", 32)
    large = resolve_augment("simsiam", 96)
    assert (large.blur_p, large.blur_sigma) == (0.5, (0.1, 2.0))
    assert dataclasses.replace(large, preset="", blur_p=0.0) == dataclasses.replace(p, preset="")


def test_other_method_presets():
    simclr = resolve_augment("simclr", 32)
    assert (simclr.crop_scale, simclr.jitter, simclr.blur_p, simclr.solarize_p) == ((0.08, 1.0), (0.4, 0.4, 0.4, 0.1), 0, 0)
    byol = resolve_augment("byol", 32)
    assert (byol.crop_scale, byol.jitter, byol.jitter_p, byol.grayscale_p, byol.solarize_p, byol.blur_p) == \
        ((0.08, 1.0), (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.1, 0.0)
    # solo-learn's CIFAR MoCo v2+: saturation 0.4, no solarization, no blur
    moco = resolve_augment("mocov2", 32)
    assert (moco.crop_scale, moco.jitter, moco.jitter_p, moco.grayscale_p, moco.solarize_p, moco.blur_p) == \
        ((0.08, 1.0), (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.0, 0.0)
    for method in ("byol", "mocov2"):
        assert resolve_augment(method, 224).blur_p == 0.5
    for size, name in ((64, "simclr-small"), (65, "simclr-large")):
        assert auto_preset(Config.from_values({"method": "simclr"}), size) == name
        assert dataclasses.replace(resolve_augment("simclr", size), preset=name) == preset(name)


def test_digit_datasets_get_no_flips_unless_asked():
    for dataset in ("digits", "mnist"):
        assert resolve_augment("simsiam", 28, dataset).flip_p == 0.0
        assert resolve_augment("simsiam", 28, dataset, flip_p=0.5).flip_p == 0.5
        assert resolve_augment("simsiam", 28, dataset, preset="simclr-small").flip_p == 0.5
    for dataset in ("fashion-mnist", "fashion-mnist-mini", "cifar10", None):  # a mirrored shirt is a shirt
        assert resolve_augment("simsiam", 28, dataset).flip_p == 0.5


def test_explicit_fields_and_preset_names_override():
    p = resolve_augment("simsiam", 32, crop_scale=(0.5, 1.0), blur_p=0.3, jitter_p=0.0)
    assert (p.crop_scale, p.blur_p, p.jitter_p, p.grayscale_p) == ((0.5, 1.0), 0.3, 0.0, 0.2)
    q = resolve_augment("simsiam", 32, preset="byol-large")
    assert q == preset("byol-large") and q.preset == "byol-large" and q.blur_p == 0.5 and q.solarize_p == 0.1


def test_bad_presets_and_values_raise_config_errors():
    with pytest.raises(ConfigError, match="simsiam-small"):
        resolve_augment("simsiam", 32, preset="simsam")
    for bad in ({"flip_p": 1.5}, {"crop_scale": (0.5, 0.2)}, {"jitter": (0.4, 0.4, 0.4, 0.7)}, {"blur_sigma": (0.0, 1.0)}):
        with pytest.raises(ConfigError):
            resolve_augment("simsiam", 32, **bad)


def test_every_preset_has_every_setting_within_its_range():
    config_fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    assert {f.name for f in dataclasses.fields(AugmentParams)} == config_fields
    names = preset_names()
    assert {"crop-flip", "simsiam-small", "simsiam-large", "byol-large", "mocov2-small"} <= set(names)
    assert not any(n.startswith(("phinet", "xphinet")) for n in names)  # they use SimSiam's augmentation
    for name in names:
        p = preset(name)
        assert p.preset == name and all(getattr(p, f) is not None for f in config_fields)
        check_params(p)
