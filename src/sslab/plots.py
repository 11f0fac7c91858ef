"""Learning-curve PNGs in RUN/plots/, titled with the real method, dataset and backbone names, and the
pieces every sslab figure goes through (`new_figure`, `save_figure`): a font with CJK glyphs when one is
installed, titles wrapped to stay inside the canvas, no matplotlib warnings on the console."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    from sslab.config import Config
    from sslab.run import RunDir

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10", "fashion-mnist": "Fashion-MNIST",
                 "fashion-mnist-mini": "Fashion-MNIST mini",
                 "mnist": "MNIST", "digits": "digits (8x8)", "folder": "image folder", "npz": "npz arrays"}
METHOD_NAMES = {"simsiam": "SimSiam", "phinet": "PhiNet", "xphinet": "X-PhiNet", "simclr": "SimCLR", "byol": "BYOL",
                "mocov2": "MoCo v2", "barlowtwins": "Barlow Twins", "vicreg": "VICReg", "dino": "DINO",
                "mocov3": "MoCo v3", "nnclr": "NNCLR", "swav": "SwAV"}
# fonts with CJK glyphs, most common first (Debian/Ubuntu fonts-noto-cjk, fonts-wqy-*, macOS, Windows)
CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans",
             "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "IPAGothic", "IPAexGothic",
             "Hiragino Sans", "PingFang SC", "Microsoft YaHei", "MS Gothic", "AR PL UMing CN")
_CJK_FILE_HINTS = ("cjk", "wqy", "droidsansfallback", "ipag", "ipaexg", "sourcehan", "ukai", "uming", "hiragino",
                   "pingfang", "msyh", "msgothic")
BASELINE_STYLES = {"knn_top1_init": ("untrained network", "0.45", "--"),
                   "knn_top1_pixels": ("raw pixels", "tab:red", ":")}
_TITLE_MARGIN = 0.98  # share of the canvas a title may span


def run_title(cfg: "Config") -> str:
    dataset = DATASET_NAMES.get(cfg.data.dataset, cfg.data.dataset)
    if cfg.data.dataset == "folder" and cfg.data.data_dir:
        dataset = f"folder {cfg.data.data_dir.rstrip('/').split('/')[-1]}"
    return f"{METHOD_NAMES.get(cfg.method.method, cfg.method.method)} · {dataset} · {cfg.model.backbone}"


def pick_cjk_font(installed: Sequence[str]) -> str | None:
    """The first of CJK_FONTS among the `installed` font family names, else None."""
    names = set(installed)
    return next((name for name in CJK_FONTS if name in names), None)


@functools.lru_cache(maxsize=1)
def _font_families() -> tuple[str, ...]:
    """matplotlib's default family, then a CJK font when one is installed: matplotlib (>= 3.6) falls back
    glyph by glyph through the list, so Latin text keeps its usual font."""
    from matplotlib import font_manager, rcParams

    manager = font_manager.fontManager
    cjk = pick_cjk_font([f.name for f in manager.ttflist])
    if cjk is None:  # matplotlib's font list is cached when it is first built: fonts installed later are missing
        for path in font_manager.findSystemFonts():
            if any(hint in Path(path).name.lower() for hint in _CJK_FILE_HINTS):
                with contextlib.suppress(Exception):  # a damaged font file: use the others
                    manager.addfont(path)
        cjk = pick_cjk_font([f.name for f in manager.ttflist])
    return tuple(rcParams["font.family"]) + ((cjk,) if cjk else ())


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """The font list above, and quiet about glyphs no installed font has: without a CJK font they are drawn
    as boxes, and matplotlib's warning for each (with a source path) says nothing a user can act on; nor does
    its log line when a CJK font has only a medium weight ("Failed to find font weight normal")."""
    import matplotlib.pyplot as plt

    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)
    try:
        # text.parse_math off: class and run names are shown as written ("$\\foo{$" is a folder name, not maths)
        with plt.rc_context({"font.family": list(_font_families()), "text.parse_math": False}), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support", category=UserWarning)
            yield
    finally:
        font_log.setLevel(level)


def new_figure(width: float = 6.4, height: float = 4.0):
    import sys

    import matplotlib

    if "ipykernel" not in sys.modules:  # in a notebook, keep its inline backend: the user's own plots must still show
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with figure_style():
        return plt.subplots(figsize=(width, height), dpi=110)


def save_figure(fig, path) -> None:
    """Lay out (titles wrapped to fit the canvas), write the PNG (rendered in memory, then written by
    `safe_write.write_bytes`: atomically, never through a link inside a run folder), close the figure."""
    import matplotlib.pyplot as plt

    from sslab.safe_write import write_bytes

    path = Path(path)
    try:
        with figure_style():
            for text in _all_texts(fig):  # made outside figure_style: give them its fonts, and no maths parsing
                text.set_fontfamily(list(_font_families()))
                text.set_parse_math(False)
            fig.tight_layout()
            for _ in range(4):  # wrapping moves the axes, which moves the titles: settle in a few rounds
                if not fit_titles(fig):
                    break
                fig.tight_layout()
            buffer = _NamedBuffer(path)
            fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png")
        write_bytes(path, buffer.getvalue(), durable=False)  # a figure can be drawn again
    finally:
        plt.close(fig)


class _NamedBuffer(io.BytesIO):
    """A figure's bytes in memory, named after the file they go to."""

    def __init__(self, path: Path):
        super().__init__()
        self.name = str(path)


def _all_texts(fig) -> list:
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_text()]


def _titles(fig) -> list:
    titles = [fig._suptitle] if getattr(fig, "_suptitle", None) is not None else []
    for ax in fig.axes:
        titles += [ax.title, ax._left_title, ax._right_title]
    return [t for t in titles if t.get_text()]


def fit_titles(fig) -> bool:
    """Re-wrap every title wider than the room it has (centred on its axes, inside the canvas); True if
    one changed. Lines are broken at spaces, so " · " separated names stay whole where they can."""
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    changed = False
    for text in _titles(fig):
        extent = text.get_window_extent(renderer)
        centre = (extent.x0 + extent.x1) / 2
        room = 2 * min(centre - canvas.x0, canvas.x1 - centre) * _TITLE_MARGIN
        if extent.width <= room or extent.width == 0:
            continue
        lines = text.get_text().split("\n")
        per_char = extent.width / max(len(line) for line in lines)
        chars = max(12, int(room / per_char))
        text.set_text("\n".join(_wrap(line, chars) for line in lines))
        changed = True
    return changed


def _wrap(line: str, chars: int) -> str:
    """`line` in lines of at most `chars` characters, broken after "what: " first ("PCA ...: SimSiam · ...")."""
    if len(line) <= chars:
        return line
    head, sep, rest = line.partition(": ")
    if sep and len(head) < chars:
        return head + ":\n" + textwrap.fill(rest, chars)
    return textwrap.fill(line, chars)


# ---- learning curves -------------------------------------------------------------------------------------------
def integer_epoch_axis(ax) -> None:
    """Ticks on whole epochs only (matplotlib would put 0.25, 0.5, ... on a short run)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def knn_baselines(records: list[dict[str, Any]], summary: dict[str, Any] | None) -> dict[str, float]:
    """`knn_top1_init` (untrained network) and `knn_top1_pixels` (raw-pixel kNN) from the epoch-0 record of
    metrics.jsonl, else from summary.json; runs from before these were recorded have fewer or none."""
    found: dict[str, float] = {}
    sources = [r for r in records if r.get("epoch") == 0] + [summary or {}]
    for key in BASELINE_STYLES:
        for source in sources:
            if isinstance(source.get(key), (int, float)):
                found[key] = float(source[key])
                break
    return found


def knn_curve(records: list[dict[str, Any]], baselines: dict[str, float]) -> list[tuple[float, float]]:
    """(epoch, kNN top-1 %) points, starting at epoch 0 (the untrained network) when that is known."""
    points = [(r["epoch"], 100 * r["knn_top1"]) for r in records
              if isinstance(r.get("epoch"), (int, float)) and isinstance(r.get("knn_top1"), (int, float))]
    if points and points[0][0] > 0 and "knn_top1_init" in baselines:
        points.insert(0, (0, 100 * baselines["knn_top1_init"]))
    return points


def _read_summary(run: "RunDir") -> dict[str, Any] | None:
    try:
        summary = json.loads(run.summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def plot_learning_curves(run: "RunDir", cfg: "Config") -> None:
    records = [r for r in run.read_metrics() if isinstance(r, dict)]
    losses = [(r["epoch"], r["loss"]) for r in records
              if isinstance(r.get("epoch"), (int, float)) and isinstance(r.get("loss"), (int, float))]
    if not records:
        return
    title = run_title(cfg)

    fig, ax = new_figure()
    if losses:
        ax.plot(*zip(*losses), marker="." if len(losses) < 50 else None)
    integer_epoch_axis(ax)
    ax.set(ylabel="training loss", title=f"loss: {title}")
    ax.grid(alpha=0.3)
    save_figure(fig, run.plots_dir / "loss.png")

    baselines = knn_baselines(records, _read_summary(run))
    knn = knn_curve(records, baselines)
    fig, ax = new_figure(7.6, 4.0)
    if knn:
        ax.plot(*zip(*knn), marker="." if len(knn) < 50 else None, label="kNN top-1 (test)")
        for key, value in baselines.items():
            name, colour, style = BASELINE_STYLES[key]
            ax.axhline(100 * value, color=colour, ls=style, lw=1.2, label=f"{name}: {100 * value:.1f}%")
        # outside the axes, so it never hides the curve's last point
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no kNN monitor (no labelled test split, or --knn-every 0)", ha="center", transform=ax.transAxes)
    integer_epoch_axis(ax)
    ax.set(ylabel="kNN top-1 accuracy (%)", title=f"kNN monitor: {title}")
    ax.grid(alpha=0.3)
    save_figure(fig, run.plots_dir / "knn.png")
