"""`sslab compare RUN RUN ...`: several runs side by side, the researcher's view.

Reads each run folder (config.yaml, metrics.jsonl, summary.json, and eval.json / analysis.json when `sslab eval` /
`sslab analyze` were run) and writes into a folder of its own, never into a run:

    OUT/compare.json    the table's rows, the data groups and every flag, as numbers
    OUT/compare.md      the table in Markdown (for notes and docs)
    OUT/knn.png         kNN top-1 against epochs and against training time, the runs overlaid
    OUT/loss.png        the loss against epochs and against training time, one row of panels per method
    OUT/compare.html    one self-contained page (every figure inline), like `sslab report`

Runs are grouped by the data they were trained and measured on (dataset, folder, split, image size, limits, and
the raw-pixel kNN of the epoch-0 record, which differs when the train/test split does): a number is only
comparable within its group, so every group has its own panels and its own raw-pixel row, and more than one
group is flagged in the output, never silently mixed. Different losses are never drawn on one axis: the loss
figure has one row per method. Training time is the sum of the epochs' `epoch_seconds` (the kNN monitor excluded).
"""
from __future__ import annotations

import html
import json
import statistics
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sslab.analysis.report import CSS, figures, table
from sslab.checkpoint import atomic_write_bytes
from sslab.config import Config
from sslab.errors import ConfigError
from sslab.plots import DATASET_NAMES, METHOD_NAMES, integer_epoch_axis, new_figure, save_figure
from sslab.run import RunDir, check_out_dir

COMPARE_FILES = ("compare.json", "compare.md", "knn.png", "loss.png", "compare.html")
LINEAR_PROBES = ("linear-standard", "linear-fast")  # the probe a row shows: the standard one when there is one


@dataclass
class RunFacts:
    """What one run folder says, as the comparison needs it."""

    path: Path
    name: str
    method: str
    backbone: str
    dataset: str
    data_key: tuple  # equal for runs on the same data and split
    epochs_done: int
    epochs_planned: int | None
    curve: list[dict[str, float]]  # per epoch: epoch, seconds (cumulative training time), knn, loss
    train_seconds: float
    images_per_second: float | None
    knn: dict[str, float | None] = field(default_factory=dict)  # learned, untrained, pixels
    linear: dict[str, Any] = field(default_factory=dict)  # probe, learned, untrained, pixels
    kmeans: dict[str, float | None] = field(default_factory=dict)  # learned, untrained, pixels (ACC)
    sizes: dict[str, int] | None = None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def data_key(cfg, pixels_knn: float | None) -> tuple:
    """What must match for two runs' numbers to be comparable: the data's identity and the split."""
    d = cfg.data
    return (d.dataset, d.data_dir, d.train_split, d.image_size, d.test_fraction, d.limit_train, d.limit_test,
            None if pixels_knn is None else round(pixels_knn, 6))


def training_curve(records: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Epoch 0 (the untrained network's kNN, at 0 s) and every trained epoch, with cumulative training seconds."""
    points, seconds = [], 0.0
    for r in sorted(records, key=lambda r: r["epoch"]):
        seconds += _number(r.get("epoch_seconds")) or 0.0
        point = {"epoch": float(r["epoch"]), "seconds": seconds}
        for key, out in (("knn_top1", "knn"), ("loss", "loss")):
            if _number(r.get(key)) is not None:
                point[out] = float(r[key])
        points.append(point)
    return points


def _evaluations(path: Path) -> tuple[dict[str, Any], dict[str, float | None], dict[str, int] | None]:
    """(linear probe, k-means ACC, split sizes) from eval.json and analysis.json; empty when not run yet."""
    linear: dict[str, Any] = {}
    evaluation = _json(path / "eval.json") or {}
    results = {r.get("name"): r for r in evaluation.get("results", []) if isinstance(r, dict)}
    probe = next((name for name in LINEAR_PROBES if name in results), None)
    if probe is not None:
        base = results[probe].get("baselines") or {}
        linear = {"probe": probe, "learned": _number(results[probe].get("accuracy")),
                  "untrained": _number(base.get("untrained")), "pixels": _number(base.get("pixels"))}
    kmeans: dict[str, float | None] = {}
    km = (_json(path / "analysis.json") or {}).get("kmeans")
    if isinstance(km, dict):
        base = km.get("baselines") or {}
        kmeans = {"learned": _number(km.get("acc")), "split": (_json(path / "analysis.json") or {}).get("split"),
                  **{k: _number((base.get(k) or {}).get("acc")) for k in ("untrained", "pixels")}}
    sizes = evaluation.get("sizes") if isinstance(evaluation.get("sizes"), dict) else None
    return linear, kmeans, sizes


def read_run(path: str | Path) -> RunFacts:
    """One run folder's facts; a folder that is not a run is one line (RunFolderError / CheckpointError)."""
    run = RunDir.existing(path)
    cfg = Config.load(run.path / "config.yaml")
    records = [r for r in run.read_metrics() if isinstance(r, dict)]
    first = next((r for r in records if r.get("epoch") == 0), {})
    summary = _json(run.summary_path) or {}
    pixels = _number(first.get("knn_top1_pixels", summary.get("knn_top1_pixels")))
    trained = [r for r in records if r["epoch"] >= 1]
    curve = training_curve(records)
    speeds = [float(r["images_per_second"]) for r in trained if _number(r.get("images_per_second"))]
    linear, kmeans, sizes = _evaluations(run.path)
    last_knn = next((p["knn"] for p in reversed(curve) if p["epoch"] >= 1 and "knn" in p), None)
    return RunFacts(
        path=run.path, name=run.path.resolve().name, method=str(cfg.method.method), backbone=str(cfg.model.backbone),
        dataset=str(cfg.data.dataset), data_key=data_key(cfg, pixels),
        epochs_done=max((int(r["epoch"]) for r in trained), default=0), epochs_planned=cfg.method.epochs,
        curve=curve, train_seconds=curve[-1]["seconds"] if curve else 0.0,
        images_per_second=statistics.median(speeds) if speeds else None,
        knn={"learned": last_knn, "untrained": _number(first.get("knn_top1_init", summary.get("knn_top1_init"))),
             "pixels": pixels},
        linear=linear, kmeans=kmeans, sizes=sizes)


# ---- grouping and the table ------------------------------------------------------------------------------------------
def group_by_data(runs: Sequence[RunFacts]) -> dict[str, list[RunFacts]]:
    """Runs on the same data and split share a letter (A, B, ...), in the order they were given."""
    letters: dict[tuple, str] = {}
    groups: dict[str, list[RunFacts]] = {}
    for run in runs:
        letter = letters.setdefault(run.data_key, string.ascii_uppercase[len(letters) % 26])
        groups.setdefault(letter, []).append(run)
    return groups


def describe_data(run: RunFacts) -> str:
    dataset, data_dir, train_split, image_size, test_fraction, limit_train, limit_test, _ = run.data_key
    parts = [DATASET_NAMES.get(dataset, dataset)]
    if data_dir and dataset in ("folder", "npz"):
        parts.append(Path(data_dir).name)
    if train_split not in (None, "train"):
        parts.append(f"train split {train_split}")
    if image_size:
        parts.append(f"{image_size} px")
    if limit_train or limit_test:
        parts.append(f"limited to {limit_train or 'all'} train / {limit_test or 'all'} test")
    if run.sizes:
        parts.append(f"{run.sizes.get('train')} train / {run.sizes.get('test')} test images")
    return ", ".join(parts)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


TABLE_HEADER = ["run", "method", "backbone", "data", "epochs", "train time", "images/s", "kNN", "kNN untrained",
                "linear", "linear untrained", "k-means ACC", "k-means untrained"]


def table_rows(groups: dict[str, list[RunFacts]]) -> list[list[str]]:
    """One row per run and, per data group, one row of the raw pixels (%, with one decimal)."""
    rows = []
    for letter, runs in groups.items():
        for r in runs:
            epochs = f"{r.epochs_done}" if r.epochs_planned in (None, r.epochs_done) else f"{r.epochs_done}/{r.epochs_planned}"
            rows.append([r.name, r.method, r.backbone, letter, epochs, f"{r.train_seconds / 60:.1f} min",
                         "–" if r.images_per_second is None else f"{r.images_per_second:,.0f}",
                         _pct(r.knn.get("learned")), _pct(r.knn.get("untrained")),
                         _pct(r.linear.get("learned")) + (" (fast)" if r.linear.get("probe") == "linear-fast" else ""),
                         _pct(r.linear.get("untrained")), _pct(r.kmeans.get("learned")), _pct(r.kmeans.get("untrained"))])
        first = runs[0]
        rows.append(["raw pixels", "–", "–", letter, "–", "–", "–", _pct(first.knn.get("pixels")), "",
                     _pct(next((r.linear.get("pixels") for r in runs if r.linear.get("pixels") is not None), None)), "",
                     _pct(next((r.kmeans.get("pixels") for r in runs if r.kmeans.get("pixels") is not None), None)), ""])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def flags(groups: dict[str, list[RunFacts]]) -> list[str]:
    """Sentences about what must not be read across: more than one data group; a run missing an evaluation."""
    out = []
    if len(groups) > 1:
        out.append(f"These runs are on {len(groups)} different data sets or splits (" + "; ".join(
            f"{letter}: {describe_data(runs[0])}" for letter, runs in groups.items()) +
            "); compare numbers only within a group: each has its own panels and raw-pixel row.")
    runs = [r for g in groups.values() for r in g]
    for what, has, command in (("linear probe", lambda r: r.linear, "sslab eval"),
                               ("k-means", lambda r: r.kmeans, "sslab analyze")):
        missing = [r.name for r in runs if not has(r)]
        if missing:
            out.append(f"No {what} for {', '.join(missing)}: run `{command} RUN` on it to fill the column.")
    unfinished = [f"{r.name} ({r.epochs_done} of {r.epochs_planned} epochs)" for r in runs
                  if r.epochs_planned is not None and r.epochs_done < r.epochs_planned]
    if unfinished:
        out.append(f"Not finished: {', '.join(unfinished)}.")
    return out


# ---- figures ----------------------------------------------------------------------------------------------------------
def _colours(runs: Sequence[RunFacts]) -> dict[str, Any]:
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    return {str(r.path): cycle[i % len(cycle)] for i, r in enumerate(runs)}


def _axes_labels(ax, x: str, y: str) -> None:
    if x == "epoch":
        integer_epoch_axis(ax)
    else:
        ax.set_xlabel("training time (s, kNN monitor excluded)")
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)


def plot_knn(groups: dict[str, list[RunFacts]], colours: dict[str, Any], path: Path) -> None:
    """One row of panels per data group: kNN top-1 (%) against epochs and against training time, epoch 0 being the
    untrained network; the raw pixels as a dotted line."""
    fig, _ = new_figure(11, 3.6 * len(groups) + 0.6)
    fig.clf()
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for row, (letter, runs) in enumerate(groups.items()):
        for col, x in enumerate(("epoch", "seconds")):
            ax = axes[row, col]
            for r in runs:
                pts = [(p[x], 100 * p["knn"]) for p in r.curve if "knn" in p]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, color=colours[str(r.path)], label=r.name)
            pixels = runs[0].knn.get("pixels")
            if pixels is not None:
                ax.axhline(100 * pixels, color="tab:red", ls=":", lw=1.2, label="raw pixels")
            _axes_labels(ax, x, "kNN top-1 (%)")
            ax.set_title(f"data {letter}: {describe_data(runs[0])}", fontsize=9)
        axes[row, 1].legend(fontsize=7, loc="best")
    fig.suptitle("kNN monitor (epoch 0: the untrained network)", fontsize=10)
    save_figure(fig, path)


def plot_loss(groups: dict[str, list[RunFacts]], colours: dict[str, Any], path: Path) -> None:
    """One row per (data group, method): losses of different methods have different scales and meanings."""
    rows = [(letter, method, [r for r in runs if r.method == method])
            for letter, runs in groups.items() for method in dict.fromkeys(r.method for r in runs)]
    fig, _ = new_figure(11, 3.2 * len(rows) + 0.6)
    fig.clf()
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for row, (letter, method, runs) in enumerate(rows):
        for col, x in enumerate(("epoch", "seconds")):
            ax = axes[row, col]
            for r in runs:
                pts = [(p[x], p["loss"]) for p in r.curve if "loss" in p]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, color=colours[str(r.path)], label=r.name)
            _axes_labels(ax, x, "loss")
            ax.set_title(f"{METHOD_NAMES.get(method, method)} loss, data {letter}", fontsize=9)
        axes[row, 1].legend(fontsize=7, loc="best")
    fig.suptitle("training loss (one row per method: their scales differ)", fontsize=10)
    save_figure(fig, path)


# ---- the page and the command ------------------------------------------------------------------------------------------
def html_page(groups: dict[str, list[RunFacts]], rows: list[list[str]], notes: list[str], out: Path) -> str:
    """compare.html: the flags, the table, the data groups, the figures inline, the runs' folders."""
    esc = html.escape
    runs = [r for g in groups.values() for r in g]
    title = f"sslab compare: {len(runs)} runs"
    body = "".join(f'<p class="missing">{esc(n)}</p>' for n in notes)
    body += "<h2>Table</h2>" + table(TABLE_HEADER, rows, numeric=set(range(4, len(TABLE_HEADER))))
    body += ("<p>Accuracies in %, on each run's test split: kNN (k-NN monitor of the last epoch), linear probe "
             "(standard protocol, or fast where marked), k-means ACC (Hungarian matching); \"untrained\": the same "
             "network at its initial weights; \"raw pixels\": the same protocol on the pixels.</p>")
    body += "<h2>Data</h2><ul>" + "".join(f"<li>{esc(letter)}: {esc(describe_data(g[0]))}</li>"
                                          for letter, g in groups.items()) + "</ul>"
    body += "<h2>Curves</h2>" + figures([out / "knn.png", out / "loss.png"], out)
    body += "<h2>Runs</h2><ul>" + "".join(f"<li>{esc(r.name)}: <code>{esc(str(r.path.resolve()))}</code></li>"
                                          for r in runs) + "</ul>"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{CSS}</style></head><body>'
            f'<h1>{esc(title)}</h1><p class="sub">written {esc(time.strftime("%Y-%m-%d %H:%M"))}</p>{body}'
            "</body></html>\n")


def output_folder(out: str | Path | None, runs: Sequence[RunFacts]) -> Path:
    """--out, or runs/compare-<timestamp>; never a compared run's folder or a folder inside one, and never a
    folder holding other things than an earlier comparison."""
    path = Path(out) if out is not None else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    resolved = path.expanduser().resolve()
    for r in runs:
        run_path = r.path.resolve()
        if resolved == run_path or run_path in resolved.parents:
            raise ConfigError(f"--out {path} is inside the compared run {r.path}; `sslab compare` never writes into "
                              "a run: pass another --out")
    if resolved.is_dir() and any(resolved.iterdir()) and not (resolved / "compare.json").is_file():
        raise ConfigError(f"--out {path} exists and holds other files; pass a new folder (or an earlier comparison's)")
    return path


def compare_runs(paths: Sequence[str | Path], out: str | Path | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Read the runs, write OUT/compare.json, compare.md, knn.png, loss.png and compare.html; returns the record."""
    if len(paths) < 2:
        raise ConfigError("sslab compare needs at least two run folders")
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise ConfigError("a run folder is given twice; pass each run once")
    runs = [read_run(p) for p in paths]
    folder = output_folder(out, runs)
    check_out_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups = group_by_data(runs)
    rows, notes, colours = table_rows(groups), flags(groups), _colours(runs)
    for note in notes:
        log(f"compare: {note}")
    plot_knn(groups, colours, folder / "knn.png")
    plot_loss(groups, colours, folder / "loss.png")
    record = {"runs": [{"path": str(r.path), "name": r.name, "method": r.method, "backbone": r.backbone,
                        "data_group": letter, "epochs": r.epochs_done, "epochs_planned": r.epochs_planned,
                        "train_seconds": r.train_seconds, "images_per_second": r.images_per_second, "knn": r.knn,
                        "linear": r.linear, "kmeans": r.kmeans} for letter, g in groups.items() for r in g],
              "data_groups": {letter: describe_data(g[0]) for letter, g in groups.items()},
              "flags": notes, "table": {"header": TABLE_HEADER, "rows": rows}}
    atomic_write_bytes(folder / "compare.json", (json.dumps(record, indent=2) + "\n").encode())
    atomic_write_bytes(folder / "compare.md", markdown_table(TABLE_HEADER, rows).encode())
    atomic_write_bytes(folder / "compare.html", html_page(groups, rows, notes, folder).encode())
    record["folder"] = str(folder)
    return record
