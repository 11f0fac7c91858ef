"""Batched image augmentations on tensors, on whatever device the images are on.

Every op takes float images (B, C, H, W) in [0, 1] with C = 1 or 3, draws its random parameters per
sample from `generator` (which must live on the images' device), and runs as a few whole-batch tensor
ops: no per-image Python loop, no `.item()`, no Python branch on tensor values, so nothing waits for
the GPU. Random numbers are drawn whether or not a sample ends up augmented, so a seed fixes the
stream regardless of the outcome.

The definitions follow torchvision's transforms (RandomResizedCrop, RandomHorizontalFlip, ColorJitter,
RandomGrayscale, GaussianBlur, RandomSolarize); where they differ it is said at the function.
The `adjust_*` functions and `resized_crop` are the deterministic halves (explicit per-sample
parameters), so tests can check them against hand-written references.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Factor = Union[float, Tensor]  # one value for the batch, or one per sample (B,)
Size = Union[int, tuple[int, int]]

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


# ---- random numbers -------------------------------------------------------------------------------
def _rand(shape: tuple[int, ...], x_or_device: Tensor | torch.device | str | None,
          generator: Optional[torch.Generator]) -> Tensor:
    """U[0, 1) float32 on the images' device (a CPU generator cannot fill a CUDA tensor)."""
    device = x_or_device.device if isinstance(x_or_device, Tensor) else x_or_device
    return torch.rand(shape, generator=generator, device=device)


def _uniform(shape: tuple[int, ...], low: float, high: float, x: Tensor | torch.device | str | None,
             generator: Optional[torch.Generator]) -> Tensor:
    return low + (high - low) * _rand(shape, x, generator)


def random_mask(batch: int, p: float, x: Tensor | torch.device | str | None,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """(B,) bool on x's device, True with probability p per sample."""
    return _rand((batch,), x, generator) < p


def _per_sample(f: Factor, x: Tensor) -> Factor:
    """A per-sample (B,) factor shaped to broadcast over (B, C, H, W); a float stays a float."""
    return f.to(x.dtype).view(-1, 1, 1, 1) if isinstance(f, Tensor) else f


def _sample_mask(mask: Tensor) -> Tensor:
    return mask.view(-1, 1, 1, 1)


# ---- geometry -------------------------------------------------------------------------------------
def _fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback after 10 failed attempts: the whole image, clamped to the ratio range
    (and to at least one pixel, which torchvision leaves at 0 for images a few pixels wide)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return max(h, 1), max(w, 1)


def sample_crop_boxes(batch: int, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: Optional[torch.Generator] = None,
                      device: torch.device | str | None = None, attempts: int = 10) -> Tensor:
    """RandomResizedCrop boxes, (B, 4) int64 rows of (top, left, h, w) in pixels.

    torchvision's rule, vectorised: per sample draw `attempts` candidates at once (area fraction
    ~ U(scale), log aspect ratio w/h ~ U(log ratio), w = round(sqrt(area * r)), h = round(sqrt(area / r)))
    and keep the first that fits in the image; if none fits, the centred box of `_fallback_box`.
    The position of a fitting box is uniform over the integer positions that keep it inside.
    """
    area = height * width
    u = _rand((batch, attempts, 2), device, generator)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])  # (B, A)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])  # (B, A)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (B, A)
    attempt = torch.arange(attempts, device=fits.device)
    first = torch.where(fits, attempt, attempts).amin(dim=1, keepdim=True)  # (B, 1); == attempts: none fits
    found = first.squeeze(1) < attempts
    pick = first.clamp(max=attempts - 1)
    fh, fw = _fallback_box(height, width, ratio)
    h = torch.where(found, h.gather(1, pick).squeeze(1), fh)  # (B,)
    w = torch.where(found, w.gather(1, pick).squeeze(1), fw)
    pos = _rand((batch, 2), device, generator)
    top = torch.minimum(torch.floor(pos[:, 0] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(pos[:, 1] * (width - w + 1)), width - w)
    top = torch.where(found, top, (height - fh) // 2)
    left = torch.where(found, left, (width - fw) // 2)
    return torch.stack((top, left, h, w), dim=1).long()


def _crop_grid(top: Factor, left: Factor, h: Factor, w: Factor, batch: int, height: int, width: int,
               size: tuple[int, int], flip: Optional[Tensor], device: torch.device, dtype: torch.dtype,
               clamp_to_box: bool = True) -> Tensor:
    """A (B, oh, ow, 2) sampling grid for `F.grid_sample(align_corners=False)` mapping the output
    pixel centres evenly onto the box [left, left + w) x [top, top + h) (pixel edges, as image resizing
    does). Box entries are (B,) tensors or floats; `flip` (B,) bool mirrors the box horizontally.
    `clamp_to_box`: sample only between the centres of the box's outer pixels, as if the box had been
    cut out before resizing (crop-then-resize); off, the image beyond the box is used (resize-then-crop)."""
    oh, ow = size
    uy = (torch.arange(oh, device=device, dtype=torch.float32) * 2 + 1) / oh - 1  # output centres in (-1, 1)
    ux = (torch.arange(ow, device=device, dtype=torch.float32) * 2 + 1) / ow - 1

    def column(v: Factor) -> Factor:
        return v.to(torch.float32).view(-1, 1) if isinstance(v, Tensor) else float(v)

    top, left, h, w = column(top), column(left), column(h), column(w)
    ax, bx = w / width, (2 * left + w) / width - 1  # x_norm = ax * u + bx
    ay, by = h / height, (2 * top + h) / height - 1
    if flip is not None:
        ax = torch.where(flip.view(-1, 1), -ax, ax)
    # keep the samples between the centres of the box's outer pixels: enlarging then replicates the box's
    # own edge, as cropping first and resizing second does, instead of blending in the pixels beyond it
    gx, gy = ax * ux + bx, ay * uy + by
    if clamp_to_box:
        gx = torch.clamp(gx, (2 * left + 1) / width - 1, (2 * (left + w) - 1) / width - 1)
        gy = torch.clamp(gy, (2 * top + 1) / height - 1, (2 * (top + h) - 1) / height - 1)
    gx, gy = gx.expand(batch, ow), gy.expand(batch, oh)  # (B, ow), (B, oh)
    grid = torch.stack((gx[:, None, :].expand(batch, oh, ow), gy[:, :, None].expand(batch, oh, ow)), dim=-1)
    return grid.to(dtype)


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resized_crop(x: Tensor, boxes: Tensor, size: Size, flip: Optional[Tensor] = None) -> Tensor:
    """Crop box b = (top, left, h, w) of image b and resize it to `size`, bilinear, in one `grid_sample`.

    The same as cropping the box's pixels and resizing them with `F.interpolate(bilinear,
    align_corners=False)` (pixel-centre convention, the box's edge pixels replicated outwards), so a
    box of the whole image at the image's own size returns the image. `flip` (B,) bool mirrors those outputs
    (free: it negates the grid). Unlike torchvision there is no antialiasing when shrinking, which only
    matters for crops much larger than `size`.  x: (B, C, H, W) float -> (B, C, *size).
    """
    B, _, H, W = x.shape
    top, left, h, w = boxes.unbind(1)
    grid = _crop_grid(top, left, h, w, B, H, W, _pair(size), flip, x.device, x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(x: Tensor, size: Size, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """torchvision's RandomResizedCrop, per sample: `sample_crop_boxes` then `resized_crop`."""
    B, _, H, W = x.shape
    boxes = sample_crop_boxes(B, H, W, scale, ratio, generator, x.device)
    return resized_crop(x, boxes, size)


def horizontal_flip(x: Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """Mirror each image left-right with probability p."""
    flip = random_mask(x.shape[0], p, x, generator)
    return torch.where(_sample_mask(flip), x.flip(-1), x)


def center_resize(x: Tensor, size: int, resize_ratio: float = 8 / 7, mode: str = "bilinear") -> Tensor:
    """The clean view: resize the shorter side to int(size * resize_ratio), centre-crop `size` x `size`
    (torchvision's Resize(int(size * 8/7)) + CenterCrop(size), done as one bilinear resampling).

    At 32 px that resizes to 36 and keeps the central 32 (the central 8/9 of the image, enlarged);
    `resize_ratio=1` is a plain resize of the central square, the identity for a size x size input.
    uint8 input is scaled to [0, 1]; the result is float32 (B, C, size, size). `mode` "bicubic" (PhiNet's
    clean view) is clamped back to the input's value range, which its overshoot at edges would leave.
    """
    B, _, H, W = x.shape
    short = int(size * resize_ratio)
    new_h, new_w = (short, int(short * W / H)) if H <= W else (int(short * H / W), short)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    sy, sx = H / new_h, W / new_w  # input pixels per resized pixel
    xf = to_float(x) if x.dtype == torch.uint8 else x
    grid = _crop_grid(top * sy, left * sx, size * sy, size * sx, B, H, W, (size, size), None, x.device, xf.dtype,
                      clamp_to_box=False)
    out = F.grid_sample(xf, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.clamp_(xf.min(), xf.max()) if mode == "bicubic" else out


# ---- colour ---------------------------------------------------------------------------------------
def to_float(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 [0, 255] -> float [0, 1]."""
    return x.to(dtype).mul_(1 / 255)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma 0.299 R + 0.587 G + 0.114 B; (B, 1, H, W) is returned as is."""
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor | float, f: Factor) -> Tensor:
    """torchvision's _blend: f * x + (1 - f) * other, clamped to [0, 1]."""
    return (f * x + (1 - f) * other).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: Factor) -> Tensor:
    """x * factor, clamped (blend with black)."""
    return _blend(x, 0.0, _per_sample(factor, x))


def adjust_contrast(x: Tensor, factor: Factor) -> Tensor:
    """Blend with the image's mean grey level (one value per image); factor 0 gives that grey."""
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, _per_sample(factor, x))


def adjust_saturation(x: Tensor, factor: Factor) -> Tensor:
    """Blend with the image's grayscale version; factor 0 gives grey. No-op on 1-channel images."""
    if x.shape[-3] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), _per_sample(factor, x))


def adjust_hue(x: Tensor, shift: Factor) -> Tensor:
    """Rotate the hue by `shift` (a fraction of a full turn, in [-0.5, 0.5]); value and saturation kept.

    Same result as torchvision's rgb -> hsv, h = (h + shift) mod 1, hsv -> rgb, written with the
    closed form of hsv -> rgb: channel n (R: 5, G: 3, B: 1) = V - C * clamp(min(k, 4 - k), 0, 1),
    k = (n + 6h) mod 6, C = max - min. Greys (C = 0) are unchanged. No-op on 1-channel images.
    """
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(-3)  # (B, H, W) each
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    safe = chroma.clamp_min(torch.finfo(x.dtype).tiny)  # where chroma = 0 the numerators are 0 too
    # hue in sixths of a turn, in [-1, 5): the sector formula of rgb -> hsv (torchvision's tie-breaking)
    h6 = torch.where(maxc == r, (g - b).div_(safe),
                     torch.where(maxc == g, (b - r).div_(safe).add_(2), (r - g).div_(safe).add_(4)))
    shift = shift.to(x.dtype).view(-1, 1, 1) if isinstance(shift, Tensor) else shift
    h6 = h6.add_(6 * shift).remainder_(6)  # (B, H, W) in [0, 6)
    n = 5 - 2 * torch.arange(3, device=x.device, dtype=x.dtype).view(3, 1, 1)  # R, G, B
    k = (h6.unsqueeze(-3) + n).remainder_(6)  # (B, 3, H, W)
    weight = k.sub_(2).abs_().neg_().add_(2).clamp_(0, 1)  # = clamp(min(k, 4 - k), 0, 1) on [0, 6)
    return weight.mul_(chroma.unsqueeze(-3)).neg_().add_(maxc.unsqueeze(-3))


JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def sample_jitter_params(batch: int, brightness: float, contrast: float, saturation: float, hue: float,
                         generator: Optional[torch.Generator] = None,
                         device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """ColorJitter's per-sample parameters: `factors` (B, 4) = brightness, contrast and saturation
    factors ~ U[max(0, 1 - v), 1 + v] and a hue shift ~ U[-hue, hue]; `order` (B, 4) int64, a uniform
    random permutation of the ops 0..3 (JITTER_OPS) per sample (torchvision's randperm per call)."""
    u = _rand((batch, 4), device, generator)
    bounds = [(max(0.0, 1 - v), 1 + v) for v in (brightness, contrast, saturation)] + [(-hue, hue)]
    factors = torch.stack([a + (b - a) * u[:, i] for i, (a, b) in enumerate(bounds)], dim=1)
    order = _rand((batch, 4), device, generator).argsort(dim=1)
    return factors, order


def _blend_stage(x: Tensor, op: Tensor, f: Tensor) -> Tensor:
    """One of brightness (op 0), contrast (1), saturation (2) per sample: `_blend(x, target, f)` with
    target black, the mean grey, or the grey image. op, f: (B, 1, 1, 1); f = 1 leaves x exactly as is."""
    if x.shape[-3] == 1:
        f = torch.where(op == 2, 1.0, f)  # saturation leaves a 1-channel image as it is
    keep = 1 - f
    gray = rgb_to_grayscale(x)  # (B, 1, H, W)
    mean = gray.mean(dim=(-2, -1), keepdim=True)  # (B, 1, 1, 1)
    other = torch.addcmul(keep * (op == 1) * mean, gray, keep * (op == 2))  # (1 - f) * target, (B, 1, H, W)
    return torch.addcmul(other, x, f).clamp_(0, 1)


def adjust_color(x: Tensor, factors: Tensor, order: Tensor, with_hue: bool = True) -> Tensor:
    """Apply the four ColorJitter ops with explicit per-sample factors (B, 4) in per-sample order (B, 4)
    (`order[b, s]` is the op sample b does at step s; columns of `factors` follow JITTER_OPS).

    Brightness, contrast and saturation are all `_blend(x, target, f)`, so one blend per step serves
    every sample whatever its op. Hue, the expensive one, runs once: three blend steps for the ops each
    sample does before its hue (factor 1, the exact identity, where it has none), hue, then three for
    the ops after. Each op clamps to [0, 1] as torchvision does. `with_hue=False` skips hue (range 0).
    """
    B = x.shape[0]
    stage_of = order.argsort(dim=1)  # (B, 4): the step at which each op runs
    blend_order = stage_of[:, :3].argsort(dim=1)  # (B, 3): brightness/contrast/saturation in the order run
    hue_stage = stage_of[:, 3:4]  # (B, 1)
    blend_f = factors[:, :3].gather(1, blend_order).to(x.dtype)  # (B, 3)
    before = torch.arange(3, device=x.device).view(1, 3) < hue_stage  # (B, 3): j-th blend precedes the hue
    if not with_hue or x.shape[-3] == 1:
        for j in range(3):
            x = _blend_stage(x, blend_order[:, j].view(B, 1, 1, 1), blend_f[:, j].view(B, 1, 1, 1))
        return x
    for run_before in (True, False):
        for j in range(3):
            f = torch.where(before[:, j] == run_before, blend_f[:, j], 1.0)
            x = _blend_stage(x, blend_order[:, j].view(B, 1, 1, 1), f.view(B, 1, 1, 1))
        if run_before:
            x = adjust_hue(x, factors[:, 3])
    return x


def color_jitter(x: Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
    """torchvision's RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p), per sample:
    random factors and a random op order per image (`sample_jitter_params`, then one coin per image)."""
    B = x.shape[0]
    factors, order = sample_jitter_params(B, brightness, contrast, saturation, hue, generator, x.device)
    apply = random_mask(B, p, x, generator)
    return torch.where(_sample_mask(apply), adjust_color(x, factors, order, with_hue=hue > 0), x)


def random_grayscale(x: Tensor, p: float = 0.2, generator: Optional[torch.Generator] = None) -> Tensor:
    """With probability p per image, replace every channel by the luma; the channel count is kept."""
    apply = random_mask(x.shape[0], p, x, generator)
    return torch.where(_sample_mask(apply), rgb_to_grayscale(x).expand_as(x), x)


# ---- blur, solarize, normalise --------------------------------------------------------------------
def default_blur_kernel(size: int) -> int:
    """About 10% of the image side, odd, at least 3 (SimCLR): 23 at 224 px, 9 at 96, 3 at 32."""
    k = int(0.1 * size)
    return max(3, k + 1 - k % 2)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """(B,) sigmas -> (B, kernel_size) normalised 1-d Gaussian kernels (torchvision's definition)."""
    half = (kernel_size - 1) / 2
    t = torch.arange(kernel_size, device=sigma.device, dtype=sigma.dtype) - half  # (k,)
    pdf = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)  # (B, k)
    return pdf / pdf.sum(dim=1, keepdim=True)


def blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with one sigma (B,) per image and reflect padding, as two grouped
    convolutions over the batch folded into channels ((1, B*C, H, W), groups=B*C)."""
    B, C, H, W = x.shape
    k = min(kernel_size, 2 * min(H, W) - 1)  # reflect padding needs pad < side
    k -= 1 - k % 2
    weight = gaussian_kernels(sigma.to(x.dtype), k).repeat_interleave(C, dim=0)  # (B*C, k)
    pad = k // 2
    y = F.pad(x.reshape(1, B * C, H, W), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, weight.view(B * C, 1, k, 1), groups=B * C)  # (1, B*C, H, W + 2 pad)
    y = F.conv2d(y, weight.view(B * C, 1, 1, k), groups=B * C)  # (1, B*C, H, W)
    return y.view(B, C, H, W)


def gaussian_blur(x: Tensor, sigma_range: tuple[float, float] = (0.1, 2.0), p: float = 0.5,
                  generator: Optional[torch.Generator] = None, kernel_size: Optional[int] = None) -> Tensor:
    """torchvision's RandomApply([GaussianBlur(k, sigma_range)], p): sigma ~ U(sigma_range) per image;
    k defaults to `default_blur_kernel` of the image side."""
    B, _, H, W = x.shape
    sigma = _uniform((B,), sigma_range[0], sigma_range[1], x, generator)
    apply = random_mask(B, p, x, generator)
    k = kernel_size or default_blur_kernel(min(H, W))
    return torch.where(_sample_mask(apply), blur(x, sigma, k), x)


def solarize(x: Tensor, threshold: float = 0.5, p: float = 0.2, generator: Optional[torch.Generator] = None) -> Tensor:
    """With probability p per image, invert the pixels >= threshold (x -> 1 - x)."""
    apply = random_mask(x.shape[0], p, x, generator)
    return torch.where(_sample_mask(apply) & (x >= threshold), 1 - x, x)


@functools.lru_cache(maxsize=64)
def channel_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A (1, C, 1, 1) constant on `device`, made once: copying from the host each call would wait for the GPU."""
    return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor,
              dtype: Optional[torch.dtype] = None) -> Tensor:
    """(x - mean) / std per channel; one value broadcasts to every channel. Output in `dtype` (default x's)."""
    def const(v: Sequence[float] | Tensor) -> Tensor:
        if isinstance(v, Tensor):
            return v.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return channel_constant(tuple(float(a) for a in v), x.device, x.dtype)

    m, s = const(mean), const(std)
    return ((x - m) / s).to(dtype or x.dtype)
