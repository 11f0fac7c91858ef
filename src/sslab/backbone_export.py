"""Take a trained backbone out of sslab, into code that knows nothing about it.

Formats (`sslab export RUN --format F`):
  state-dict   sslab's own names: `sslab.models.create_backbone(...)` loads it
  torchvision  the names of `torchvision.models.resnetNN()` (with the printed stem change and `fc = Identity()`)
  timm         the names of `timm.create_model("resnetNN", num_classes=0)` (same stem change); for a ViT, of
               `timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=..., patch_size=...)`
  onnx         a graph (N, C, H, W) -> (N, D), checked against onnxruntime on the same inputs

The weight formats are written twice, as safetensors (loading it cannot run code) and as a plain `.pt`
state dict (`torch.load(..., weights_only=True)`). Beside every export, `<name>.json` says what the model
expects: image size, channels, mean and std of the normalisation, stem, feature dimension, and the code
that loads it.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from sslab.checkpoint import atomic_write_bytes
from sslab.errors import ConfigError, UserError

FORMATS = ("state-dict", "torchvision", "timm", "onnx")
RESNETS = ("resnet18", "resnet34", "resnet50")  # the backbones torchvision and timm have under the same name
# sslab's ViTs -> timm's names; their parameters already carry timm's names. torchvision has no ViT-Tiny or
# ViT-Small, and its ViT names its layers differently: a ViT exports to timm, ONNX and sslab's own names.
TIMM_VITS = {"vit-tiny": "vit_tiny_patch16_224", "vit-small": "vit_small_patch16_224"}
LIBRARY_BACKBONES = {"torchvision": RESNETS, "timm": RESNETS + tuple(TIMM_VITS)}
# sslab's ResNet names -> torchvision's, which timm's ResNet shares: the stem is conv1 + bn1, a shortcut is
# called downsample
TORCHVISION_RENAMES = ((r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."), (r"\.shortcut\.", ".downsample."))
ONNX_CHECK_IMAGES = 4
ONNX_ATOL, ONNX_RTOL = 1e-4, 1e-3


class ExportCheckError(UserError):
    """The exported model does not compute what the trained one computes (a bug: please report it)."""

    exit_code = 1


@dataclass
class ModelInput:
    """What the backbone expects and gives: written beside every export as JSON."""

    backbone: str
    image_size: int  # square images of this side, in pixels
    channels: int
    mean: list[float]  # per channel, of pixels scaled to [0, 1]
    std: list[float]
    stem: str  # cifar (3x3 conv, no max-pool) or imagenet (7x7 stride 2 + max-pool); "" for simple-cnn
    feature_dim: int
    patch_size: int = 0  # a ViT's patches are patch_size x patch_size pixels; 0 for a CNN
    normalisation: str = "x = (uint8 pixels / 255 - mean) / std, per channel; float32 (N, channels, size, size)"


def rename_keys(state: dict[str, torch.Tensor], renames=TORCHVISION_RENAMES) -> dict[str, torch.Tensor]:
    """A state dict with each key rewritten by the (pattern, replacement) pairs, in order."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def resnet_stem(backbone: nn.Module) -> str:
    """"imagenet" if the backbone's stem has the max-pool, "cifar" if not, "" for a backbone without a stem."""
    stem = getattr(backbone, "stem", None)
    if stem is None:
        return ""
    return "imagenet" if any(isinstance(m, nn.MaxPool2d) for m in stem.modules()) else "cifar"


def model_input(backbone: nn.Module, name: str, info: dict[str, Any]) -> ModelInput:
    """`info`: the checkpoint's data record (channels, image_size, mean, std)."""
    return ModelInput(name, int(info["image_size"]), int(info["channels"]), [float(v) for v in info["mean"]],
                      [float(v) for v in info["std"]], resnet_stem(backbone), int(backbone.out_dim),
                      int(getattr(backbone, "patch_size", 0)))


def check_format(fmt: str, backbone_name: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt in LIBRARY_BACKBONES and backbone_name not in LIBRARY_BACKBONES[fmt]:
        kinds = "a ResNet" if fmt == "torchvision" else "a ResNet or a ViT"
        other = "state-dict, timm or onnx" if backbone_name in TIMM_VITS else "state-dict or onnx"
        raise ConfigError(f"--format {fmt} needs {kinds} ({', '.join(LIBRARY_BACKBONES[fmt])}); this run's backbone "
                          f"is {backbone_name}: use --format {other}")


# ---- the code a user runs to load an export ----------------------------------------------------------------------
def _stem_lines(spec: ModelInput) -> list[str]:
    if spec.stem == "cifar":
        return [f"model.conv1 = torch.nn.Conv2d({spec.channels}, 64, kernel_size=3, stride=1, padding=1, bias=False)"
                "  # CIFAR stem: 3x3 conv",
                "model.maxpool = torch.nn.Identity()  # ... and no max-pool"]
    if spec.channels != 3:
        return [f"model.conv1 = torch.nn.Conv2d({spec.channels}, 64, kernel_size=7, stride=2, padding=3, bias=False)"
                f"  # {spec.channels} input channel(s)"]
    return []


def _normalise_lines(spec: ModelInput, numpy: bool = False) -> list[str]:
    if numpy:
        return [f"mean = np.array({spec.mean}, dtype=np.float32).reshape(1, -1, 1, 1)",
                f"std = np.array({spec.std}, dtype=np.float32).reshape(1, -1, 1, 1)",
                f"# images: uint8 array (N, {spec.channels}, {spec.image_size}, {spec.image_size})",
                "x = ((images / 255.0 - mean) / std).astype(np.float32)"]
    return [f"mean = torch.tensor({spec.mean}).view(1, -1, 1, 1)",
            f"std = torch.tensor({spec.std}).view(1, -1, 1, 1)",
            f"# images: uint8 tensor (N, {spec.channels}, {spec.image_size}, {spec.image_size})",
            "x = (images.float() / 255 - mean) / std"]


def load_code(fmt: str, spec: ModelInput, path: Path | str) -> str:
    """Python that loads the export at `path` and computes features of uint8 `images` (prints with the command)."""
    path = str(path)
    if fmt == "onnx":
        lines = ["import numpy as np", "import onnxruntime", "",
                 f"session = onnxruntime.InferenceSession({path!r}, providers=['CPUExecutionProvider'])",
                 *_normalise_lines(spec, numpy=True),
                 f"features = session.run(['features'], {{'images': x}})[0]  # (N, {spec.feature_dim})"]
        return "\n".join(lines) + "\n"
    weights = f"load_file({path!r})"
    if fmt == "torchvision":
        head = ["import torch", "import torchvision", "from safetensors.torch import load_file", "",
                f"model = torchvision.models.{spec.backbone}()", *_stem_lines(spec),
                "model.fc = torch.nn.Identity()  # the backbone's features, not ImageNet's 1000 classes"]
    elif fmt == "timm" and spec.backbone in TIMM_VITS:
        head = ["import timm", "import torch", "from safetensors.torch import load_file", "",
                f"model = timm.create_model({TIMM_VITS[spec.backbone]!r}, num_classes=0, in_chans={spec.channels}, "
                f"img_size={spec.image_size}, patch_size={spec.patch_size})  # num_classes=0: the CLS features"]
    elif fmt == "timm":
        head = ["import timm", "import torch", "from safetensors.torch import load_file", "",
                f"model = timm.create_model({spec.backbone!r}, num_classes=0, in_chans={spec.channels})"
                "  # num_classes=0: features", *_stem_lines(spec)]
    else:
        stem = f", stem={spec.stem!r}" if spec.stem else ""
        head = ["import torch", "from safetensors.torch import load_file", "from sslab.models import create_backbone",
                "", f"model = create_backbone({spec.backbone!r}, in_channels={spec.channels}, "
                f"image_size={spec.image_size}{stem})"]
    lines = [*head, f"model.load_state_dict({weights}, strict=True)", "model.eval()",
             *_normalise_lines(spec), "with torch.no_grad():",
             f"    features = model(x)  # (N, {spec.feature_dim})"]
    return "\n".join(lines) + "\n"


# ---- writing ---------------------------------------------------------------------------------------------------------
def export_weights(state: dict[str, torch.Tensor], stem_path: Path, fmt: str) -> list[Path]:
    """`state` as STEM.safetensors and STEM.pt (plain tensors, loadable with weights_only=True)."""
    try:
        from safetensors.torch import save as safetensors_bytes
    except ImportError:
        raise ConfigError("exporting weights needs safetensors: pip install safetensors") from None
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    st_path, pt_path = stem_path.with_suffix(".safetensors"), stem_path.with_suffix(".pt")
    atomic_write_bytes(st_path, safetensors_bytes(tensors, metadata={"format": "pt", "layout": fmt, "writer": "sslab"}))
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    atomic_write_bytes(pt_path, buffer.getvalue())
    return [st_path, pt_path]


def export_onnx(backbone: nn.Module, spec: ModelInput, path: Path) -> dict[str, Any]:
    """The backbone as ONNX with a free batch dimension; checked with onnxruntime on the same inputs as PyTorch.
    Returns the check's record; ExportCheckError if the two disagree."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--format onnx needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                          "pip install onnx onnxscript onnxruntime") from None
    x = check_inputs(spec)  # traced on 2 of them, checked on all: the batch dimension is free
    with quiet_onnx_exporter():
        program = torch.onnx.export(backbone, (x[:2],), None, input_names=["images"], output_names=["features"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    atomic_write_bytes(path, program.model_proto.SerializeToString())  # type: ignore[union-attr]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = backbone(x).numpy()
    got = session.run(["features"], {"images": x.numpy()})[0]
    diff = float(abs(got - expected).max())
    if got.shape != expected.shape or not (abs(got - expected) <= ONNX_ATOL + ONNX_RTOL * abs(expected)).all():
        raise ExportCheckError(f"the ONNX model at {path} differs from the PyTorch backbone (max difference {diff:.3g} "
                               f"on {len(x)} images); please report this with `sslab --version`")
    return {"onnxruntime": onnxruntime.__version__, "images": len(x), "max_abs_diff": diff,
            "tolerance": f"atol {ONNX_ATOL} + rtol {ONNX_RTOL}"}


def check_inputs(spec: ModelInput, n: int = ONNX_CHECK_IMAGES, seed: int = 0) -> torch.Tensor:
    """Seeded random uint8 images, normalised as the backbone expects: (n, C, H, W) float32."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, spec.channels, spec.image_size, spec.image_size), generator=g, dtype=torch.uint8)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


@contextlib.contextmanager
def quiet_onnx_exporter() -> Iterator[None]:
    """torch.onnx's exporter logs about optional torchvision ops and warns about its own internals; users of
    `sslab export` should see only sslab's lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def export_backbone(backbone: nn.Module, name: str, info: dict[str, Any], fmt: str, out_dir: Path,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `backbone` in format `fmt` into `out_dir`; returns the record also written as JSON beside it:
    the files, what the model expects (ModelInput fields) and the code that loads it."""
    check_format(fmt, name)
    backbone = backbone.cpu().eval()
    spec = model_input(backbone, name, info)
    out_dir = Path(out_dir)
    if fmt == "onnx":
        files = [out_dir / f"{name}.onnx"]
        check = export_onnx(backbone, spec, files[0])
        card_path = out_dir / f"{name}.onnx.json"
    else:
        state = backbone.state_dict()
        state = state if fmt == "state-dict" or name in TIMM_VITS else rename_keys(state)  # a ViT has timm's names
        stem_path = out_dir / f"{name}-{'sslab' if fmt == 'state-dict' else fmt}"
        files = export_weights(state, stem_path, fmt)
        check = None
        card_path = stem_path.with_suffix(".json")
    record = {"format": fmt, "files": [str(f) for f in files], **asdict(spec),
              "code": load_code(fmt, spec, files[0]), **({"onnx_check": check} if check else {}), **(extra or {})}
    atomic_write_bytes(card_path, (json.dumps(record, indent=2) + "\n").encode())
    record["json"] = str(card_path)
    return record


def export_run(run: Any, fmt: str = "state-dict", out: str | Path | None = None) -> dict[str, Any]:
    """Export the backbone of a run folder (or a checkpoint file, or a loaded `TrainedRun`) into `out`
    (default: RUN/export/). Returns the record written beside it as JSON (files, input spec, code)."""
    from sslab.pretrained import TrainedRun, load_trained

    from sslab.run import check_output_folder
    from sslab.safe_write import check_writable

    trained = run if isinstance(run, TrainedRun) else load_trained(run, "cpu")
    check_format(fmt, trained.cfg.model.backbone)
    out_dir = Path(out) if out is not None else trained.run_dir / "export"
    if out is None:  # before any work: a read-only run folder, a link inside it
        check_output_folder(trained.run_dir, "export")
    else:
        check_writable(out_dir, what="--out folder", advice="choose a writable --out folder")
    extra = {"method": trained.cfg.method.method, "dataset": trained.data_info.get("dataset"),
             "classes": list(trained.data_info.get("classes", [])), "epoch": trained.state.get("loop", {}).get("epoch")}
    backbone = copy.deepcopy(trained.backbone)  # the export moves it to the CPU; the caller's model stays put
    return export_backbone(backbone, trained.cfg.model.backbone, trained.data_info, fmt, out_dir, extra)
