"""Figures, inspected through their matplotlib objects after they were written: whole-epoch ticks, the kNN
curve from epoch 0 with its two baselines, legends off the data, every title and label inside the canvas,
axis labels, CJK class names without warnings."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import sslab.plots as plots
from sslab.config import Config
from sslab.run import RunDir


@pytest.fixture
def kept_figures(monkeypatch):
    """Figures that `save_figure` wrote, kept open (it closes them) so the test can look inside."""
    import matplotlib.pyplot as plt

    kept: dict[str, object] = {}
    real_savefig = plt.Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        kept[Path(getattr(path, "name", path)).name] = fig  # save_figure renders into a buffer named after the file
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", savefig)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    yield kept
    monkeypatch.undo()
    for fig in kept.values():
        plt.close(fig)


def assert_texts_inside(fig) -> None:
    """Everything drawn (titles, axis and tick labels, legends) lies inside the canvas, and each title
    on its own too (the tight box of the figure is what the renderer drew)."""
    renderer = fig.canvas.get_renderer()
    drawn = fig.get_tightbbox(renderer)  # inches
    canvas = fig.bbox_inches
    assert drawn.x0 >= canvas.x0 - 0.01 and drawn.x1 <= canvas.x1 + 0.01 and drawn.y0 >= canvas.y0 - 0.01 \
        and drawn.y1 <= canvas.y1 + 0.01, f"something sticks out of the canvas: drawn {drawn} vs {canvas}"
    for text in plots._titles(fig):
        box = text.get_window_extent(renderer)
        assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1, \
            f"title {text.get_text()!r} is cut off"


def write_run(tmp_path: Path, epochs: int, epoch_zero: bool = True, summary: dict | None = None) -> tuple[RunDir, Config]:
    cfg = Config.from_dict({"data": {"dataset": "fashion-mnist"}, "method": {"method": "simsiam"}})
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    records = [{"epoch": 0, "step": 0, "knn_top1": 0.31, "knn_top1_init": 0.31, "knn_top1_pixels": 0.55}] if epoch_zero else []
    records += [{"epoch": e, "step": 10 * e, "loss": -0.1 * e, "lr": 0.1, "knn_top1": 0.5 + 0.1 * e,
                 "epoch_seconds": 1.0, "images_per_second": 100.0}
                for e in range(1, epochs + 1)]
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        run.summary_path.write_text(json.dumps(summary))
    return run, cfg


def line_points(ax, label_start: str) -> np.ndarray:
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(label_start)]
    return np.column_stack(line.get_data()).astype(float)


def test_learning_curves_have_whole_epoch_ticks_and_start_at_epoch_zero(tmp_path, kept_figures):
    run, cfg = write_run(tmp_path, epochs=2)
    plots.plot_learning_curves(run, cfg)
    for name in ("loss.png", "knn.png"):
        fig = kept_figures[name]
        ax = fig.axes[0]
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), f"{name}: fractional epoch ticks {ticks}"
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
        assert_texts_inside(fig)
    knn = line_points(kept_figures["knn.png"].axes[0], "kNN")
    assert np.allclose(knn[0], [0, 31]) and np.allclose(knn[-1], [2, 70])


def test_knn_baselines_are_labelled_lines_and_the_legend_covers_no_point(tmp_path, kept_figures):
    run, cfg = write_run(tmp_path, epochs=5)
    plots.plot_learning_curves(run, cfg)
    fig = kept_figures["knn.png"]
    ax = fig.axes[0]
    init, pixels = line_points(ax, "untrained"), line_points(ax, "raw pixels")
    assert np.allclose(init[:, 1], 31.0) and np.allclose(pixels[:, 1], 55.0)  # horizontal, at the recorded values
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["kNN top-1 (test)", "untrained network: 31.0%", "raw pixels: 55.0%"]
    legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    for x, y in ax.transData.transform(line_points(ax, "kNN")):
        assert not legend.contains(x, y), "the legend hides a point of the kNN curve"
    assert_texts_inside(fig)


def test_old_runs_without_baselines_still_plot(tmp_path, kept_figures):
    run, cfg = write_run(tmp_path, epochs=3, epoch_zero=False)
    plots.plot_learning_curves(run, cfg)
    ax = kept_figures["knn.png"].axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == ["kNN top-1 (test)"]
    assert np.allclose(line_points(ax, "kNN")[0], [1, 60])

    kept_figures.clear()
    (tmp_path / "run").rename(tmp_path / "old")
    run, cfg = write_run(tmp_path, epochs=3, epoch_zero=False, summary={"knn_top1_init": 0.2})
    plots.plot_learning_curves(run, cfg)
    ax = kept_figures["knn.png"].axes[0]
    assert np.allclose(line_points(ax, "kNN")[0], [0, 20])  # epoch 0 from summary.json
    assert np.isclose(line_points(ax, "untrained")[0, 1], 20)


def test_long_titles_are_wrapped_inside_the_canvas(kept_figures, tmp_path):
    fig, ax = plots.new_figure(4.0, 3.0)
    ax.bar([1, 2, 3], [3, 2, 1])
    ax.set_title("PCA contribution per component (first 50): SimSiam · folder my-very-long-dataset-name · resnet18")
    fig.suptitle("a suptitle that is also much longer than the four inches of this little figure can hold")
    plots.save_figure(fig, tmp_path / "t.png")
    assert "\n" in ax.get_title()
    assert_texts_inside(kept_figures["t.png"])


def test_cjk_font_is_chosen_when_installed_and_missing_glyphs_stay_quiet(tmp_path, kept_figures):
    assert plots.pick_cjk_font(["DejaVu Sans", "WenQuanYi Zen Hei", "Noto Sans CJK JP"]) == "Noto Sans CJK JP"
    assert plots.pick_cjk_font(["DejaVu Sans"]) is None
    from sslab.analysis.figures import per_class_figure

    classes = ["猫", "犬", "cat"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any matplotlib warning fails the test
        per_class_figure({"knn": {"猫": 0.5, "犬": 0.7, "cat": 0.9}}, classes, tmp_path / "per-class.png",
                         "per-class accuracy: 日本語のデータ · resnet18")
    fig = kept_figures["per-class.png"]
    assert fig.axes[0].get_xlabel() == "class" and fig.axes[0].get_ylabel() == "accuracy (%)"
    families = fig.axes[0].get_xticklabels()[0].get_fontfamily()
    assert list(families) == list(plots._font_families())


def test_pca_components_and_scan_confident_images_titles_fit(tmp_path, kept_figures):
    from sslab.analysis.structure import pca, pca_figures
    from sslab.scan.figures import confident_images

    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(120, 64)), np.repeat(np.arange(3), 40)
    title = "SimSiam · folder a-rather-long-folder-name · resnet18"
    pca_figures(pca(features), labels, ["a", "b", "c"], tmp_path, title)
    images = rng.integers(0, 255, size=(60, 1, 8, 8), dtype=np.uint8)
    clusters = np.repeat(np.arange(3), 20)
    confident_images(tmp_path / "confident_images.png", images, clusters, rng.random(60), 3, 4, title, labels[:60],
                     ["a", "b", "c"])
    for name in ("pca-components.png", "pca-cumulative.png", "confident_images.png"):
        assert_texts_inside(kept_figures[name])


def test_an_installed_cjk_font_has_the_glyphs():
    from matplotlib.font_manager import FontProperties, findfont, get_font

    families = plots._font_families()
    if len(families) < 2:
        pytest.skip("no font with CJK glyphs installed (e.g. apt-get install fonts-wqy-zenhei or fonts-noto-cjk)")
    font = get_font(findfont(FontProperties(family=families[-1]), fallback_to_default=False))
    assert all(font.get_char_index(ord(c)) != 0 for c in "猫犬鳥類の写真")
