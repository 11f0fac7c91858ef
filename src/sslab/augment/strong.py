"""Strong augmentation (SCAN's "ours" strategy): RandAugment-style ops plus Cutout, batched on the device.

SCAN (Van Gansbeke et al. 2020) trains its clustering and self-labelling steps on strong views: a random
horizontal flip, `num_ops` = 4 operations drawn with replacement from the 14 below (each with a magnitude
drawn uniformly from its range, and a random sign for the geometric ones), normalisation, then one Cutout
hole of random side 1..`cutout_length` (16 at 32 px) filled with zero after normalisation, i.e. with the
dataset's mean colour. Ranges are those of the reference implementation (`data/augment.py`,
`augment_list()` of wvangansbeke/Unsupervised-Classification, itself after RandAugment / FixMatch).

Here every op runs on the whole batch with per-sample parameters; a sample's op choice selects the result
with `torch.where`, so there is no per-image Python and no host-device sync. Per round the five geometric
ops share one `grid_sample` (an affine matrix per sample, the identity where the sample drew another op)
and the four enhancement ops (brightness, color, contrast, sharpness) share one blend.

Each op also exists as a deterministic function with explicit per-sample parameters (`rotate`, `shear_x`,
`posterize`, `equalize`, ...), which the tests compare with their definitions. Differences from PIL:
geometric ops resample bilinearly (PIL: nearest) about the image centre (PIL shears about the corner);
autocontrast maps min..max linearly without PIL's integer truncation. Images are float (B, C, H, W) in
[0, 1], C = 1 or 3.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from sslab.augment import ops
from sslab.augment.ops import Factor, adjust_brightness, adjust_contrast, adjust_saturation, rgb_to_grayscale

Tensor = torch.Tensor

# (name, low, high) of the magnitude drawn uniformly per sample: the reference's augment_list(), in its order.
# Enhancement factors are in [0.05, 0.95] there (always weaker than the image); rotate in degrees; shear as the
# affine coefficient; translate as a fraction of the side; solarize threshold on the 0..255 scale; posterize bits.
RANDAUGMENT_OPS: tuple[tuple[str, float, float], ...] = (
    ("identity", 0.0, 1.0), ("autocontrast", 0.0, 1.0), ("equalize", 0.0, 1.0), ("rotate", -30.0, 30.0),
    ("solarize", 0.0, 256.0), ("color", 0.05, 0.95), ("contrast", 0.05, 0.95), ("brightness", 0.05, 0.95),
    ("sharpness", 0.05, 0.95), ("shear_x", -0.1, 0.1), ("translate_x", -0.1, 0.1), ("translate_y", -0.1, 0.1),
    ("posterize", 4.0, 8.0), ("shear_y", -0.1, 0.1),
)
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")  # a random sign per sample (random_mirror)
BLENDS = ("brightness", "color", "contrast", "sharpness")


def _column(v: Factor, batch: int, x: Tensor) -> Tensor:
    """A factor as a (B,) float32 tensor on x's device."""
    if isinstance(v, Tensor):
        return v.to(device=x.device, dtype=torch.float32).reshape(-1).expand(batch)
    return torch.full((batch,), float(v), device=x.device)


# ---- geometry: one affine resampling --------------------------------------------------------------
def affine(x: Tensor, degrees: Factor = 0.0, shear_x: Factor = 0.0, shear_y: Factor = 0.0,
           translate_x: Factor = 0.0, translate_y: Factor = 0.0) -> Tensor:
    """Rotate the content counter-clockwise by `degrees`, shear, and translate (fractions of the side), each
    per sample, about the image centre, in one bilinear `grid_sample`; pixels from outside are black.

    Output pixel q (pixel units, from the centre, y down) samples the input at
    `Shear @ Rot^-1 @ q + t`, with Shear = [[1, shear_x], [shear_y, 1]] and t = (translate_x * W, translate_y * H):
    PIL's `transform(AFFINE, (1, v, 0, 0, 1, 0))` for ShearX, `(1, 0, v * W, 0, 1, 0)` for TranslateX (the
    content moves left for v > 0). All zero gives the image back.
    """
    B, _, H, W = x.shape
    a = torch.deg2rad(_column(degrees, B, x))
    cos, sin = torch.cos(a), torch.sin(a)
    sx, sy = _column(shear_x, B, x), _column(shear_y, B, x)
    # content rotated counter-clockwise on screen (y down): q = [[c, s], [-s, c]] p, so p = [[c, -s], [s, c]] q
    r = torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)  # B x 2 x 2
    shear = torch.stack((torch.stack((torch.ones_like(sx), sx), -1), torch.stack((sy, torch.ones_like(sy)), -1)), -2)
    m = shear @ r  # B x 2 x 2, pixel units
    # to grid_sample's normalised coordinates (x / (W/2), y / (H/2)): M_n = S^-1 M S, i.e. the off-diagonal
    # entries scaled by H/W and W/H (Python floats: no host-to-device copy); t_n = 2 * translate
    m00, m01, m10, m11 = m[:, 0, 0], m[:, 0, 1] * (H / W), m[:, 1, 0] * (W / H), m[:, 1, 1]
    tx, ty = 2 * _column(translate_x, B, x), 2 * _column(translate_y, B, x)
    theta = torch.stack((torch.stack((m00, m01, tx), -1), torch.stack((m10, m11, ty), -1)), -2).to(x.dtype)  # B x 2 x 3
    grid = F.affine_grid(theta, [B, 1, H, W], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(x: Tensor, degrees: Factor) -> Tensor:
    return affine(x, degrees=degrees)


def shear_x(x: Tensor, v: Factor) -> Tensor:
    return affine(x, shear_x=v)


def shear_y(x: Tensor, v: Factor) -> Tensor:
    return affine(x, shear_y=v)


def translate_x(x: Tensor, fraction: Factor) -> Tensor:
    return affine(x, translate_x=fraction)


def translate_y(x: Tensor, fraction: Factor) -> Tensor:
    return affine(x, translate_y=fraction)


# ---- colour and histogram ops ---------------------------------------------------------------------
def _levels(x: Tensor) -> Tensor:
    """[0, 1] floats -> the nearest of the 256 uint8 levels, as int64."""
    return torch.round(x.clamp(0, 1) * 255).long()


def autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel of each image linearly so its darkest pixel becomes 0 and its brightest 1
    (PIL's ImageOps.autocontrast with cutoff 0); a flat channel is left as it is."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, 1.0, 1.0 / (hi - lo).clamp_min(1e-12))
    return torch.where(flat, x, ((x - lo) * scale).clamp_(0, 1))


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per channel of each image on the 256 uint8 levels (PIL's ImageOps.equalize,
    as torchvision writes it for tensors): step = (pixels - count of the brightest level) // 255,
    lut[v] = (pixels below level v + step // 2) // step; step 0 leaves the channel unchanged.
    The histograms of all B*C channels come from one scatter_add."""
    B, C, H, W = x.shape
    v = _levels(x).view(B * C, H * W)
    hist = torch.zeros(B * C, 256, device=x.device, dtype=torch.int64).scatter_add_(1, v, torch.ones_like(v))
    top = v.amax(dim=1, keepdim=True)  # brightest level present
    step = (H * W - hist.gather(1, top)) // 255  # (B*C, 1)
    below = hist.cumsum(dim=1) - hist  # pixels strictly below each level
    lut = ((below + step // 2) // step.clamp_min(1)).clamp_(0, 255)
    out = torch.where(step > 0, lut.gather(1, v), v)
    return out.view(B, C, H, W).to(x.dtype) / 255


def posterize(x: Tensor, bits: Factor) -> Tensor:
    """Keep the top `bits` (1..8, per sample, truncated to an integer as PIL does) of each uint8 value."""
    b = torch.floor(_column(bits, x.shape[0], x)).clamp(1, 8)
    step = torch.pow(2.0, 8 - b).view(-1, 1, 1, 1)  # levels per kept value
    return (torch.floor(_levels(x).to(x.dtype) / step) * step / 255).to(x.dtype)


def solarize_at(x: Tensor, threshold: Factor) -> Tensor:
    """Invert (v -> 1 - v) the pixels >= threshold (per sample, in [0, 1]; above 1 nothing changes)."""
    t = _column(threshold, x.shape[0], x).view(-1, 1, 1, 1).to(x.dtype)
    return torch.where(x >= t, 1 - x, x)


def smooth(x: Tensor) -> Tensor:
    """PIL's ImageFilter.SMOOTH (3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13) on the interior; the one-pixel
    border keeps its values (as PIL's sharpness enhancement and torchvision's adjust_sharpness do)."""
    B, C, H, W = x.shape
    if H < 3 or W < 3:
        return x
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5
    k = (k / 13).expand(C, 1, 3, 3)
    inner = F.conv2d(x, k, groups=C)  # B x C x (H-2) x (W-2)
    out = x.clone()
    out[..., 1:-1, 1:-1] = inner
    return out


def adjust_sharpness(x: Tensor, factor: Factor) -> Tensor:
    """Blend with the smoothed image: factor 1 is the image, 0 the smoothed one, > 1 sharper."""
    f = ops._per_sample(factor, x)
    return (f * x + (1 - f) * smooth(x)).clamp_(0, 1)


# ---- Cutout -----------------------------------------------------------------------------------------
def cutout(x: Tensor, center_y: Tensor, center_x: Tensor, length: Tensor, fill: float = 0.0) -> Tensor:
    """Fill one square hole per image with `fill` (reference `Cutout`): rows
    clip(cy - length // 2, 0, H) .. clip(cy + length // 2, 0, H) (end excluded), columns likewise.
    center_y, center_x, length: (B,) integer tensors."""
    B, _, H, W = x.shape
    half = (length // 2).view(-1, 1)
    rows = torch.arange(H, device=x.device).view(1, -1)
    cols = torch.arange(W, device=x.device).view(1, -1)
    in_rows = (rows >= (center_y.view(-1, 1) - half).clamp(0, H)) & (rows < (center_y.view(-1, 1) + half).clamp(0, H))
    in_cols = (cols >= (center_x.view(-1, 1) - half).clamp(0, W)) & (cols < (center_x.view(-1, 1) + half).clamp(0, W))
    hole = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)  # B x 1 x H x W
    return x.masked_fill(hole, fill)


def random_cutout(x: Tensor, max_length: int, generator: Optional[torch.Generator] = None,
                  fill: float = 0.0) -> Tensor:
    """One hole per image: side ~ U{1..max_length}, centre uniform over the pixels (reference: random=True)."""
    B, _, H, W = x.shape
    u = ops._rand((B, 3), x, generator)
    length = 1 + torch.floor(u[:, 0] * max_length).long().clamp_(max=max_length - 1)
    cy = torch.floor(u[:, 1] * H).long().clamp_(max=H - 1)
    cx = torch.floor(u[:, 2] * W).long().clamp_(max=W - 1)
    return cutout(x, cy, cx, length, fill)


# ---- RandAugment --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _op_table(op_table: tuple[tuple[str, float, float], ...], device: torch.device) -> Tensor:
    """(n, 3) rows (low, high, geometric?) on `device`, made once: a host copy per call would wait for the GPU."""
    return torch.tensor([[lo, hi, float(name in GEOMETRIC)] for name, lo, hi in op_table]).to(device)


def sample_rand_augment(batch: int, num_ops: int, device: torch.device | str | None,
                        generator: Optional[torch.Generator] = None,
                        op_table: Sequence[tuple[str, float, float]] = RANDAUGMENT_OPS) -> tuple[Tensor, Tensor]:
    """Per round and sample: `op` (num_ops, B) int64 index into `op_table` (uniform, with replacement) and
    `magnitude` (num_ops, B) float, uniform in the op's range, negated with probability 1/2 for geometric ops."""
    u = ops._rand((num_ops, batch, 3), device, generator)
    n = len(op_table)
    op = torch.floor(u[..., 0] * n).long().clamp_(max=n - 1)
    lo, hi, geometric = _op_table(tuple(op_table), u.device)[op].unbind(-1)
    magnitude = lo + (hi - lo) * u[..., 1]
    flip_sign = (geometric > 0) & (u[..., 2] < 0.5)
    return op, torch.where(flip_sign, -magnitude, magnitude)


def apply_ops(x: Tensor, op: Tensor, magnitude: Tensor,
              op_table: Sequence[tuple[str, float, float]] = RANDAUGMENT_OPS) -> Tensor:
    """One round: sample b gets op `op[b]` (an index into `op_table`) with magnitude `magnitude[b]`."""
    names = [name for name, _, _ in op_table]

    def chose(name: str) -> Tensor:  # (B,) bool
        return op == names.index(name) if name in names else torch.zeros_like(op, dtype=torch.bool)

    def where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.where(mask.view(-1, 1, 1, 1), a, b)

    zero = torch.zeros_like(magnitude)
    geo = {name: torch.where(chose(name), magnitude, zero) for name in GEOMETRIC}
    any_geo = torch.stack([chose(n) for n in GEOMETRIC]).any(0)
    warped = affine(x, geo["rotate"], geo["shear_x"], geo["shear_y"], geo["translate_x"], geo["translate_y"])
    x = where(any_geo, warped, x)
    # brightness, color, contrast, sharpness: x * f + other * (1 - f); the others get f = 1 (the image itself)
    gray = rgb_to_grayscale(x)
    other = torch.zeros_like(x)
    other = where(chose("color"), gray.expand_as(x), other)
    other = where(chose("contrast"), gray.mean(dim=(-3, -2, -1), keepdim=True).expand_as(x), other)
    other = where(chose("sharpness"), smooth(x), other)
    is_blend = torch.stack([chose(n) for n in BLENDS]).any(0)
    f = torch.where(is_blend, magnitude, 1.0).view(-1, 1, 1, 1).to(x.dtype)
    x = (f * x + (1 - f) * other).clamp_(0, 1)
    x = where(chose("autocontrast"), autocontrast(x), x)
    x = where(chose("equalize"), equalize(x), x)
    x = where(chose("solarize"), solarize_at(x, magnitude / 255), x)
    x = where(chose("posterize"), posterize(x, torch.where(chose("posterize"), magnitude, 8.0)), x)
    return x


def rand_augment(x: Tensor, num_ops: int = 4, generator: Optional[torch.Generator] = None,
                 op_table: Sequence[tuple[str, float, float]] = RANDAUGMENT_OPS) -> Tensor:
    """`num_ops` rounds of `apply_ops` with ops and magnitudes drawn per sample (`sample_rand_augment`)."""
    op, magnitude = sample_rand_augment(x.shape[0], num_ops, x.device, generator, op_table)
    for r in range(num_ops):
        x = apply_ops(x, op[r], magnitude[r], op_table)
    return x


class StrongAugmenter:
    """SCAN's strong view: uint8 (B, C, H, W) -> normalised float (B, C, H, W).

    horizontal flip (p = `flip_p`) -> `num_ops` RandAugment ops -> normalise with `mean`/`std` ->
    Cutout with side 1..`cutout_length` filled with 0 (the mean colour); `cutout_length` 0 turns it off.
    The reference's RandomCrop(crop_size) before the ops is the identity at the images' own size and is
    left out. `generator` must live on the images' device.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], num_ops: int = 4, flip_p: float = 0.5,
                 cutout_length: int = 16, dtype: torch.dtype = torch.float32):
        if num_ops < 0 or cutout_length < 0 or not 0 <= flip_p <= 1:
            raise ValueError("num_ops and cutout_length must be >= 0 and flip_p in [0, 1]")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.num_ops, self.flip_p, self.cutout_length = int(num_ops), float(flip_p), int(cutout_length)
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"StrongAugmenter(num_ops={self.num_ops}, flip_p={self.flip_p}, cutout_length={self.cutout_length})"

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        v = ops.to_float(x) if x.dtype == torch.uint8 else x.to(torch.float32)
        if self.flip_p > 0:
            v = ops.horizontal_flip(v, self.flip_p, generator)
        if self.num_ops > 0:
            v = rand_augment(v, self.num_ops, generator)
        v = ops.normalize(v, self.mean, self.std)
        if self.cutout_length > 0:
            v = random_cutout(v, self.cutout_length, generator, fill=0.0)
        return v.to(self.dtype)


__all__ = [
    "RANDAUGMENT_OPS", "StrongAugmenter", "adjust_brightness", "adjust_contrast", "adjust_saturation",
    "adjust_sharpness", "affine", "apply_ops", "autocontrast", "cutout", "equalize",
    "posterize", "rand_augment", "random_cutout", "rotate", "sample_rand_augment", "shear_x", "shear_y", "smooth",
    "solarize_at", "translate_x", "translate_y",
]
