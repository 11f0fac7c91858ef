"""The GPU configuration, run on the CPU wherever torch allows it, so CI executes the code a GPU run executes:
bf16 autocast, channels-last convolutions and the fused optimisers (torch has CPU kernels for fused
SGD/Adam/AdamW), for every registered method's training steps, the kNN monitor, eval's probes and SCAN's
stages. On a GPU these are on by default; here they are forced (`--precision bf16 --channels-last --fused`,
`bf16=True` in the probes, `sslab scan --precision bf16 --channels-last --fused`). Hooks on every module and
optimiser check that the configuration really reached the convolutions and the optimiser step.
"""
import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from sslab.config import Config, own_settings
from sslab.data.base import ImageData
from sslab.eval.features import extract_features
from sslab.eval.linear import train_standard_probe
from sslab.eval.semi import finetune
from sslab.methods import METHODS
from sslab.models import create_backbone
from sslab.scan import ScanConfig, run_scan
from sslab.pretrain import fit

SMALL_HEADS = {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 8, "queue_size": 32}
GPU_TRAIN = {"precision": "bf16", "channels_last": True}


@dataclass
class Seen:
    """What the convolutions and optimisers saw while a block ran."""

    conv_out: set = field(default_factory=set)  # output dtypes
    conv_in_channels_last: set = field(default_factory=set)  # was each 3-channel input channels-last?
    optimizers: set = field(default_factory=set)  # (class name, fused)


@contextlib.contextmanager
def observe():
    seen = Seen()

    def module_hook(module, args, output):
        if isinstance(module, torch.nn.Conv2d):
            seen.conv_out.add(output.dtype)
            x = args[0]
            if x.shape[1] > 1 and x.shape[-1] > 1:  # 1-channel or 1x1 tensors are both formats at once
                seen.conv_in_channels_last.add(x.is_contiguous(memory_format=torch.channels_last))

    def optimizer_hook(opt, args, kwargs):
        seen.optimizers.add((type(opt).__name__, bool(opt.defaults.get("fused"))))

    handles = [torch.nn.modules.module.register_module_forward_hook(module_hook),
               register_optimizer_step_pre_hook(optimizer_hook)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def tiny_data(n_train: int = 64, n_test: int = 32, size: int = 16, classes: int = 4) -> ImageData:
    """RGB images whose class sets the mean colour, so features carry the label."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.arange(n) % classes
        tint = (y.float() * 60 + 20).view(-1, 1, 1, 1) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
        x = (tint + torch.randint(0, 60, (n, 3, size, size), generator=g)).clamp(0, 255).to(torch.uint8)
        return x, y

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    return ImageData("tiny", xtr, ytr, xte, yte, [f"c{i}" for i in range(classes)])


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits
    yield
    torch.set_num_threads(threads)


def write_folder(data: ImageData, root: Path) -> Path:
    """`data` as an image folder (train/<class>/*.png, test/<class>/*.png), for commands that reload a run's data."""
    from PIL import Image

    for split, xs, ys in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            folder = root / split / data.classes[int(y)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return root


def train_tiny(out: Path, method: str, train: dict, optim: dict | None = None, name: str | None = None,
               data_dir: Path | None = None) -> dict:
    """One epoch of 4 steps on `tiny_data()` (or on the image folder `data_dir`), simple-cnn, small heads."""
    cfg = Config.from_dict({
        "data": {"dataset": "folder", "data_dir": str(data_dir)} if data_dir else {"dataset": "cifar10"},
        "model": {"backbone": "simple-cnn"},
        "method": {"method": method, **own_settings(method, SMALL_HEADS)}, "optim": {"warmup_epochs": 0, **(optim or {})},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "knn_every": 1, "knn_k": 5, "progress": False,
                  "out": str(out), "name": name or method, **train}})
    return fit(cfg, data=None if data_dir else tiny_data(), log=lambda m: None)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_in_the_gpu_configuration(method, tmp_path):
    with observe() as seen:
        summary = train_tiny(tmp_path, method, GPU_TRAIN, {"fused": True})
    assert math.isfinite(summary["final_loss"]) and summary["knn_top1"] is not None
    assert seen.conv_out == {torch.bfloat16}  # training steps and the kNN monitor ran under bf16 autocast
    assert seen.conv_in_channels_last == {True}
    optimizer = seen.optimizers
    assert optimizer and all(fused for name, fused in optimizer if name in ("SGD", "AdamW", "Adam")), optimizer
    assert all(not fused for name, fused in optimizer if name == "LARS")  # no fused LARS kernel exists


def test_the_default_cpu_configuration_is_fp32_contiguous_and_unfused(tmp_path):
    with observe() as seen:
        train_tiny(tmp_path, "simsiam", {})
    assert seen.conv_out == {torch.float32}
    assert seen.conv_in_channels_last == {False}
    assert seen.optimizers == {("SGD", False)}


def test_bf16_training_follows_fp32(tmp_path):
    # the same seed and data: bf16 autocast changes the loss by rounding, not by a different computation
    fp32 = train_tiny(tmp_path, "simsiam", {}, name="fp32")["final_loss"]
    bf16 = train_tiny(tmp_path, "simsiam", GPU_TRAIN, {"fused": True}, name="bf16")["final_loss"]
    assert bf16 != fp32
    assert abs(bf16 - fp32) <= 0.05 * abs(fp32) + 0.01, (bf16, fp32)


def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("simple-cnn", 3, 16, "auto").to(memory_format=torch.channels_last)


def test_features_in_bf16_channels_last_are_close_to_fp32():
    data, net = tiny_data(), tiny_backbone()
    with observe() as seen:
        bf16 = extract_features(net, data.train_x, data.mean, data.std, bf16=True, channels_last=True)
    fp32 = extract_features(net, data.train_x, data.mean, data.std, bf16=False)
    assert seen.conv_out == {torch.bfloat16} and seen.conv_in_channels_last == {True}
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert (bf16 - fp32).norm() / fp32.norm() < 2e-2


def probes(bf16: bool) -> tuple[torch.Tensor, list[float]]:
    """The standard probe's weights and the fine-tune's losses, from the same seed."""
    data, net = tiny_data(), tiny_backbone()
    probe = train_standard_probe(net, data.train_x, data.train_y, data.num_classes, data.mean, data.std, epochs=2,
                                 batch_size=16, lr=0.3, bf16=bf16)
    _, _, details = finetune(net, data.train_x, data.train_y, data.num_classes, data.mean, data.std, epochs=1,
                             batch_size=16, lr=0.05, bf16=bf16)
    return probe.probe.weight, details["train_loss_by_epoch"]


def test_the_probes_run_in_bf16_and_follow_fp32():
    with observe() as seen:
        w16, losses16 = probes(bf16=True)
    w32, losses32 = probes(bf16=False)
    assert torch.bfloat16 in seen.conv_out  # (finetune sizes its head with one fp32 pass first)
    assert not torch.equal(w16, w32)
    assert (w16 - w32).norm() / w32.norm() < 0.1
    assert losses16[0] == pytest.approx(losses32[0], rel=0.05)


def test_scan_stages_run_in_the_gpu_configuration(tmp_path):
    folder = write_folder(tiny_data(), tmp_path / "images")
    summary = train_tiny(tmp_path, "simsiam", GPU_TRAIN, {"fused": True}, data_dir=folder)
    cfg = ScanConfig(device="cpu", precision="bf16", channels_last=True, fused=True, cluster_epochs=1,
                     selflabel_epochs=1, batch_size=16, selflabel_batch_size=16, heads=2, neighbors=5, kmeans_init=1,
                     confidence=0.5, eval_every=0, progress=False)
    with observe() as seen:
        report = run_scan(summary["run_dir"], cfg, log=lambda m: None)
    assert seen.conv_out == {torch.bfloat16} and seen.conv_in_channels_last == {True}
    assert seen.optimizers == {("Adam", True)}
    assert report["scan"]["acc"] is not None and report["selflabel"]["acc"] is not None


@pytest.mark.slow  # inductor compiles the step in ~1-3 minutes on 2 CPU cores (measured 164 s under load)
def test_compiled_step_in_the_gpu_configuration_follows_eager(tmp_path):
    compile_on = "default"
    eager = train_tiny(tmp_path, "simsiam", GPU_TRAIN, {"fused": True}, name="eager")["final_loss"]
    compiled = train_tiny(tmp_path, "simsiam", {**GPU_TRAIN, "compile": compile_on}, {"fused": True},
                          name="compiled")["final_loss"]
    assert abs(compiled - eager) <= 2e-3, (compiled, eager)  # bf16 rounding differs between kernels, not more
