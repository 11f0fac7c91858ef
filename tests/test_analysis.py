"""Analysis: PCA numbers, where the image map puts each thumbnail, k-means scores, attention maps against
their definitions, export round trip, augmentation preview, and `analyze` / `attention` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_eval_support import assert_png_not_blank, tiny_run  # noqa: F401  (fixture)

from sslab.analysis.attention import activation_maps, default_layer, grad_cam, pick_images, upsample_unit
from sslab.analysis.clusters import cluster_report, kmeans, nearest_to_centres
from sslab.analysis.export import export_images, loaded_like_folder, safe_class_names
from sslab.analysis.structure import image_map, map_points, pca
from sslab.cli import main
from sslab.data import load_dataset
from sslab.eval.linear import ProbeWeights


# ---- PCA -------------------------------------------------------------------------------------------------------
def test_pca_ratios_and_component_counts_on_known_variances():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 3.0, 1.0, 0.1])
    z = rng.standard_normal((500, 4))
    q, _ = np.linalg.qr(z - z.mean(axis=0))  # centred, orthonormal columns: variances exactly scales**2
    x = (q * scales) @ np.linalg.qr(rng.standard_normal((4, 4)))[0] + 5.0  # rotated and shifted
    p = pca(x)
    expected = scales**2 / (scales**2).sum()  # 0.909, 0.082, 0.009, 0.0001
    assert np.allclose(p["ratio"], expected, atol=1e-9)
    assert [p["components_for"][t] for t in ("0.5", "0.9", "0.95", "0.99")] == [1, 1, 2, 2]
    assert p["effective_rank"] == pytest.approx(np.exp(-(expected * np.log(expected)).sum()))
    assert p["projection"].shape == (500, 2)
    assert np.allclose(p["cumulative"][-1], 1.0)


# ---- image map ---------------------------------------------------------------------------------------------------
def test_image_map_puts_each_thumbnail_at_its_point():
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=np.float32)
    thumbs = np.broadcast_to(colours[:, None, None, :], (5, 10, 10, 3)).copy()  # solid, uniquely coloured
    coords = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 10.0], [10.0, 0.0], [5.0, 5.0]])
    canvas = image_map(thumbs, coords, 100)
    centres = map_points(coords, 100, 10)
    # corners and middle: x grows to the right, y grows upwards
    assert centres.tolist() == [[5, 95], [95, 5], [5, 5], [95, 95], [50, 50]]
    for (x, y), colour in zip(centres, colours):
        assert np.allclose(canvas[y, x], colour)
        assert np.allclose(canvas[y - 4:y + 4, x - 4:x + 4], colour)  # the whole thumbnail around it
    assert np.allclose(canvas[30, 30], 1.0)  # background elsewhere
    # the class-coloured version draws a border in the given colour and tints the inside
    border = np.array([[0.5, 0.25, 0.0]] * 5)
    framed = image_map(thumbs, coords, 100, colors=border, border=2, tint=0.5)
    x, y = centres[4]
    assert np.allclose(framed[y - 5, x], border[4]) and np.allclose(framed[y, x], 0.5 * colours[4] + 0.5 * border[4])


def test_map_points_stay_inside_for_odd_sizes_and_degenerate_coordinates():
    coords = np.random.default_rng(0).standard_normal((50, 2))
    for thumb in (7, 8, 13):
        c = map_points(coords, 97, thumb)
        assert (c - thumb // 2 >= 0).all() and (c - thumb // 2 + thumb <= 97).all()
    same = map_points(np.zeros((3, 2)), 50, 10)  # all points equal: no division by zero
    assert (same == same[0]).all()


# ---- k-means --------------------------------------------------------------------------------------------------------
def test_kmeans_finds_separated_classes_and_nearest_images_are_nearest():
    rng = np.random.default_rng(0)
    directions = np.eye(8)[:4] * 10  # four directions: separate after l2 normalisation too
    labels = np.repeat(np.arange(4), 25)
    x = directions[labels] + rng.standard_normal((100, 8))
    assign, centres, dist = kmeans(x, 4, seed=0)
    report = cluster_report(assign, labels, 4, 4, ["a", "b", "c", "d"])
    assert report["acc"] == 1.0 and report["ari"] == pytest.approx(1.0) and report["nmi"] == pytest.approx(1.0)
    assert sorted(c["size"] for c in report["clusters"]) == [25] * 4
    assert all(c["purity"] == 1.0 for c in report["clusters"])
    nearest = nearest_to_centres(assign, dist, 4, columns=10)
    for c, rows in enumerate(nearest):
        members = np.flatnonzero(assign == c)
        assert len(rows) == 10 and set(rows) <= set(members)
        assert dist[rows].max() <= np.sort(dist[members])[9] + 1e-12


# ---- attention -------------------------------------------------------------------------------------------------
class TwoStage(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(6, 6, 3, stride=4, padding=1), nn.ReLU())

    def stages(self):
        return {"a": self.a, "b": self.b, "c": self.c}

    def forward(self, x):
        return self.c(self.b(self.a(x))).mean(dim=(2, 3))


def test_activation_map_and_grad_cam_follow_their_definitions():
    torch.manual_seed(0)
    net = TwoStage().eval()
    x = torch.randn(3, 1, 8, 8)
    assert default_layer(net, 1, 8) == "b"  # c is 1x1
    a = net.b(net.a(x))
    assert torch.allclose(activation_maps(net, "b", x), a.mean(dim=1))
    probe = ProbeWeights(torch.randn(5, 6), torch.randn(5))
    targets = torch.tensor([0, 3, 4])
    cam, logits = grad_cam(net, probe, "b", x, targets)
    # reference: gradient of the target score w.r.t. the stage output, averaged over positions
    a = net.b(net.a(x)).detach().requires_grad_(True)
    score = probe.logits(net.c(a).mean(dim=(2, 3))).gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(score, a)
    expected = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))
    assert torch.allclose(cam, expected.detach(), atol=1e-5)
    assert torch.allclose(logits, probe.logits(net(x)), atol=1e-5)
    up = upsample_unit(cam, 16)
    assert up.shape == (3, 16, 16) and up.min() >= 0 and up.max() <= 1
    assert torch.equal(upsample_unit(torch.ones(1, 2, 2), 4), torch.zeros(1, 4, 4))  # constant map: nothing to show


def test_pick_images_takes_classes_in_turn():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    rows = pick_images(labels, 6, seed=0)
    assert sorted(labels[rows].tolist()) == [0, 0, 1, 1, 2, 2] and len(set(rows.tolist())) == 6


# ---- export-images and preview-augment ----------------------------------------------------------------------------
def test_safe_class_names_are_unique_and_usable_as_folders():
    names = safe_class_names(["T-shirt/top", "a:b", "a?b", ".hidden", "", "unlabeled", "über"])
    assert names[0] == "T-shirt_top" and len(set(n.lower() for n in names)) == 7
    assert all("/" not in n and not n.startswith(".") and n for n in names) and "unlabeled" not in names
    assert names[-1] == "über"


def test_export_images_round_trip_gives_the_same_pixels(tmp_path, capsys):
    out = tmp_path / "png"
    assert main(["export-images", "--dataset", "digits", "--out", str(out)]) == 0
    assert len(list((out / "train").rglob("*.png"))) == 1438 and len(list((out / "test").rglob("*.png"))) == 359
    assert (out / "train" / "3").is_dir() and sorted(p.name for p in (out / "train" / "0").iterdir())[0].endswith(".png")
    original = load_dataset("digits")
    back = load_dataset("folder", out)
    expected = loaded_like_folder(original)
    assert back.classes == expected.classes
    assert torch.equal(back.train_x, expected.train_x) and torch.equal(back.train_y, expected.train_y)
    assert torch.equal(back.test_x, expected.test_x) and torch.equal(back.test_y, expected.test_y)
    assert main(["export-images", "--dataset", "digits", "--out", str(out)]) == 2  # not an empty folder
    assert "not an empty folder" in capsys.readouterr().err


def test_export_rgb_with_awkward_class_names_round_trips(tmp_path):
    from sslab.data.base import ImageData

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 6, 5), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    data = ImageData("npz", x, y, x[:0], y[:0], ["T-shirt/top", "Bag", "ankle boot"])
    export_images(data, tmp_path / "png", progress=False, log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "png" / "train").iterdir()) == ["Bag", "T-shirt_top", "ankle boot"]
    back = load_dataset("folder", tmp_path / "png", test_fraction=0)
    expected = loaded_like_folder(data)
    assert back.classes == expected.classes and torch.equal(back.train_x, expected.train_x)
    assert torch.equal(back.train_y, expected.train_y)


def test_preview_augment_writes_a_picture(tmp_path):
    out = tmp_path / "views.png"
    assert main(["preview-augment", "--method", "simclr", "--dataset", "digits", "--out", str(out), "-n", "4"]) == 0
    image = assert_png_not_blank(out)
    assert image.shape[1] > image.shape[0]  # 4 columns of images, 3 rows (original, 2 views)


# ---- commands end to end ---------------------------------------------------------------------------------------
def test_analyze_command_writes_figures_json_and_clusters(tiny_run, capsys):  # noqa: F811
    assert main(["analyze", str(tiny_run), "--device", "cpu", "--max-points", "100", "--map-size", "400"]) == 0
    out, err = capsys.readouterr()
    assert [f"analyze {i}/6:" in err for i in range(1, 7)] == [True] * 6  # each step announced (stderr)
    assert "components" in out and "ARI" in out  # the tables printed in the terminal
    an = json.loads((tiny_run / "analysis.json").read_text())
    assert an["kmeans"]["k"] == 10 and an["kmeans"]["n_init"] == 10
    for key in ("acc", "nmi", "ari"):
        assert -1 <= an["kmeans"][key] <= 1
    assert an["tsne"]["points"] == 100 and an["points"] == 359
    expected = {"pca-cumulative.png", "pca-components.png", "pca-scatter.png", "tsne.png", "image-map.png",
                "image-map-classes.png", "cluster-tiles.png"}
    assert {p.rsplit("/", 1)[-1] for p in an["figures"]} == expected
    for rel in an["figures"]:
        assert_png_not_blank(tiny_run / rel)
    with np.load(tiny_run / "embeddings.npz") as z:
        assert z["clusters"].shape == (359,) and z["tsne"].shape == (100, 2) and z["tsne_rows"].shape == (100,)
        from sslab.eval.clustering import clustering_scores

        assert clustering_scores(z["clusters"], z["labels"], 10, 10)["ari"] == pytest.approx(an["kmeans"]["ari"])
    # one k-means result per feature set: scan's k-means baseline is the same clustering, and both have baselines
    from sslab.scan import ScanConfig, run_scan

    report = run_scan(tiny_run, ScanConfig(device="cpu", progress=False), until="mine", log=lambda m: None)
    assert report["kmeans"]["acc"] == an["kmeans"]["acc"] and report["kmeans"]["ari"] == an["kmeans"]["ari"]
    for where in (an["kmeans"]["baselines"], report["baselines"]):
        assert 0 < where["pixels"]["acc"] <= 1 and 0 < where["untrained"]["acc"] <= 1
    assert report["baselines"]["pixels"] == an["kmeans"]["baselines"]["pixels"]


def test_attention_without_and_with_a_probe(tiny_run, capsys):  # noqa: F811
    assert main(["attention", str(tiny_run), "--device", "cpu", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "Grad-CAM skipped" in out and "too coarse" not in out
    # simple-cnn on 8 px: block1 4x4, block2 2x2, block3 1x1; the default is the last map of at least 4x4
    assert_png_not_blank(tiny_run / "attention" / "activation-block1.png")
    assert not (tiny_run / "attention" / "gradcam-block1.png").exists()
    assert main(["eval", str(tiny_run), "--device", "cpu", "--protocol", "fast"]) == 0
    assert main(["attention", str(tiny_run), "--device", "cpu", "-n", "3", "--layer", "block1", "--target", "true"]) == 0
    info = json.loads((tiny_run / "attention" / "attention.json").read_text())
    assert info["layer"] == "block1" and info["gradcam"]["probe"] == "linear-fast"
    assert info["gradcam"]["targets"] == info["labels"]
    assert_png_not_blank(tiny_run / "attention" / "gradcam-block1.png")
    assert main(["attention", str(tiny_run), "--device", "cpu", "--layer", "nope"]) == 2
    assert "unknown --layer 'nope'" in capsys.readouterr().err


def test_attention_maps_differ_between_images_and_a_coarse_layer_is_flagged(tiny_run, capsys):  # noqa: F811
    """The 8x8 complaint: a 2x2 stage scaled to [0, 1] and smoothed gave the same ramp for every image."""
    from sslab.analysis.attention import activation_maps, upsample_unit
    from sslab.eval.features import normalize_images
    from sslab.pretrained import load_trained

    trained = load_trained(tiny_run, "cpu")
    info, data = trained.data_info, trained.load_data()
    x = normalize_images(data.test_x[:16], info["mean"], info["std"])
    trained.backbone.eval()
    shown = upsample_unit(activation_maps(trained.backbone, "block1", x), 64)  # the default layer at 8 px
    assert shown.std(dim=0).mean() > 0.1  # the maps differ from image to image
    coarse = upsample_unit(activation_maps(trained.backbone, "block2", x), 64)
    assert set(coarse[0].unique().tolist()) <= set(coarse[0, ::32, ::32].flatten().tolist())  # 2x2 cells, no ramp

    assert main(["attention", str(tiny_run), "--device", "cpu", "-n", "2", "--layer", "block2"]) == 0
    out = capsys.readouterr().out
    assert "warning: layer block2 gives a 2x2 map on 8x8 images, too coarse" in out and "--layer block1 (4x4)" in out


@pytest.mark.parametrize("argv, message", [
    (["export-images", "--dataset", "folder", "--data-dir", "{tmp}/nowhere", "--out", "{tmp}/out"], "not found"),
    (["export-images", "--dataset", "nosuchset", "--out", "{tmp}/out"], "--dataset 'nosuchset': must be one of cifar10,"),
    (["preview-augment", "--method", "nosuchmethod", "--out", "{tmp}/p.png"], "unknown method 'nosuchmethod'"),
    (["preview-augment", "--out", "{tmp}/p.jpg"], "must be a file name ending in .png"),
])
def test_data_tools_fail_in_one_line(argv, message, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sslab: error: ") and err.count("\n") == 1 and message in err


def test_export_of_an_image_folder_keeps_names_sub_folders_and_sizes(tmp_path, capsys):
    from PIL import Image

    from sslab.data import load_dataset

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    sizes = {"cat/a.png": (8, 8), "cat/b.jpg": (8, 8), "cat/2024/c.png": (12, 20), "cat/d.png": (8, 8),
             "dog/e.bmp": (8, 8), "dog/f.png": (8, 8), "dog/old/g.gif": (8, 8), "dog/h.png": (30, 16)}
    for rel, (h, w) in sizes.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / rel)
    (src / "dog" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["export-images", "--dataset", "folder", "--data-dir", str(src), "--out", str(out),
                 "--test-fraction", "0.25"]) == 0
    log = capsys.readouterr().out
    assert "left out 1 file(s)" in log and "dog/broken.png" in log and "exported 8 images" in log
    written = {str(p.relative_to(out)): Image.open(p).size for p in out.rglob("*.png")}
    assert {name.split("/", 1)[1] for name in written} == {rel.rsplit(".", 1)[0] + ".png" for rel in sizes}
    for name, size in written.items():  # the original size, not the training size
        assert size == sizes[next(r for r in sizes if r.rsplit(".", 1)[0] + ".png" == name.split("/", 1)[1])][::-1]
    assert {name.split("/", 1)[0] for name in written} == {"train", "test"}
    original = load_dataset("folder", src, test_fraction=0.25, cache=False)
    back = load_dataset("folder", out, cache=False)  # same split, same pixels (the same resize to 8x8)
    assert torch.equal(original.train_x, back.train_x) and torch.equal(original.test_x, back.test_x)
    assert original.train_y.tolist() == back.train_y.tolist() and original.classes == back.classes
