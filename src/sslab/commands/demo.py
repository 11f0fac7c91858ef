"""`sslab demo`: the whole path on the bundled Fashion-MNIST mini, no download."""
from __future__ import annotations

import argparse

from sslab.demo import run_demo


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, evaluate and report on the bundled Fashion-MNIST mini (CPU, no download, "
                       "~2 minutes; docs/methods.md says why these settings)")
    p.add_argument("--out", default="runs", help="where the run folder is created (default: runs)")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    p.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    run_demo(args.out, **({"epochs": args.epochs} if args.epochs else {}))
    return 0
