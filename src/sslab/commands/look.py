"""`sslab analyze`, `sslab attention`, `sslab report`: figures of a trained run, written into its folder."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from sslab.analysis.analyze import analyze_run, format_tables
from sslab.analysis.attention import attention_run
from sslab.analysis.report import build_report
from sslab.commands.evaluate import add_run_arguments, on_run
from sslab.pretrained import load_trained
from sslab.run import check_output_folder


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="PCA, t-SNE, image maps and k-means of the features; writes RUN/analysis.json",
                       description="PCA (cumulative and per-component contribution, 2-D scatter), t-SNE scatter and "
                                   "image maps, k-means with k = number of classes (ACC/NMI/ARI, images nearest each "
                                   "centre). Figures in RUN/analysis/, numbers in RUN/analysis.json, cluster "
                                   "assignments in RUN/embeddings.npz.")
    add_run_arguments(p)
    p.add_argument("--split", choices=["test", "train", "all"], default="test", help="which images (default: test)")
    p.add_argument("--max-points", type=int, default=5000,
                   help="t-SNE and image maps on at most this many images, a seeded subset (default: 5000)")
    p.add_argument("--n-init", type=int, default=10, help="k-means restarts (default: 10)")
    p.add_argument("--map-size", type=int, default=1600, help="side of the image maps in pixels (default: 1600)")
    p.set_defaults(handler=analyze_command)

    p = sub.add_parser("attention", help="activation maps and Grad-CAM of test images; PNGs in RUN/attention/",
                       description="For N test images: the channel-mean activation map of a stage (upsampled) and the "
                                   "image weighted by it, and Grad-CAM for a class score of the run's linear probe "
                                   "(RUN/probe.pt, written by `sslab eval`; skipped when there is none). For a ViT: "
                                   "the CLS token's self-attention per head, beside the untrained network's.")
    add_run_arguments(p)
    p.add_argument("--layer", default=None,
                   help="stage to look at, e.g. layer3 (default: the last stage with a map of at least 4x4); "
                        "for a ViT, blockN (default: the last block)")
    p.add_argument("--num-images", "-n", type=int, default=8, help="how many images (default: 8)")
    p.add_argument("--target", default="predicted",
                   help="Grad-CAM class: predicted, true, a class name or index (default: predicted)")
    p.add_argument("--probe", default="auto",
                   help="which probe of RUN/probe.pt: auto (standard, else fast), linear-standard, linear-fast")
    p.add_argument("--split", choices=["test", "train"], default="test", help="where the images come from (default: test)")
    p.set_defaults(handler=attention_command)

    p = sub.add_parser("report", help="one self-contained HTML page of the run: RUN/report.html",
                       description="Config, learning curves, summary, evaluation, analysis, attention and SCAN "
                                   "figures in one HTML file with every image embedded (no external resources).")
    p.add_argument("run", metavar="RUN", help="a run folder")
    p.set_defaults(handler=report_command)


def analyze_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    run = on_run(args)
    trained = load_trained(args.run, run.device)
    check_output_folder(trained.run_dir, "analysis")
    result = analyze_run(trained, args.split, args.max_points, run.seed, args.map_size, args.n_init, log)
    log(format_tables(result))
    log(f"wrote {trained.run_dir / 'analysis.json'} and {len(result['figures'])} figures in "
        f"{trained.run_dir / 'analysis'}")
    return 0


def attention_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    run = on_run(args)
    trained = load_trained(args.run, run.device)
    check_output_folder(trained.run_dir, "attention")
    record = attention_run(trained, args.num_images, args.layer, args.target, args.probe, args.split, run.seed, log)
    log(f"attention maps of layer {record['layer']}: " + ", ".join(str(trained.run_dir / f) for f in record["figures"]))
    return 0


def report_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    if (Path(args.run) / "config.yaml").is_file():  # else build_report says it is not a run folder
        check_output_folder(args.run)
    path = build_report(args.run)
    log(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, self-contained)")
    return 0
