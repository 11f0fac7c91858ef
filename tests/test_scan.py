"""SCAN: the losses against float64 loops over their formulas, the clustering metrics against brute force,
neighbour mining against numpy, the strong augmentation ops against their definitions (and PIL), and the
whole pipeline on a synthetic set with well-separated classes, resumed stage by stage."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sslab.augment import ops
from sslab.augment import strong
from sslab.augment.strong import RANDAUGMENT_OPS, StrongAugmenter
from sslab.checkpoint import save_checkpoint
from sslab.config import Config
from sslab.errors import CheckpointError, ConfigError, UserError
from sslab.eval.clustering import cluster_accuracy, cluster_to_class, clustering_scores
from sslab.kit import EpochLog
from sslab.scan import ScanConfig, mine_neighbors, neighbor_accuracy, run_scan, scan_loss, selflabel_loss
from sslab.scan import pipeline
from sslab.scan.loss import entropy_of_mean


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: thread hand-offs cost more than they save (and much more on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- SCAN loss ----------------------------------------------------------------------------------------
def reference_scan_loss(a: torch.Tensor, n: torch.Tensor, w: float) -> tuple[float, float, float]:
    """Explicit float64 loops: consistency = -(1/B) sum_i log <p_i, p_n(i)>, H(mean_i p_i), total = cons - w H."""
    a, n = a.double().tolist(), n.double().tolist()
    B, C = len(a), len(a[0])

    def softmax(row):
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = sum(e)
        return [v / s for v in e]

    pa, pn = [softmax(r) for r in a], [softmax(r) for r in n]
    consistency = -sum(math.log(sum(pa[i][c] * pn[i][c] for c in range(C))) for i in range(B)) / B
    mean = [sum(pa[i][c] for i in range(B)) / B for c in range(C)]
    entropy = -sum(m * math.log(max(m, 1e-8)) for m in mean)
    return consistency - w * entropy, consistency, entropy


def test_scan_loss_matches_reference_per_head():
    a, n = torch.randn(3, 6, 5, generator=gen(0)) * 2, torch.randn(3, 6, 5, generator=gen(1)) * 2  # H x B x C
    total, cons, ent = scan_loss(a, n, entropy_weight=5.0)
    assert total.shape == (3,)
    for h in range(3):
        ref = reference_scan_loss(a[h], n[h], 5.0)
        assert [total[h].item(), cons[h].item(), ent[h].item()] == pytest.approx(ref, abs=1e-5)
    # one head without the head axis, and an extreme case where the dot product underflows float32 softmax
    far = torch.tensor([[60.0, -60.0], [0.0, 0.0]])
    near = torch.tensor([[-60.0, 60.0], [0.0, 0.0]])
    t, c, e = scan_loss(far, near, 2.0)
    ref = reference_scan_loss(far, near, 2.0)
    assert [t.item(), c.item(), e.item()] == pytest.approx(ref, rel=1e-5)
    assert torch.isfinite(t)


def test_minimising_scan_loss_raises_the_entropy_of_the_mean_prediction():
    # every sample starts in cluster 0: consistent but collapsed; the -w H term must spread them out
    logits = torch.zeros(32, 4)
    logits[:, 0] = 3.0
    logits += 0.1 * torch.randn(32, 4, generator=gen(2))
    logits.requires_grad_()
    opt = torch.optim.SGD([logits], lr=20.0)
    before = entropy_of_mean(F.softmax(logits, -1)).item()
    for _ in range(20):
        opt.zero_grad()
        scan_loss(logits, logits, entropy_weight=5.0)[0].backward()
        opt.step()
    after = entropy_of_mean(F.softmax(logits, -1)).item()
    assert after > before + 0.5
    # the sign in the total: more entropy, lower loss, at equal consistency
    uniform = torch.eye(4).repeat(2, 1) * 20  # 8 confident samples spread over 4 clusters
    collapsed = torch.zeros(8, 4)
    collapsed[:, 0] = 20
    tu, cu, eu = scan_loss(uniform, uniform, 5.0)
    tc, cc, ec = scan_loss(collapsed, collapsed, 5.0)
    assert cu == pytest.approx(cc.item(), abs=1e-6) and eu > ec and tu < tc


def test_head_losses_over_all_neighbours_match_the_formula():
    logits = torch.randn(2, 10, 3, generator=gen(3))
    nbrs = torch.randint(10, (10, 4), generator=gen(4))
    got = pipeline.head_losses(torch.log_softmax(logits, -1), nbrs, 5.0)
    for h in range(2):
        p = F.softmax(logits[h].double(), -1)
        cons = -sum(math.log(float(p[i] @ p[j])) for i in range(10) for j in nbrs[i].tolist()) / (10 * 4)
        m = p.mean(0)
        ent = -float((m * m.log()).sum())
        assert got[h].item() == pytest.approx(cons - 5.0 * ent, abs=1e-5)


def test_selflabel_loss_matches_masked_weighted_cross_entropy():
    weak = torch.randn(40, 5, generator=gen(5)) * 4
    strong_logits = torch.randn(40, 5, generator=gen(6))
    for balance in (True, False):
        loss, frac = selflabel_loss(weak, strong_logits, threshold=0.9, class_balance=balance)
        prob = F.softmax(weak, -1)
        conf, target = prob.max(-1)
        mask = conf > 0.9
        assert 0 < mask.sum() < 40
        weight = None
        if balance:  # reference ConfidenceBasedCE: 1 / (count / n) for present classes, 1 otherwise
            idx, counts = torch.unique(target[mask], return_counts=True)
            weight = torch.ones(5)
            weight[idx] = 1 / (counts.float() / mask.sum())
        ref = F.cross_entropy(strong_logits[mask], target[mask], weight=weight)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        assert frac.item() == pytest.approx(mask.float().mean().item())
    # no confident sample: zero loss, no error, no NaN
    loss, frac = selflabel_loss(torch.zeros(4, 3), torch.randn(4, 3), threshold=0.99, class_balance=True)
    assert loss.item() == 0.0 and frac.item() == 0.0


# ---- metrics ------------------------------------------------------------------------------------------
def test_hungarian_accuracy_against_brute_force():
    rng = np.random.default_rng(0)
    for k in (2, 3, 4, 5):
        labels = rng.integers(0, k, 60)
        clusters = np.where(rng.random(60) < 0.6, (labels + 1) % k, rng.integers(0, k, 60))
        brute = max(np.mean(np.array(perm)[clusters] == labels) for perm in itertools.permutations(range(k)))
        assert cluster_accuracy(clusters, labels, k, k) == pytest.approx(brute)


def test_majority_mapping_for_over_clustering():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    clusters = np.array([0, 0, 1, 2, 2, 3, 3, 3])  # 4 clusters, 3 classes; cluster 3 is mostly class 2
    assert list(cluster_to_class(clusters, labels, 4, 3, "majority")) == [0, 0, 1, 2]
    s = clustering_scores(clusters, labels, 4, 3)
    assert s["acc_mapping"] == "majority" and s["acc"] == pytest.approx(7 / 8)


# ---- neighbours ---------------------------------------------------------------------------------------
def test_mine_neighbors_matches_numpy_brute_force():
    x = torch.randn(53, 8, generator=gen(7)) + torch.randn(8, generator=gen(8))  # not centred: cosine != dot
    idx, sim = mine_neighbors(x, k=6, chunk=7)  # chunks that do not divide N
    z = x.double().numpy()
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :6]
    assert np.array_equal(idx.numpy(), ref)
    assert np.allclose(sim.numpy(), np.take_along_axis(s, ref, 1), atol=1e-5)
    dup = torch.cat((x[:5], x[:5]))  # duplicates: each image's twin comes first, never the image itself
    idx, _ = mine_neighbors(dup, k=1)
    assert idx[:, 0].tolist() == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]


def test_neighbor_accuracy_by_hand():
    labels = torch.tensor([0, 0, 1, -1])
    nb = torch.tensor([[1, 2], [0, 3], [0, 1], [0, 1]])
    # labelled pairs: (0,1) same, (0,2) diff, (1,0) same, (2,0) diff, (2,1) diff; row 3 and (1,3) unlabelled
    assert neighbor_accuracy(nb, labels) == pytest.approx(2 / 5)
    assert neighbor_accuracy(nb, torch.full((4,), -1)) is None


# ---- strong augmentation --------------------------------------------------------------------------------
def images(b: int = 6, c: int = 3, s: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, s, s), generator=gen(seed), dtype=torch.uint8)


def test_strong_augmenter_shapes_range_determinism_and_per_sample_variation():
    x = images(8, 3, 16)
    aug = StrongAugmenter(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), num_ops=4, cutout_length=8)
    y = aug(x, gen(1))
    assert y.shape == x.shape and y.dtype == torch.float32
    lo = (0 - 0.5) / 0.2 - 1e-5
    hi = (1 - 0.3) / 0.2 + 1e-5
    assert y.min() >= lo and y.max() <= hi
    assert torch.equal(y, aug(x, gen(1)))  # seed fixes everything
    assert not torch.equal(y, aug(x, gen(2)))
    same = images(1, 3, 16).expand(16, -1, -1, -1).contiguous()  # one image, 16 times
    v = aug(same, gen(3)).flatten(1)
    assert len({tuple(r.tolist()) for r in v}) == 16  # every copy augmented differently
    # before normalisation the ops keep [0, 1]
    r = strong.rand_augment(ops.to_float(x), 4, gen(4))
    assert r.min() >= 0 and r.max() <= 1
    g1 = images(8, 1, 16)  # one channel works too
    assert aug.__class__((0.5,), (0.2,))(g1, gen(0)).shape == g1.shape


def test_ops_are_the_identity_at_zero_magnitude():
    x = ops.to_float(images())
    for out in (strong.rotate(x, 0.0), strong.shear_x(x, 0.0), strong.shear_y(x, 0.0), strong.translate_x(x, 0.0),
                strong.translate_y(x, 0.0), strong.adjust_sharpness(x, 1.0), ops.adjust_brightness(x, 1.0),
                ops.adjust_contrast(x, 1.0), ops.adjust_saturation(x, 1.0), strong.posterize(x, 8),
                strong.solarize_at(x, 1.01)):
        assert torch.allclose(out, x, atol=1e-6)
    ident = [i for i, (name, _, _) in enumerate(RANDAUGMENT_OPS) if name == "identity"][0]
    assert torch.equal(strong.apply_ops(x, torch.full((6,), ident), torch.rand(6)), x)
    assert torch.equal(strong.autocontrast(torch.linspace(0, 1, 144).view(1, 1, 12, 12)),
                       torch.linspace(0, 1, 144).view(1, 1, 12, 12))


def test_geometric_ops_against_exact_pixel_moves():
    x = ops.to_float(images(4, 3, 8))
    assert torch.allclose(strong.rotate(x, 90.0), torch.rot90(x, 1, (-2, -1)), atol=1e-5)  # counter-clockwise
    one_px = strong.translate_x(x, 1 / 8)  # PIL: content moves left by v * W pixels
    assert torch.allclose(one_px[..., :-1], x[..., 1:], atol=1e-5) and one_px[..., -1].abs().max() < 1e-6
    down = strong.translate_y(x, -2 / 8)
    assert torch.allclose(down[..., 2:, :], x[..., :-2, :], atol=1e-5)
    # per-sample magnitudes: sample 0 unmoved, sample 1 rotated
    mixed = strong.rotate(x[:2], torch.tensor([0.0, 90.0]))
    assert torch.allclose(mixed[0], x[0], atol=1e-6) and torch.allclose(mixed[1], torch.rot90(x[1], 1, (-2, -1)), atol=1e-5)


def pil_apply(x: torch.Tensor, f) -> torch.Tensor:
    """Apply a PIL ImageOps function to each uint8 (C, H, W) image."""
    out = []
    for img in x:
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        res = np.asarray(f(pil))
        out.append(torch.from_numpy(res.reshape(arr.shape).copy()).permute(2, 0, 1))
    return torch.stack(out)


def test_histogram_and_bit_ops_against_pil():
    x = images(5, 3, 12, seed=9)
    x[0] = x[0] // 4 + 100  # a narrow histogram, where equalize and autocontrast do the most
    x[1, 0] = 77  # a flat channel: left alone
    xf = ops.to_float(x)
    assert torch.equal(strong.equalize(xf).mul(255).round().to(torch.uint8), pil_apply(x, ImageOps.equalize))
    for bits in (1, 4, 7):
        assert torch.equal(strong.posterize(xf, bits).mul(255).round().to(torch.uint8),
                           pil_apply(x, lambda im: ImageOps.posterize(im, bits)))
    for t in (0, 100, 200):
        assert torch.equal(strong.solarize_at(xf, t / 255).mul(255).round().to(torch.uint8),
                           pil_apply(x, lambda im: ImageOps.solarize(im, t)))
    auto = strong.autocontrast(xf)
    lo, hi = xf.amin((-2, -1), keepdim=True), xf.amax((-2, -1), keepdim=True)
    expect = torch.where(hi > lo, (xf - lo) / (hi - lo).clamp_min(1e-12), xf)
    assert torch.allclose(auto, expect, atol=1e-6) and torch.equal(auto[1, 0], xf[1, 0])


def test_apply_ops_wires_each_op_to_its_function():
    x = ops.to_float(images(6, 3, 10, seed=3))
    mag = torch.linspace(0.1, 0.9, 6)
    names = [n for n, _, _ in RANDAUGMENT_OPS]
    expected = {"autocontrast": strong.autocontrast(x), "equalize": strong.equalize(x),
                "rotate": strong.rotate(x, mag * 30), "solarize": strong.solarize_at(x, mag * 200 / 255),
                "color": ops.adjust_saturation(x, mag), "contrast": ops.adjust_contrast(x, mag),
                "brightness": ops.adjust_brightness(x, mag), "sharpness": strong.adjust_sharpness(x, mag),
                "shear_x": strong.shear_x(x, mag / 10), "shear_y": strong.shear_y(x, mag / 10),
                "translate_x": strong.translate_x(x, mag / 10), "translate_y": strong.translate_y(x, mag / 10),
                "posterize": strong.posterize(x, 4 + mag * 4)}
    scale = {"rotate": 30, "solarize": 200, "shear_x": 0.1, "shear_y": 0.1, "translate_x": 0.1, "translate_y": 0.1}
    for name, want in expected.items():
        m = 4 + mag * 4 if name == "posterize" else mag * scale.get(name, 1.0)
        got = strong.apply_ops(x, torch.full((6,), names.index(name)), m)
        assert torch.allclose(got, want, atol=1e-5), name


def test_sampled_ops_and_magnitudes_follow_the_table():
    op, mag = strong.sample_rand_augment(20000, 1, "cpu", gen(5))
    counts = torch.bincount(op[0], minlength=len(RANDAUGMENT_OPS)).float() / 20000
    assert (counts - 1 / len(RANDAUGMENT_OPS)).abs().max() < 0.01  # uniform over the 14 ops
    for i, (name, lo, hi) in enumerate(RANDAUGMENT_OPS):
        m = mag[0][op[0] == i]
        if name in strong.GEOMETRIC:  # random sign: symmetric ranges
            assert m.abs().max() <= max(abs(lo), abs(hi)) + 1e-6
        else:
            assert m.min() >= lo - 1e-6 and m.max() <= hi + 1e-6


def test_cutout_zeroes_the_expected_area():
    x = torch.ones(4, 3, 10, 10)
    cy, cx, length = torch.tensor([5, 0, 9, 4]), torch.tensor([5, 0, 3, 9]), torch.tensor([4, 6, 5, 1])
    out = strong.cutout(x, cy, cx, length, fill=0.0)
    for b in range(4):
        half = int(length[b]) // 2
        y1, y2 = max(int(cy[b]) - half, 0), min(int(cy[b]) + half, 10)
        x1, x2 = max(int(cx[b]) - half, 0), min(int(cx[b]) + half, 10)
        hole = out[b] == 0
        assert int(hole[0].sum()) == (y2 - y1) * (x2 - x1)  # reference: clip(c -+ length // 2) on each side
        assert hole[:, y1:y2, x1:x2].all() and (hole.sum(0) % 3 == 0).all()
    r = strong.random_cutout(torch.ones(500, 1, 16, 16), 8, gen(6))
    area = (r == 0).flatten(1).sum(1)
    assert area.max() <= 64 and (area == 0).any()  # side 1 (length // 2 = 0) cuts nothing, as in the reference
    assert torch.equal(r, strong.random_cutout(torch.ones(500, 1, 16, 16), 8, gen(6)))


# ---- the pipeline on a synthetic run ---------------------------------------------------------------------
def blob_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4 classes of 3 x 8 x 8 images, each a distinct colour with a bright square in its own corner, plus noise."""
    rng = np.random.default_rng(seed)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=np.float64)
    xs, ys = [], []
    for k, c in enumerate(colours):
        img = np.tile(c.reshape(1, 3, 1, 1), (n_per_class, 1, 8, 8))
        r, q = divmod(k, 2)
        img[:, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 50
        img += rng.normal(0, 12, img.shape) + rng.normal(0, 15, (n_per_class, 1, 1, 1))
        xs.append(np.clip(img, 0, 255).astype(np.uint8))
        ys.append(np.full(n_per_class, k))
    return np.concatenate(xs), np.concatenate(ys)


def make_run(tmp_path, backbone: str = "simple-cnn"):
    """A run folder as `sslab train` leaves it (config + checkpoint), for an untrained backbone on blob images."""
    from sslab.data import load_from_config
    from sslab.methods.build import build_method
    from sslab.pretrain import data_info
    from sslab.recipe import fit_to_data

    xtr, ytr = blob_images(60, 0)
    xte, yte = blob_images(20, 1)
    np.savez(tmp_path / "blobs.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    cfg = Config.from_dict({"data": {"dataset": "npz", "data_dir": str(tmp_path / "blobs.npz")},
                            "model": {"backbone": backbone}, "method": {"method": "simsiam"},
                            "augment": {"flip_p": 0.0}, "train": {"epochs": 1, "batch_size": 32, "device": "cpu"}})
    cfg = fit_to_data(cfg, 8)
    data = load_from_config(cfg.data, 0)
    torch.manual_seed(0)
    model = build_method(cfg, data.channels, data.image_size)
    run = tmp_path / "run"
    save_checkpoint({"method": "simsiam", "backbone": backbone, "config": cfg.to_dict(), "data": data_info(data),
                     "model": model.state_dict(), "loop": {"epoch": 1}}, run / "checkpoints" / "last.pt")
    return run


FAST = dict(heads=3, cluster_epochs=10, batch_size=24, lr=3e-2, freeze_backbone=True, cluster_augment="none",
            neighbors=5, kmeans_init=2, selflabel_epochs=3, selflabel_batch_size=48, selflabel_lr=1e-3,
            confidence=0.9, device="cpu", show_per_cluster=4, progress=False)


def test_scan_recovers_separated_classes_and_resumes_stage_by_stage(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    cfg = ScanConfig(**FAST)
    logs: list[str] = []
    report = run_scan(run, cfg, until="cluster", log=logs.append)
    out = run / "scan"
    assert report["scan"]["acc"] >= 0.95 and report["selflabel"] is None
    assert (out / "neighbors.pt").exists() and (out / "cluster.pt").exists() and not (out / "selflabel.pt").exists()
    assert report["neighbor_accuracy"] > 0.9

    # rerun: mining and clustering are loaded, not recomputed; self-labelling runs
    def boom(*a, **k):
        raise AssertionError("a finished stage was recomputed")

    monkeypatch.setattr(pipeline, "mine_stage", boom)
    monkeypatch.setattr(pipeline, "cluster_stage", boom)
    report = run_scan(run, None, log=logs.append)  # None: continues with RUN/scan/config.yaml
    assert report["selflabel"]["acc"] >= 0.95 and report["scan"]["acc"] >= 0.95
    assert report["selflabel_confident_fraction"] > 0.3  # self-labelling had targets to learn from
    saved = json.loads((out / "scan.json").read_text())
    assert saved["stages_done"] == ["mine", "cluster", "selflabel"] and saved["clusters_from"] == "selflabel"
    assert set(saved) >= {"kmeans", "scan", "selflabel", "neighbor_accuracy", "seconds", "config"}
    assert saved["config"]["heads"] == 3 and saved["acc_mapping"] == "hungarian"
    clusters = np.load(out / "clusters.npz")
    assert clusters["test_clusters"].shape == (80,) and clusters["train_confidence"].shape == (240,)
    for name in ("confident_images.png", "confusion.png", "config.yaml", "cluster_metrics.jsonl", "selflabel_metrics.jsonl"):
        assert (out / name).exists(), name
    assert (out / "tensorboard" / "cluster").is_dir()
    assert len((out / "selflabel_metrics.jsonl").read_text().splitlines()) == 3

    # other settings for a finished stage: refused in one line, until --restart
    with pytest.raises(ConfigError, match="--restart cluster"):
        run_scan(run, cfg.replace(entropy_weight=2.0), log=logs.append)


def test_an_interrupted_stage_continues_from_its_last_epoch(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    cfg = ScanConfig(**{**FAST, "cluster_epochs": 4, "heads": 2})
    real_log = EpochLog.append
    calls = []

    def stop_after_two(self, record, step):
        real_log(self, record, step)
        calls.append(record["epoch"])
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochLog, "append", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_scan(run, cfg, until="cluster", log=lambda s: None)
    monkeypatch.setattr(EpochLog, "append", real_log)
    logs: list[str] = []
    report = run_scan(run, cfg, until="cluster", log=logs.append)
    assert "cluster: resuming at end of epoch 1" in logs  # epoch 2 was logged, not checkpointed
    epochs = [json.loads(l)["epoch"] for l in (run / "scan" / "cluster_metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4] and report["scan"] is not None
    # --restart redoes the stage from scratch
    logs.clear()
    run_scan(run, cfg, until="cluster", restart="cluster", log=logs.append)
    assert any("cluster epoch 1/4" in line for line in logs) and not any("resuming" in line for line in logs)


def test_over_clustering_reports_majority_mapping(tmp_path):
    run = make_run(tmp_path)
    report = run_scan(run, ScanConfig(**{**FAST, "num_clusters": 6, "cluster_epochs": 3}), until="cluster",
                      log=lambda s: None)
    assert report["over_clustering"] and report["acc_mapping"] == "majority"
    assert report["scan"]["acc_mapping"] == "majority" and report["kmeans"]["acc_mapping"] == "majority"


def test_trainable_backbone_with_strong_views_runs(tmp_path):
    run = make_run(tmp_path)
    cfg = ScanConfig(**{**FAST, "freeze_backbone": False, "cluster_augment": "strong", "cluster_epochs": 1,
                        "selflabel_epochs": 1, "selflabel_target_view": "weak", "heads": 2})
    report = run_scan(run, cfg, log=lambda s: None)
    assert report["stages_done"] == ["mine", "cluster", "selflabel"]
    assert all(math.isfinite(v) for v in report["scan_head_losses"])


def test_folder_without_checkpoint_is_a_one_line_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(CheckpointError) as e:
            run_scan(path, ScanConfig(device="cpu"), log=lambda s: None)
        assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    from sslab.cli import main

    assert main(["scan", str(tmp_path / "empty"), "--device", "cpu"]) == 2


def test_cli_flags_map_onto_the_config(tmp_path):
    from sslab.cli import build_parser
    from sslab.commands.scan import scan_config_from_args

    args = build_parser().parse_args(["scan", str(tmp_path), "--heads", "3", "--entropy-weight", "2.5",
                                      "--freeze-backbone", "--num-clusters", "20", "--weak-crop-scale", "0.3,1"])
    cfg = scan_config_from_args(args)
    assert (cfg.heads, cfg.entropy_weight, cfg.freeze_backbone, cfg.num_clusters) == (3, 2.5, True, 20)
    assert cfg.weak_crop_scale == (0.3, 1.0) and cfg.cluster_epochs == ScanConfig().cluster_epochs
    with pytest.raises(ConfigError, match="--confidence"):
        ScanConfig(confidence=1.5).validate()


def test_head_is_chosen_by_consistency_minus_entropy_on_the_test_images(monkeypatch):
    """Reference scan_evaluate: lowest consistency - 1 x entropy on the validation images and their own 5
    neighbours. Head 0 clusters the test images' groups, head 1 is uniform there; on the train split it is the
    other way round, so a choice made on the train split would keep head 1."""
    from types import SimpleNamespace

    groups = torch.arange(3).repeat_interleave(6)  # 18 test images in 3 tight groups
    test_feats = F.one_hot(groups, 3).float() * 10 + 0.01 * torch.randn(18, 3, generator=gen(7))
    good = torch.log_softmax(F.one_hot(groups, 3).float() * 20, -1)
    uniform = torch.full((18, 3), -math.log(3))
    by_split = {"test": torch.stack([good, uniform]), "train": torch.stack([uniform, good])}
    monkeypatch.setattr(pipeline, "predict", lambda ctx, model, split: by_split[split])
    ctx = SimpleNamespace(data=SimpleNamespace(test_x=torch.zeros(18, 1, 8, 8)), pretext_features=lambda s: test_feats)
    train_neighbors = torch.randint(18, (18, 5), generator=gen(8))
    best, losses, selection = pipeline.choose_head(ctx, None, train_neighbors)
    assert best == 0 and selection["split"] == "test" and selection["entropy_weight"] == 1.0
    assert not selection["labels_used"]
    assert losses[0].item() == pytest.approx(-math.log(3), abs=1e-3) and losses[1].item() == pytest.approx(0.0, abs=1e-5)


def test_head_input_l2_and_standardized_feed_the_heads_what_they_say():
    from sslab.scan.model import ClusterModel

    torch.manual_seed(0)
    feats = torch.randn(6, 4) * torch.tensor([100.0, 1.0, 0.1, 5.0]) + 30.0
    mean, std = feats.mean(dim=0), feats.std(dim=0)
    plain = ClusterModel(torch.nn.Identity(), 4, 3, heads=2)
    l2 = ClusterModel(torch.nn.Identity(), 4, 3, heads=2, head_input="l2")
    standard = ClusterModel(torch.nn.Identity(), 4, 3, heads=2, head_input="standardized", feature_stats=(mean, std))
    for model in (l2, standard):
        model.heads.load_state_dict(plain.heads.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.head_logits(feats), plain.heads(feats).view(6, 2, 3).transpose(0, 1))
        torch.testing.assert_close(l2.head_logits(feats), plain.head_logits(F.normalize(feats, dim=1)))
        torch.testing.assert_close(l2.head_logits(7 * feats), l2.head_logits(feats))  # scale-free
        torch.testing.assert_close(standard.head_logits(feats), plain.head_logits((feats - mean) / std))
        one = standard.single_head(1)  # self-labelling keeps the input rule and the statistics
        torch.testing.assert_close(one.head_logits(feats)[0], standard.head_logits(feats)[1])
    with pytest.raises(ValueError):
        ClusterModel(torch.nn.Identity(), 4, 3, head_input="standardized")
