"""Multi-crop: view count, sizes and order, each group's crop scale measured on a coordinate image, views that
differ between views and images, seeded reproducibility, and the normalisation."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from sslab.augment.multicrop import CropGroup, MultiCrop, global_and_local, local_crop_size
from sslab.augment.presets import PRESETS, preset

PLAIN = dataclasses.replace(PRESETS["crop-flip"], flip_p=0.0)  # crop only: the view's pixels say where it came from


def coordinate_images(batch: int, side: int) -> torch.Tensor:
    """uint8 (B, 3, side, side): channel 0 = column, channel 1 = row (both scaled to 0..255), channel 2 = image index."""
    ramp = torch.linspace(0, 255, side)
    x = torch.empty(batch, 3, side, side)
    x[:, 0] = ramp.view(1, 1, side)
    x[:, 1] = ramp.view(1, side, 1)
    x[:, 2] = torch.arange(batch).view(batch, 1, 1).float() * 20
    return x.round().to(torch.uint8)


def test_views_count_sizes_and_order():
    crop = MultiCrop(global_and_local(PLAIN, 32, local_count=4), mean=[0.5] * 3, std=[0.5] * 3)
    views = crop(coordinate_images(5, 32), torch.Generator().manual_seed(0))
    assert crop.num_views == 6 and crop.sizes == [32, 32, 16, 16, 16, 16]
    assert [tuple(v.shape) for v in views] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 4
    assert all(v.dtype == torch.float32 for v in views)
    assert [local_crop_size(s) for s in (8, 28, 32, 64, 96, 224)] == [8, 16, 16, 24, 40, 96]
    assert len(MultiCrop(global_and_local(PLAIN, 32, 0), [0.5], [0.5])(coordinate_images(2, 32))) == 2


def _area_fraction(view: torch.Tensor) -> torch.Tensor:
    """(B, 3, s, s) view of a coordinate image, normalised with mean 0 std 1 -> the crop's area / image area,
    from the range of columns and rows it shows (one pixel of the source added: the ranges run centre to centre)."""
    cols = (view[:, 0].amax(dim=(1, 2)) - view[:, 0].amin(dim=(1, 2))) * 255
    rows = (view[:, 1].amax(dim=(1, 2)) - view[:, 1].amin(dim=(1, 2))) * 255
    step = 255 / 63  # the 64-px coordinate image's step between neighbouring pixels
    return (cols + step) * (rows + step) / (255 + step) ** 2


def test_each_group_uses_its_own_crop_scale():
    groups = global_and_local(PLAIN, 64, local_count=3, global_scale=(0.5, 1.0), local_scale=(0.05, 0.1))
    views = MultiCrop(groups, mean=[0.0] * 3, std=[1.0] * 3)(coordinate_images(200, 64), torch.Generator().manual_seed(3))
    global_area = torch.cat([_area_fraction(v) for v in views[:2]])
    local_area = torch.cat([_area_fraction(v) for v in views[2:]])
    # crops are rounded to whole pixels and may fall back to the whole image; allow a pixel's worth of slack
    assert global_area.min() > 0.45 and global_area.max() <= 1.0 + 1e-3
    assert local_area.min() > 0.04 and local_area.max() < 0.12
    assert local_area.mean() < 0.5 * global_area.mean()


def test_views_differ_but_each_keeps_its_image():
    images = coordinate_images(6, 32)
    views = MultiCrop(global_and_local(PLAIN, 32, 2), [0.0] * 3, [1.0] * 3)(images, torch.Generator().manual_seed(1))
    for v in views:  # channel 2 encodes the image index: the order of the batch is kept in every view
        assert torch.allclose(v[:, 2].mean(dim=(1, 2)) * 255, images[:, 2, 0, 0].float(), atol=1e-3)
    assert not torch.allclose(views[0], views[1]) and not torch.allclose(views[2], views[3])


def test_seeded_views_repeat_and_normalisation_applies():
    groups = [CropGroup(preset("simclr-small"), 16, 1), CropGroup(preset("simclr-small"), 8, 3)]
    images = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a = MultiCrop(groups, [0.5] * 3, [0.25] * 3)(images, torch.Generator().manual_seed(7))
    b = MultiCrop(groups, [0.5] * 3, [0.25] * 3)(images, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    raw = MultiCrop(groups, [0.0] * 3, [1.0] * 3)(images, torch.Generator().manual_seed(7))
    assert all(torch.allclose(x, (r - 0.5) / 0.25, atol=1e-5) for x, r in zip(a, raw))
    assert all(r.min() >= 0 and r.max() <= 1 for r in raw)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_output_dtype(dtype):
    views = MultiCrop(global_and_local(PLAIN, 16, 1), [0.5], [0.5], dtype=dtype)(coordinate_images(2, 16)[:, :1])
    assert all(v.dtype == dtype for v in views) and [v.shape[-1] for v in views] == [16, 16, 8]
