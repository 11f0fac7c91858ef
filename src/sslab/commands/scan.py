"""`sslab scan RUN`: SCAN clustering (mine neighbours -> SCAN heads -> self-labelling) of a trained run."""
from __future__ import annotations

import argparse
import json

from sslab.pretrained import run_folder
from sslab.scan.config import FIELD_TYPES, STAGES, ScanConfig
from sslab.scan.pipeline import run_scan, saved_config
from sslab.settings import add_flags


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="cluster a trained run's images without labels (SCAN); writes RUN/scan/",
                       description="SCAN (Van Gansbeke et al. 2020) on a run folder: mine nearest neighbours in the "
                       "pretext feature space, train clustering heads with the SCAN loss, then self-label. Each stage "
                       "is resumable: rerunning continues where it stopped (with RUN/scan/config.yaml, overridden by "
                       "the flags given). Results: RUN/scan/scan.json, clusters.npz, confident_images.png, confusion.png.")
    p.add_argument("run", metavar="RUN", help="a run folder made by `sslab train` or `sslab demo` (or a checkpoint in one)")
    p.add_argument("--config", help="YAML file of scan settings (a mapping of the fields below, or under `scan:`)")
    p.add_argument("--until", choices=STAGES, default="selflabel", help="stop after this stage (default: selflabel)")
    p.add_argument("--restart", nargs="?", const="mine", choices=STAGES, default=None,
                   help="redo this stage and those after it (no value: everything, from the default settings)")
    add_flags(p.add_argument_group("SCAN settings (defaults from docs/methods.md and ref. = the reference code's "
                                   "CIFAR-10 configs, wvangansbeke/Unsupervised-Classification)"), ScanConfig)
    p.set_defaults(handler=scan_command)


def scan_config_from_args(args: argparse.Namespace):
    """--config FILE, else RUN/scan/config.yaml of an earlier call (unless a full --restart), else the defaults;
    then the flags given."""
    if getattr(args, "config", None):
        cfg = ScanConfig.load(args.config)
    else:
        # a full --restart starts from the defaults; otherwise continue with the settings of the last call
        cfg = (None if args.restart == "mine" else saved_config(run_folder(args.run))) or ScanConfig()
    cfg.update({k: v for k, v in vars(args).items() if k in FIELD_TYPES}, where="command line")
    return cfg


def scan_command(args: argparse.Namespace) -> int:
    report = run_scan(args.run, scan_config_from_args(args), until=args.until, restart=args.restart)
    keys = ("kmeans", "scan", "selflabel", "neighbor_accuracy", "seconds")
    print(json.dumps({k: report.get(k) for k in keys}))
    return 0
