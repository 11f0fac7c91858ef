"""`sslab train` and `sslab methods`."""
from __future__ import annotations

import argparse
import os
import sys

from sslab.config import Config, add_config_flags, config_from_args
from sslab.errors import ConfigError
from sslab.methods import METHODS
from sslab.run import RunDir, check_run_name, resume_config


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a self-supervised method; writes a run folder",
                       description="Train a method. Every config field is a flag; --config FILE.yaml sets many at once.")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    add_config_flags(p)
    p.set_defaults(handler=train_command)

    p = sub.add_parser("methods", help="list the methods and their default recipe")
    p.add_argument("--dataset", default="cifar10", help="show the recipe for this dataset (default: cifar10)")
    p.add_argument("--image-size", type=int, default=32)
    p.set_defaults(handler=methods_command)


def ask_method() -> str:
    """The original tool asked which method to train; we ask only on an interactive terminal."""
    names = METHODS.names()
    print("Which method? " + "  ".join(f"[{i + 1}] {n}" for i, n in enumerate(names)))
    while True:
        answer = input("method> ").strip().lower()
        if answer in names:
            choice = answer
        elif answer.isdigit() and 1 <= int(answer) <= len(names):
            choice = names[int(answer) - 1]
        else:
            print(f"type a number 1-{len(names)} or a name")
            continue
        print(f"(next time pass: --method {choice})")
        return choice


def train_command(args: argparse.Namespace) -> int:
    from sslab.cli import print_error
    from sslab.train import Interrupted, fit

    if args.resume:
        cfg = resume_flags(args)
    else:
        cfg = config_from_args(args)
        if cfg.train.name is not None:
            check_run_name(cfg.train.name)
        if cfg.method.method is None and sys.stdin.isatty() and sys.stdout.isatty():
            cfg.method.method = ask_method()
    try:
        summary = fit(cfg, resume=args.resume)
    except Interrupted as e:
        print_error(f"sslab: {e}")
        return e.exit_code
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(summary_table(summary))
    return 0


def resume_flags(args: argparse.Namespace) -> Config:
    """`--resume RUN` plus flags: the run's config.yaml with the flags given applied; flags that would make the
    run another one are refused with one line (docs/reliability.md)."""
    if getattr(args, "config", None):
        raise ConfigError("--config cannot be combined with --resume (the run goes on with its own config.yaml); "
                          "drop --config, or start a new run")
    saved = RunDir.existing(args.resume).config()
    base = Config.from_dict(saved.to_dict())
    base.train.time_limit = None  # a limit applies to the session that set it
    given = config_from_args(args, base=base)
    resume_config(saved, given)  # refused here, before anything loads; fit() announces what applies
    return given


def summary_table(summary: dict) -> str:
    """The end of `sslab train`: the learned kNN beside its two baselines, and how long it took."""
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    rows = [("kNN top-1, learned", pct(summary.get("knn_top1"))),
            ("kNN top-1, untrained network", pct(summary.get("knn_top1_init"))),
            ("kNN top-1, raw pixels", pct(summary.get("knn_top1_pixels"))),
            ("epochs", str(summary.get("epochs"))),
            ("median epoch", "-" if summary.get("epoch_seconds_median") is None
             else f"{summary['epoch_seconds_median']:.1f} s"),
            ("time this session", f"{summary.get('wall_seconds_this_session', 0):.0f} s"),
            ("run folder", str(summary.get("run_dir")))]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def methods_command(args: argparse.Namespace) -> int:
    for name in METHODS.names():
        cls = METHODS.get(name)
        recipe = cls.recipe(args.dataset, args.image_size)
        flat = ", ".join(f"{k}={v}" for section in recipe.values() for k, v in section.items())
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name:9s} {doc}\n          {flat}")
    return 0

