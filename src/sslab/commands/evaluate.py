"""`sslab eval` and `sslab embed`: numbers and features of a trained run, written into its folder."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from sslab.errors import ConfigError
from sslab.run import check_output_folder


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder (or a checkpoint file inside one)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="kNN, linear probes (fast/standard), SVM, semi-supervised and transfer "
                                    "evaluation; writes RUN/eval.json",
                       description="Evaluate a trained backbone with the protocols of docs/methods.md; writes "
                                   "RUN/eval.json, RUN/eval/*.png (confusion matrices, per-class accuracy) and "
                                   "RUN/probe.pt (the trained probes, used by `sslab attention` for Grad-CAM).")
    add_run_arguments(p)
    from sslab.config import add_dataclass_flags, config_choices
    from sslab.eval.evaluate import CLASSIFIERS, PROTOCOLS, EvalOptions

    choices = {"protocol": PROTOCOLS, "classifier": CLASSIFIERS, "transfer_dataset": config_choices()["dataset"]}
    add_dataclass_flags(p.add_argument_group("evaluation options"), EvalOptions, choices, skip={"seed"})
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


def eval_options(args: argparse.Namespace):
    from sslab.config import dataclass_from_args
    from sslab.eval.evaluate import EvalOptions

    return dataclass_from_args(EvalOptions, args)


def format_results(result: dict) -> str:
    """The results table with the raw-pixel and untrained-network baselines beside each figure, the notes, and
    one sentence naming every figure below a baseline."""
    from sslab.eval.baselines import below_baseline_sentence

    def pct(v) -> str:
        return f"{100 * v:.2f}%" if v is not None else "-"

    lines = [f"{'name':<24s} {'classifier':<10s} {'dataset':<14s} {'accuracy':>9s} {'pixels':>9s} {'untrained':>9s}   sizes"]
    for r in result["results"]:
        sizes = " ".join(f"{k}={v}" for k, v in r["sizes"].items())
        b = r.get("baselines") or {}
        lines.append(f"{r['name']:<24s} {r['classifier']:<10s} {r['dataset']:<14s} {pct(r['accuracy']):>9s} "
                     f"{pct(b.get('pixels')):>9s} {pct(b.get('untrained')):>9s}   {sizes}")
    lines += [f"note, {r['name']}: {r['note']}" for r in result["results"] if r.get("note")]
    sentence = below_baseline_sentence(result["results"])
    return "\n".join(lines + ([sentence] if sentence else []))


def eval_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    from sslab.cli import print_error
    from sslab.eval.evaluate import evaluate_run
    from sslab.kit import Interrupted
    from sslab.pretrained import load_trained

    opts = eval_options(args)
    opts.check()  # before loading anything
    trained = load_trained(args.run, args.device)
    check_output_folder(trained.run_dir, "eval")
    try:
        result = evaluate_run(trained, opts, log, device_flag=args.device)
    except Interrupted as e:  # SIGINT, SIGTERM or --time-limit: what is kept and the command that continues
        print_error(f"sslab: {e}")
        return e.exit_code
    log(format_results(result))
    log(f"wrote {Path(result['run_dir']) / 'eval.json'}, {len(result['figures'])} figures in "
        f"{Path(result['run_dir']) / 'eval'}, probes in {Path(result['run_dir']) / 'probe.pt'}")
    return 0


def embed_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    from sslab.analysis.embedding import EMBEDDINGS_FILE, PROJECTOR_DIR, compute_embeddings, save_embeddings, write_projector
    from sslab.pretrained import load_trained

    if args.max_points < 1:
        raise ConfigError("--max-points must be >= 1")
    trained = load_trained(args.run, args.device)
    check_output_folder(trained.run_dir, "projector")
    info = trained.data_info
    data = trained.load_data().to(trained.device)
    emb = compute_embeddings(trained.backbone, data, args.split, info["mean"], info["std"])
    path = trained.run_dir / EMBEDDINGS_FILE
    save_embeddings(path, emb.arrays())
    projector = write_projector(trained.run_dir / PROJECTOR_DIR, emb, list(data.classes), args.max_points, args.seed)
    log(f"wrote {len(emb.labels)} x {emb.features.shape[1]} features to {path}; projector with "
        f"{projector['points']} points in {projector['dir']} (tensorboard --logdir {projector['dir']})")
    return 0


# ---- demo steps (sslab.demo.DEMO_STEPS) ---------------------------------------------------------------------------
def demo_eval(run_dir: Path, log: Callable[[str], None]) -> None:
    """`sslab eval RUN` as a user runs it next, on the CPU: kNN and the fast probe with their baselines (stored,
    so the user's own `sslab eval RUN` after the demo pays nothing for them), and the line on what the standard
    probe would cost."""
    from sslab.cli import build_parser

    args = build_parser().parse_args(["eval", str(run_dir), "--device", "cpu"])
    eval_command(args, log)


def demo_embed(run_dir: Path, log: Callable[[str], None]) -> None:
    from sslab.cli import build_parser

    embed_command(build_parser().parse_args(["embed", str(run_dir), "--device", "cpu"]), log)
