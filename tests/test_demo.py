"""The demo's learning claim: on the bundled Fashion-MNIST mini, the demo's recipe learns features that beat
the same network untrained (fast, 1 epoch) and, over the full demo (3 epochs), the raw pixels too (slow)."""
import json
import time
from pathlib import Path

import pytest

from sslab.demo import demo_config, learning_verdict
from sslab.eval.baselines import pixel_knn_accuracy
from sslab.pretrain import fit


def knn_curve(summary: dict) -> list[float]:
    records = [json.loads(line) for line in Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()]
    return [r["knn_top1"] for r in records if r.get("epoch", 0) >= 1 and r.get("knn_top1") is not None]


@pytest.mark.slow  # minutes on 2 cores; the demo's output and order are checked fast (mocked training) below
def test_demo_recipe_beats_its_untrained_network_in_one_epoch(tmp_path):
    # measured (2 cores): 82.1% untrained -> 83.7% after one epoch (raw pixels 83.1%); SimSiam's recipe on
    # simple-cnn drops from 82.2% to 79.6% in its first epoch on this data, so this fails for a recipe that
    # does not learn.
    summary = fit(demo_config(str(tmp_path), epochs=1), log=lambda s: None)
    assert summary["knn_top1"] > summary["knn_top1_init"] + 0.005, summary


@pytest.mark.slow
def test_full_demo_training_beats_both_baselines(tmp_path):
    from sslab.data import load_dataset

    lines: list[str] = []
    summary = fit(demo_config(str(tmp_path)), log=lines.append)
    d = load_dataset("fashion-mnist-mini")
    cfg = demo_config()
    pixels = pixel_knn_accuracy(d.train_x, d.train_y, d.test_x, d.test_y, 10, cfg.train.knn_k, cfg.train.knn_t)
    curve = knn_curve(summary)
    assert summary["knn_top1"] > max(summary["knn_top1_init"], pixels), (summary, pixels)
    assert curve[-1] >= curve[0], curve
    assert "the learned features beat both" in learning_verdict({**summary, "knn_top1_pixels": pixels})


def test_the_demo_ends_with_its_summary_lines_and_heartbeats_every_few_seconds(tmp_path, monkeypatch, capsys):
    import sslab.demo as demo
    from sslab.progress import heartbeat_every

    run = tmp_path / "run"
    run.mkdir()
    summary = {"knn_top1": 0.842, "knn_top1_init": 0.821, "knn_top1_pixels": 0.831, "run_dir": str(run)}
    monkeypatch.setattr(demo, "fit", lambda cfg, log: summary)
    seen: list[float | None] = []

    def report_step(run_dir: Path, log) -> None:  # stands for the steps: the last one writes the report
        seen.append(heartbeat_every())
        (run_dir / "report.html").write_text("<html></html>")
        log("a step's own line")
        time.sleep(0.5)  # a silent call: the step's heartbeat speaks

    assert demo.DEMO_HEARTBEAT <= 10  # the real demo: no silence over 10 s in a long call
    monkeypatch.setattr(demo, "DEMO_HEARTBEAT", 0.1)  # here: a heartbeat within the test's half second
    lines: list[str] = []
    demo.run_demo(str(tmp_path), log=lines.append, steps=[report_step])
    assert seen == [0.1]
    assert "demo: report_step: still running" in capsys.readouterr().err
    assert lines[-2] == learning_verdict(summary) and "84.2%" in lines[-2] and "the learned features beat both" in lines[-2]
    assert lines[-1] == f"demo: report {run / 'report.html'} (open it in a browser)"
    assert lines.index("a step's own line") < len(lines) - 2
