"""`sslab eval` and `sslab embed`: numbers and features of a trained run, written into its folder."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from sslab.analysis.embedding import describe_embed, embed_run
from sslab.config import device_setting
from sslab.errors import ConfigError
from sslab.eval.evaluate import EvalOptions, evaluate_run
from sslab.eval.table import format_results, written_line
from sslab.pretrained import load_trained
from sslab.run import check_output_folder
from sslab.settings import add_flags, check, from_dict, given_flags, names_of, setting


@dataclass
class OnRun:
    """Where a command on a trained run computes, and its seed."""

    device: str = device_setting()
    seed: int = setting(0, "seed of every random choice", ge=0, lt=2**32)


def add_run_arguments(p: argparse.ArgumentParser, seed: bool = True) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder (or a checkpoint file inside one)")
    add_flags(p, OnRun, names=["device", "seed"] if seed else ["device"])


def on_run(args: argparse.Namespace) -> OnRun:
    """--device and --seed, checked."""
    opts = from_dict(OnRun, given_flags(args, names_of(OnRun)), "the flags")
    check(opts)
    return opts


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="kNN, linear probes (fast/standard), SVM, semi-supervised and transfer "
                                    "evaluation; writes RUN/eval.json",
                       description="Evaluate a trained backbone with the protocols of docs/methods.md; writes "
                                   "RUN/eval.json, RUN/eval/*.png (confusion matrices, per-class accuracy) and "
                                   "RUN/probe.pt (the trained probes, used by `sslab attention` for Grad-CAM).")
    add_run_arguments(p, seed=False)  # EvalOptions has its own --seed
    add_flags(p.add_argument_group("evaluation options"), EvalOptions)
    p.set_defaults(handler=eval_command)

    p = sub.add_parser("embed", help="backbone features to RUN/embeddings.npz and TensorBoard's embedding projector",
                       description="Write the features, labels and image indices of a split to RUN/embeddings.npz and "
                                   "a TensorBoard projector (with image sprites) to RUN/projector/ "
                                   "(view with: tensorboard --logdir RUN/projector).")
    add_run_arguments(p)
    p.add_argument("--split", choices=["test", "train", "all"], default="test", help="which images (default: test)")
    p.add_argument("--max-points", type=int, default=10000,
                   help="at most this many points in the projector, a seeded subset (default: 10000); the npz has all")
    p.set_defaults(handler=embed_command)


def eval_options(args: argparse.Namespace) -> EvalOptions:
    """The evaluation options given as flags, checked (before anything is loaded)."""
    opts = from_dict(EvalOptions, given_flags(args, names_of(EvalOptions)), "the flags")
    opts.check()
    return opts


def eval_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    opts = eval_options(args)
    trained = load_trained(args.run, on_run(args).device)
    check_output_folder(trained.run_dir, "eval")
    # a stop (signal, --time-limit) raises Interrupted, which the CLI prints with the command that continues
    result = evaluate_run(trained, opts, log, device_flag=getattr(args, "device", None))
    log(format_results(result))
    log(written_line(result))
    return 0


def embed_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    if args.max_points < 1:
        raise ConfigError("--max-points must be >= 1")
    trained = load_trained(args.run, on_run(args).device)
    check_output_folder(trained.run_dir, "projector")
    log(describe_embed(embed_run(trained, args.split, args.max_points, on_run(args).seed)))
    return 0
