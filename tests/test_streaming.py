"""The streaming feed gives exactly what indexing the resident tensor gives, in the loop's order, with host
memory that follows the batch, not the dataset; the placement decision follows the sizes; features extracted
chunk by chunk from a memory-mapped cache equal those of the resident images; a bounded kNN bank is a
stratified, seeded subset."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sslab.data.base import ImageRows
from sslab.errors import ConfigError
from sslab.eval.features import bank_rows, extract_features
from sslab.kit import BatchSource
from sslab.streaming import StreamingFeed, decide_placement, feed_memory_bound

GIB = 2**30


def mapped_images(folder: Path, n: int, shape: tuple[int, int, int], seed: int = 0, chunk: int = 512) -> torch.Tensor:
    """Random uint8 images (n, *shape) written chunk by chunk to a raw file and memory-mapped, as a cache is."""
    rng = np.random.default_rng(seed)
    path = folder / "images.u8"
    with open(path, "wb") as f:
        for i in range(0, n, chunk):
            f.write(rng.integers(0, 256, (min(chunk, n - i), *shape), dtype=np.uint8).tobytes())
    per_image = int(np.prod(shape))
    return torch.from_file(str(path), shared=False, size=n * per_image, dtype=torch.uint8).view(n, *shape)


def test_feed_gives_the_resident_batches_in_the_loops_order(tmp_path):
    images = mapped_images(tmp_path, 103, (3, 8, 8))
    resident = images.clone()
    source = BatchSource(len(images), 16, seed=0, device=torch.device("cpu"))
    with StreamingFeed(images, "cpu", depth=2) as feed:
        for _ in range(3):  # epochs
            order = source.order()
            steps = [source.indices(order, i) for i in range(source.steps_per_epoch)]
            feed.prefetch(steps[0])
            for i, indices in enumerate(steps):
                if i + 1 < len(steps):
                    feed.prefetch(steps[i + 1])  # the next step's batch, gathered while this one runs
                assert torch.equal(feed.batch(indices), resident[indices])
        # a batch that was not prefetched next (a resume, an evaluation) is gathered at once
        feed.prefetch(torch.arange(16))
        odd = torch.tensor([5, 0, 102, 5])
        assert torch.equal(feed.batch(odd), resident[odd])
        assert torch.equal(feed.batch(torch.arange(3)), resident[:3])


def test_streamed_images_index_like_the_tensor_from_any_step_of_an_epoch(tmp_path):
    from sslab.streaming import StreamedImages

    images = mapped_images(tmp_path, 70, (1, 4, 4))
    source = BatchSource(len(images), 8, seed=3, device=torch.device("cpu"))
    with StreamingFeed(images, "cpu") as feed:
        streamed = StreamedImages(feed, source.indices, source.steps_per_epoch)
        for first in (0, 5, 0):  # a fresh epoch, one resumed at its step 5, another fresh one
            order = source.order()
            streamed.start_epoch(order, first)
            for i in range(first, source.steps_per_epoch):
                indices = source.indices(order, i)
                assert torch.equal(streamed[indices], images[indices])
            assert feed._expected == []  # nothing prefetched past the epoch's end


def test_feed_over_rows_of_a_cache_and_errors_reach_the_step(tmp_path):
    images = mapped_images(tmp_path, 50, (1, 4, 4))
    rows = ImageRows(images, torch.arange(1, 50, 2))  # a held-out split that was not copied
    with StreamingFeed(rows, "cpu") as feed:
        wanted = torch.tensor([3, 0, 24])
        feed.prefetch(wanted)
        assert torch.equal(feed.batch(wanted), images[torch.tensor([7, 1, 49])])
        feed.prefetch(torch.tensor([25]))  # outside the 25 rows: the background thread fails...
        with pytest.raises((IndexError, RuntimeError)):
            feed.batch(torch.tensor([25]))  # ...and the step sees the error


def test_rows_index_and_copy_like_the_tensor_they_stand_for(tmp_path):
    images = mapped_images(tmp_path, 40, (3, 2, 2))
    index = torch.tensor([39, 2, 2, 17, 0])
    rows = ImageRows(images, index)
    assert rows.shape == (5, 3, 2, 2) and len(rows) == 5 and rows.dtype == torch.uint8
    assert torch.equal(rows.to("cpu"), images[index]) and torch.equal(rows[1:4], images[index[1:4]])
    assert torch.equal(rows[torch.tensor([4, 0])], images[torch.tensor([0, 39])]) and torch.equal(rows[3], images[17])


@pytest.mark.parametrize("mode, free, resident", [("auto", 40, True), ("auto", 20, False), ("always", 1, True),
                                                  ("never", 80, False)])
def test_placement_by_size_with_the_reason(mode, free, resident):
    # 16 GiB of images on an 80 GiB GPU: the margin kept for the model is 25% of it (20 GiB)
    placement = decide_placement(mode, 16 * GIB, torch.device("cuda", 0), free_and_total=(free * GIB, 80 * GIB))
    assert placement.resident is resident
    assert "16.0 GiB" in placement.reason and ("--data-on-device" in placement.reason)
    if mode == "auto":
        assert f"{free:.1f} GiB free" in placement.reason and "20.0 GiB is kept" in placement.reason


def test_placement_on_the_cpu_and_a_bad_mode():
    cpu = torch.device("cpu")
    assert decide_placement("auto", 10 * GIB, cpu).resident  # the cache is used in place: nothing to copy
    assert not decide_placement("auto", 10 * GIB, cpu, rows_of_cache=True).resident  # a selection would be a copy
    with pytest.raises(ConfigError, match="auto, always, never"):
        decide_placement("sometimes", 1, cpu)


@pytest.mark.parametrize("as_rows", [False, True])
def test_features_from_the_map_equal_features_of_resident_images(tmp_path, as_rows):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    images = mapped_images(tmp_path, 70, (3, 6, 6))
    source = ImageRows(images, torch.arange(69, -1, -1)) if as_rows else images
    resident = source.to("cpu") if as_rows else images.clone()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

    class OtherDevice(ImageRows):  # what the model sees when the images are not on its device: the feed path
        @property
        def device(self):
            return torch.device("meta")

    streamed = OtherDevice(images, source.rows if as_rows else torch.arange(70))
    expected = extract_features(net, resident, mean, std, batch_size=16)
    assert expected.shape == (70, 4)
    assert torch.equal(extract_features(net, streamed, mean, std, batch_size=16), expected)  # chunks fed a chunk ahead
    assert torch.equal(extract_features(net, source, mean, std, batch_size=16, out_device="cpu"), expected)


def test_features_of_images_stored_larger_are_those_of_their_centre_crop():
    from sslab.eval.features import center_crop

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())  # sees every pixel's position
    stored = torch.randint(0, 256, (5, 1, 10, 10), dtype=torch.uint8)
    assert torch.equal(center_crop(stored, 8), stored[..., 1:9, 1:9]) and center_crop(stored, 12) is stored
    cropped = extract_features(net, stored, (0.5,), (0.2,), crop=8)
    assert torch.equal(cropped, extract_features(net, stored[..., 1:9, 1:9].clone(), (0.5,), (0.2,)))


def test_bounded_knn_bank_is_a_stated_stratified_seeded_subset():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    assert bank_rows(labels, None, 0) == (None, None) and bank_rows(labels, 1000, 0) == (None, None)
    rows, note = bank_rows(labels, 100, seed=3)
    assert len(rows) == 100 and torch.equal(rows, rows.sort().values) and len(set(rows.tolist())) == 100
    assert torch.bincount(labels[rows]).tolist() == [60, 30, 10]  # each class keeps its share
    assert torch.equal(bank_rows(labels, 100, seed=3)[0], rows) and not torch.equal(bank_rows(labels, 100, 4)[0], rows)
    assert "stratified subset of 100 of the 1,000 training images (seed 3)" in note


# ---- memory: anonymous memory follows the batch, the data's pages are file-backed --------------------------
def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def stream_everything(images: torch.Tensor, batch: int) -> tuple[int, int, int]:
    """Stream every image once in a random order; (peak RssAnon growth, RssFile growth, bound), in bytes."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    steps = [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]
    bound = feed_memory_bound(batch, images.shape[1:], depth=2)
    file0 = rss_kib("RssFile")
    with StreamingFeed(images, "cpu", depth=2) as feed:
        feed.prefetch(steps[0])  # gathered by the feed's thread: its malloc arena and buffers exist from here on,
        feed.batch(steps[0])  # so what is measured from here is what the data costs
        anon0 = rss_kib("RssAnon")
        peak = anon0
        feed.prefetch(steps[1])
        for i, indices in enumerate(steps[1:], start=1):
            if i + 1 < len(steps):
                feed.prefetch(steps[i + 1])
            x = feed.batch(indices)
            assert x.shape[0] == batch
            peak = max(peak, rss_kib("RssAnon"))
        grown_file = rss_kib("RssFile") - file0
    return 1024 * (peak - anon0), 1024 * grown_file, bound


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon is Linux's")
def test_streaming_a_cache_holds_a_few_batches_of_anonymous_memory(tmp_path):
    images = mapped_images(tmp_path, 2400, (3, 96, 96))  # 66 MB: 37 batches of 64
    anon, file_backed, bound = stream_everything(images, batch=64)
    assert anon <= bound + 16 * 2**20, (anon, bound)  # a few batches (+ allocator slack), not the 66 MB
    assert file_backed >= 0.8 * images.numel()  # the images were read through the map: page-cache pages


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon is Linux's")
def test_streaming_a_3_gb_cache_holds_a_few_batches_of_anonymous_memory(tmp_path):

    if shutil.disk_usage(tmp_path).free < 4 * GIB:
        pytest.skip("needs 4 GB of free disk for a 3 GB cache")
    images = mapped_images(tmp_path, 20_000, (3, 224, 224))  # 3.0 GB, 224 px
    anon, file_backed, bound = stream_everything(images, batch=128)
    assert anon <= bound + 32 * 2**20, (anon, bound)
    print(f"3.0 GB cache streamed in batches of 128: RssAnon grew {anon / 2**20:.0f} MiB (bound {bound / 2**20:.0f} "
          f"MiB), RssFile {file_backed / 2**30:.2f} GiB")


def test_bench_scale_runs_in_miniature(tmp_path):
    """bench/scale.py --smoke (feed and memory stages) cannot rot between the measurements for the docs."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("scale", Path(__file__).resolve().parents[1] / "bench" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    out = tmp_path / "scale.json"
    assert scale.main(["--smoke", "--stages", "feed,memory", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    stages = json.loads(out.read_text())["stages"]
    assert stages["feed"]["224px"]["streamed_images_per_s"] > 0 and stages["memory"]["images"] > 0
    if sys.platform.startswith("linux"):
        assert stages["memory"]["rss_anon_peak_growth_mib"] <= stages["memory"]["bound_mib"] + 16


# ---- the train loop: streamed and resident runs are the same run ---------------------------------------------------
E2E_STEPS = 10  # per epoch: --limit-train 640 at --batch-size 64


def digits_npz(folder: Path) -> Path:
    """scikit-learn's digits as an .npz: 640 training and 160 test images, decoded into a mapped cache."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255 / 16)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "digits.npz", x_train=x[:640], y_train=d.target[:640], x_test=x[640:800],
             y_test=d.target[640:800])
    return folder / "digits.npz"


def train_digits(out: Path, name: str, placement: str, capsys, resume: bool = False, stop_at: int | None = None,
                 observe=None):
    """`sslab train` in this process on digits (simple-cnn, 2 epochs of 10 steps); (exit code, stdout+stderr).
    `stop_at`: SIGINT after that global step; `observe(loop, global_step)`: called after every step."""
    import contextlib
    import signal

    from sslab import cli
    from sslab.kit import STEP_OBSERVERS

    sys.path.insert(0, str(Path(__file__).parent / "hooks"))
    from signal_at_step import signal_at_step

    data = out / "data" / "digits.npz"
    if not data.exists():
        digits_npz(data.parent)
    args = ["train", "--resume", str(out / name)] if resume else [
        "train", "--method", "simsiam", "--dataset", "npz", "--data-dir", str(data), "--backbone", "simple-cnn",
        "--proj-hidden", "64", "--proj-dim", "64", "--pred-hidden", "16", "--batch-size", "64", "--epochs", "2",
        "--lr", "0.3", "--knn-k", "20", "--no-progress", "--device", "cpu", "--cache-dir", str(out / "cache"),
        "--out", str(out), "--name", name]
    STEP_OBSERVERS.extend([observe] if observe else [])
    try:
        with signal_at_step(stop_at, signal.SIGINT) if stop_at else contextlib.nullcontext():
            code = cli.main([*args, "--data-on-device", placement])
    finally:
        if observe:
            STEP_OBSERVERS.remove(observe)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def same_run(a: Path, b: Path) -> None:
    """metrics.jsonl (but the wall-clock figures) and the last checkpoint's weights and optimiser state: equal."""
    import json

    timing = {"epoch_seconds", "knn_seconds", "images_per_second"}
    lines = [[{k: v for k, v in json.loads(line).items() if k not in timing}
              for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert lines[0] == lines[1] and len(lines[0]) == 3  # epoch 0 (the baselines), 1, 2: loss, kNN, z_std, lr
    ca, cb = (torch.load(run / "checkpoints" / "last.pt", weights_only=True) for run in (a, b))
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor))


def test_streamed_runs_equal_resident_runs_bitwise_also_after_a_resume(tmp_path, capsys):
    code, out = train_digits(tmp_path, "resident", "always", capsys)
    assert code == 0 and "data on the device (" in out and "as --data-on-device always asks" in out, out
    cache = tmp_path / "cache"
    assert [p for p in cache.iterdir() if p.is_dir()]  # the mapped cache entry the runs read

    def remove_cache(loop, global_step: int) -> None:  # a cleanup job, another user: the mapped pages stay readable
        if global_step == 5:
            shutil.rmtree(cache)

    code, out = train_digits(tmp_path, "streamed", "never", capsys, observe=remove_cache)
    assert code == 0 and "data streamed from the memory-mapped cache (" in out and not cache.exists(), out
    same_run(tmp_path / "streamed", tmp_path / "resident")
    # stopped mid-epoch 2 (a mid-epoch checkpoint with its order), resumed streamed: the same run again
    code, out = train_digits(tmp_path, "stopped", "never", capsys, stop_at=E2E_STEPS + 3)
    assert code == 130, out
    code, out = train_digits(tmp_path, "stopped", "never", capsys, resume=True)
    assert code == 0 and "resuming" in out and "step 3" in out, out
    same_run(tmp_path / "stopped", tmp_path / "resident")


def test_knn_monitor_bounds_its_bank_and_the_pixel_baseline_and_says_so(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from sslab import pretrain
    from sslab.data.base import ImageData
    from sslab.eval.baselines import pixel_knn_accuracy
    from sslab.eval.knn import knn_accuracy

    torch.manual_seed(0)
    images = mapped_images(tmp_path, 400, (1, 6, 6))
    labels = torch.arange(400) % 4
    data = ImageData("toy", ImageRows(images, torch.arange(300)), labels[:300], images[300:], labels[300:],
                     ["a", "b", "c", "d"])
    model = SimpleNamespace(backbone=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 8)))
    monkeypatch.setattr(pretrain, "KNN_BANK_MAX", 120)
    lines: list[str] = []
    fp32 = pretrain.dev.Precision.for_device("fp32", torch.device("cpu"))
    monitor = pretrain.KnnMonitor(model, data, k=5, t=0.1, precision=fp32, channels_last=False, seed=1,
                                  log=lines.append)
    assert lines == ["kNN bank: a stratified subset of 120 of the 300 training images (seed 1), each class in its "
                     "share"]
    rows = monitor.rows
    assert len(rows) == 120 and torch.bincount(labels[rows]).tolist() == [30] * 4
    bank = extract_features(model.backbone, images[rows], data.mean, data.std)
    queries = extract_features(model.backbone, images[300:], data.mean, data.std)
    assert monitor() == knn_accuracy(bank, labels[rows], queries, labels[300:], 4, 5, 0.1)  # the subset's, exactly
    assert monitor.pixels(lines.append) == pixel_knn_accuracy(images[rows], labels[rows], images[300:], labels[300:],
                                                             4, 5, 0.1)
    monkeypatch.setattr(pretrain, "PIXEL_KNN_MAX_BYTES", 4 * 36 * 200)  # 220 images' float32 pixels do not fit
    assert monitor.pixels(lines.append) is None and lines[-1].startswith("kNN of the raw pixels skipped")


def test_images_stored_larger_train_on_views_and_features_at_the_training_size(tmp_path, monkeypatch):
    from sslab import pretrain
    from sslab.config import Config
    from sslab.data.base import ImageData

    shapes: list[tuple] = []

    class SpyViews(pretrain.ViewMaker):
        def __call__(self, x, generator=None):
            views = super().__call__(x, generator)
            shapes.append((tuple(x.shape[-2:]), *(tuple(v.shape[-2:]) for v in views)))
            return views

    seen: list[int | None] = []
    features = pretrain.extract_features
    monkeypatch.setattr(pretrain, "ViewMaker", SpyViews)
    monkeypatch.setattr(pretrain, "extract_features", lambda *a, crop=None, **k: seen.append(crop) or features(
        *a, crop=crop, **k))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (160, 3, 24, 24), dtype=torch.uint8, generator=g)
    y = torch.arange(160) % 2
    data = ImageData("toy", x[:128], y[:128], x[128:], y[128:], ["a", "b"], crop_size=16)
    cfg = Config.from_values({"method": "simclr", "backbone": "simple-cnn", "batch_size": 64, "epochs": 1,
                              "knn_k": 5, "progress": False, "device": "cpu", "out": str(tmp_path)})
    pretrain.fit(cfg, data=data, log=lambda line: None)
    assert shapes and all(s == ((24, 24), (16, 16), (16, 16)) for s in shapes)  # stored 24 px, cropped to 16
    assert seen and set(seen) == {16}  # the kNN monitor's features: the centre 16 x 16 of each stored image


def test_out_of_memory_with_the_data_forced_onto_the_device_advises_streaming(tmp_path, capsys, monkeypatch):
    from sslab import pretrain

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 193.00 GiB")

    monkeypatch.setattr(pretrain.ImageData, "to", no_room)  # copying the data to the device is what fails
    code, out = train_digits(tmp_path, "oom", "always", capsys)
    assert code == 2 and out.strip().splitlines()[-1] == (
        "sslab: error: out of memory on the GPU; --data-on-device always holds the whole dataset on the device; use "
        "auto (streams it from host memory when it does not fit) or never"), out
