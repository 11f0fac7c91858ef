"""`--precision fp16` in pretraining, on the CPU for every registered method (fp16 autocast and the CPU gradient
scaler run there, so CI executes the code an older GPU runs): it trains, the forward passes of the steps and of
the kNN monitor run in fp16, a run stopped mid-epoch resumes to the bitwise same weights and scaler state, and
the checkpoint loads back and embeds. Also: a step the scaler skips is counted, and is not the NaN stop."""
import math
import signal

import pytest
import torch

from sslab import api, pretrain
from sslab import device as dev
from sslab.config import Config
from sslab.errors import Interrupted
from sslab.kit import STEP_OBSERVERS, NonFiniteLoss, accumulate, epoch_means
from sslab.methods import METHODS
from sslab.pretrain import DROPPED, SKIPPED, TrainStep, build_optimizer, fit, taken_step_means
from sslab.settings import names_of
from test_gpu_config import SMALL_HEADS, observe, tiny_data


@pytest.fixture(autouse=True)
def one_thread_no_plots(monkeypatch):
    monkeypatch.setattr(pretrain, "plot_curves", lambda *args: None)  # matplotlib: half the time, nothing of fp16
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits
    yield
    torch.set_num_threads(threads)


def fp16_config(out, method: str, name: str) -> Config:
    """One epoch of 2 steps of 16 images (16 px, simple-cnn, small heads), fp16, kNN at the end."""
    return Config.from_dict({
        "data": {"dataset": "cifar10"}, "model": {"backbone": "simple-cnn"},
        "method": {"method": method, **small_heads(method), "warmup_epochs": 0, "epochs": 1, "batch_size": 16},
        "train": {"device": "cpu", "precision": "fp16", "knn_every": 1, "knn_k": 5, "progress": False,
                  "out": str(out), "name": name}})


def small_heads(method: str) -> dict:
    return {k: v for k, v in SMALL_HEADS.items() if k in names_of(METHODS.get(method).Settings)}


def stop_after(step: int):
    """A step observer that asks the loop to stop after global step `step` (as SIGTERM would)."""
    def observer(loop, global_step):
        if global_step == step:
            loop.stop.signum = int(signal.SIGTERM)
    return observer


@pytest.mark.parametrize("method", METHODS.names())
def test_fp16_trains_resumes_bitwise_and_loads_for_every_method(method, tmp_path):
    data = tiny_data(n_train=32, n_test=8)
    with observe() as seen:
        reference = fit(fp16_config(tmp_path, method, "reference"), data=data, log=lambda m: None)
    assert seen.conv_out == {torch.float16}  # the training steps and the kNN monitor ran under fp16 autocast
    assert math.isfinite(reference["final_loss"]) and reference["knn_top1"] is not None

    STEP_OBSERVERS.append(stop_after(1))  # mid-epoch: after the first of the two steps
    try:
        with pytest.raises(Interrupted):
            fit(fp16_config(tmp_path, method, "stopped"), data=data, log=lambda m: None)
    finally:
        STEP_OBSERVERS.pop()
    resumed = fit(resume=tmp_path / "stopped", data=data, log=lambda m: None)

    a, b = (torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True) for name in ("stopped", "reference"))
    assert a["precision"]["mode"] == "fp16" and a["precision"]["scaler"]["scale"] <= 2.0**16
    assert a["precision"] == b["precision"]  # the scaler's scale and growth tracker continued exactly
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert resumed["final_loss"] == reference["final_loss"] and resumed["knn_top1"] == reference["knn_top1"]
    features = api.embed(tmp_path / "stopped", data.test_x)  # the checkpoint loads (weights_only) and embeds
    assert features.shape[0] == 8 and torch.isfinite(features).all()


def test_a_skipped_step_is_counted_and_is_not_the_nan_stop():
    """TrainStep in fp16 with the scaler's scale set so high that the first step's scaled gradients overflow:
    the step is skipped (weights unchanged) and counted; its finite loss stays in the epoch's mean."""
    from sslab.augment.views import ViewMaker
    from sslab.methods.build import build_method
    from sslab.recipe import fit_to_data

    cfg = fit_to_data(Config.from_dict({"data": {"dataset": "digits"}, "model": {"backbone": "simple-cnn"},
                                        "method": {"method": "simclr", **small_heads("simclr"), "batch_size": 16,
                                                   "epochs": 1}}), 8)
    torch.manual_seed(0)
    model = build_method(cfg, 1, 8)
    opt, lr_at = build_optimizer(model, cfg, steps_per_epoch=2)
    precision = dev.Precision("fp16", torch.device("cpu"))
    step = TrainStep(model=model, forward=model, opt=opt, views=ViewMaker(model.view_specs(8), cfg.augment, 8, (0.5,), (0.25,)),
                     aug_gen=torch.Generator().manual_seed(1), lr_at=lr_at, peak_lr=0.05, precision=precision,
                     images=torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8), channels_last=False,
                     steps_per_epoch=2, total_steps=2)
    precision.scaler.load_state_dict({**precision.scaler.state_dict(), "scale": 2.0**127})  # x loss overflows
    before = [p.detach().clone() for p in model.parameters()]
    sums = {}
    first = step(torch.arange(16), 0)
    assert first[SKIPPED].item() == 1.0 and first[DROPPED].item() == 0.0  # the loss itself is finite: kept
    loss_of_first = first["loss"].item()
    assert all(torch.equal(x, p) for x, p in zip(before, model.parameters()))  # the step was not applied
    accumulate(sums, first)
    precision.scaler.load_state_dict({**precision.scaler.state_dict(), "scale": 2.0**10})
    second = step(torch.arange(16, 32), 1)
    assert second[SKIPPED].item() == 0.0 and math.isfinite(second["loss"].item())
    accumulate(sums, second)
    means = taken_step_means(epoch_means(sums, 2), steps=2, epoch=1)
    assert means["skipped_steps"] == 1 and SKIPPED not in means and DROPPED not in means
    assert means["loss"] == pytest.approx((loss_of_first + second["loss"].item()) / 2)


def test_taken_step_means_by_hand_and_an_epoch_of_only_inf_losses_is_the_nan_stop():
    # 4 steps, two skipped, one of them with an inf loss (dropped): sums 0 + 2 + 4 + 6 = 12 over 4 steps -> mean 3,
    # over the 3 steps kept: 4
    means = taken_step_means({"loss": 3.0, "acc": [0.75, 1.5], SKIPPED: 0.5, DROPPED: 0.25}, steps=4, epoch=1)
    assert means == {"loss": 4.0, "acc": [1.0, 2.0], "skipped_steps": 2}
    assert taken_step_means({"loss": 3.0}, steps=4, epoch=1) == {"loss": 3.0}  # fp32/bf16: no scaler, unchanged
    # every step skipped while the scaler calibrates (finite losses): a normal epoch, not the NaN stop
    assert taken_step_means({"loss": 2.0, SKIPPED: 1.0, DROPPED: 0.0}, steps=4, epoch=1)["skipped_steps"] == 4
    with pytest.raises(NonFiniteLoss, match="every step of epoch 2"):
        taken_step_means({"loss": 0.0, SKIPPED: 1.0, DROPPED: 1.0}, steps=4, epoch=2)


def test_scan_refuses_fp16_in_one_line_before_loading_anything(tmp_path):
    from sslab.errors import ConfigError
    from sslab.scan import ScanConfig, run_scan

    with pytest.raises(ConfigError, match="--precision fp16 is not supported yet"):
        run_scan(tmp_path / "no-run-here", ScanConfig(precision="fp16"), log=lambda m: None)
