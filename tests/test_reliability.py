"""Reliability: exact resume after SIGINT/SIGTERM/SIGKILL, the last good checkpoint kept on NaN, the collapse
warning, and one clear line with exit code 2 for every bad input (docs/reliability.md lists them)."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslab import cli
from sslab.checkpoint import load_checkpoint, save_checkpoint
from sslab.config import Config
from sslab.errors import CheckpointError
from sslab.methods.base import negative_cosine
from sslab.methods.simsiam import SimSiam
from sslab.models.heads import mlp
from sslab.registry import METHODS
from sslab.resume import read_config
from sslab.run import RunDir
from sslab.kit import StopFlag as SignalFlag
from sslab.pretrain import Interrupted, NonFiniteLoss, fit

SRC = Path(__file__).resolve().parents[1] / "src"
HOOKS = Path(__file__).resolve().parent / "hooks"  # the test signal hook (SSLAB_TEST_SIGNAL_AT_STEP)
TIMING = {"epoch_seconds", "knn_seconds", "images_per_second"}  # wall-clock: differ between any two runs
N_TRAIN, BATCH = 1200, 64
STEPS = N_TRAIN // BATCH  # 18 steps per epoch


def digits_npz(folder: Path) -> Path:
    """scikit-learn's digits as an .npz (the subprocesses then skip importing scikit-learn)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255 / 16)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "digits.npz"
    np.savez(path, x_train=x[:N_TRAIN], y_train=d.target[:N_TRAIN], x_test=x[N_TRAIN:1500], y_test=d.target[N_TRAIN:1500])
    return path


def train_args(data: Path, out: Path, name: str, epochs: int = 3) -> list[str]:
    return ["train", "--method", "simsiam", "--dataset", "npz", "--data-dir", str(data), "--backbone", "simple-cnn",
            "--proj-hidden", "64", "--proj-dim", "64", "--pred-hidden", "16", "--batch-size", str(BATCH),
            "--epochs", str(epochs), "--lr", "0.3", "--knn-k", "20", "--no-progress", "--device", "cpu",
            "--out", str(out), "--name", name]


def sslab(args: list[str], wait: bool = True, **env: str):
    """`python -m sslab ARGS` in a subprocess (a CompletedProcess, or with wait=False the running Popen)."""
    full_env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HOOKS}", "OMP_NUM_THREADS": "1", **env}
    if "SSLAB_TEST_SIGNAL_AT_STEP" not in env:
        full_env.pop("SSLAB_TEST_SIGNAL_AT_STEP", None)
    cmd = [sys.executable, "-m", "sslab", *args]
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


CASES = {  # signal -> (after global step, exit code, (epoch, step_in_epoch) of the checkpoint it leaves)
    "SIGINT": (STEPS + 7, 130, (1, 7)),  # mid-epoch 2: a mid-epoch checkpoint
    "SIGTERM": (STEPS, 143, (1, 0)),  # the last step of epoch 1: the epoch ends, is checkpointed, the run stops
    "SIGKILL": (2 * STEPS + 8, -9, (2, 0)),  # mid-epoch 3: no chance to save; resumes from the end of epoch 2
}


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory):
    """The uninterrupted reference run and the three interrupted runs, started together (they are independent)."""
    root = tmp_path_factory.mktemp("resume")
    data = digits_npz(root / "data")
    procs = {"reference": sslab(train_args(data, root / "runs", "reference"), wait=False)}
    for sig, (at_step, _, _) in CASES.items():
        procs[sig] = sslab(train_args(data, root / "runs", f"stopped-{sig}"), wait=False,
                           SSLAB_TEST_SIGNAL_AT_STEP=f"{at_step}:{sig}")
    yield root / "runs", procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()


def finished(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def reference(first_runs):
    runs, procs = first_runs
    p = finished(procs["reference"])
    assert p.returncode == 0, p.stderr
    return runs / "reference"


def assert_same_run(run: Path, ref: Path) -> None:
    assert metrics(run) == metrics(ref)  # loss, knn_top1, z_std, lr, step: bitwise equal on the CPU
    a = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(ref / "checkpoints" / "last.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor))
    summary, ref_summary = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
    for key in ("final_loss", "knn_top1_init", "knn_top1", "knn_top1_best"):
        assert summary[key] == ref_summary[key]
    # no duplicate epochs after resuming (epoch scalars are logged at the global step of the epoch's end)
    assert [s for s, _ in tensorboard_scalars(run, "train/loss")] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert [v for _, v in tensorboard_scalars(run, "train/loss")] == pytest.approx(
        [r["loss"] for r in metrics(ref) if r["epoch"] >= 1])
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow  # minutes of the default suite on 2 cores (CI's 10-minute budget); run with -m slow
@pytest.mark.parametrize("sig", list(CASES))
def test_interrupted_and_resumed_run_ends_as_the_uninterrupted_one(first_runs, reference, sig):
    runs, procs = first_runs
    at_step, returncode, position = CASES[sig]
    p = finished(procs[sig])
    assert p.returncode == returncode, p.stderr
    run = runs / f"stopped-{sig}"
    if sig != "SIGKILL":
        assert p.stderr.strip().splitlines()[-1] == (f"sslab: interrupted by {sig}; checkpoint saved; continue "
                                                     f"with: sslab train --resume {run}")
    state = load_checkpoint(run)
    assert (state["loop"]["epoch"], state["loop"]["step_in_epoch"]) == position
    if sig == "SIGINT":  # interrupt the resumed run once more, in epoch 3
        p = sslab(["train", "--resume", str(run)], SSLAB_TEST_SIGNAL_AT_STEP=f"{2 * STEPS + 3}:SIGTERM")
        assert p.returncode == 143 and f"resuming {run} at epoch 2, step 7" in p.stdout, p.stderr
    if sig == "SIGKILL":  # what a kill during a checkpoint write leaves: a temp file beside an intact last.pt
        (run / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    p = sslab(["train", "--resume", str(run)])
    assert p.returncode == 0, p.stderr
    assert_same_run(run, ref=reference)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_the_gpu_is_within_run_to_run_noise(tmp_path):
    """On CUDA some kernels are nondeterministic, so two uninterrupted runs already differ: a resumed run must be
    no further from the first run than the second run is (3x, with a floor of 1e-4), and kNN within 2 points."""
    data = digits_npz(tmp_path / "data")
    gpu = lambda name: [a if a != "cpu" else "cuda" for a in train_args(data, tmp_path / "runs", name)]  # noqa: E731
    for name in ("a", "b"):
        assert sslab(gpu(name)).returncode == 0
    assert sslab(gpu("c"), SSLAB_TEST_SIGNAL_AT_STEP=f"{STEPS + 7}:SIGINT").returncode == 130
    assert sslab(["train", "--resume", str(tmp_path / "runs" / "c")]).returncode == 0
    a, b, c = (metrics(tmp_path / "runs" / name) for name in "abc")
    for ra, rb, rc in zip(a, b, c):
        assert abs(rc["loss"] - ra["loss"]) <= max(3 * abs(rb["loss"] - ra["loss"]), 1e-4)
        assert abs(rc["knn_top1"] - ra["knn_top1"]) <= 0.02


def test_signal_before_training_starts_stops_at_once():
    with pytest.raises(Interrupted, match="before training started"), SignalFlag():
        os.kill(os.getpid(), signal.SIGTERM)
    with SignalFlag() as flag:  # armed (a checkpoint exists): the signal only sets the flag
        flag.arm()
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt), SignalFlag() as flag:  # a second SIGINT aborts at once
        flag.arm()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_keyboard_interrupt_during_a_checkpoint_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"x": 1}, path)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"x": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["x"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ---- numerical faults ------------------------------------------------------------------------------------
def tiny_config(method: str, out: Path, optim: dict | None = None, **train) -> Config:
    return Config.from_dict({
        "data": {"dataset": "digits"}, "model": {"backbone": "simple-cnn"}, "optim": optim or {},
        "method": {"method": method, "proj_hidden": 64, "proj_dim": 64, "pred_hidden": 16},
        "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "knn_every": 0, "progress": False, "out": str(out),
                  "name": method, **train}})


@pytest.fixture(autouse=True)
def one_thread():
    """In-process training on one thread, as the subprocesses (OMP_NUM_THREADS=1): no contention on a busy CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def test_method():
    """Register a method for one test, and remove it after (registry-parametrised tests must not see it)."""
    names = []

    def register(name, cls):
        METHODS.register(name)(cls)
        names.append(name)

    yield register
    for name in names:
        METHODS._entries.pop(name)


class NaNInEpoch2(SimSiam):
    """SimSiam whose loss turns NaN from its 26th step: in epoch 2 (the 1438 training digits make 22 steps of 64)."""

    def forward(self, views, clean=None):
        out = super().forward(views, clean)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 25:
            out["loss"] = out["loss"] * float("nan")
        return out


class NoStopGradient(SimSiam):
    """SimSiam without the stop-gradient and without the projector's output BN: it collapses (Chen & He, Fig. 2)."""

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden, cfg.proj_dim])

    def forward(self, views, clean=None):
        z1, z2 = (self.projector(self.backbone(x)) for x in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return {"loss": negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2, "z": z1.detach()}


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, test_method):
    test_method("test-nan", NaNInEpoch2)
    cfg = tiny_config("test-nan", tmp_path, checkpoint_every=1)
    with pytest.raises(NonFiniteLoss, match=r"the loss became nan in epoch 2; stopped; the last good checkpoint "
                                            r"\(end of epoch 1\) is kept in .*last.pt; start a new run with a lower --lr"):
        fit(cfg, log=lambda s: None)
    run = RunDir(tmp_path / "test-nan")
    last, epoch1 = load_checkpoint(run.last_checkpoint), load_checkpoint(run.checkpoints_dir / "epoch_0001.pt")
    assert last["loop"]["epoch"] == 1
    assert all(torch.equal(last["model"][k], epoch1["model"][k]) and torch.isfinite(last["model"][k].float()).all()
               for k in last["model"])
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1]


def test_absurd_lr_gives_one_line_and_exit_2(tmp_path, capsys, test_method):
    args = ["train", "--backbone", "simple-cnn", "--proj-hidden", "64", "--proj-dim", "64", "--pred-hidden", "16",
            "--batch-size", "64", "--epochs", "2", "--knn-every", "0", "--no-progress", "--device", "cpu", "--out",
            str(tmp_path), "--name", "r"]
    code = cli.main([*args, "--method", "simsiam", "--lr", "1e30"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "sslab: error: --lr 1e+30: must be in (0, 100]"  # refused before any work
    test_method("test-nan", NaNFromTheStart)  # a loss that becomes NaN: stopped in one line, the start kept
    code = cli.main([*args, "--method", "test-nan"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("sslab: error: the loss became nan in epoch 1; stopped; the last good checkpoint "
                          "(the initial weights) is kept")
    assert load_checkpoint(tmp_path / "r")["loop"]["epoch"] == 0


class NaNFromTheStart(SimSiam):
    def forward(self, views, clean=None):
        out = super().forward(views, clean)
        out["loss"] = out["loss"] * float("nan")
        return out


def test_collapse_monitor_warns_when_representations_collapse(tmp_path, test_method):
    test_method("test-no-stop-gradient", NoStopGradient)
    lines: list[str] = []
    fit(tiny_config("test-no-stop-gradient", tmp_path, optim={"lr": 0.5}, epochs=2), log=lines.append)
    records = RunDir(tmp_path / "test-no-stop-gradient").read_metrics()
    assert records[-1].get("collapse_warning") is True and records[-1]["z_std"] * 8 < 0.25
    assert any(line.startswith("warning: representations may be collapsing") for line in lines)


def test_healthy_run_has_no_collapse_warning(reference):
    assert not any(r.get("collapse_warning") for r in metrics(reference))


# ---- bad input: one line on stderr, exit code 2, no traceback ------------------------------------------
def write_png(path: Path, size=(8, 8), mode="L", seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = size[::-1] + ((3,) if mode == "RGB" else (4,) if mode == "RGBA" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def image_folder(root: Path, per_class: int = 12) -> Path:
    for c in ("a", "b"):
        for i in range(per_class):
            write_png(root / c / f"{i}.png", seed=100 * ord(c) + i)
    return root


def quick(data_args: list[str], out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "simsiam", *data_args, "--backbone", "simple-cnn", "--proj-hidden", "16",
            "--proj-dim", "16", "--pred-hidden", "8", "--batch-size", "8", "--epochs", "1", "--knn-k", "5",
            "--no-progress", "--device", "cpu", "--out", str(out), *extra]


def run_cli(args: list, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def assert_one_line(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert expected in err, err


def folder_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (data folder, expected message fragment)"""
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing folder"] = (tmp / "nope", "image folder {root} not found; lay it out as {root}/<class>/<image>.png")
    (tmp / "empty").mkdir()
    cases["empty folder"] = (tmp / "empty", "no class subfolders in {root}; put the images in {root}/<class>/")
    for i in range(3):
        write_png(tmp / "flat" / f"{i}.png")
    cases["images without class folders"] = (tmp / "flat", "no class subfolders in {root} (it holds 3 images directly)")
    image_folder(tmp / "hollow")
    (tmp / "hollow" / "c").mkdir()
    (tmp / "hollow" / "c" / "notes.txt").write_text("x")
    cases["class folder without images"] = (tmp / "hollow", "no images in the class folder(s) c of {root}")
    for c in ("a", "b"):
        (tmp / "junk" / c).mkdir(parents=True)
        (tmp / "junk" / c / "x.png").write_bytes(b"not a png")
    cases["only corrupt images"] = (tmp / "junk", "none of the 2 images in {root} could be read")
    image_folder(tmp / "train-test" / "train")
    image_folder(tmp / "train-test" / "test")
    (tmp / "train-test" / "test" / "b").rename(tmp / "train-test" / "test" / "z")
    cases["train and test classes differ"] = (tmp / "train-test", "the class folders of")
    return cases


def test_bad_data_folders_are_one_line_errors(tmp_path, capsys):
    for name, (root, expected) in folder_cases(tmp_path).items():
        code, err = run_cli(quick(["--dataset", "folder", "--data-dir", str(root)], tmp_path / "runs"), capsys)
        assert_one_line(code, err, expected.format(root=root))


def test_corrupt_images_are_skipped_and_listed_or_refused_with_strict(tmp_path, capsys, caplog):
    root = image_folder(tmp_path / "imgs")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    png = (root / "b" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "b" / "empty.jpg").write_bytes(b"")
    write_png(root / "a" / "rgb.png", size=(12, 10), mode="RGB")  # mixed modes and sizes: converted, resized
    write_png(root / "b" / "rgba.png", mode="RGBA")
    code, err = run_cli(quick(["--dataset", "folder", "--data-dir", str(root), "--strict"], tmp_path / "runs"), capsys)
    assert_one_line(code, err, "cannot read image")
    assert "drop --strict to skip unreadable images" in err
    code, err = run_cli(quick(["--dataset", "folder", "--data-dir", str(root)], tmp_path / "runs"), capsys)
    assert code == 0, err
    warnings = caplog.text  # the CLI prints these as "sslab: warning: ..." lines
    assert "left out 3 of the 29 files in" in warnings and "unreadable (3): " in warnings
    assert "pass --strict to stop at unreadable images instead" in warnings
    assert all(name in warnings for name in ("broken.png", "truncated.png", "empty.jpg"))
    assert "come in 2 sizes; resized 1 of them to 8x8" in warnings


@pytest.fixture
def finished_run(tmp_path) -> Path:
    fit(tiny_config("simsiam", tmp_path, epochs=1), log=lambda s: None)
    return tmp_path / "simsiam"


def test_bad_checkpoints_given_to_resume_are_one_line_errors(finished_run, tmp_path, capsys):
    last = finished_run / "checkpoints" / "last.pt"
    good = last.read_bytes()
    state = torch.load(io.BytesIO(good), weights_only=False)
    resume = ["train", "--resume", str(finished_run)]

    def write(**changes) -> None:
        save_checkpoint({**{k: v for k, v in state.items() if k != "format"}, **changes}, last)

    last.write_bytes(good[: len(good) // 3])
    assert_one_line(*run_cli(resume, capsys), "is unreadable or truncated (")
    last.write_bytes(b"")
    assert_one_line(*run_cli(resume, capsys), "is unreadable or truncated (")
    torch.save({"state_dict": {}}, last)
    assert_one_line(*run_cli(resume, capsys), "is not an sslab checkpoint; pass a file written by `sslab train`")
    write(method="simclr")
    assert_one_line(*run_cli(resume, capsys), "checkpoint is for simclr/simple-cnn, but the run is "
                                              "simsiam/simple-cnn; resume with the run folder it came from")
    write(backbone="resnet18")
    assert_one_line(*run_cli(resume, capsys), "checkpoint is for simsiam/resnet18, but the run is simsiam/simple-cnn")
    write(model={k: v for i, (k, v) in enumerate(state["model"].items()) if i > 0})
    assert_one_line(*run_cli(resume, capsys), "checkpoint does not fit this model (")
    write(loop={})
    assert_one_line(*run_cli(resume, capsys), "checkpoint does not fit this model (")
    (finished_run / "config.yaml").write_text("train: {epochs: [")
    assert_one_line(*run_cli(resume, capsys), "is not valid YAML")
    assert_one_line(*run_cli(["train", "--resume", str(tmp_path / "elsewhere")], capsys), "is not a run folder")


DIGITS = ["--dataset", "digits"]


@pytest.mark.parametrize("args, expected", [
    (["--epochs", "-1"], "--epochs -1: must be in [1, 100000]"),
    (["--epochs", "ten"], "--epochs: 'ten' is not a valid int"),
    (["--batch-size", "5000"], "--batch-size 5000 is larger than the 1438 training images; lower it"),
    (["--lr", "-0.1"], "--lr -0.1: must be in (0, 100]"),
    (["--crop-scale", "0.9,0.1"], "--crop-scale 0.9,0.1: must be two numbers min,max with min <= max"),
    (["--method", "simsaim"], "unknown method 'simsaim'; choose one of: barlowtwins, byol,"),
    (["--backbone", "resnet19"], "--backbone 'resnet19': must be one of resnet18,"),
    (["--dataset", "cifar11"], "--dataset 'cifar11': must be one of cifar10,"),
    (["--optimizer", "adam"], "--optimizer 'adam': must be one of sgd, adamw or lars"),
    (["--precision", "fp8"], "--precision 'fp8': must be one of auto, bf16, fp16 or fp32"),
    (["--no-such-flag"], "sslab train: error: unrecognized arguments: --no-such-flag; see `sslab train --help`"),
    (["--dataset", "npz", "--data-dir", "/nonexistent/x.npz"], "/nonexistent/x.npz not found; pass --data-dir"),
])
def test_invalid_config_values_are_one_line_errors(args, expected, tmp_path, capsys):
    try:
        code = cli.main(quick(DIGITS, tmp_path / "runs", *args))
    except SystemExit as e:  # argparse's own exit, after its one line
        code = e.code
    assert_one_line(code, capsys.readouterr().err.strip(), expected)


def test_unknown_fields_and_wrong_types_in_a_yaml_config(tmp_path, capsys):
    for text, expected in [("train: {epochs: 2, speed: 3}", "unknown setting train.'speed'"),
                           ("method: {batch_size: [1, 2]}", "method.batch_size: [1, 2] is not a valid int"),
                           ("train: {epochs: [", "is not valid YAML")]:
        (tmp_path / "c.yaml").write_text(text)
        assert_one_line(*run_cli(quick(DIGITS, tmp_path / "runs", "--config", str(tmp_path / "c.yaml")), capsys),
                        expected)


def test_unwritable_or_full_run_folder_is_refused_before_loading_data(tmp_path, capsys, monkeypatch):
    import sslab.pretrain

    loads = []
    monkeypatch.setattr(sslab.pretrain, "load_from_config", lambda *a: loads.append(1))
    (tmp_path / "file").write_text("not a folder")
    assert_one_line(*run_cli(quick(DIGITS, tmp_path / "file"), capsys),
                    f"--out folder {tmp_path / 'file'} is a file, not a folder; choose a writable --out")
    monkeypatch.setattr("sslab.run.disk_free", lambda path: 50 * 2**20)
    assert_one_line(*run_cli(quick(DIGITS, tmp_path / "runs"), capsys), "only 50 MiB free on the disk of")
    assert not loads


def test_run_folder_needs_room_for_its_checkpoints(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sslab.run.disk_free", lambda path: 201 * 2**20)  # passes the early check, not the room check
    assert_one_line(*run_cli(quick(DIGITS, tmp_path / "runs", "--backbone", "resnet18", "--checkpoint-every", "1",
                                   "--epochs", "50", "--knn-every", "0"), capsys),
                    "MiB free on the disk of")


def test_disk_full_while_writing_metrics_is_one_line(tmp_path, capsys, monkeypatch):
    real_write = os.write

    def full_disk(fd, data):  # metrics.jsonl is appended with os.write (safe_write.append_bytes)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    run = tmp_path / "runs" / "full"
    assert_one_line(*run_cli(quick(DIGITS, tmp_path / "runs", "--knn-every", "0", "--name", "full"), capsys),
                    f"could not write {run / 'metrics.jsonl'} (No space left on device); free disk space and "
                    f"continue with --resume {run}")
    assert load_checkpoint(run)["loop"]["epoch"] == 0  # the last checkpoint is intact


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert_one_line(*run_cli(quick(DIGITS, tmp_path / "runs", "--device", "cuda"), capsys),
                    "--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")


def test_out_of_memory_is_one_line_with_advice(tmp_path, capsys, monkeypatch):
    import sslab.pretrain

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(sslab.pretrain.ViewMaker, "__call__", oom)
    assert_one_line(*run_cli(quick(DIGITS, tmp_path / "runs", "--knn-every", "0"), capsys),
                    "sslab: error: out of memory on the GPU; lower --batch-size")


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    p = sslab(["train", "--method", "simsiam", "--dataset", "folder", "--data-dir", str(tmp_path / "nope"),
               "--out", str(tmp_path)])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"sslab: error: image folder {tmp_path / 'nope'} not found; lay it out as "
                                             f"{tmp_path / 'nope'}/<class>/<image>.png, or {tmp_path / 'nope'}/train/"
                                             f"<class>/... and {tmp_path / 'nope'}/test/<class>/... (or "
                                             f"{tmp_path / 'nope'}/val/<class>/...)"]


def test_time_limit_stops_cleanly_with_a_checkpoint(tmp_path):
    """--time-limit: a planned stop (exit 0) that leaves a checkpoint to resume from."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    common = [sys.executable, "-m", "sslab"]
    train = common + ["train", "--method", "simsiam", "--dataset", "digits", "--backbone", "simple-cnn",
                      "--proj-hidden", "32", "--proj-dim", "32", "--pred-hidden", "8", "--epochs", "200",
                      "--batch-size", "64", "--knn-every", "0", "--no-progress", "--out", str(tmp_path),
                      "--name", "limited", "--time-limit", "2"]
    first = subprocess.run(train, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "stopped at the --time-limit" in first.stderr
    run = tmp_path / "limited"
    done = RunDir(run).read_metrics()  # none when a loaded machine did not finish an epoch in 2 s
    assert (run / "checkpoints" / "last.pt").exists() and len(done) < 200 and not (run / "summary.json").exists()


# ---- nothing a user loads runs code (issue #14.1) -------------------------------------------------------------
class CreatesFile:
    """Pickles as a call of os.system: unpickling it with `weights_only=False` would create `path`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def with_payload(state: dict, marker: Path) -> dict:
    return {**state, "extra": {"note": CreatesFile(marker)}}


def test_checkpoints_hold_only_tensors_and_plain_data(finished_run):
    raw = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=True)  # no allow-list needed
    state = load_checkpoint(finished_run)
    assert isinstance(state["rng"]["numpy"][1], np.ndarray) and state["rng"]["numpy"][1].dtype == np.uint32
    assert isinstance(raw["rng"]["numpy"][1], dict)  # stored as its bytes, turned back by load_checkpoint
    np.random.set_state(state["rng"]["numpy"])  # what resume does with it


def test_a_checkpoint_carrying_code_is_refused_and_nothing_runs(finished_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    last = finished_run / "checkpoints" / "last.pt"
    evil = with_payload(torch.load(last, weights_only=True), marker)
    torch.save(evil, last)
    refused = "holds an object that is not a tensor or plain data (posix.system); refused, because loading it could run code"
    assert_one_line(*run_cli(["train", "--resume", str(finished_run)], capsys), refused)
    shutil.copy(last, tmp_path / "shared.pt")
    assert_one_line(*run_cli(["eval", str(tmp_path / "shared.pt"), "--device", "cpu", "--protocol", "fast"], capsys),
                    refused)
    assert not marker.exists()


def test_a_probe_file_carrying_code_is_refused_and_nothing_runs(finished_run, tmp_path, capsys):
    from sslab.eval.evaluate import PROBE_FORMAT, load_probe

    marker = tmp_path / "pwned"
    probe = {"format": PROBE_FORMAT, "classes": ["a", "b"], "backbone": "simple-cnn",
             "probes": {"linear-fast": {"weight": torch.zeros(2, 4), "bias": torch.zeros(2), "accuracy": 0.5}}}
    save_checkpoint(probe, finished_run / "probe.pt")
    assert load_probe(finished_run)[0] == "linear-fast"
    torch.save(with_payload(probe, marker), finished_run / "probe.pt")
    assert_one_line(*run_cli(["attention", str(finished_run), "--device", "cpu", "-n", "1"], capsys),
                    f"probe file {finished_run / 'probe.pt'} holds an object that is not a tensor or plain data")
    assert not marker.exists()


def test_checkpoints_written_before_safe_loading_still_load(tmp_path):
    """Older checkpoints hold numpy's RNG state as a pickled uint32 array: allow-listed exactly, nothing more."""
    state = {"format": "sslab-checkpoint-1", "rng": {"numpy": np.random.get_state()}, "model": {"w": torch.ones(2)}}
    torch.save(state, tmp_path / "old.pt")
    assert np.array_equal(load_checkpoint(tmp_path / "old.pt")["rng"]["numpy"][1], state["rng"]["numpy"][1])
    torch.save({**state, "objects": np.array([1, "a"], dtype=object)}, tmp_path / "objects.pt")
    with pytest.raises(CheckpointError, match="holds an object that is not a tensor or plain data"):
        load_checkpoint(tmp_path / "objects.pt")


# ---- Ctrl-C while the command starts (issue #14.2) ------------------------------------------------------------
@pytest.mark.parametrize("where", ["import", "parse"])
def test_ctrl_c_while_starting_is_one_line_and_exit_130(where, monkeypatch, capsys, tmp_path):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "import":  # the subcommands' modules import scikit-learn, scipy and torch: Ctrl-C lands there
        (tmp_path / "slow_commands.py").write_text("raise KeyboardInterrupt\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        modules = cli.command_modules
        monkeypatch.setattr(cli, "command_modules", lambda *names: [*modules(*names), __import__("slow_commands")])
    else:
        monkeypatch.setattr(cli.Parser, "parse_known_args", interrupt)
    code, err = run_cli(["train", "--help"], capsys)
    assert (code, err) == (130, "sslab: stopped")


def test_parsing_the_flags_imports_neither_scikit_learn_nor_scipy():
    """They load when a command needs them: start-up stays short (a smaller window for a start-up Ctrl-C)."""
    code = "import sys; import sslab.cli as c; c.build_parser(); print(sorted({'sklearn', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


# ---- the run folder: one process at a time, made atomically, inside --out (issue #14.3) -----------------------
HOLD_LOCK = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
             "fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode()); "
             "print('locked', flush=True); "
             "time.sleep(120)")


def test_a_run_folder_in_use_is_refused_and_a_killed_holder_does_not_block(finished_run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(finished_run / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (finished_run / "metrics.jsonl").read_text()
        assert_one_line(*run_cli(["train", "--resume", str(finished_run), "--epochs", "2"], capsys),
                        f"run folder {finished_run} is in use by another sslab process (pid {holder.pid}); wait")
        assert (finished_run / "metrics.jsonl").read_text() == before
    finally:
        holder.kill()  # SIGKILL: the OS drops its lock; no stale lock is left to clear by hand
        holder.wait()
    code, err = run_cli(["train", "--resume", str(finished_run), "--epochs", "2"], capsys)
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in (finished_run / "metrics.jsonl").read_text().splitlines()][-2:] == [1, 2]


def test_run_folders_made_at_once_are_distinct(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from sslab.run import _make_folder, run_locks

    with run_locks(), ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: _make_folder(tmp_path, "simsiam-digits", suffix=True), range(16)))
    assert len(set(paths)) == 16 and all(p.parent == tmp_path for p in paths)


@pytest.mark.parametrize("name", ["../escaped", "a/b", "/tmp/absolute", "..", ".", "CON", "run:2", "trailing."])
def test_a_name_that_leaves_out_is_refused(name, tmp_path, capsys):
    out = tmp_path / "deep" / "runs"  # the last three: names Windows refuses (a run folder copied there must open)
    assert_one_line(*run_cli(quick(DIGITS, out, "--name", name), capsys),
                    f"--name {name!r}: must be a plain folder name of at most 255 bytes that Windows accepts too")
    assert not (tmp_path / "deep" / "escaped").exists() and not list(tmp_path.glob("deep/runs/*"))


# ---- resume does what it says (issue #14.4) ---------------------------------------------------------------------
def test_flags_given_with_resume_are_applied_and_announced_or_refused(finished_run, capsys):
    config = (finished_run / "config.yaml").read_text()
    assert_one_line(*run_cli(["train", "--resume", str(finished_run), "--epochs", "2", "--lr", "1000", "--method",
                              "simclr"], capsys),
                    "--method, --lr cannot change when resuming (the run goes on with its config.yaml); with --resume "
                    "only --epochs, --time-limit, --device, --progress, --knn-every, --checkpoint-every, --compile, "
                    "--cache-dir apply")
    assert_one_line(*run_cli(["train", "--resume", str(finished_run), "--config", str(finished_run / "config.yaml")],
                             capsys), "--config cannot be combined with --resume")
    assert (finished_run / "config.yaml").read_text() == config
    code = cli.main(["train", "--resume", str(finished_run), "--epochs", "2", "--knn-every", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "resuming with --epochs 2 (was 1); the learning-rate schedule is stretched" in out
    assert "resuming with --knn-every 1 (was 0)" in out
    assert read_config(finished_run).method.epochs == 2  # holds for the next resume too
    assert [r["epoch"] for r in metrics(finished_run)] == [0, 1, 2]  # 0: the baselines before training
    assert metrics(finished_run)[1]["knn_top1"] is None and metrics(finished_run)[2]["knn_top1"] > 0.3
    assert_one_line(*run_cli(["train", "--resume", str(finished_run), "--epochs", "1"], capsys),
                    "--epochs 1 but the run has finished 2 epochs; pass --epochs 2 or more")


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a folder (links as their target path) by its relative path: what "unchanged" compares."""
    return {str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-epochs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(tiny_config("simsiam", out, epochs=2).with_values(limit_train=256), log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return out / "simsiam"


REFUSED_RESUMES = {  # docs/reliability.md, "Flags given with --resume" and "Checkpoints given to --resume"
    "fewer epochs than done": (["--epochs", "1"], "--epochs 1 but the run has finished 2 epochs"),
    "a device that is not there": (["--device", "cuda"], "cuda"),
    "a setting resume may not change": (["--lr", "0.5"], "--lr cannot change when resuming"),
    "another method": (["--method", "byol"], "--method cannot change when resuming"),
    "another method's setting": (["--queue-size", "7"], "--queue-size"),
    "a value out of range": (["--time-limit", "inf"], "--time-limit inf"),
    "a config file too": (["--config", "{run}/config.yaml"], "--config cannot be combined with --resume"),
}


@pytest.mark.parametrize("case", list(REFUSED_RESUMES))
def test_a_refused_resume_leaves_the_run_folder_byte_for_byte_unchanged(case, two_epoch_run, tmp_path, capsys):
    """Nothing is persisted before it is accepted (#22): every refusal leaves every file as it was, so the plain
    `--resume RUN` it advises still works."""
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    (run / ".lock").write_text("1")  # another pid than this process's, which trained the run (a lock taken shows)
    flags, message = REFUSED_RESUMES[case]
    before = tree_bytes(run)
    assert_one_line(*run_cli(["train", "--resume", run, *[f.format(run=run) for f in flags]], capsys), message)
    assert tree_bytes(run) == before


def test_a_hand_edited_config_or_changed_data_is_refused(tmp_path, capsys):
    data = digits_npz(tmp_path / "data")
    cfg = tiny_config("simsiam", tmp_path, epochs=1)
    cfg.data.dataset, cfg.data.data_dir = "npz", str(data)
    fit(cfg, log=lambda s: None)
    run = tmp_path / "simsiam"
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("batch_size: 64", "batch_size: 32"))
    assert_one_line(*run_cli(["train", "--resume", str(run), "--epochs", "2"], capsys),
                    "config.yaml was changed after the checkpoint (at an epoch's end) was taken: batch_size 32 (the "
                    "checkpoint has 64); set the value(s) back to resume")
    (run / "config.yaml").write_text(text)
    with np.load(data) as z:
        arrays = dict(z)
    np.savez(data, **{**arrays, "x_train": arrays["x_train"][:-100], "y_train": arrays["y_train"][:-100]})
    assert_one_line(*run_cli(["train", "--resume", str(run), "--epochs", "2"], capsys),
                    f"the dataset changed since the checkpoint (training images {N_TRAIN} then, {N_TRAIN - 100} now); "
                    "restore the data as it was to resume, or start a new run on the new data")


# ---- bad files in a run folder, records that vanish (issues #14.5, #14.6) ---------------------------------------
def test_bad_metrics_lines_are_skipped_with_a_warning_and_repaired_on_resume(finished_run, capsys, caplog):
    path = finished_run / "metrics.jsonl"
    good = path.read_text()
    path.write_text(good + '[1, 2]\n{"epoch": 1}\n"text"\n{"epoch": 2, "step": 44, "lo')  # torn last line
    assert [r["epoch"] for r in RunDir(finished_run).read_metrics()] == [0, 1]
    warnings = caplog.text
    assert "line 3 is a JSON list, not a record; skipped" in warnings  # line 1: the epoch-0 record
    assert "line 4 lacks step, loss, lr; skipped" in warnings
    assert "line 6 is not valid JSON (a write cut short?); skipped" in warnings
    code, err = run_cli(["train", "--resume", str(finished_run), "--epochs", "2"], capsys)
    assert code == 0, err
    assert [r["epoch"] for r in metrics(finished_run)] == [0, 1, 2]  # the file is whole again: later resumes are fine
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[2])  # epoch 1's record lost
    caplog.clear()
    code, err = run_cli(["train", "--resume", str(finished_run), "--epochs", "3"], capsys)
    assert code == 0, err
    assert "has no record of epoch(s) 1 (lost or unreadable); the curves skip them" in caplog.text
    assert [r["epoch"] for r in metrics(finished_run)] == [0, 2, 3]


def test_an_epochs_metrics_are_on_disk_before_the_checkpoint_that_covers_them(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fit(tiny_config("simsiam", tmp_path, epochs=2), log=lambda s: None)
    kinds = ["metrics" if n == "metrics.jsonl" else "checkpoint" for n in synced
             if n == "metrics.jsonl" or n.startswith(".last.pt.")]
    # the initial checkpoint, then the epoch-0 record (baselines before training), then epoch by epoch
    assert kinds == ["checkpoint", "metrics", "metrics", "checkpoint", "metrics", "checkpoint"]


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(finished_run, capsys):
    shutil.rmtree(finished_run / "checkpoints")
    (finished_run / "metrics.jsonl").unlink()
    code = cli.main(["train", "--resume", str(finished_run)])
    assert code == 0
    assert "yet (it stopped before the first one); starting it from the beginning" in capsys.readouterr().out
    assert [r["epoch"] for r in metrics(finished_run)] == [0, 1] and load_checkpoint(finished_run)["loop"]["epoch"] == 1


def test_a_stray_temp_folder_in_checkpoints_does_not_stop_a_resume(finished_run, capsys):
    (finished_run / "checkpoints" / ".last.pt.0123abcd.tmp").mkdir()
    (finished_run / "checkpoints" / ".last.pt.4567cdef.tmp").write_bytes(b"half a checkpoint")
    code, err = run_cli(["train", "--resume", str(finished_run), "--epochs", "2"], capsys)
    assert code == 0, err
    assert not (finished_run / "checkpoints" / ".last.pt.4567cdef.tmp").exists()


def config_file_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp / "folder.yaml").mkdir()
    (tmp / "deep.yaml").write_text("train: " + "[" * 5000 + "]" * 5000)
    return {"binary": (tmp / "binary.yaml", "is not text (not UTF-8); pass a YAML file"),
            "folder": (tmp / "folder.yaml", "is a folder; pass a YAML file"),
            "deep": (tmp / "deep.yaml", "is nested too deeply to be a config; fix the file")}


def test_config_files_that_are_binary_a_folder_or_deeply_nested_are_one_line(finished_run, tmp_path, capsys):
    cases = config_file_cases(tmp_path)
    for path, expected in cases.values():
        assert_one_line(*run_cli(quick(DIGITS, tmp_path / "runs", "--config", str(path)), capsys), expected)
    for case in ("binary", "deep"):  # the same files as a run's config.yaml
        path, expected = cases[case]
        shutil.copy(path, finished_run / "config.yaml")
        assert_one_line(*run_cli(["train", "--resume", str(finished_run)], capsys), expected)


def test_cifar_labels_out_of_range_are_one_line_in_train_and_export_images(tmp_path, capsys):
    import pickle

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [57, 1, -3, 2] if name == "data_batch_2" else [0, 1, 2, 3]
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    expected = f"{folder / 'data_batch_2'} has 2 label(s) outside 0..9 (-3, 57); replace it with the file from the"
    data = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar")]
    assert_one_line(*run_cli(quick(data, tmp_path / "runs"), capsys), expected)
    assert_one_line(*run_cli(["export-images", *data, "--out", str(tmp_path / "png")], capsys), expected)


def read_only(monkeypatch, folder: Path) -> None:
    """Writes under `folder` fail as on a read-only disk (also for root, whom chmod does not stop)."""
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path) -> None:
        if str(Path(path).absolute()).startswith(str(folder)):
            raise OSError(30, "Read-only file system", str(path))

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("command", [["eval", "--protocol", "fast"], ["embed"], ["analyze"], ["attention", "-n", "1"],
                                     ["report"]])
def test_a_read_only_run_folder_is_refused_before_any_work(command, finished_run, capsys, monkeypatch):
    from sslab.pretrained import TrainedRun

    loads = []
    monkeypatch.setattr(TrainedRun, "load_data", lambda *a, **k: loads.append(1))
    read_only(monkeypatch, finished_run)
    device = ["--device", "cpu"] if command[0] != "report" else []
    assert_one_line(*run_cli([command[0], str(finished_run), *command[1:], *device], capsys),
                    f"cannot write to run folder {finished_run} (Read-only file system); make it writable, or copy the "
                    "run folder somewhere writable and pass that")
    assert not loads


def test_analyze_on_a_split_smaller_than_the_classes_is_one_line(tmp_path, capsys):
    cfg = tiny_config("simsiam", tmp_path, epochs=1)
    cfg.data.limit_test = 3
    fit(cfg, log=lambda s: None)
    code, err = run_cli(["analyze", str(tmp_path / "simsiam"), "--device", "cpu"], capsys)
    steps = [line for line in err.splitlines() if line.startswith("analyze ")]  # its progress lines ("analyze 1/6: ...")
    assert_one_line(code, "\n".join(line for line in err.splitlines() if line not in steps),
                    "the test split holds 3 image(s), fewer than the 10 classes that analyze clusters them into; "
                    "pass --split all (or train), or hold out more test images")


def test_out_of_memory_names_a_huge_image_size_or_folder_images(tmp_path, capsys, monkeypatch):
    import sslab.pretrain

    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(sslab.pretrain, "load_from_config", oom)
    assert_one_line(*run_cli(quick(DIGITS, tmp_path / "runs", "--image-size", "4096"), capsys),
                    "sslab: error: out of memory; --image-size 4096 makes every image 4096x4096 pixels "
                    "(48 MiB in colour, held for the whole dataset); use a smaller --image-size")
    folder = image_folder(tmp_path / "imgs")
    assert_one_line(*run_cli(quick(["--dataset", "folder", "--data-dir", str(folder)], tmp_path / "runs"), capsys),
                    "out of memory; without --image-size the images of a folder are kept at their own size; if they "
                    "are large, pass --image-size 96")


# ---- the run lock without POSIX's modules (issue #21): Windows' code path, tested here ------------------------------
NO_POSIX = """
import json, os, subprocess, sys, tempfile, time, types  # noqa: E401
for name in ("fcntl", "termios", "pwd", "grp", "resource"):  # not on Windows: importing them fails
    sys.modules[name] = None
script, mode, run = sys.argv[0], sys.argv[1], sys.argv[2]
if mode == "hold":  # lock with Windows' msvcrt.locking (n bytes from the current position, no waiting)
    msvcrt = types.ModuleType("msvcrt")  # (after subprocess and tempfile: they would take it for Windows)
    msvcrt.LK_NBLCK, msvcrt.LK_UNLCK = 2, 0
    msvcrt.locking = lambda fd, how, n: os.lockf(fd, os.F_TLOCK if how == 2 else os.F_ULOCK, n)
    sys.modules["msvcrt"] = msvcrt
    from sslab.run import RunDir
    RunDir(run).lock()
    print("locked", flush=True)
    time.sleep(120)
from sslab.cli import main  # without fcntl and msvcrt: os.lockf, on the byte msvcrt locks
print("trained", main(json.loads(mode)), flush=True)
holder = subprocess.Popen([sys.executable, script, "hold", run], stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline().strip() == "locked"
print("refused", main(["train", "--resume", run, "--epochs", "2"]), holder.pid, flush=True)
holder.kill()  # SIGKILL: the OS drops its lock, nothing stale is left
holder.wait()
print("resumed", main(["train", "--resume", run, "--epochs", "2"]), flush=True)
"""


def test_without_fcntl_sslab_trains_resumes_and_refuses_a_concurrent_resume(tmp_path):
    """Without fcntl (and termios, pwd, grp, resource) the lock is msvcrt's on Windows, os.lockf's elsewhere; here
    the holder uses the first and the trainer the second (they lock the same byte, so they exclude each other)."""
    script = tmp_path / "no_posix.py"
    script.write_text(NO_POSIX)
    run = tmp_path / "runs" / "r"
    train = quick(DIGITS, tmp_path / "runs", "--name", "r", "--limit-train", "64", "--knn-every", "0")
    p = subprocess.run([sys.executable, str(script), json.dumps(train), str(run)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
    steps = [line.split() for line in p.stdout.splitlines() if line.split()[0] in ("trained", "refused", "resumed")]
    assert p.returncode == 0 and [s[:2] for s in steps] == [["trained", "0"], ["refused", "2"], ["resumed", "0"]], (
        p.stdout[-2000:], p.stderr[-2000:])
    assert (f"sslab: error: run folder {run} is in use by another sslab process (pid {steps[1][2]}); wait for it to "
            "finish or stop it, then try again") in p.stderr.splitlines()
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


# ---- torchrun ends as sslab does (issue #22) ------------------------------------------------------------------------
def sslab_torchrun(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HOOKS}", "OMP_NUM_THREADS": "1", **env}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(k, None)
    cmd = [sys.executable, "-W", "ignore::FutureWarning", "-m", "sslab.torchrun", "--standalone", "--nproc_per_node",
           "2", "-m", "sslab", *args]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)


def test_under_torchrun_a_one_line_error_and_a_clean_stop_keep_sslabs_exit_code_and_no_traceback(tmp_path):
    p = sslab_torchrun(quick(DIGITS, tmp_path / "runs", "--epochs", "-1"))
    errors = [line for line in p.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert p.returncode == 2 and errors == ["sslab: error: --epochs -1: must be in [1, 100000]"], p.stderr
    p = sslab_torchrun(quick(DIGITS, tmp_path / "runs", "--name", "ddp", "--limit-train", "128", "--epochs", "2",
                             "--knn-every", "0"), SSLAB_TEST_SIGNAL_AT_STEP="10")
    run = tmp_path / "runs" / "ddp"
    assert p.returncode == 130, p.stderr
    assert "Traceback" not in p.stderr and "ChildFailedError" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"sslab: interrupted by SIGINT; checkpoint saved; continue with: " \
                                                f"sslab train --resume {run}"
    assert load_checkpoint(run)["loop"]["step_in_epoch"] == 10  # 16 steps per epoch: stopped after step 10
