"""`sslab export-images` and `sslab preview-augment`: look at a dataset, before or without training."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from sslab.config import add_config_flags, config_from_args
from sslab.errors import ConfigError

PREVIEW_SECTIONS = ("data", "augment", "method")  # the config flags preview-augment takes


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-images", help="write every image of a dataset as PNG: OUT/split/class/NNNNN.png",
                       description="Export a dataset of the registry as PNG files in OUT/<split>/<class>/NNNNN.png "
                                   "(NNNNN = index in the split); an image folder keeps its file names, sub-folders "
                                   "and image sizes (OUT/<split>/<class>/<name>.png). `--dataset folder --data-dir "
                                   "OUT` reads them back.")
    p.add_argument("--dataset", required=True, help="a dataset name (cifar10, stl10, digits, folder, npz, ...)")
    p.add_argument("--data-dir", help="where the dataset lives (default: $SSLAB_DATA/<name> or ~/.cache/sslab/data/<name>)")
    p.add_argument("--out", required=True, help="an empty or new folder to write to")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--train-split", default="train", help="stl10: train, unlabeled or train+unlabeled (default: train)")
    p.add_argument("--image-size", type=int, default=None, help="resize every image to this square size first")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="datasets without a test split: the share held out as test/, as training holds it out "
                        "(default: 0.2; 0 writes everything to train/)")
    p.add_argument("--seed", type=int, default=0, help="seed of that held-out split (default: 0, as training)")
    p.set_defaults(handler=export_command)

    p = sub.add_parser("preview-augment", help="a grid of a method's augmented views of some images (PNG)",
                       description="Show the views a method would train on: the config is resolved as `sslab train` "
                                   "does (method recipe, augmentation preset, flags), and the same batched augmenter "
                                   "makes the views.")
    p.add_argument("--out", default="augment-preview.png", help="PNG file to write (default: augment-preview.png)")
    p.add_argument("--num-images", "-n", type=int, default=8, help="how many images (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images and views (default: 0)")
    add_config_flags(p, PREVIEW_SECTIONS)  # not train's flags: --out is this command's own
    p.set_defaults(handler=preview_command)


def export_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    from sslab.analysis.export import export_folder, export_images
    from sslab.data import default_root, load_dataset

    if args.dataset == "folder":
        root = args.data_dir if args.data_dir is not None else default_root("folder")
        export_folder(root, args.out, args.image_size, args.test_fraction, args.seed, progress=True, log=log)
        return 0
    data = load_dataset(args.dataset, args.data_dir, download=args.download, train_split=args.train_split,
                        image_size=args.image_size, test_fraction=args.test_fraction, seed=args.seed)
    export_images(data, args.out, progress=True, log=log)
    return 0


def preview_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    from sslab.analysis.augment_preview import preview_augment

    if args.num_images < 1:
        raise ConfigError("--num-images must be >= 1")
    cfg = config_from_args(args)
    if cfg.method.method is None:
        cfg.method.method = "simsiam"
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out} must end in .png")
    preview_augment(cfg, out, args.num_images, args.seed, log)
    return 0


# ---- demo steps (sslab.demo.DEMO_STEPS) ---------------------------------------------------------------------------
def demo_preview(run_dir: Path, log: Callable[[str], None]) -> None:
    """The demo run's own views, as augment-preview.png in its folder (the report shows it)."""
    from sslab.analysis.augment_preview import preview_augment
    from sslab.run import RunDir

    preview_augment(RunDir(run_dir).config(), run_dir / "augment-preview.png", 8, 0, log)


def demo_export(run_dir: Path, log: Callable[[str], None]) -> None:
    """The demo's dataset as PNG folders in RUN/exported-images/."""
    from sslab.analysis.export import export_images
    from sslab.data import load_from_config
    from sslab.run import RunDir

    cfg = RunDir(run_dir).config()
    out = run_dir / "exported-images"
    if out.exists():
        return
    export_images(load_from_config(cfg.data, cfg.train.seed), out, progress=False, log=log)
