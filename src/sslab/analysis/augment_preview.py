"""`sslab preview-augment`: what a method's views look like on a dataset, before training on it.

The config is resolved exactly as `sslab train` resolves it (`sslab.methods.build.resolve`: the method's recipe
for this dataset and image size, then the augmentation preset, then any flag given), and the views are made
by the same `Augmenter` on a batch, so the picture shows what training will see.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sslab.augment.views import ViewMaker
from sslab.config import Config
from sslab.data.base import ImageData
from sslab.methods.build import build_method
from sslab.recipe import fit_to_data
from sslab.settings import Rule, setting


@dataclass
class PreviewOptions:
    """The settings of `sslab preview-augment` besides the run spec's."""

    out: str = setting("augment-preview.png", "the PNG file to write", rule=Rule(lambda p: p.lower().endswith(".png"),
                                                                                 "a file name ending in .png"))
    num_images: int = setting(8, "how many images to show (one column each)", ge=1, le=64)
    seed: int = setting(0, "seed of the images picked and of their views", ge=0, lt=2**32)


def preview_views(cfg: Config, data: ImageData, num_images: int, seed: int) -> dict[str, Any]:
    """Images, their views and clean views (normalisation undone), as display arrays, plus what made them."""
    from dataclasses import asdict

    from sslab.analysis.attention import pick_images
    from sslab.analysis.figures import to_display

    resolved = fit_to_data(cfg, data.image_size)
    method = build_method(resolved, data.channels, data.image_size)
    params = resolved.augment
    views_of = ViewMaker(method.view_specs(data.image_size), params, data.image_size, data.mean, data.std)
    labels = data.train_y if len(data.train_x) else data.test_y
    pool = data.train_x if len(data.train_x) else data.test_x
    rows = torch.from_numpy(pick_images(labels, num_images, seed))
    x = pool[rows]
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)

    def unnormalise(v: torch.Tensor) -> torch.Tensor:
        return (v.float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)

    size = max(64, data.image_size)
    views = [to_display(unnormalise(v), size) for v in views_of(x, gen)]
    names = [f"view {i + 1}" for i in range(len(views))]
    if method.needs_clean:
        views.append(to_display(unnormalise(views_of.clean(x)), size))
        names.append("clean view")
    return {"original": to_display(x, size), "views": views, "view_names": names,
            "labels": [data.classes[int(y)] if int(y) >= 0 else "unlabelled" for y in labels[rows]],
            "params": asdict(params), "method": resolved.method.method, "config": resolved}


def preview_figure(preview: dict[str, Any], path: Path, title: str) -> None:
    """Columns = images (captioned with their class), rows = original, then each view."""
    from sslab.plots import new_figure, save_figure

    n = len(preview["labels"])
    rows = [("original", preview["original"])] + list(zip(preview["view_names"], preview["views"]))
    fig, _ = new_figure(1.35 * n + 1.0, 1.45 * len(rows) + 1.2)
    fig.clf()
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(preview["labels"][c], fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
    p = preview["params"]
    recipe = (f"preset {p['preset']}: crop scale {tuple(p['crop_scale'])}, flip {p['flip_p']:g}, jitter "
              f"{tuple(p['jitter'])} p {p['jitter_p']:g}, grey {p['grayscale_p']:g}, blur {p['blur_p']:g}, "
              f"solarize {p['solarize_p']:g}")
    fig.suptitle(f"{title}\n{recipe}", fontsize=8)
    save_figure(fig, path)


def preview_augment(cfg: Config, opts: PreviewOptions, log: Callable[[str], None] = print) -> Path:
    from sslab.data import load_from_config
    from sslab.plots import run_title

    data = load_from_config(cfg.data, opts.seed)
    preview = preview_views(cfg, data, opts.num_images, opts.seed)
    path = Path(opts.out).expanduser()
    preview_figure(preview, path, f"augmented views: {run_title(preview['config'])}")
    log(f"wrote {path} ({preview['method']}, {len(preview['views'])} views of {opts.num_images} images)")
    return path
