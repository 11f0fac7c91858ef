"""`sslab export-images`, `sslab preview-augment` and `sslab imagenet100`: look at a dataset, before or without
training, and make ImageNet-100 from ImageNet."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from sslab.analysis.augment_preview import PreviewOptions, preview_augment
from sslab.analysis.export import export_folder, export_images
from sslab.commands.train import add_run_flags, spec_from_args
from sslab.config import DataConfig, TrainConfig
from sslab.data import default_root, load_dataset
from sslab.data.imagenet100 import make_subset
from sslab.errors import ConfigError
from sslab.settings import add_flags, check, from_dict, given_flags, names_of

EXPORT_DATA = ("dataset", "data_dir", "download", "train_split", "image_size", "test_fraction")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-images", help="write every image of a dataset as PNG: OUT/split/class/NNNNN.png",
                       description="Export a dataset of the registry as PNG files in OUT/<split>/<class>/NNNNN.png "
                                   "(NNNNN = index in the split); an image folder keeps its file names, sub-folders "
                                   "and image sizes (OUT/<split>/<class>/<name>.png). `--dataset folder --data-dir "
                                   "OUT` reads them back. The split is the one training makes.")
    p.add_argument("--out", required=True, help="an empty or new folder to write to")
    add_flags(p, DataConfig, names=EXPORT_DATA)
    add_flags(p, TrainConfig, names=["seed"])
    p.set_defaults(handler=export_command)

    p = sub.add_parser("preview-augment", help="a grid of a method's augmented views of some images (PNG)",
                       description="Show the views a method would train on: the run spec is read and adapted to the "
                                   "data as `sslab train` does (method recipe, augmentation preset, flags), and the "
                                   "same batched augmenters make the views. --method defaults to simsiam.")
    add_flags(p, PreviewOptions, aliases={"num_images": ["-n"]})
    add_run_flags(p, ("data", "method", "augment"))
    p.set_defaults(handler=preview_command)

    p = sub.add_parser("imagenet100", help="make ImageNet-100 (CMC's 100 classes) from ImageNet by links",
                       description="Link OUT/train/<wnid> and OUT/val/<wnid> to the ImageNet folder's class folders "
                                   "of the 100 classes of CMC (Tian et al. 2019) used by solo-learn; no image is "
                                   "copied. Then train with --dataset folder --data-dir OUT.")
    p.add_argument("--imagenet", required=True, type=Path,
                   help="the ImageNet-1k folder, with train/<wnid>/ and val/<wnid>/")
    p.add_argument("--out", required=True, type=Path, help="the folder to create the ImageNet-100 links in (new or "
                                                           "empty)")
    p.set_defaults(handler=imagenet100_command)


def imagenet100_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    counts = make_subset(args.imagenet.expanduser(), args.out.expanduser())
    log(f"ImageNet-100 in {args.out}: {counts['train']} class folders in train/ and {counts['val']} in val/, linked "
        f"to {args.imagenet}; train on it with --dataset folder --data-dir {args.out}")
    return 0


def export_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    given = given_flags(args, EXPORT_DATA)
    if "dataset" not in given:
        raise ConfigError("export-images needs --dataset NAME (`sslab datasets` lists them)")
    data, seed = from_dict(DataConfig, given, "the flags"), from_dict(TrainConfig, given_flags(args, ["seed"]), "")
    check(data)
    check(seed)
    if data.dataset == "folder":
        root = data.data_dir if data.data_dir is not None else default_root("folder")
        export_folder(root, args.out, data.image_size, data.test_fraction, seed.seed, progress=True, log=log)
        return 0
    images = load_dataset(data.dataset, data.data_dir, download=data.download, train_split=data.train_split,
                          image_size=data.image_size, test_fraction=data.test_fraction, seed=seed.seed)
    export_images(images, args.out, progress=True, log=log)
    return 0


def preview_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    opts = from_dict(PreviewOptions, given_flags(args, names_of(PreviewOptions)), "the flags")
    check(opts)
    for name in names_of(PreviewOptions):
        vars(args).pop(name, None)  # not run-spec settings
    vars(args).setdefault("method", "simsiam")
    vars(args).setdefault("config", None)
    cfg = spec_from_args(args)
    cfg.check()
    preview_augment(cfg, opts, log)
    return 0
