"""The demo's learning claim: on the bundled Fashion-MNIST mini, the demo's recipe learns features that beat
the same network untrained (fast, 2 epochs) and, over the full demo, the raw pixels too (slow)."""
import json
from pathlib import Path

import pytest

from sslab.demo import demo_config, learning_verdict
from sslab.eval.baselines import pixel_knn_accuracy
from sslab.train import fit


def knn_curve(summary: dict) -> list[float]:
    records = [json.loads(line) for line in Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()]
    return [r["knn_top1"] for r in records if r.get("epoch", 0) >= 1 and r.get("knn_top1") is not None]


def test_demo_recipe_beats_its_untrained_network_in_two_epochs(tmp_path):
    # measured (2 cores): 80.5% untrained -> 81.4, 81.0% after epochs 1 and 2; the default SimSiam recipe at
    # batch 512 loses accuracy instead (80.5 -> 79.2 -> 78.4%), so this fails for a recipe that does not learn.
    # The full demo (5 epochs) measured 81.5 ... 82.5% against 82.4% for the pixels: the slow test below.
    summary = fit(demo_config(str(tmp_path), epochs=2), log=lambda s: None)
    assert min(knn_curve(summary)) > summary["knn_top1_init"], summary


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
