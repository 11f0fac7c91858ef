"""The zero-download demo: the whole path on Fashion-MNIST mini (10,000 + 2,000 images shipped inside the
package, MIT licence), on the CPU, in about two minutes.

Step one trains SimCLR on simple-cnn-bn and reports the kNN accuracy of the learned backbone beside its two
baselines on the same split and protocol: the same network before training (`knn_top1_init`) and the raw
pixels (`knn_top1_pixels`). The later steps (clustering, evaluation, features, analysis, attention, the views,
the images, the report) work on the run folder it made, each a library call `step(run_dir, log)`; DEMO_STEPS
lists them in order. Why this dataset, method and size, with the measurements: docs/methods.md, "The demo and
the bundled dataset".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sslab.analysis.analyze import analyze_run, format_tables
from sslab.analysis.attention import attention_run
from sslab.analysis.augment_preview import PreviewOptions, preview_augment
from sslab.analysis.embedding import describe_embed, embed_run
from sslab.analysis.export import export_images
from sslab.analysis.report import build_report
from sslab.config import Config, TrainConfig
from sslab.data import load_from_config
from sslab.eval.evaluate import EvalOptions, evaluate_run
from sslab.eval.table import format_results, written_line
from sslab.pretrain import fit
from sslab.pretrained import load_trained
from sslab.progress import Heartbeat, heartbeats
from sslab.resume import read_config
from sslab.scan.demo import demo_step as demo_scan

DEMO_SETTINGS: dict[str, Any] = {
    "dataset": "fashion-mnist-mini",
    "backbone": "simple-cnn-bn",  # without BatchNorm the short run gains less (docs/methods.md)
    "method": "simclr", "temperature": 0.1,
    "crop_scale": (0.3, 1.0),  # 28 px clothes: an 8% crop of a sneaker is a few grey pixels
    "epochs": 3, "batch_size": 64, "device": "cpu", "knn_k": 20,
    "progress_every": 5.0,  # piped to a file: a progress line every 5 s, never a long silence
}

Log = Callable[[str], None]
DEMO_HEARTBEAT = 5.0  # seconds of silence after which a long call says it is still running (sslab.progress)


def demo_config(out: str = TrainConfig.out, **settings: Any) -> Config:
    return Config.from_values({**DEMO_SETTINGS, "out": out, **settings}, where="the demo")


def run_demo(out: str = TrainConfig.out, log: Log = print, steps: list[Callable[[Path, Log], None]] | None = None,
             **settings: Any) -> dict[str, Any]:
    """Train, run the later steps on the run folder, and end with the summary lines (`closing_lines`). Long calls
    inside the steps (k-means, t-SNE) say they are still running every DEMO_HEARTBEAT seconds."""
    with heartbeats(DEMO_HEARTBEAT):
        with Heartbeat("demo: training"):
            summary = fit(demo_config(out, **settings), log=log)
        log(learning_verdict(summary))
        for step in DEMO_STEPS if steps is None else steps:
            with Heartbeat(f"demo: {step.__name__.removeprefix('demo_')}"):  # the innermost heartbeat speaks
                step(Path(summary["run_dir"]), log)
    for line in closing_lines(summary):
        log(line)
    return summary


def closing_lines(summary: dict[str, Any]) -> list[str]:
    """The demo's last lines, so that a reader who scrolls to the end sees the outcome: the learned kNN beside
    its baselines, and where the report and the run folder are."""
    run_dir = Path(summary["run_dir"])
    report = run_dir / "report.html"
    return ["", learning_verdict(summary),
            f"demo: report {report} (open it in a browser)" if report.exists() else f"demo: run folder {run_dir}"]


def learning_verdict(summary: dict[str, Any]) -> str:
    """One line: the learned kNN beside both baselines, and whether it beats them."""
    learned, init, pixels = summary["knn_top1"], summary["knn_top1_init"], summary["knn_top1_pixels"]
    beats = learned > init and learned > pixels
    return (f"demo: kNN top-1 {100 * learned:.1f}% after training, against {100 * init:.1f}% for the same network "
            f"untrained and {100 * pixels:.1f}% for the raw pixels: "
            f"{'the learned features beat both' if beats else 'NOT above both baselines'}; "
            f"run folder {summary['run_dir']}")


# ---- the steps after training, each on the demo's run folder ------------------------------------------------------
def demo_eval(run_dir: Path, log: Log) -> None:
    """`sslab eval RUN` as a user runs it next, on the CPU: kNN and the fast probe with their baselines (stored, so
    the user's own `sslab eval RUN` after the demo pays nothing for them), and the line on what the standard probe
    would cost (docs/evaluation.md)."""
    result = evaluate_run(load_trained(run_dir, "cpu"), EvalOptions(), log, device_flag="cpu")
    log(format_results(result))
    log(written_line(result))


def demo_embed(run_dir: Path, log: Log) -> None:
    log(describe_embed(embed_run(load_trained(run_dir, "cpu"), "test", 10000, 0)))


def demo_analyze(run_dir: Path, log: Log) -> None:
    trained = load_trained(run_dir, "cpu")
    result = analyze_run(trained, "test", max_points=1000, seed=0, map_size=1200, n_init=10, log=log)
    log(format_tables(result))


def demo_attention(run_dir: Path, log: Log) -> None:
    record = attention_run(load_trained(run_dir, "cpu"), num_images=6, log=log)
    log(f"attention maps of layer {record['layer']}: " + ", ".join(str(run_dir / f) for f in record["figures"]))


def demo_preview(run_dir: Path, log: Log) -> None:
    """The demo run's own views, as augment-preview.png in its folder (the report shows it)."""
    preview_augment(read_config(run_dir), PreviewOptions(out=str(run_dir / "augment-preview.png")), log)


def demo_export(run_dir: Path, log: Log) -> None:
    """The demo's dataset as PNG folders in RUN/exported-images/."""
    cfg = read_config(run_dir)
    out = run_dir / "exported-images"
    if not out.exists():
        export_images(load_from_config(cfg.data, cfg.train.seed), out, progress=False, log=log)


def demo_report(run_dir: Path, log: Log) -> None:
    path = build_report(run_dir)
    log(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, self-contained)")


DEMO_STEPS: list[Callable[[Path, Log], None]] = [demo_scan, demo_eval, demo_embed, demo_analyze, demo_attention,
                                                 demo_preview, demo_export, demo_report]
