"""Issue #22: every traceback and every wrong piece of advice an attack run found ends in one `sslab: error:`
line with exit code 2, or in a correct result. Each case is built as the issue describes it (docs/reliability.md
lists the messages)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import test_reliability as reliability
from sslab.checkpoint import load_checkpoint, save_checkpoint
from sslab.config import Config
from sslab.errors import ConfigError, DataError

DIGITS = ["--dataset", "digits"]


def assert_one_line(code: int, err: str, expected: str) -> None:
    reliability.assert_one_line(code, err, expected)
    assert err.startswith("sslab: error: "), err


run_cli = reliability.run_cli


def quick(data_args: list, out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "simsiam", *data_args, "--backbone", "simple-cnn", "--proj-hidden", "16",
            "--proj-dim", "16", "--pred-hidden", "8", "--batch-size", "16", "--epochs", "1", "--knn-every", "0",
            "--no-progress", "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_run(out: Path) -> Path:
    """A finished 1-epoch run on 96 digits (3 steps of 32), trained on one thread: OUT/run."""
    from sslab.pretrain import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(Config.from_dict({"data": {"dataset": "digits", "limit_train": 96, "limit_test": 40},
                              "model": {"backbone": "simple-cnn"},
                              "method": {"method": "simsiam", "proj_hidden": 16, "proj_dim": 16, "pred_hidden": 8},
                              "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "knn_every": 0, "progress": False,
                                        "out": str(out), "name": "run"}}), log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return out / "run"


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    """tiny_run's folder; tests work on copies (`run_copy`)."""
    return tiny_run(tmp_path_factory.mktemp("bad-input"))


@pytest.fixture
def run_copy(done_run, tmp_path) -> Path:
    shutil.copytree(done_run, tmp_path / "run")
    return tmp_path / "run"


def write_png_folder(root: Path, classes: list[str], per_class: int = 12, size: int = 8, pixel=None) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = pixel(c) if pixel else rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(image, "RGB").save(root / c / f"{i}.png")
    return root


# ---- text from users is shown literally; images too small; a constant channel ---------------------------------------
MATHS_NAMES = ["$\\foo{$", "b$x$"]  # folder names matplotlib would read as (broken) maths


def test_class_names_are_drawn_literally_in_every_figure_kind(tmp_path):
    import matplotlib.pyplot as plt

    from sslab.analysis.figures import confusion_figure, scatter_by_class

    kept = []
    real_close = plt.close
    plt.close = lambda fig=None: kept.append(fig)  # keep them to look at the text drawn
    try:
        confusion_figure(np.array([[3, 1], [0, 4]]), MATHS_NAMES, tmp_path / "confusion.png", "run $\\x{$ title")
        scatter_by_class(np.random.default_rng(0).normal(size=(6, 2)), np.array([0, 1, 0, 1, 0, 1]), MATHS_NAMES,
                         tmp_path / "scatter.png", "t-SNE", "1", "2")
    finally:
        plt.close = real_close
    assert (tmp_path / "confusion.png").stat().st_size > 0 and (tmp_path / "scatter.png").stat().st_size > 0
    texts = [t.get_text() for fig in kept for t in fig.findobj(lambda a: hasattr(a, "get_parse_math"))]
    assert "$\\foo{$" in texts and "run $\\x{$ title" in texts
    for fig in kept:
        real_close(fig)


def test_analyze_and_attention_on_maths_class_names_and_no_test_images(tmp_path, capsys):
    data = write_png_folder(tmp_path / "data", MATHS_NAMES)
    code, err = run_cli(quick(["--dataset", "folder", "--data-dir", data], tmp_path / "runs", "--name", "m",
                              "--test-fraction", "0"), capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "m"
    code, err = run_cli(["analyze", run, "--device", "cpu", "--max-points", "10", "--map-size", "200", "--n-init", "1"],
                        capsys)
    assert code == 0, err  # was a ParseFatalException, then a reshape of the empty test split
    analysis = json.loads((run / "analysis.json").read_text())
    assert analysis["kmeans"]["baselines"]["pixels"] is None  # no labelled test image to score the baselines on
    code, err = run_cli(["attention", run, "--device", "cpu", "-n", "2", "--split", "train"], capsys)
    assert code == 0, err


def test_images_too_small_for_the_backbone_are_one_line(tmp_path, capsys):
    data = write_png_folder(tmp_path / "data", ["a", "b"], size=1)
    assert_one_line(*run_cli(quick(["--dataset", "folder", "--data-dir", data], tmp_path / "runs"), capsys),
                    "simple-cnn needs images of at least 8x8 pixels (it halves them 3 times), these are 1x1; pass "
                    "--image-size 8 or more, or use --backbone resnet18")


def test_a_constant_channel_has_a_floored_std_and_finite_views():
    from sslab.augment import Augmenter
    from sslab.recipe import fit_augment
    from sslab.data.base import STD_FLOOR, ImageData

    black_and_red = torch.zeros(8, 3, 8, 8, dtype=torch.uint8)
    black_and_red[4:, 0] = 255  # green and blue are 0 everywhere: std 0 (was a ZeroDivisionError)
    data = ImageData("folder", black_and_red, torch.tensor([0] * 4 + [1] * 4), black_and_red[:0],
                     torch.zeros(0, dtype=torch.int64), ["black", "red"])
    assert data.std[1] == data.std[2] == STD_FLOOR and data.std[0] == pytest.approx(0.5, abs=1e-3)
    augment = Augmenter(fit_augment(Config.from_values({"method": "simsiam"}), 8), 8, data.mean, data.std)
    views = augment(black_and_red, torch.Generator().manual_seed(0))
    assert torch.isfinite(views).all()


# ---- damaged or hostile data files ----------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, dims: tuple[int, ...] | None = None) -> None:
    dims = dims or array.shape
    path.write_bytes(bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + array.tobytes())


def idx_folder(root: Path, train_labels: np.ndarray, test_dims: tuple[int, ...] | None = None) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (len(train_labels), 8, 8), dtype=np.uint8))
    write_idx(root / "train-labels-idx1-ubyte", train_labels.astype(np.uint8))
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), test_dims)
    write_idx(root / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 20).astype(np.uint8))
    return root


@pytest.mark.parametrize("knn", ["1", "0"])
def test_idx_labels_outside_the_classes_are_one_line_with_or_without_knn(knn, tmp_path, capsys):
    labels = np.arange(64) % 10
    labels[5] = 200
    data = idx_folder(tmp_path / "mnist", labels)
    assert_one_line(*run_cli(quick(["--dataset", "mnist", "--data-dir", data], tmp_path / "runs", "--knn-every", knn),
                             capsys),
                    f"{data / 'train-labels-idx1-ubyte'} has labels outside 0..9 (200); replace it with the official file")


def test_an_idx_header_whose_size_overflows_is_one_line(tmp_path, capsys):
    data = idx_folder(tmp_path / "mnist", np.arange(64) % 10, test_dims=(2**32 - 1, 2**32 - 1, 2**31))
    assert_one_line(*run_cli(quick(["--dataset", "mnist", "--data-dir", data], tmp_path / "runs"), capsys),
                    "t10k-images-idx3-ubyte is 1296 bytes but its header says 39614081238685424725209907216 (dims "
                    "(4294967295, 4294967295, 2147483648)): it is truncated or damaged")


def test_an_npz_label_far_outside_is_a_data_error_not_out_of_memory(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.arange(100) % 10
    y[0] = 10**9
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (100, 8, 8), dtype=np.uint8), y_train=y,
             x_test=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_test=np.zeros(20, dtype=np.int64))
    assert_one_line(*run_cli(quick(["--dataset", "npz", "--data-dir", tmp_path / "d.npz"], tmp_path / "runs"), capsys),
                    "d.npz: a label is 1000000000; labels are class numbers 0..K-1, at most 99,999 without a 'classes' "
                    "array naming them; fix the labels")


def test_labels_outside_the_classes_are_refused_and_a_cache_holding_them_is_decoded_again(tmp_path):
    from sslab.data.base import ImageData
    from sslab.data.cache import ARRAYS, in_memory_build, load_or_build

    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(DataError, match="labels span 0..7 but there are 2 classes"):
        ImageData("d", x, torch.tensor([0, 1, 7, 1]), x[:0], torch.zeros(0, dtype=torch.int64), ["a", "b"])
    good = ImageData("d", x, torch.tensor([0, 1, 0, 1]), x[:0], torch.zeros(0, dtype=torch.int64), ["a", "b"])
    entry = tmp_path / "d"
    load_or_build(entry, in_memory_build(lambda: good), lambda: good, resumable=False)
    np.array([0, 1, 99, 1], dtype=np.int64).tofile(entry / ARRAYS["train_y"][0])  # the cache damaged in place
    data = load_or_build(entry, in_memory_build(lambda: good), lambda: good, resumable=False)
    assert data.train_y.tolist() == [0, 1, 0, 1]
    assert load_or_build(entry, in_memory_build(lambda: None), lambda: None, resumable=False).train_y.tolist() == [
        0, 1, 0, 1]  # rewritten


def test_running_out_of_memory_while_decoding_is_not_an_unreadable_image(tmp_path, monkeypatch):
    import sslab.data.folder as folder
    from sslab.data import load_dataset

    root = write_png_folder(tmp_path / "data", ["a", "b"], per_class=4)
    real = folder.read_image
    monkeypatch.setattr(folder, "read_image", lambda p, s=None: real(p, s) if p.name != "2.png" else _raise(MemoryError))
    with pytest.raises(DataError, match=r"out of memory while decoding .*2.png; without --image-size each image is "
                                        r"decoded at its own size: pass --image-size 96"):
        load_dataset("folder", root, cache=False)


def _raise(error):
    raise error


# ---- files in a run folder that sslab wrote, damaged or replaced -----------------------------------------------------
@pytest.mark.parametrize("name", ["eval.json", "summary.json", "analysis.json", "scan/scan.json",
                                  "attention/attention.json"])
def test_json_files_holding_a_list_are_read_as_missing(name, run_copy, capsys):
    (run_copy / name).parent.mkdir(exist_ok=True)
    (run_copy / name).write_text("[1, 2]")
    code, err = run_cli(["report", run_copy], capsys)
    assert code == 0, err
    if name == "eval.json":
        code, err = run_cli(["eval", run_copy, "--device", "cpu", "--protocol", "fast"], capsys)
        assert code == 0, err


def test_a_damaged_kmeans_cache_is_computed_again(tmp_path):
    from sslab.eval.clustering import KMEANS_CACHE, cached_kmeans, kmeans_fit

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(60, 4)), rng.normal(size=(20, 4))
    expected = kmeans_fit(train, test, 3, 0, 2)
    good = cached_kmeans(tmp_path, "learned", train, test, 3, 0, 2)
    raw = (tmp_path / KMEANS_CACHE).read_bytes()
    with np.load(tmp_path / KMEANS_CACHE) as z:
        arrays = dict(z)
    wrong = {**arrays, "learned/train": np.full(60, 7), "learned/test": np.zeros(3, dtype=np.int64)}
    for damage in (raw[: len(raw) // 2], b"garbage", raw[:30] + b"\0" * 100 + raw[130:], None):
        if damage is None:  # a well-formed file whose assignments do not fit the features
            np.savez(tmp_path / KMEANS_CACHE, **wrong)
        else:
            (tmp_path / KMEANS_CACHE).write_bytes(damage)
        got = cached_kmeans(tmp_path, "learned", train, test, 3, 0, 2)
        assert all(np.array_equal(got[k], expected[k]) and np.array_equal(got[k], good[k]) for k in ("train", "test"))


def test_a_mismatched_init_checkpoint_falls_back_to_the_seed(run_copy):
    from sslab.eval.baselines import untrained_method
    from sslab.pretrained import load_trained

    trained = load_trained(run_copy, "cpu")
    info = trained.data_info
    _, source = untrained_method(run_copy, trained.cfg, info["channels"], info["image_size"], trained.device)
    assert source.startswith("checkpoints/init.pt")
    init = load_checkpoint(run_copy / "checkpoints" / "init.pt")
    init["model"] = {k: v for i, (k, v) in enumerate(init["model"].items()) if i % 2}  # half the weights
    save_checkpoint(init, run_copy / "checkpoints" / "init.pt")
    model, source = untrained_method(run_copy, trained.cfg, info["channels"], info["image_size"], trained.device)
    assert "rebuilt from the config's seed 0: checkpoints/init.pt does not fit this run's model (RuntimeError" in source
    (run_copy / "checkpoints" / "init.pt").unlink()
    rebuilt, _ = untrained_method(run_copy, trained.cfg, info["channels"], info["image_size"], trained.device)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))


@pytest.mark.parametrize("change, expected", [
    ({"epoch": -5}, "the checkpoint's loop state is damaged: epoch is -5, not a count of finished epochs (0 or more)"),
    ({"step_in_epoch": 10**6}, "step_in_epoch is 1000000, outside 0..2 (3 steps per epoch of 96 images at "
                               "--batch-size 32)"),
    ({"step_in_epoch": 1, "perm": torch.randperm(50)}, "its sample order holds 50 indices, not an order of the 96 "
                                                       "training images"),
    ({"step_in_epoch": 1, "perm": torch.zeros(96, dtype=torch.int64)}, "not an order of the 96 training images"),
    ({"step_in_epoch": 1, "perm": None}, "a mid-epoch checkpoint without its sample order"),
])
def test_a_checkpoint_whose_loop_state_does_not_fit_the_data_is_one_line(change, expected, run_copy, capsys):
    state = load_checkpoint(run_copy / "checkpoints" / "last.pt")
    state.pop("format")
    state["loop"].update(change)
    save_checkpoint(state, run_copy / "checkpoints" / "last.pt")
    assert_one_line(*run_cli(["train", "--resume", run_copy, "--epochs", "2"], capsys), expected)


def test_a_scan_stage_file_whose_settings_are_a_list_is_one_line(run_copy, capsys):
    save_checkpoint({"settings": [1, 2], "done": True}, run_copy / "scan" / "neighbors.pt")
    assert_one_line(*run_cli(["scan", run_copy, "--device", "cpu"], capsys),
                    f"{run_copy / 'scan' / 'neighbors.pt'} is not a SCAN mine stage file written by sslab (its settings "
                    "are a list); pass --restart mine to redo the stage")


def test_a_kill_during_the_first_checkpoint_write_leaves_no_temp_file_after_resume(run_copy, capsys):
    checkpoints = run_copy / "checkpoints"
    for name in ("last.pt", "init.pt"):
        (checkpoints / name).unlink()
    (checkpoints / ".last.pt.0a1b2c3d4e5f.tmp").write_bytes(b"half a checkpoint")
    (checkpoints / ".init.pt.0a1b2c3d4e5f.tmp").write_bytes(b"half")
    (run_copy / ".metrics.jsonl.0a1b2c3d4e5f.tmp").write_bytes(b"{")
    code, err = run_cli(["train", "--resume", run_copy], capsys)
    assert code == 0, err
    assert not list(run_copy.rglob("*.tmp")) and load_checkpoint(run_copy)["loop"]["epoch"] == 1


# ---- where output goes: wrong advice before --------------------------------------------------------------------------
def test_export_to_a_file_or_into_a_read_only_run_is_one_line_with_the_right_advice(run_copy, tmp_path, capsys,
                                                                                    monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    assert_one_line(*run_cli(["export", run_copy, "--out", tmp_path / "file"], capsys),
                    f"--out folder {tmp_path / 'file'} is a file, not a folder; choose a writable --out folder")
    reliability.read_only(monkeypatch, run_copy)
    assert_one_line(*run_cli(["export", run_copy], capsys),
                    f"cannot write to run folder {run_copy} (Read-only file system); make it writable")


def test_preview_augment_into_a_folder_a_file_or_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    preview = ["preview-augment", "--dataset", "digits", "-n", "2", "--out"]
    (tmp_path / "folder.png").mkdir()
    assert_one_line(*run_cli(preview + [tmp_path / "folder.png"], capsys),
                    f"could not write {tmp_path / 'folder.png'}: it is a folder; give a file name")
    (tmp_path / "file").write_text("x")
    assert_one_line(*run_cli(preview + [tmp_path / "file" / "p.png"], capsys),
                    f"could not make the folder {tmp_path / 'file'}: a file has that name")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    assert_one_line(*run_cli(preview + [tmp_path / "p.png"], capsys),
                    f"could not write {tmp_path / 'p.png'} (No space left on device); free disk space")
    assert not list(tmp_path.glob(".p.png.*"))


def test_analyze_with_an_impossible_map_size_names_the_flag(run_copy, capsys):
    assert_one_line(*run_cli(["analyze", run_copy, "--device", "cpu", "--map-size", "200000"], capsys),
                    "--map-size must be in 200..8000 pixels, not 200000")


def test_a_name_that_is_a_link_to_a_folder_elsewhere_is_refused(tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert_one_line(*run_cli(quick(DIGITS, tmp_path / "runs", "--name", "mine", "--limit-train", "64"), capsys),
                    f"{tmp_path / 'runs' / 'mine'} is a symbolic link (to {tmp_path / 'elsewhere'}); a run folder is "
                    "made inside --out, never through a link")
    assert not list((tmp_path / "elsewhere").iterdir())


# ---- messages that cannot span two lines ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["spe\ned", "a\rb", "x\u2028y", "tab\x1cbed"])
def test_an_unknown_key_holding_a_line_break_is_one_line(key, tmp_path, capsys):
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"train": {key: 1}})
    assert len(str(e.value).splitlines()) == 1 and repr(key)[1:-1] in str(e.value)
    (tmp_path / "c.yaml").write_text(json.dumps({"train": {key: 1}}))
    code, err = run_cli(quick(DIGITS, tmp_path / "runs", "--config", tmp_path / "c.yaml"), capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
