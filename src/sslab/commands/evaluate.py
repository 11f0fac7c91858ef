"""`sslab eval` and `sslab embed`: numbers and features of a trained run, written into its folder."""
from __future__ import annotations

import argparse
import contextlib
import signal
from pathlib import Path
from typing import Callable

from sslab.errors import ConfigError
from sslab.run import check_output_folder


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


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
    p.add_argument("--protocol", choices=["fast", "standard", "both"], default="both",
                   help="linear probe protocol: fast (features cached once, L-BFGS/SVM, C chosen on a validation "
                        "split of train), standard (SGD with crop + flip on the device), or both (default)")
    p.add_argument("--classifier", choices=["logistic", "svm"], default="logistic",
                   help="the fast probe's classifier: logistic regression or a linear SVM (LinearSVC) (default: logistic)")
    p.add_argument("--c-grid", type=_floats, default=None, metavar="C1,C2,...",
                   help="values of C tried on the validation split (default: 0.01..100 logistic, 0.001..0.1 svm)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of TRAIN held out to choose C (default: 0.1)")
    p.add_argument("--probe-epochs", type=int, default=100, help="epochs of the standard probe (default: 100)")
    p.add_argument("--probe-batch-size", type=int, default=256, help="batch of the standard probe (default: 256)")
    p.add_argument("--probe-lr", type=float, default=0.3, help="standard probe lr per 256 images (default: 0.3)")
    p.add_argument("--knn-k", type=int, default=None, help="kNN neighbours (default: the run's --knn-k)")
    p.add_argument("--knn-t", type=float, default=None, help="kNN temperature (default: the run's --knn-t)")
    p.add_argument("--semi", action="store_true", help="also fine-tune backbone + linear head on 1%% and 10%% of the labels")
    p.add_argument("--semi-fractions", type=_floats, default=(0.01, 0.1), metavar="F1,F2",
                   help="label fractions for --semi (default: 0.01,0.1)")
    p.add_argument("--semi-epochs", type=int, default=30, help="fine-tuning epochs for --semi (default: 30)")
    p.add_argument("--semi-lr", type=float, default=0.05, help="fine-tuning lr for --semi (default: 0.05)")
    p.add_argument("--semi-batch-size", type=int, default=64, help="fine-tuning batch for --semi (default: 64)")
    p.add_argument("--transfer-dataset", metavar="NAME", help="also evaluate the backbone on this dataset (kNN + probes)")
    p.add_argument("--transfer-data-dir", metavar="DIR", help="where the transfer dataset lives")
    p.add_argument("--transfer-download", action="store_true", help="download the transfer dataset if missing")
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
    from sslab.eval.evaluate import EvalOptions

    return EvalOptions(protocol=args.protocol, classifier=args.classifier, c_grid=args.c_grid,
                       val_fraction=args.val_fraction, probe_epochs=args.probe_epochs,
                       probe_batch_size=args.probe_batch_size, probe_lr=args.probe_lr, knn_k=args.knn_k, knn_t=args.knn_t,
                       semi=args.semi, semi_fractions=tuple(args.semi_fractions), semi_epochs=args.semi_epochs,
                       semi_lr=args.semi_lr, semi_batch_size=args.semi_batch_size,
                       transfer_dataset=args.transfer_dataset, transfer_data_dir=args.transfer_data_dir,
                       transfer_download=args.transfer_download, seed=args.seed)


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


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM ends `eval` like Ctrl-C (one line, exit 130) instead of killing it mid-write."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave the default
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def eval_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    from sslab.eval.evaluate import evaluate_run
    from sslab.pretrained import load_trained

    opts = eval_options(args)
    opts.check()  # before loading anything
    trained = load_trained(args.run, args.device)
    check_output_folder(trained.run_dir, "eval")
    if trained.device.type == "cpu" and opts.protocol in ("standard", "both") and opts.probe_epochs >= 50:
        log(f"note: the standard probe runs {opts.probe_epochs} epochs on the CPU; --protocol fast or "
            "--probe-epochs N is quicker")
    with sigterm_as_interrupt():  # results already in eval.json are kept; a rerun continues
        result = evaluate_run(trained, opts, log)
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
    """Fast probe, a 3-epoch standard probe and a short semi-supervised fine-tuning on the demo run."""
    from sslab.cli import build_parser

    args = build_parser().parse_args(["eval", str(run_dir), "--device", "cpu", "--probe-epochs", "3", "--semi",
                                      "--semi-epochs", "15"])
    eval_command(args, log)


def demo_embed(run_dir: Path, log: Callable[[str], None]) -> None:
    from sslab.cli import build_parser

    embed_command(build_parser().parse_args(["embed", str(run_dir), "--device", "cpu"]), log)
