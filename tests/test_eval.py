"""Evaluation: clustering metrics against brute force and scikit-learn, linear probes on synthetic features
with a known answer, kNN bookkeeping, channel matching for transfer, and `sslab eval` / `sslab embed` end
to end on a tiny trained run."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from test_eval_support import assert_png_not_blank, tiny_run  # noqa: F401  (fixture)

from sslab.cli import main
from sslab.eval.clustering import cluster_accuracy, cluster_to_class, clustering_scores, contingency
from sslab.eval.evaluate import EvalOptions, feature_protocols, load_probe, match_channels
from sslab.eval.knn import knn_accuracy
from sslab.eval.linear import (Whitening, confusion_matrix, fit_fast_probe, per_class_accuracy, predict,
                               train_standard_probe)
from sslab.eval.semi import labelled_subset


# ---- clustering metrics ------------------------------------------------------------------------------------------
def brute_force_accuracy(clusters: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Best accuracy over every one-to-one map of k clusters onto k classes."""
    return max(float(np.mean(np.array(perm)[clusters] == labels)) for perm in itertools.permutations(range(k)))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5).flatmap(lambda k: st.tuples(st.just(k), st.lists(st.tuples(st.integers(0, k - 1),
                                                                                      st.integers(0, k - 1)),
                                                                            min_size=1, max_size=40))))
def test_hungarian_accuracy_equals_brute_force(case):
    k, pairs = case
    clusters, labels = (np.array(v) for v in zip(*pairs))
    assert cluster_accuracy(clusters, labels, k, k) == pytest.approx(brute_force_accuracy(clusters, labels, k))


def test_clustering_scores_on_hand_made_cases():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    renamed = np.array([2, 2, 2, 0, 0, 0, 1, 1, 1])  # a perfect clustering with other names
    s = clustering_scores(renamed, labels)
    assert (s["acc"], s["nmi"], s["ari"], s["acc_mapping"]) == (1.0, pytest.approx(1.0), pytest.approx(1.0), "hungarian")
    assert list(cluster_to_class(renamed, labels)) == [1, 2, 0]
    noisy = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0])
    s = clustering_scores(noisy, labels)
    assert s["acc"] == pytest.approx(brute_force_accuracy(noisy, labels, 3))
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(labels, noisy))
    assert s["ari"] == pytest.approx(adjusted_rand_score(labels, noisy))
    counts = contingency(noisy, labels, 3, 3)
    assert counts.tolist() == [[2, 0, 1], [1, 2, 0], [0, 1, 2]]


def test_over_clustering_uses_the_majority_mapping():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    clusters = np.array([0, 0, 1, 1, 2, 2, 3, 1])  # 4 clusters, 2 classes
    s = clustering_scores(clusters, labels, 4, 2)
    assert s["acc_mapping"] == "majority"
    assert s["acc"] == pytest.approx(7 / 8)  # cluster 1 = {0, 0, 1} -> class 0


def test_clustering_scores_counts_the_distinct_ids_it_is_given():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    sparse = np.array([0, 0, 5, 5, 0, 9, 9, 5, 9, 9])  # 3 clusters named 0, 5, 9, for 3 classes
    dense = np.searchsorted([0, 5, 9], sparse)
    s = clustering_scores(sparse, labels)
    assert s["acc_mapping"] == "hungarian" and s["clusters_used"] == 3
    assert s["acc"] == pytest.approx(brute_force_accuracy(dense, labels, 3))
    assert s["acc"] == pytest.approx(0.5)
    assert cluster_accuracy(dense, labels, 3, 3, "majority") == pytest.approx(0.6)  # majority would flatter it


def test_clustering_scores_hungarian_on_ids_0_5_9_gives_0_540():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 1000)
    clusters = np.where(rng.random(1000) < 0.4, np.array([0, 5, 9])[labels], rng.choice([0, 5, 9], 1000))
    s = clustering_scores(clusters, labels, num_classes=3)
    dense = np.searchsorted([0, 5, 9], clusters)
    assert s["acc"] == pytest.approx(brute_force_accuracy(dense, labels, 3))
    assert s["acc_mapping"] == "hungarian"


def test_clustering_scores_refuses_negative_ids_and_out_of_range_ids():
    with pytest.raises(ValueError, match=">= 0"):
        clustering_scores(np.array([0, -1, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        clustering_scores(np.array([0, 1, 1]), np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="out of range"):
        clustering_scores(np.array([0, 4]), np.array([0, 1]), num_clusters=3)


# ---- linear probes -----------------------------------------------------------------------------------------------
def blobs(n_per_class: int, k: int, dim: int, separation: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * separation
    y = torch.arange(k).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    # a correlated, badly scaled feature space, as a self-supervised backbone gives
    mix = torch.randn(dim, dim, generator=g) * torch.logspace(-2, 1, dim)
    return x @ mix + 3.0, y


@pytest.mark.parametrize("classifier", ["logistic", "svm"])
def test_fast_probe_separates_separable_features(classifier):
    xs, ys = blobs(90, 4, 32, separation=6.0)
    test = torch.arange(len(ys)) % 3 == 0
    x, y, xt, yt = xs[~test], ys[~test], xs[test], ys[test]
    result = fit_fast_probe(x, y, 4, classifier, None, 0.1, 0)
    assert (predict(result.probe, xt) == yt.numpy()).mean() >= 0.99
    assert set(result.details["validation_accuracy_by_c"]) and result.details["c"] in result.details["c_grid"]


def test_the_c_walk_stops_two_values_past_the_best():
    from sslab.eval.linear import walk_c_grid

    grid = [0.01, 0.1, 1.0, 10.0, 100.0]
    tried = []

    def score_of(table):
        return lambda c: (tried.append(c), table[c])[1]

    assert walk_c_grid(grid, score_of({0.01: 0.6, 0.1: 0.8, 1.0: 0.7, 10.0: 0.65, 100.0: 0.9})) == {
        "0.01": 0.6, "0.1": 0.8, "1": 0.7, "10": 0.65}  # 100 not tried: two in a row below 0.8
    assert tried == [0.01, 0.1, 1.0, 10.0]
    rising = {0.01: 0.5, 0.1: 0.6, 1.0: 0.55, 10.0: 0.7, 100.0: 0.69}  # one dip is not the peak
    assert list(walk_c_grid(grid, score_of(rising))) == ["0.01", "0.1", "1", "10", "100"]
    assert list(walk_c_grid(grid, score_of(dict.fromkeys(grid, 0.5)))) == ["0.01", "0.1", "1"]  # a tie is no rise


def test_fast_probe_on_random_labels_is_at_chance():
    g = torch.Generator().manual_seed(1)
    x, xt = torch.randn(600, 16, generator=g), torch.randn(2000, 16, generator=g)
    y, yt = torch.randint(0, 4, (600,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    acc = (predict(fit_fast_probe(x, y, 4, "logistic", None, 0.1, 0).probe, xt) == yt.numpy()).mean()
    assert 0.18 < acc < 0.33  # chance is 0.25


def test_probe_is_a_linear_map_of_raw_features_and_skips_unlabelled_and_absent_classes():
    x, y = blobs(40, 3, 8, separation=5.0)
    y = y.clone()
    y[:5] = -1  # unlabelled: left out
    result = fit_fast_probe(x, y, 5, "logistic", None, 0.1, 0)  # classes 3 and 4 never appear
    assert result.probe.weight.shape == (5, 8) and result.probe.bias.shape == (5,)
    pred = predict(result.probe, x)
    assert not np.isin(pred, [3, 4]).any()
    # whitening folded into the map: logits of raw features == classifier on whitened features
    white = Whitening.fit(x)
    w = torch.randn(9, 3)
    folded = white.fold(w)
    assert torch.allclose(folded.logits(x), white(x) @ w[:-1] + w[-1], atol=1e-3)


def test_standard_probe_learns_a_linear_task_through_a_frozen_backbone():
    """Images whose class is the bright quadrant; a fixed random conv backbone; crop + flip views."""
    torch.manual_seed(0)
    n, size = 256, 16
    y = torch.arange(4).repeat(n // 4)
    x = torch.randint(0, 40, (n, 1, size, size), dtype=torch.uint8)
    for q in range(4):
        r, c = divmod(q, 2)
        x[y == q, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 200
    backbone = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    before = [p.clone() for p in backbone.parameters()]
    result = train_standard_probe(backbone, x, y, 4, (0.3,), (0.4,), epochs=15, batch_size=64, lr=0.3,
                                  crop_scale=(0.6, 1.0), flip_p=0.0)
    with torch.no_grad():
        feats = backbone((x.float() / 255 - 0.3) / 0.4)
    assert (predict(result.probe, feats) == y.numpy()).mean() > 0.9
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters()))  # frozen
    assert result.details["augmentation"]["flip_p"] == 0.0 and result.details["steps"] == 15 * 4


def quadrant_images(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class (of 4) is the bright quadrant, on noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(4).repeat(n // 4)
    x = torch.randint(0, 40, (len(y), 1, size, size), dtype=torch.uint8, generator=g)
    half = size // 2
    for q in range(4):
        r, c = divmod(q, 2)
        x[y == q, :, r * half:(r + 1) * half, c * half:(c + 1) * half] += 200
    return x, y


def test_standard_probe_reaches_the_fast_probe_where_a_linear_classifier_works():
    torch.manual_seed(0)
    x, y = quadrant_images(256)
    tx, ty = quadrant_images(128, seed=1)
    backbone = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    with torch.no_grad():
        feats, test_feats = (backbone((v.float() / 255 - 0.3) / 0.4) for v in (x, tx))
    fast = fit_fast_probe(feats, y, 4, "logistic", None, 0.1, 0)
    fast_acc = (predict(fast.probe, test_feats) == ty.numpy()).mean()
    standard = train_standard_probe(backbone, x, y, 4, (0.3,), (0.4,), epochs=15, batch_size=64, lr=0.3,
                                    crop_scale=(0.6, 1.0), flip_p=0.0, reference=fast.probe)
    standard_acc = (predict(standard.probe, test_feats) == ty.numpy()).mean()
    assert fast_acc > 0.9 and standard_acc >= fast_acc - 0.05
    assert standard.details["reference_accuracy_on_views"] > 0.8  # these views keep the class: the probe can match
    assert standard.details["train_accuracy_last_epoch"] > 0.8


def test_semi_supervised_fine_tune_on_a_few_labels_does_not_collapse_to_one_class():
    """20 labelled images (5 per class), batches of 20, 15 steps, a backbone with BatchNorm: the test predictions
    must use every class (they were all one class when the test-time BatchNorm statistics lagged behind)."""
    from sslab.eval.semi import finetune, predict_finetuned

    torch.manual_seed(0)
    x, y = quadrant_images(20)
    tx, ty = quadrant_images(200, seed=1)
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten())
    with torch.no_grad():  # "pre-trained" BatchNorm statistics: those of these images
        backbone[1].momentum = None
        backbone((quadrant_images(200, seed=2)[0].float() / 255 - 0.3) / 0.4)
        backbone[1].momentum = 0.1
    backbone.eval()
    net, head, details = finetune(backbone, x, y, 4, (0.3,), (0.4,), epochs=15, batch_size=64, lr=0.05,
                                  crop_scale=(0.8, 1.0), flip_p=0.0)
    pred = predict_finetuned(net, head, tx, (0.3,), (0.4,))
    assert len(np.unique(pred)) == 4 and (pred == ty.numpy()).mean() > 0.7
    assert details["steps"] == 15


def test_per_class_accuracy_and_confusion_matrix():
    from sklearn.metrics import confusion_matrix as sk_confusion

    labels = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    assert per_class_accuracy(pred, labels, ["a", "b", "c", "d"]) == {"a": 0.5, "b": pytest.approx(2 / 3), "c": 1.0,
                                                                      "d": None}
    assert (confusion_matrix(pred, labels, 3) == sk_confusion(labels, pred, labels=[0, 1, 2])).all()


def test_knn_record_matches_knn_accuracy():
    xs, ys = blobs(40, 3, 8, separation=2.0)
    test = torch.arange(len(ys)) % 4 == 0
    x, y, xt, yt = xs[~test], ys[~test], xs[test], ys[test]
    records, probes = feature_protocols(x, y, xt, yt, ["a", "b", "c"], "toy", EvalOptions(protocol="fast"), 20, 0.1,
                                        log=lambda m: None)
    assert records[0]["name"] == "knn" and records[0]["accuracy"] == pytest.approx(knn_accuracy(x, y, xt, yt, 3, 20, 0.1))
    assert [r["name"] for r in records] == ["knn", "linear-fast"] and set(probes) == {"linear-fast"}
    assert records[1]["sizes"]["train"] + records[1]["sizes"]["validation"] == 90


def test_match_channels_repeats_grey_and_takes_luma_of_rgb():
    from PIL import Image

    grey = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    rgb = match_channels(grey, 3)
    assert rgb.shape == (2, 3, 5, 5) and all(torch.equal(rgb[:, c], grey[:, 0]) for c in range(3))
    colour = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    back = match_channels(colour, 1)
    pil = np.stack([np.asarray(Image.fromarray(c.permute(1, 2, 0).numpy()).convert("L")) for c in colour])
    assert back.shape == (2, 1, 5, 5) and np.abs(back[:, 0].numpy().astype(int) - pil).max() <= 1


def test_labelled_subset_is_stratified_seeded_and_skips_unlabelled():
    labels = torch.cat([torch.arange(10).repeat_interleave(50), torch.full((20,), -1)])
    a, b = labelled_subset(labels, 0.1, 0, 10), labelled_subset(labels, 0.1, 0, 10)
    assert torch.equal(a, b) and len(a) == 50
    assert torch.bincount(labels[a], minlength=10).tolist() == [5] * 10
    assert len(labelled_subset(labels, 0.01, 0, 10)) == 10  # at least one per class
    assert not torch.equal(labelled_subset(labels, 0.1, 1, 10), a)


# ---- commands end to end ---------------------------------------------------------------------------------------
def test_eval_command_writes_json_figures_and_probe(tiny_run, capsys):  # noqa: F811
    rc = main(["eval", str(tiny_run), "--device", "cpu", "--protocol", "both", "--probe-epochs", "2", "--semi",
               "--semi-epochs", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "linear-fast" in out
    ev = json.loads((tiny_run / "eval.json").read_text())
    names = [r["name"] for r in ev["results"]]
    assert names == ["knn", "linear-fast", "linear-standard", "semi-1pct", "semi-10pct"]
    for r in ev["results"]:
        assert {"protocol", "classifier", "accuracy", "per_class_accuracy", "sizes"} <= set(r)
        assert 0 <= r["accuracy"] <= 1 and set(r["per_class_accuracy"]) == set(ev["classes"])
    by_name = {r["name"]: r for r in ev["results"]}
    assert by_name["linear-fast"]["accuracy"] > 0.5  # simple-cnn features of digits are linearly useful
    assert by_name["linear-fast"]["classifier"] == "logistic" and by_name["semi-10pct"]["sizes"]["train"] == 144
    assert ev["dataset"] == "digits" and ev["sizes"] == {"train": 1438, "test": 359}
    for rel in ev["figures"]:
        assert "digits" not in rel  # file names never name the dataset
        assert_png_not_blank(tiny_run / rel)
    name, probe, classes = load_probe(tiny_run)
    assert name == "linear-standard" and probe.weight.shape == (10, 64) and classes == ev["classes"]
    # baselines beside the figures: the contract's pixel kNN and the untrained network, same split and protocol
    from sslab.data import load_dataset
    from sslab.eval.baselines import pixel_knn_accuracy

    d = load_dataset("digits")
    assert by_name["knn"]["baselines"]["pixels"] == pytest.approx(
        pixel_knn_accuracy(d.train_x, d.train_y, d.test_x, d.test_y, 10, 20, 0.1))
    for n in ("knn", "linear-fast", "linear-standard"):
        assert 0 < by_name[n]["baselines"]["untrained"] <= 1 and 0 < by_name[n]["baselines"]["pixels"] <= 1
    assert "rebuilt from the config's seed" in ev["baselines"]["untrained_source"] or "init.pt" in ev["baselines"]["untrained_source"]
    assert ev["complete"] is True and "pixels" in out and "untrained" in out


def test_an_interrupted_eval_keeps_its_results_and_a_rerun_continues(tiny_run, monkeypatch):  # noqa: F811
    from sslab.eval import evaluate

    real = evaluate.standard_protocol

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "standard_protocol", interrupted)
    assert main(["eval", str(tiny_run), "--device", "cpu", "--protocol", "both", "--probe-epochs", "1"]) == 130
    ev = json.loads((tiny_run / "eval.json").read_text())
    assert ev["complete"] is False and [r["name"] for r in ev["results"]] == ["knn", "linear-fast"]
    assert ev["results"][0]["baselines"]["pixels"] is not None
    kept = {r["name"]: r["accuracy"] for r in ev["results"]}

    def recomputed(*a, **k):
        raise AssertionError("a finished protocol was run again")

    monkeypatch.setattr(evaluate, "standard_protocol", real)
    monkeypatch.setattr(evaluate, "feature_protocols", recomputed)
    monkeypatch.setattr(evaluate.RunBaselines, "knn_accuracy", recomputed)
    monkeypatch.setattr(evaluate.RunBaselines, "fast_accuracy", recomputed)
    assert main(["eval", str(tiny_run), "--device", "cpu", "--protocol", "both", "--probe-epochs", "1"]) == 0
    ev = json.loads((tiny_run / "eval.json").read_text())
    assert ev["complete"] is True and [r["name"] for r in ev["results"]] == ["knn", "linear-fast", "linear-standard"]
    assert {r["name"]: r["accuracy"] for r in ev["results"][:2]} == kept


def test_eval_svm_and_transfer_to_an_rgb_folder(tiny_run, tmp_path):  # noqa: F811
    from PIL import Image

    g = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            (tmp_path / "rgb" / split / cls).mkdir(parents=True)
            for i in range(n):
                a = np.clip(g.normal(colour, 20, size=(16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(tmp_path / "rgb" / split / cls / f"{i}.png")
    rc = main(["eval", str(tiny_run), "--device", "cpu", "--protocol", "fast", "--classifier", "svm",
               "--transfer-dataset", "folder", "--transfer-data-dir", str(tmp_path / "rgb")])
    assert rc == 0
    ev = json.loads((tiny_run / "eval.json").read_text())
    by_name = {r["name"]: r for r in ev["results"]}
    assert by_name["linear-fast"]["classifier"] == "svm"
    assert ev["transfer"]["channels"] == 1 and ev["transfer"]["image_size"] == 8  # RGB 16 px -> grey 8 px
    assert by_name["transfer-knn"]["dataset"] == "folder" and by_name["transfer-knn"]["sizes"]["test"] == 12
    assert set(by_name["transfer-linear-fast"]["per_class_accuracy"]) == {"blue", "red"}
    assert_png_not_blank(tiny_run / "eval" / "confusion-transfer-linear-fast.png")


def test_embed_command_writes_npz_and_projector(tiny_run):  # noqa: F811
    assert main(["embed", str(tiny_run), "--device", "cpu", "--max-points", "100"]) == 0
    with np.load(tiny_run / "embeddings.npz") as z:
        assert z["features"].shape == (359, 64) and z["labels"].shape == (359,)
        assert sorted(z["indices"].tolist()) == list(range(359)) and set(z["split"].tolist()) == {"test"}
    sprite = next((tiny_run / "projector").rglob("sprite.png"))
    assert_png_not_blank(sprite)
    assert len((next((tiny_run / "projector").rglob("metadata.tsv"))).read_text().splitlines()) == 101  # header + 100


@pytest.mark.parametrize("command", ["eval", "embed", "analyze", "attention", "report"])
def test_commands_on_a_folder_without_checkpoint_fail_in_one_line(command, tmp_path, capsys):
    rc = main([command, str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("sslab: error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", ["eval", "analyze", "embed"])
def test_a_checkpoint_with_exploded_weights_fails_in_one_line(command, tiny_run, tmp_path, capsys):  # noqa: F811
    # found by the checkpoint fuzz test: huge weights gave NaN features and L-BFGS raised a traceback
    import shutil

    from sslab.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "exploded"
    shutil.copytree(tiny_run, run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    name = next(k for k in state["model"] if k.startswith("backbone.") and k.endswith("weight"))
    state["model"][name] = torch.full_like(state["model"][name], 3e38)
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    assert main([command, str(run), "--device", "cpu"]) == 2
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True)
                  if not line.startswith("analyze "))  # analyze announces its steps on stderr
    assert err.startswith("sslab: error: ") and err.count("\n") == 1 and "NaN or infinite features" in err, err


def test_eval_rejects_bad_options_before_loading(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--probe-epochs", "0"]) == 2
    assert "--probe-epochs 0: must be in [1, 100000]" in capsys.readouterr().err


def test_real_command_line_on_a_folder_without_checkpoint(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "sslab", "attention", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sslab: error: no checkpoint in")


# ---- baselines ------------------------------------------------------------------------------------------------
def test_pixel_knn_of_a_tiny_case_by_hand():
    """1 x 1 x 2 images. Plain pixel vectors all point the same way (cosine ~1 everywhere), so only the centred
    vectors separate the classes: the baseline takes the better of the two."""
    from sslab.eval.baselines import pixel_knn_accuracy

    train = torch.tensor([[250, 240], [251, 241], [252, 242], [240, 250]], dtype=torch.uint8).view(4, 1, 1, 2)
    train_y = torch.tensor([0, 0, 0, 1])
    test = torch.tensor([[249, 241], [241, 249]], dtype=torch.uint8).view(2, 1, 1, 2)
    test_y = torch.tensor([0, 1])
    assert pixel_knn_accuracy(train, train_y, test, test_y, 2, k=1, t=0.1) == 1.0
    plain = knn_accuracy(train.view(4, 2).float() / 255, train_y, test.view(2, 2).float() / 255, test_y, 2, 4, 0.1)
    assert plain == 0.5  # four near-equal votes, three for class 0: the plain vectors cannot tell
    assert pixel_knn_accuracy(train, train_y, test, test_y, 2, k=4, t=0.1) == 1.0  # centred: they can
    assert pixel_knn_accuracy(train, torch.full((4,), -1), test, test_y, 2, k=4, t=0.1) is None


def test_large_images_are_randomly_projected_and_small_ones_kept():
    from sslab.eval.baselines import PIXEL_MAX_DIM, pixel_features

    small = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(pixel_features(small), small.view(3, -1).float() / 255)
    big = torch.randint(0, 256, (5, 3, 48, 48), dtype=torch.uint8)  # 6912 values > PIXEL_MAX_DIM
    a, b = pixel_features(big), pixel_features(big)
    assert a.shape == (5, PIXEL_MAX_DIM) and torch.equal(a, b)  # fixed projection
    x = big.view(5, -1).float() / 255
    assert torch.allclose(torch.cdist(a, a), torch.cdist(x, x), rtol=0.1)  # distances kept


def test_the_baseline_sentence_names_every_figure_below_a_baseline():
    from sslab.eval.baselines import below_baseline_sentence

    results = [{"name": "knn", "accuracy": 0.6, "baselines": {"pixels": 0.98, "untrained": 0.5}},
               {"name": "linear-fast", "accuracy": 0.9, "baselines": {"pixels": 0.85, "untrained": 0.7}}]
    sentence = below_baseline_sentence(results)
    assert "knn (60.0%) is below the raw pixels (98.0%)" in sentence and "linear-fast" not in sentence
    assert "untrained" not in sentence.split("Below a baseline:")[1].split(".")[0]
    assert below_baseline_sentence(results[1:]) is None


# ---- #23: baselines stored across runs, every stage stoppable, a default that fits the machine ------------------------
def test_the_store_returns_exactly_its_key_and_misses_on_anything_else(tmp_path):
    from sslab.eval.store import BaselineStore, key_hash

    notes = []
    store = BaselineStore(tmp_path / "baselines", notes.append)
    key = {"source": "pixels", "protocol": "knn", "settings": {"k": 20, "t": 0.1}, "data": "abc"}
    assert store.get(key) is None
    entry = store.put(key, 0.75, 1.5, "cpu")
    assert entry["stored"] is True and store.get(dict(key))["accuracy"] == 0.75  # key order does not matter
    assert store.get({**key, "settings": {"k": 21, "t": 0.1}}) is None
    path = tmp_path / "baselines" / f"{key_hash(key)}.json"
    assert json.loads(path.read_text())["key"] == key  # plain JSON, the key inside
    other = {**json.loads(path.read_text()), "key": {**key, "data": "other"}}  # a colliding name, another key
    path.write_text(json.dumps(other))
    assert store.get(key) is None
    path.write_text(json.dumps({**other, "key": key, "accuracy": 7.0}))  # out of range: not a stored accuracy
    assert store.get(key) is None
    path.write_text("{not json")
    assert store.get(key) is None
    (tmp_path / "a-file").write_text("")
    blocked = BaselineStore(tmp_path / "a-file" / "baselines", notes.append)  # cannot be created
    assert blocked.put(key, 0.5, 1.0, "cpu")["stored"] is False and blocked.put(key, 0.5, 1.0, "cpu")
    assert len(notes) == 1 and "computed for this eval only" in notes[0]


def test_fingerprints_change_with_one_pixel_one_label_or_one_weight():
    from sslab.data.base import ImageData
    from sslab.eval.store import data_fingerprint, network_fingerprint

    x, y = torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    base = data_fingerprint(ImageData("d", x, y, x[:2], y[:2], ["a", "b"]))
    assert base == data_fingerprint(ImageData("other name", x.clone(), y.clone(), x[:2], y[:2], ["a", "b"]))
    x2 = x.clone()
    x2[3, 0, 1, 1] = 1
    assert data_fingerprint(ImageData("d", x2, y, x[:2], y[:2], ["a", "b"])) != base
    assert data_fingerprint(ImageData("d", x, y.flip(0), x[:2], y[:2], ["a", "b"])) != base
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    same = nn.Linear(3, 2)
    same.load_state_dict(net.state_dict())
    assert network_fingerprint(net) == network_fingerprint(same)
    with torch.no_grad():
        same.bias[0] += 1e-6
    assert network_fingerprint(net) != network_fingerprint(same)


def test_the_resume_command_repeats_the_options_given():
    from sslab.cli import build_parser
    from sslab.commands.evaluate import eval_options
    from sslab.eval.stopping import resume_command

    opts = EvalOptions(protocol="both", probe_epochs=3, c_grid=(0.1, 1.0), semi=True, knn_t=0.05)
    command = resume_command("/runs/a b", opts, "cpu")
    assert command == ("sslab eval '/runs/a b' --device cpu --protocol both --c-grid 0.1,1 --probe-epochs 3 "
                       "--knn-t 0.05 --semi")
    args = build_parser().parse_args(__import__("shlex").split(command)[1:])
    assert eval_options(args) == opts and args.device == "cpu"


def test_the_standard_probe_estimate_is_the_measured_step_times_the_steps(monkeypatch):
    from sslab.eval import linear

    ticks = iter(range(1000))
    monkeypatch.setattr(linear.time, "perf_counter", lambda: 0.5 * next(ticks))  # every step takes 0.5 s
    images, labels = quadrant_images(100)
    labels[:10] = -1  # 90 labelled: 2 steps of 40 per epoch, 3 batches for the whitening pass
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(256, 8))
    seconds = linear.standard_probe_seconds(backbone, images, labels, (0.5,), (0.25,), epochs=7, batch_size=40)
    assert seconds == 0.5 * (7 * 2 + 3)
    assert backbone.training  # its mode is given back


def test_auto_runs_kNN_and_the_fast_probe_on_the_cpu_and_the_standard_probe_on_a_gpu():
    from sslab.eval.evaluate import resolve_protocol

    assert resolve_protocol("auto", torch.device("cpu")) == "fast"
    assert resolve_protocol("auto", torch.device("cuda", 0)) == "both"
    assert resolve_protocol("standard", torch.device("cpu")) == "standard"


def _fresh_copy(run, tmp_path, name):
    import shutil

    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def test_a_second_run_reuses_the_stored_baselines(tiny_run, tmp_path, monkeypatch, capsys):  # noqa: F811
    from sslab.eval import baselines

    monkeypatch.setenv("SSLAB_CACHE_DIR", str(tmp_path / "cache"))
    second = _fresh_copy(tiny_run, tmp_path, "second")
    assert main(["eval", str(tiny_run), "--device", "cpu"]) == 0  # auto: kNN and the fast probe on the CPU
    out = capsys.readouterr().out
    assert "raw-pixel baseline: knn" in out and "stored for later runs" in out and "stored, computed" not in out
    first = json.loads((tiny_run / "eval.json").read_text())
    assert [r["name"] for r in first["results"]] == ["knn", "linear-fast"] and first["protocol_used"] == "fast"
    hint = first["standard_probe"]
    assert hint["seconds"] > 0 and hint["baseline_seconds"] > 0 and "--protocol both" in hint["command"]
    assert hint["hint"] in out and "on this CPU" in hint["hint"]
    assert len(list((tmp_path / "cache" / "baselines").glob("*.json"))) == 4  # 2 sources x (kNN, fast probe)

    def trained_again(*a, **k):
        raise AssertionError("a stored baseline was computed again")

    for name in ("knn_accuracy", "fast_accuracy", "standard_accuracy"):
        monkeypatch.setattr(baselines.RunBaselines, name, trained_again)
    assert main(["eval", str(second), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    again = json.loads((second / "eval.json").read_text())
    assert again["baselines"]["knn"] == first["baselines"]["knn"]
    assert again["baselines"]["linear-fast"] == first["baselines"]["linear-fast"]
    assert "raw-pixel baseline: knn" in out and out.count("(stored, computed 20") == 2
    assert again["standard_probe"]["baseline_seconds"] > 0  # the standard probe's baselines are not stored yet


def _without_timings(value):
    """eval.json without what legitimately differs between two evals: wall times, when a baseline was
    computed, the folders."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("seconds", "estimates", "computed", "store", "run_dir", "resume_key")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_signals_inside_the_baseline_probes_stop_at_once_with_a_checkpoint_and_resume_exactly(
        tiny_run, tmp_path, monkeypatch, capsys):  # noqa: F811
    """The probes run 10 steps each (2 epochs of 5); the test hook signals after step 7 of every loop that gets
    there from below: the main probe, then (resumed past 7) the raw-pixel baseline, then the untrained one."""
    import os
    import signal
    import time

    from signal_at_step import signal_at_step

    command = ["--device", "cpu", "--protocol", "standard", "--probe-epochs", "2"]
    monkeypatch.setenv("SSLAB_CACHE_DIR", str(tmp_path / "cache-uninterrupted"))
    whole = _fresh_copy(tiny_run, tmp_path, "whole")
    assert main(["eval", str(whole), *command]) == 0
    expected = _without_timings(json.loads((whole / "eval.json").read_text()))

    monkeypatch.setenv("SSLAB_CACHE_DIR", str(tmp_path / "cache"))
    sent, real_kill = [], os.kill
    monkeypatch.setattr(os, "kill", lambda pid, sig: (sent.append(time.monotonic()), real_kill(pid, sig)))
    stops = [("SIGINT", 130, "the standard probe", "knn"),
             ("SIGTERM", 143, "the raw-pixel baseline's standard probe", "knn, linear-standard"),
             ("SIGINT", 130, "the untrained-network baseline's standard probe", "knn, linear-standard")]
    for name, code, stage, kept in stops:
        capsys.readouterr()
        with signal_at_step(7, getattr(signal, name)):
            assert main(["eval", str(tiny_run), *command]) == code
        assert time.monotonic() - sent[-1] < 5  # stopped after the step it was in, not at the end of the probe
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"sslab: interrupted by {name}; checkpoint saved ({stage}: {tiny_run / 'eval'}")
        assert f"kept in eval.json: {kept}; continue with: sslab eval {tiny_run} --device cpu --protocol standard" in err
        ev = json.loads((tiny_run / "eval.json").read_text())
        assert ev["complete"] is False and ", ".join(r["name"] for r in ev["results"]) == kept
    assert len(sent) == 3
    stored = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "baselines").glob("*.json")]
    assert sorted(e["key"]["source"] for e in stored if e["key"]["protocol"] == "linear-standard") == ["pixels"]
    assert main(["eval", str(tiny_run), *command]) == 0
    assert _without_timings(json.loads((tiny_run / "eval.json").read_text())) == expected
    assert not list((tiny_run / "eval").glob("*.pt"))  # every checkpoint removed once its result was kept


def test_a_signal_outside_a_training_loop_stops_at_once_and_says_so(
        tiny_run, tmp_path, monkeypatch, capsys):  # noqa: F811
    import os
    import signal

    from sslab.eval import evaluate

    monkeypatch.setenv("SSLAB_CACHE_DIR", str(tmp_path / "cache"))  # no stored baseline: they are computed

    real = evaluate.RunBaselines.fast_accuracy

    def signalled(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the fast probe's baseline")

    monkeypatch.setattr(evaluate.RunBaselines, "fast_accuracy", signalled)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["eval", str(tiny_run), "--device", "cpu", "--protocol", "fast"]) == 143
    err = capsys.readouterr().err
    assert err.startswith("sslab: interrupted by SIGTERM during the baselines (raw pixels, untrained network) of knn "
                          "and linear-fast (nothing to checkpoint: it takes seconds); kept in eval.json: knn, "
                          "linear-fast; continue with: sslab eval ")
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are given back
    monkeypatch.setattr(evaluate.RunBaselines, "fast_accuracy", real)
    assert main(["eval", str(tiny_run), "--device", "cpu", "--protocol", "fast"]) == 0
    assert json.loads((tiny_run / "eval.json").read_text())["complete"] is True
