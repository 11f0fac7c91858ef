"""`sslab export`: the trained backbone as files other code loads (safetensors/.pt, torchvision/timm names, ONNX)."""
from __future__ import annotations

import argparse
import textwrap
from typing import Any, Callable

FORMAT_HELP = ("state-dict: sslab's own names (sslab.models.create_backbone loads it); torchvision / timm: the names "
               "of torchvision.models.resnetNN() (ResNets) / timm.create_model('resnetNN' or 'vit_tiny_patch16_224', ...) (ResNets and ViTs); onnx: an ONNX graph "
               "images -> features, checked against onnxruntime (needs onnx, onnxscript, onnxruntime)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    from sslab.backbone_export import FORMATS

    p = sub.add_parser("export", help="the trained backbone for other code: safetensors + .pt (sslab, torchvision or "
                                      "timm names) or ONNX; prints the code that loads it",
                       description="Write the run's backbone into RUN/export/ (or --out): weights as .safetensors and "
                                   ".pt, or an .onnx graph checked against onnxruntime, each with a .json beside it "
                                   "saying what the model expects (image size, channels, mean/std, stem, feature "
                                   "dimension). Prints the Python that loads it, including the stem change "
                                   "torchvision's and timm's ResNets need for the CIFAR stem.")
    p.add_argument("run", metavar="RUN", help="a run folder (or a checkpoint file inside one)")
    p.add_argument("--format", choices=FORMATS, default="state-dict", help=f"{FORMAT_HELP} (default: state-dict)")
    p.add_argument("--out", metavar="DIR", help="folder to write into (default: RUN/export)")
    p.set_defaults(handler=export_command)


def export_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    from sslab.backbone_export import export_run

    record = export_run(args.run, args.format, args.out)
    log(describe_export(record))
    return 0


def describe_export(record: dict[str, Any]) -> str:
    """What was written, what the model expects, and the code that loads it."""
    size, c = record["image_size"], record["channels"]
    stem = f", {record['stem']} stem" if record["stem"] else ""
    lines = [f"wrote {', '.join(record['files'])} and {record['json']}",
             f"{record['backbone']}{stem}: uint8 images ({c}, {size}, {size}) -> features ({record['feature_dim']},); "
             f"input x = (pixels / 255 - mean) / std with mean {record['mean']}, std {record['std']}"]
    if "onnx_check" in record:
        check = record["onnx_check"]
        lines.append(f"checked: onnxruntime {check['onnxruntime']} gives the PyTorch features on {check['images']} "
                     f"images (max difference {check['max_abs_diff']:.2g})")
    lines += ["load it with:", "", textwrap.indent(record["code"], "    ").rstrip()]
    return "\n".join(lines)
