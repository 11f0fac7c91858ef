"""Where the network looks: channel-mean activation maps of a stage, and Grad-CAM (Selvaraju et al. 2017)
for a class score of the run's linear probe; for a ViT, the CLS token's self-attention per head (Caron et al.
2021, DINO's figure 1), beside the untrained network's.

    RUN/attention/activation-LAYER.png   original | activation map (upsampled) | image weighted by the map
    RUN/attention/gradcam-LAYER.png      original | Grad-CAM of the target class | overlay   (needs RUN/probe.pt)
    RUN/attention/cls-attention-blockN.png   (ViT) original | each head's CLS attention | the same, untrained
    RUN/attention/attention.json         images, layer, probe, targets

Grad-CAM: weights a_k = mean over positions of d score_c / d A_k (A = the stage's output), map =
ReLU(sum_k a_k A_k). Both maps are upsampled and scaled to [0, 1] per image.

A map needs a few cells to say where: on 8x8 inputs a late stage is 2x2, and a 2x2 map scaled to [0, 1]
and upsampled bilinearly is a ramp from one corner to another, much the same for every image (the four
cells differ mostly by how much zero padding each one sees). So the default layer is the last stage whose
map is at least MIN_MAP_SIDE cells on a side; a coarser layer asked for with --layer is drawn with nearest
upsampling (its cells visible) and a warning.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.errors import ConfigError
from sslab.eval.features import normalize_images
from sslab.eval.linear import ProbeWeights

ATTENTION_DIR = "attention"
DISPLAY_MIN = 64  # maps and images are shown at least this large
MIN_MAP_SIDE = 4  # cells per side below which a map cannot say where


def stages_of(backbone: nn.Module) -> dict[str, nn.Module]:
    if not hasattr(backbone, "stages"):
        raise ConfigError(f"{type(backbone).__name__} does not name its stages; attention maps need a backbone "
                          "with .stages() (resnet18/34/50, simple-cnn)")
    return backbone.stages()


def output_module(stage: nn.Module) -> nn.Module:
    """The module whose output is the stage's output: the last child of a Sequential, recursively. Hooks go
    there, because a stage may be a Sequential built on the fly (simple-cnn's `stages()` slices its
    `features`), whose own forward never runs."""
    while isinstance(stage, nn.Sequential) and len(stage) > 0:
        stage = stage[-1]
    return stage


@torch.no_grad()
def stage_shapes(backbone: nn.Module, channels: int, image_size: int) -> dict[str, tuple[int, ...]]:
    """Output shape (C, h, w) of every stage for one image of the run's size."""
    device = next(backbone.parameters()).device
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [output_module(m).register_forward_hook(
        lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
        for name, m in stages_of(backbone).items()]
    was_training = backbone.training
    try:
        backbone.eval()
        backbone(torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        backbone.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def default_layer(backbone: nn.Module, channels: int, image_size: int) -> str:
    """The last stage whose map is at least MIN_MAP_SIDE x MIN_MAP_SIDE; else the stage with the largest map."""
    shapes = stage_shapes(backbone, channels, image_size)
    spatial = [name for name, s in shapes.items() if len(s) == 3 and min(s[1:]) >= MIN_MAP_SIDE]
    if spatial:
        return spatial[-1]
    return max(shapes, key=lambda name: min(shapes[name][1:]) if len(shapes[name]) == 3 else 0)


def coarse_map_warning(layer: str, shape: tuple[int, ...], image_size: int,
                       shapes: dict[str, tuple[int, ...]]) -> str | None:
    """A warning when `layer`'s map is too coarse to show where the network looks, naming a finer stage."""
    side = min(shape[1:]) if len(shape) == 3 else 1
    if side >= MIN_MAP_SIDE:
        return None
    finer = [f"{name} ({s[1]}x{s[2]})" for name, s in shapes.items() if len(s) == 3 and min(s[1:]) >= MIN_MAP_SIDE]
    advice = f"pass --layer {finer[-1]}" if finer else "train at a larger --image-size for finer maps"
    return (f"warning: layer {layer} gives a {'x'.join(map(str, shape[1:])) or '1x1'} map on {image_size}x{image_size} "
            f"images, too coarse to show where the network looks (drawn cell by cell); {advice}")


def _run_with_hook(backbone: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(stage output A (B, C, h, w), backbone features (B, D))."""
    stages = stages_of(backbone)
    if layer not in stages:
        raise ConfigError(f"unknown --layer {layer!r}; this backbone's stages are: {', '.join(stages)}")
    store: dict[str, torch.Tensor] = {}
    hook = output_module(stages[layer]).register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        feats = backbone(x)
    finally:
        hook.remove()
    return store["a"], feats


@torch.no_grad()
def activation_maps(backbone: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Channel mean of the stage's output: (B, h, w)."""
    a, _ = _run_with_hook(backbone, layer, x)
    return a.float().mean(dim=1)


def grad_cam(backbone: nn.Module, probe: ProbeWeights, layer: str, x: torch.Tensor,
             targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Grad-CAM maps (B, h, w) for class `targets[b]` of the probe, probe logits (B, K))."""
    with torch.enable_grad():
        a, feats = _run_with_hook(backbone, layer, x.detach().requires_grad_(True))
        logits = probe.logits(feats.float())
        score = logits.gather(1, targets.view(-1, 1)).sum()
        grads = torch.autograd.grad(score, a)[0]  # B x C x h x w
    weights = grads.float().mean(dim=(2, 3), keepdim=True)  # B x C x 1 x 1
    cam = F.relu((weights * a.detach().float()).sum(dim=1))  # B x h x w
    return cam, logits.detach()


def upsample_unit(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) -> (B, size, size), scaled to [0, 1] per map (a constant map becomes 0): bilinear, or
    nearest for maps under MIN_MAP_SIDE cells a side (smoothing 2x2 cells would draw a ramp that is not there)."""
    coarse = min(maps.shape[-2:]) < MIN_MAP_SIDE
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="nearest-exact" if coarse else "bilinear",
                       **({} if coarse else {"align_corners": False}))[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return torch.where(hi - lo > 1e-12, (up - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(up))


def pick_images(labels: torch.Tensor, n: int, seed: int) -> np.ndarray:
    """n image indices, seeded, taking the classes in turn so the examples differ."""
    y = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(y == c)).tolist() for c in np.unique(y)]
    out: list[int] = []
    while len(out) < min(n, len(y)) and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return np.array(out, dtype=np.int64)


def resolve_target(target: str, classes: Sequence[str]) -> int | str:
    """"predicted", "true", a class name or a class index."""
    if target in ("predicted", "true"):
        return target
    if target in classes:
        return list(classes).index(target)
    if target.isdigit() and int(target) < len(classes):
        return int(target)
    raise ConfigError(f"--target {target!r} is not predicted, true, a class name or an index < {len(classes)}; "
                      f"classes: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}")


def grid_figure(columns: list[tuple[str, list[np.ndarray], dict]], captions: list[str], title: str, path) -> None:
    """One row per image, one column per (heading, panels, imshow arguments); the first column is the image."""
    from sslab.plots import new_figure, save_figure

    n = len(captions)
    fig, axes = new_figure(2.0 * len(columns) + 0.4, 2.0 * n + 0.8)
    fig.clf()
    axes = fig.subplots(n, len(columns), squeeze=False)
    for r in range(n):
        for c, (head, panels, kw) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(panels[r], interpolation="nearest" if c == 0 else "bilinear", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(head, fontsize=8)
        axes[r, 0].set_ylabel(captions[r], fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def attention_figures(backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                      mean: Sequence[float], std: Sequence[float], layer: str, out_dir, title: str,
                      probe: tuple[str, ProbeWeights] | None, target: str = "predicted",
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the activation figure (and the Grad-CAM one with a probe); returns what attention.json records."""
    from sslab.analysis.figures import to_display

    device = next(backbone.parameters()).device
    backbone.eval()
    x = normalize_images(images.to(device), mean, std)
    size = max(DISPLAY_MIN, images.shape[-1])
    shown = to_display(images, size)  # N x s x s x 3
    act = upsample_unit(activation_maps(backbone, layer, x), size).cpu().numpy()
    n = len(images)
    names = [classes[int(y)] if int(y) >= 0 else "unlabelled" for y in labels]

    weighted = [np.clip(shown[i] * act[i][..., None], 0, 1) for i in range(n)]
    path_act = out_dir / f"activation-{layer}.png"
    grid_figure([("image", list(shown), {}),
                 (f"mean activation, {layer}", list(act), {"cmap": "inferno", "vmin": 0, "vmax": 1}),
                 ("image x activation", weighted, {})], [f"{names[i]}" for i in range(n)], title, path_act)
    record: dict[str, Any] = {"layer": layer, "figures": [path_act], "images": n, "gradcam": None}

    if probe is None:
        log("attention: no linear probe in the run folder (run `sslab eval` first); Grad-CAM skipped")
        return record
    probe_name, weights = probe
    want = resolve_target(target, classes)
    with torch.no_grad():
        pred = weights.logits(backbone(x).float()).argmax(dim=1)
    if want == "predicted":
        targets = pred
    elif want == "true":
        targets = torch.where(labels.to(device) >= 0, labels.to(device), pred)
    else:
        targets = torch.full_like(pred, int(want))
    cam, _ = grad_cam(backbone, weights, layer, x, targets)
    cam = upsample_unit(cam, size).cpu().numpy()
    heat = _heatmap(cam)
    overlay = [np.clip(0.55 * shown[i] + 0.45 * heat[i], 0, 1) for i in range(n)]
    path_cam = out_dir / f"gradcam-{layer}.png"
    captions = [f"true {names[i]}\ntarget {classes[int(targets[i])]}\npred {classes[int(pred[i])]}" for i in range(n)]
    grid_figure([("image", list(shown), {}),
                 (f"Grad-CAM ({probe_name}), {layer}", list(cam), {"cmap": "jet", "vmin": 0, "vmax": 1}),
                 ("overlay", overlay, {})], captions, title, path_cam)
    record["figures"].append(path_cam)
    record["gradcam"] = {"probe": probe_name, "target": target, "targets": [classes[int(t)] for t in targets],
                         "predicted": [classes[int(p)] for p in pred]}
    return record


def _heatmap(maps: np.ndarray) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps["jet"](maps)[..., :3]


def attention_run(trained, num_images: int, layer: str | None = None, target: str = "predicted",
                  probe_name: str = "auto", split: str = "test", seed: int = 0,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """`sslab attention`: pick images, write the figures and RUN/attention/attention.json: activation maps and
    Grad-CAM for a CNN, the CLS token's self-attention per head for a ViT."""
    from sslab.analysis.embedding import split_images
    from sslab.plots import run_title
    from sslab.run import RunDir

    if num_images < 1:
        raise ConfigError("--num-images must be >= 1")
    vit = is_vit(trained.backbone)
    if not vit:
        stages_of(trained.backbone)  # a clear error for backbones without stages, before the data loads
    data = trained.load_data()
    images, labels, indices, names = split_images(data, split)
    rows = torch.from_numpy(pick_images(labels, num_images, seed))
    run = RunDir(trained.run_dir)
    picked = (images[rows], labels[rows], list(data.classes))
    if vit:
        record = vit_attention(trained, *picked, layer, run.path / ATTENTION_DIR, run_title(trained.cfg), log)
    else:
        record = cnn_attention(trained, *picked, layer, target, probe_name, run.path / ATTENTION_DIR,
                               run_title(trained.cfg), log)
    record.update({"split": str(names[rows[0]]) if len(rows) else split, "indices": indices[rows.numpy()].tolist(),
                   "labels": [list(data.classes)[int(y)] if int(y) >= 0 else None for y in labels[rows]],
                   "figures": [str(p.relative_to(run.path)) for p in record["figures"]]})
    run.write_json(f"{ATTENTION_DIR}/attention.json", record)
    return record


def cnn_attention(trained, images: torch.Tensor, labels: torch.Tensor, classes: list[str], layer: str | None,
                  target: str, probe_name: str, out_dir, title: str, log: Callable[[str], None]) -> dict[str, Any]:
    """A CNN's channel-mean activation maps of `layer` and, with a fitting probe in the run folder, Grad-CAM."""
    from sslab.eval.evaluate import load_probe

    info, backbone = trained.data_info, trained.backbone
    layer = layer or default_layer(backbone, info["channels"], info["image_size"])
    shapes = stage_shapes(backbone, info["channels"], info["image_size"])
    warning = coarse_map_warning(layer, shapes[layer], info["image_size"], shapes) if layer in shapes else None
    if warning:
        log(warning)
    loaded = load_probe(trained.run_dir, probe_name)
    probe = None
    if loaded is not None:
        name, weights, probe_classes = loaded
        if probe_classes != classes or weights.weight.shape[1] != _feature_dim(backbone, info):
            log(f"attention: the probe in {trained.run_dir} does not fit this model (run `sslab eval` again); "
                "Grad-CAM skipped")
        else:
            probe = (name, weights)
    record = attention_figures(backbone, images, labels, classes, info["mean"], info["std"], layer, out_dir, title,
                               probe, target, log)
    record.update({"stages": {k: list(v) for k, v in shapes.items()}, "coarse_map_warning": warning})
    return record


# ---- ViT: the CLS token's self-attention ------------------------------------------------------------------------
def is_vit(backbone: nn.Module) -> bool:
    return hasattr(backbone, "cls_attention")


def vit_block(backbone: nn.Module, layer: str | None) -> int:
    """--layer blockN (1-based) -> a block index; default the last block, as DINO's figure."""
    names = [f"block{i + 1}" for i in range(len(backbone.blocks))]
    if layer is None:
        return len(names) - 1
    if layer not in names:
        raise ConfigError(f"unknown --layer {layer!r}; a ViT's maps are the CLS token's attention in one of its "
                          f"blocks: block1 ... {names[-1]} (default {names[-1]})")
    return names.index(layer)


def head_maps(backbone: nn.Module, x: torch.Tensor, block: int, size: int) -> np.ndarray:
    """CLS attention per head, upsampled and scaled to [0, 1] per map: (N, heads, size, size)."""
    att = backbone.cls_attention(x, block)  # N x heads x h x w
    n, heads = att.shape[:2]
    return upsample_unit(att.flatten(0, 1), size).view(n, heads, size, size).cpu().numpy()


def vit_attention(trained, images: torch.Tensor, labels: torch.Tensor, classes: list[str], layer: str | None,
                  out_dir, title: str, log: Callable[[str], None]) -> dict[str, Any]:
    """RUN/attention/cls-attention-blockN.png: per image, the image, each head's CLS attention in the trained
    network, and the same heads in the untrained network (the reference: what the architecture alone gives)."""
    from sslab.analysis.figures import to_display
    from sslab.eval.baselines import untrained_method

    info, backbone = trained.data_info, trained.backbone.eval()
    block = vit_block(backbone, layer)
    untrained, source = untrained_method(trained.run_dir, trained.cfg, info["channels"], info["image_size"],
                                         trained.device)
    x = normalize_images(images.to(trained.device), info["mean"], info["std"])
    size = max(DISPLAY_MIN, images.shape[-1])
    maps = {"trained": head_maps(backbone, x, block, size), "untrained": head_maps(untrained.backbone, x, block, size)}
    heads = maps["trained"].shape[1]
    style = {"cmap": "inferno", "vmin": 0, "vmax": 1}
    columns = [("image", list(to_display(images, size)), {})]
    for which in ("trained", "untrained"):
        columns += [(f"{which}, head {h + 1}", list(maps[which][:, h]), style) for h in range(heads)]
    name = f"block{block + 1}"
    path = out_dir / f"cls-attention-{name}.png"
    captions = [classes[int(y)] if int(y) >= 0 else "unlabelled" for y in labels]
    grid_figure(columns, captions, f"{title} · CLS attention per head, {name}", path)
    grid = list(backbone.cls_attention(x[:1], block).shape[-2:])
    log(f"attention: CLS self-attention of {heads} heads in {name} ({grid[0]}x{grid[1]} patches); the untrained "
        f"network's from {source}")
    return {"layer": name, "figures": [path], "images": len(images), "heads": heads, "patch_grid": grid,
            "untrained_source": source, "gradcam": None,
            "gradcam_note": "not drawn: a ViT shows the CLS token's attention per head instead"}


@torch.no_grad()
def _feature_dim(backbone: nn.Module, info: dict[str, Any]) -> int:
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        return backbone(torch.zeros(1, info["channels"], info["image_size"], info["image_size"], device=device)).shape[1]
    finally:
        backbone.train(was_training)
