"""`sslab scan RUN`: SCAN clustering (mine neighbours -> SCAN heads -> self-labelling) of a trained run."""
from __future__ import annotations

import argparse
import json



def add_commands(sub: argparse._SubParsersAction) -> None:
    from sslab.scan.config import STAGES

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
    add_scan_flags(p.add_argument_group("SCAN settings (defaults from docs/methods.md and ref. = the reference code's "
                                        "CIFAR-10 configs, wvangansbeke/Unsupervised-Classification)"))
    p.set_defaults(handler=scan_command)


def add_scan_flags(group) -> None:
    """One flag per ScanConfig field (`--entropy-weight 5`, `--freeze-backbone/--no-freeze-backbone`)."""
    from sslab.config import add_dataclass_flags
    from sslab.device import PRECISIONS
    from sslab.scan.config import AUGMENTS, HEAD_INPUTS, ScanConfig

    add_dataclass_flags(group, ScanConfig, {"head_input": HEAD_INPUTS, "cluster_augment": AUGMENTS,
                                            "selflabel_augment": AUGMENTS, "selflabel_target_view": AUGMENTS, "precision": PRECISIONS,
                                            "device": ("auto", "cpu", "cuda", "cuda:N")})


def scan_config_from_args(args: argparse.Namespace):
    """--config FILE, else RUN/scan/config.yaml of an earlier call (unless a full --restart), else the defaults;
    then the flags given."""
    from sslab.scan.config import FIELD_TYPES, ScanConfig
    from sslab.pretrained import run_folder
    from sslab.scan.pipeline import saved_config

    if getattr(args, "config", None):
        cfg = ScanConfig.load(args.config)
    else:
        # a full --restart starts from the defaults; otherwise continue with the settings of the last call
        cfg = (None if args.restart == "mine" else saved_config(run_folder(args.run))) or ScanConfig()
    cfg.update({k: v for k, v in vars(args).items() if k in FIELD_TYPES}, where="command line")
    return cfg


def scan_command(args: argparse.Namespace) -> int:
    from sslab.cli import print_error
    from sslab.kit import Interrupted
    from sslab.scan.pipeline import run_scan

    try:
        report = run_scan(args.run, scan_config_from_args(args), until=args.until, restart=args.restart)
    except Interrupted as e:
        print_error(f"sslab: {e}")
        return e.exit_code
    keys = ("kmeans", "scan", "selflabel", "neighbor_accuracy", "seconds")
    print(json.dumps({k: report.get(k) for k in keys}))
    return 0
