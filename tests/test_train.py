"""The training loop end to end: SimSiam learns on real data, and the test can tell when it does not."""
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_dataset_root

import sslab.methods.simsiam as simsiam_module
from sslab.config import Config
from sslab.methods.base import negative_cosine
from sslab.pretrain import fit

# a ResNet-18 trained on Fashion-MNIST, several times: minutes on 2 cores (CI's 10-minute budget): -m slow
pytestmark = pytest.mark.slow

FASHION_MNIST = shared_dataset_root("fashion-mnist")  # where the CLI would find it (conftest), or None
PROJ_DIM = 256


def fashion_subset_run(out: Path) -> dict:
    cfg = Config.from_dict({
        "data": {"dataset": "fashion-mnist", "data_dir": str(FASHION_MNIST), "limit_train": 512, "limit_test": 500},
        "model": {"backbone": "resnet18", "stem": "imagenet"},  # ImageNet stem: 28 px -> 7 px, cheap on a CPU
        "method": {"method": "simsiam", "proj_hidden": PROJ_DIM, "proj_dim": PROJ_DIM, "pred_hidden": 64},
        "optim": {"lr": 0.6, "warmup_epochs": 0},
        "train": {"epochs": 4, "batch_size": 64, "device": "cpu", "knn_k": 20, "knn_every": 4, "progress": False,
                  "out": str(out)}})
    return fit(cfg, log=lambda m: None)


def final_health(summary: dict) -> float:
    """z_std * sqrt(d) of the last epoch: ~1 for spread-out embeddings, -> 0 on collapse."""
    last = json.loads(Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()[-1])
    return last["z_std"] * math.sqrt(PROJ_DIM)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    if FASHION_MNIST is None:
        pytest.skip("Fashion-MNIST not found in ../shared/data nor where `sslab datasets` looks")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def simsiam_run(out) -> dict:
    return fashion_subset_run(out)


@pytest.fixture(scope="module")
def runs(out, simsiam_run):
    """SimSiam and two broken variants (about 90 s each on 2 cores: the broken ones are in the slow tests, which
    show that the margins below tell a learning run from one that does not learn)."""
    results = {"simsiam": simsiam_run}
    broken = {
        "no_stop_gradient": lambda p1, p2, z1, z2: negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2,
        "constant_loss": lambda p1, p2, z1, z2: 0.0 * (p1.sum() + p2.sum()) + 1.0,
    }
    for name, loss in broken.items():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(simsiam_module, "simsiam_loss", loss)
            results[name] = fashion_subset_run(out)
    return results


MARGIN = 0.15  # kNN top-1 gain over the untrained backbone (measured: ~+0.35 for SimSiam, ~0 for a constant loss)
HEALTHY = 0.75  # z_std * sqrt(d) after training (measured: ~0.85 for SimSiam, ~0.55 without stop-gradient)


def test_simsiam_beats_its_untrained_backbone_and_stays_healthy(simsiam_run):
    s = simsiam_run
    assert s["knn_top1"] - s["knn_top1_init"] >= MARGIN, s
    assert final_health(s) >= HEALTHY


@pytest.mark.slow
def test_constant_loss_fails_the_margin(runs):
    s = runs["constant_loss"]
    assert s["knn_top1"] - s["knn_top1_init"] < MARGIN, s
    assert s["knn_top1_init"] == runs["simsiam"]["knn_top1_init"]  # same seed, same untrained backbone


@pytest.mark.slow
def test_no_stop_gradient_collapses(runs):
    # Without the stop-gradient the embeddings collapse (Chen & He, fig. 2); in a CPU-sized budget this shows
    # first in the collapse monitor, before the backbone's kNN accuracy falls.
    assert final_health(runs["no_stop_gradient"]) < HEALTHY


def test_run_folder_holds_the_contract(simsiam_run):
    run = Path(simsiam_run["run_dir"])
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "plots/loss.png", "plots/knn.png", "checkpoints/last.pt"]:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert any((run / "tensorboard").iterdir())
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    before = records[0]  # the epoch-0 record: the baselines before any training step, no loss or lr
    assert set(before) == {"epoch", "step", "knn_top1", "knn_top1_init", "knn_top1_pixels"}
    assert before["knn_top1"] == before["knn_top1_init"] and 0 < before["knn_top1_pixels"] <= 1
    init = torch.load(run / "checkpoints" / "init.pt", weights_only=False)["model"]
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert init.keys() == last.keys() and not all(torch.equal(init[k], last[k]) for k in init)
    for key in ["epoch", "loss", "lr", "knn_top1", "z_std", "epoch_seconds", "images_per_second"]:
        assert key in records[-1], key
    summary = json.loads((run / "summary.json").read_text())
    assert summary["knn_top1"] == records[-1]["knn_top1"] and summary["knn_top1_init"] == before["knn_top1_init"]
    assert summary["knn_top1_pixels"] == before["knn_top1_pixels"]
    saved = Config.load(run / "config.yaml")
    assert saved.method.momentum == 0.9 and saved.augment.crop_scale == (0.2, 1.0)  # recipe values written out
