"""Methods: each loss against a hand-written reference, the stop-gradients, the EMA encoders, MoCo's queue,
and one training step + checkpoint round trip for every registered method (parametrised over the registry)."""
import io
import json
import math
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sslab.config import Config, own_settings
from sslab.distributed import gather_no_grad, gather_with_grad, is_distributed, rank, world_size
from sslab.methods import METHODS
from sslab.methods.byol import byol_loss, byol_momentum
from sslab.methods.mocov2 import infonce
from sslab.methods.phinet import phinet_mse
from sslab.methods.simclr import nt_xent
from sslab.methods.simsiam import simsiam_loss
from sslab.models import create_backbone
from sslab.optim import LARS
from sslab.methods.base import StepProgress
from sslab.methods.build import build_method
from sslab.optim import set_lr
from sslab.pretrain import build_optimizer
from sslab.recipe import fit_to_data
from sslab.settings import flag

sys.path.insert(0, str(Path(__file__).resolve().parent / "hooks"))  # signal_at_step: stop a run at a step

IMAGE = 16  # simple-cnn on 16 px: 64 * 2 * 2 = 256-d features
SMALL = {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 8, "queue_size": 40, "num_prototypes": 24}


def build(name: str, seed: int = 0, backbone: str = "simple-cnn", **method):
    """A method as the training loop builds it (recipe + augmentation fitted to the data), with small heads."""
    small = own_settings(name, SMALL)
    cfg = Config.from_values({"method": name, "dataset": "cifar10", "backbone": backbone, "epochs": 2, **small,
                              **method})
    cfg = fit_to_data(cfg, IMAGE)
    torch.manual_seed(seed)
    return cfg, build_method(cfg, 3, IMAGE)


def at(done: float, total: int = 10) -> StepProgress:
    """The progress after which `done` of a `total`-step run is done."""
    return StepProgress(round(done * total) - 1, steps_per_epoch=total, total_steps=total)


def inputs(model, n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, IMAGE, IMAGE, generator=g) for _ in range(model.num_views)]
    clean = torch.randn(n, 3, IMAGE, IMAGE, generator=g) if model.needs_clean else None
    return views, clean


def rand(*shape, seed=0, grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_() if grad else x


def cos64(a, b):
    a, b = a.double(), b.double()
    return float((a @ b) / (a.norm() * b.norm()))


# ---- losses against explicit references ------------------------------------------------------------
def test_simsiam_loss_matches_reference():
    p1, p2, z1, z2 = (rand(5, 7, seed=s) for s in range(4))
    ref = -sum(cos64(p1[i], z2[i]) for i in range(5)) / 5 / 2 - sum(cos64(p2[i], z1[i]) for i in range(5)) / 5 / 2
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(ref, abs=1e-6)


def test_phinet_mse_is_torch_mse_mean_over_batch_and_dims():
    y1, y2, z0 = (rand(4, 6, seed=s) for s in range(3))
    ref = 0.0
    for y in (y1, y2):
        ref += sum(float(y[i, j].double() - z0[i, j].double()) ** 2 for i in range(4) for j in range(6)) / (4 * 6) / 2
    assert phinet_mse(y1, y2, z0).item() == pytest.approx(ref, rel=1e-6)


def nt_xent_reference(z1, z2, t):
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    loss = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denom = sum(math.exp(cos64(z[i], z[k]) / t) for k in range(n2) if k != i)
        loss += -math.log(math.exp(cos64(z[i], z[j]) / t) / denom)
    return loss / n2


def nt_xent_diagonal_positive(z1, z2, t):
    """The seed notebook's bug: the self-similarity (diagonal) taken as the positive."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    return F.cross_entropy(z @ z.T / t, torch.arange(z.shape[0]))


def test_nt_xent_matches_reference_and_is_symmetric():
    z1, z2 = rand(5, 7, seed=0), rand(5, 7, seed=1)
    for t in (0.2, 0.5):
        assert nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-5)
    assert nt_xent(z1, z2, 0.3).item() == pytest.approx(nt_xent(z2, z1, 0.3).item(), rel=1e-6)


def test_nt_xent_positive_is_the_other_view_not_the_diagonal():
    z1, z2 = rand(5, 7, seed=0), rand(5, 7, seed=1)
    assert abs(nt_xent(z1, z2, 0.5).item() - nt_xent_diagonal_positive(z1, z2, 0.5).item()) > 1e-2
    # two identical views of N distinct orthogonal images: the loss reaches its bound
    # log(1 + (2N - 2) exp(-1/t)) ~ 0; the diagonal-positive version is stuck near log 2
    n, t = 6, 0.05
    z = torch.eye(n, 10)
    assert nt_xent(z, z.clone(), t).item() == pytest.approx(math.log1p((2 * n - 2) * math.exp(-1 / t)), abs=1e-6)
    assert nt_xent(z, z.clone(), t).item() < 1e-6
    assert nt_xent_diagonal_positive(z, z.clone(), t).item() == pytest.approx(math.log(2), abs=1e-6)


def test_byol_loss_matches_reference():
    p, z = rand(5, 7, seed=0), rand(5, 7, seed=1)
    ref = sum(2 - 2 * cos64(p[i], z[i]) for i in range(5)) / 5
    assert byol_loss(p, z).item() == pytest.approx(ref, abs=1e-6)
    # 2 - 2cos is the squared distance of the normalised vectors
    squared_distance = ((F.normalize(p) - F.normalize(z)) ** 2).sum(1).mean()
    assert byol_loss(p, z).item() == pytest.approx(squared_distance.item(), rel=1e-5)


def test_infonce_matches_reference():
    q, k = rand(4, 6, seed=0), rand(4, 6, seed=1)
    queue = F.normalize(rand(9, 6, seed=2), dim=1)
    t = 0.2
    ref = 0.0
    for i in range(4):
        pos = math.exp(cos64(q[i], k[i]) / t)
        negs = sum(math.exp(cos64(q[i], queue[j]) / t) for j in range(9))
        ref += -math.log(pos / (pos + negs)) / 4
    assert infonce(q, k, queue, t).item() == pytest.approx(ref, rel=1e-5)


# ---- stop-gradients -------------------------------------------------------------------------------
def test_targets_get_no_gradient_through_the_losses():
    p1, p2, z1, z2 = (rand(5, 7, seed=s, grad=True) for s in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None  # z enters only as sg(z)
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0

    y1, y2, z0 = (rand(4, 6, seed=s, grad=True) for s in range(3))
    phinet_mse(y1, y2, z0).backward()
    assert z0.grad is None and y1.grad.abs().sum() > 0 and y2.grad.abs().sum() > 0

    p, z = rand(4, 6, seed=0, grad=True), rand(4, 6, seed=1, grad=True)
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad.abs().sum() > 0

    q, k, queue = rand(4, 6, seed=0, grad=True), rand(4, 6, seed=1, grad=True), rand(9, 6, seed=2, grad=True)
    infonce(q, k, queue, 0.2).backward()
    assert k.grad is None and queue.grad is None and q.grad.abs().sum() > 0


FROZEN = {"xphinet": ("slow_backbone", "slow_projector"), "byol": ("target_backbone", "target_projector"),
          "mocov2": ("key_backbone", "key_projector")}


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_ema_encoders_are_frozen_and_get_no_gradient(name):
    cfg, model = build(name)
    model.train()
    views, clean = inputs(model)
    model(views, clean)["loss"].backward()
    for module in FROZEN[name]:
        params = list(getattr(model, module).parameters())
        assert params and all(not p.requires_grad and p.grad is None for p in params)
    grouped = {id(p) for g in model.param_groups() for p in g["params"]}
    assert not any(id(p) in grouped for m in FROZEN[name] for p in getattr(model, m).parameters())


@pytest.mark.parametrize("name,progress", [("xphinet", 0.3), ("byol", 0.3), ("mocov2", 0.3)])
def test_ema_update_is_one_step_of_the_moving_average(name, progress):
    cfg, model = build(name, backbone="resnet18")  # a backbone with BN buffers
    online, frozen = (model.backbone, model.projector), tuple(getattr(model, m) for m in FROZEN[name])
    with torch.no_grad():  # make online and frozen differ, and give online BN non-default statistics
        for m in online:
            for p in m.parameters():
                p.add_(torch.randn_like(p))
            for b in m.buffers():
                b.copy_(torch.rand_like(b.float()).to(b.dtype) * 5 if b.is_floating_point() else b + 7)
    before = [[p.clone() for p in f.parameters()] for f in frozen]
    model.after_step(at(progress))
    m = byol_momentum(cfg.method.ema, progress) if name == "byol" else cfg.method.ema
    for f, o, old in zip(frozen, online, before):
        for p_t, p_o, p_old in zip(f.parameters(), o.parameters(), old):
            torch.testing.assert_close(p_t, m * p_old + (1 - m) * p_o, rtol=1e-6, atol=1e-7)
        bufs = list(f.buffers())
        assert all(torch.equal(b_t, b_o) for b_t, b_o in zip(bufs, o.buffers()))
    assert any(len(list(f.buffers())) for f in frozen)  # the BN buffers were really exercised


def test_byol_momentum_rises_from_base_to_one_by_cosine():
    assert byol_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert byol_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert byol_momentum(0.99, 1.0) == pytest.approx(1.0)


# ---- MoCo queue -----------------------------------------------------------------------------------
def test_moco_queue_receives_the_normalised_keys_at_the_pointer_and_wraps():
    cfg, model = build("mocov2", queue_size=40)
    model.train()
    views, _ = inputs(model, n=8)
    model.queue_ptr.fill_(36)
    before = model.queue.clone()
    with torch.no_grad():
        keys = [F.normalize(model.key_projector(model.key_backbone(x)), dim=1) for x in views]
    model(views)
    rows = [36, 37, 38, 39, 0, 1, 2, 3]
    for v in range(2):
        torch.testing.assert_close(model.queue[v, rows], keys[v])
        torch.testing.assert_close(model.queue[v].norm(dim=1), torch.ones(40))
    untouched = [r for r in range(40) if r not in rows]
    assert torch.equal(model.queue[:, untouched], before[:, untouched])
    assert int(model.queue_ptr) == (36 + 8) % 40
    model.eval()
    model(views)  # evaluating the loss leaves the queue alone
    assert int(model.queue_ptr) == 4


# ---- PhiNet's third input -------------------------------------------------------------------------
def test_phinet_third_view_clean_or_strong():
    _, clean_model = build("phinet", third_view="clean")
    assert (clean_model.num_views, clean_model.needs_clean) == (2, True)
    _, strong_model = build("phinet", third_view="strong")
    assert (strong_model.num_views, strong_model.needs_clean) == (3, False)
    assert "num_views" in vars(strong_model)  # per instance, not a class-wide change

    views, clean = inputs(clean_model)
    a, b = clean_model(views, clean), clean_model(views, clean + 1)
    assert a["loss_cos"] == b["loss_cos"] and a["loss_mse"] != b["loss_mse"]  # x0 = the clean image
    views, _ = inputs(strong_model)
    a, b = strong_model(views), strong_model(views[:2] + [views[2] + 1])
    assert a["loss_cos"] == b["loss_cos"] and a["loss_mse"] != b["loss_mse"]  # x0 = the third view
    assert torch.allclose(a["loss"], a["loss_cos"] + strong_model.cfg.lam * a["loss_mse"])


def test_phinet_predictors_h_fixed_lr_g_scheduled():
    _, model = build("phinet")
    groups = model.param_groups()
    fixed = [p for g in groups if g["fixed_lr"] for p in g["params"]]
    assert {id(p) for p in fixed} == {id(p) for p in model.predictor.parameters()}
    scheduled = {id(p) for g in groups if not g["fixed_lr"] for p in g["params"]}
    assert all(id(p) in scheduled for p in model.ca1_predictor.parameters())


# ---- every registered method: one step, then a checkpoint round trip -------------------------------
@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains_one_step_and_round_trips_a_checkpoint(name):
    cfg, model = build(name)
    model.train()
    views, clean = inputs(model)
    opt, lr_at = build_optimizer(model, cfg, steps_per_epoch=1)
    set_lr(opt, lr_at(0), cfg.method.lr * cfg.method.batch_size / 256)
    out = model(views, clean)
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    assert out["z"].shape == (8, cfg.method.proj_dim) and not out["z"].requires_grad
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grouped = {id(p) for g in model.param_groups() for p in g["params"]}
    assert {id(p) for _, p in trainable} == grouped  # the optimiser sees every trainable parameter once
    for n, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    before = {n: p.detach().clone() for n, p in trainable}
    opt.step()
    for n, p in trainable:
        if p.grad.abs().sum() > 0:
            assert not torch.equal(p, before[n]), f"{n} did not move"
    model.after_step(at(0.5))

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    _, fresh = build(name, seed=123)
    fresh.load_state_dict(torch.load(buf))
    model.eval(), fresh.eval()
    views, clean = inputs(model, seed=7)
    with torch.no_grad():
        a, b = model(views, clean), fresh(views, clean)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", METHODS.names())
def test_settings_alone_build_and_run_the_method(name):
    """The settings' defaults (the published recipe) set everything the method reads (real head sizes, small
    backbone and batch), and name the method."""
    cls = METHODS.get(name)
    settings = cls.Settings()
    assert settings.method == name and settings.epochs >= 1 and settings.batch_size >= 2
    torch.manual_seed(0)
    model = cls(create_backbone("simple-cnn", 3, 8), settings)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, s.size, s.size, generator=g) for s in model.view_specs(8)]
    clean = torch.randn(4, 3, 8, 8, generator=g) if model.needs_clean else None
    with torch.no_grad():
        assert torch.isfinite(model(views, clean)["loss"])


# ---- distributed gather ---------------------------------------------------------------------------
def test_gather_is_the_identity_in_one_process():
    assert not is_distributed() and rank() == 0 and world_size() == 1
    x = rand(3, 4, grad=True)
    assert gather_with_grad(x) is x and gather_no_grad(x) is x


def _gather_worker(r, world, port, z1_all, z2_all, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=world)
    try:
        n = z1_all.shape[0] // world
        z1 = z1_all[r * n:(r + 1) * n].clone().requires_grad_()
        z2 = z2_all[r * n:(r + 1) * n].clone().requires_grad_()
        loss = nt_xent(gather_with_grad(z1), gather_with_grad(z2), 0.5)
        loss.backward()
        torch.save({"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad, "keys": gather_no_grad(z1.detach())},
                   f"{out_dir}/rank{r}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with the gloo backend")
def test_gathered_nt_xent_equals_the_global_batch_loss(tmp_path):
    """Two gloo ranks: same loss as one process on the global batch; rank r's gradient is world_size times
    the global gradient of its rows (DDP's gradient averaging divides it back)."""
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world, n = 2, 3
    z1_all, z2_all = rand(world * n, 5, seed=0), rand(world * n, 5, seed=1)
    mp.spawn(_gather_worker, args=(world, port, z1_all, z2_all, str(tmp_path)), nprocs=world)
    g1, g2 = z1_all.clone().requires_grad_(), z2_all.clone().requires_grad_()
    loss = nt_xent(g1, g2, 0.5)
    loss.backward()
    for r in range(world):
        out = torch.load(tmp_path / f"rank{r}.pt")
        torch.testing.assert_close(out["loss"], loss.detach())
        torch.testing.assert_close(out["g1"], world * g1.grad[r * n:(r + 1) * n])
        torch.testing.assert_close(out["g2"], world * g2.grad[r * n:(r + 1) * n])
        torch.testing.assert_close(out["keys"], z1_all)


# ---- LARS as the recipes use it -------------------------------------------------------------------
def test_lars_layer_lr_is_trust_ratio_capped_by_lr_and_skips_bn_and_bias():
    w = torch.nn.Parameter(torch.full((2, 2), 1.0))
    b = torch.nn.Parameter(torch.full((2,), 1.0))
    for lr in (10.0, 1e-4):
        w.data.fill_(1.0), b.data.fill_(1.0)
        w.grad, b.grad = torch.full((2, 2), 0.5), torch.full((2,), 0.5)
        opt = LARS([w, b], lr=lr, momentum=0.9, weight_decay=0.1, trust=0.02)
        opt.step()
        d = 0.5 + 0.1 * 1.0  # g + wd w, per element
        layer_lr = min(0.02 * 2.0 / (2 * d), lr)  # trust * ||w|| / ||d||, capped by lr
        torch.testing.assert_close(w.data, torch.full((2, 2), 1.0 - layer_lr * d))
        torch.testing.assert_close(b.data, torch.full((2,), 1.0 - lr * 0.5))  # plain SGD, no decay


# ---- the six newer methods: trained from the CLI and the API, and resumed exactly ---------------------------------
NEWER = ["barlowtwins", "dino", "mocov3", "nnclr", "swav", "vicreg"]
TIMING = {"epoch_seconds", "knn_seconds", "images_per_second"}  # wall-clock: differ between any two runs
# SwAV's queue (32 rows: one step of 32 images) fills at the first step of epoch 2 and is used at its second: the
# resumed run's first step reads the queue from the checkpoint
NEWER_SETTINGS = {"swav": {"queue_size": 32, "queue_start_epoch": 1}}


def tiny_values(name: str, out, run_name: str, backbone: str = "simple-cnn", **settings) -> dict:
    """2 epochs of 2 steps (64 digits at 16 px, batch 32), small heads."""
    small = own_settings(name, {**SMALL, "pred_hidden": 16, **NEWER_SETTINGS.get(name, {})})
    return {"method": name, "dataset": "digits", "image_size": 16, "limit_train": 64, "limit_test": 60,
            "backbone": backbone, "epochs": 2, "batch_size": 32, "knn_k": 5, "device": "cpu", "progress": False,
            "out": str(out), "name": run_name, **small, **settings}


def run_metrics(run) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def cli_args(values: dict) -> list[str]:
    """`sslab train` flags for the settings `values`."""
    return ["train", *[a for k, v in values.items() for a in (
        [flag(k)] if v is True else [f"--no-{k.replace('_', '-')}"] if v is False else [flag(k), str(v)])]]


def run_steps(model, opt, lr_at, peak, first: int, count: int, steps_per_epoch: int = 2, total: int = 4) -> None:
    """Steps first .. first + count - 1 as the training loop makes them (the hooks included), on seeded inputs."""
    for step in range(first, first + count):
        progress = StepProgress(step, steps_per_epoch, total)
        views, clean = inputs(model, seed=100 + step)
        set_lr(opt, lr_at(step), peak)
        model.before_step(progress)
        loss = model(views, clean)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.after_backward(progress)
        opt.step()
        model.after_step(progress)


@pytest.mark.parametrize("name", NEWER)
def test_newer_method_state_resumes_bitwise_from_its_state_dict(name):
    """4 steps in a row == 2 steps, state_dict (model and optimiser) into a fresh model, 2 more: every value a
    schedule changes (EMA teachers, DINO's centre and temperature, SwAV's queue, NNCLR's support set) lives in the
    state_dict. SwAV's queue fills at step 3 and is read at step 4; DINO's last layer thaws at step 3."""
    settings = NEWER_SETTINGS.get(name, {}) | ({"queue_size": 8} if name == "swav" else {})

    def fresh(seed):
        cfg, model = build(name, seed=seed, **settings)
        opt, lr_at = build_optimizer(model, cfg, steps_per_epoch=2)
        return model.train(), opt, lr_at, cfg.method.lr * cfg.method.batch_size / 256

    model, opt, lr_at, peak = fresh(0)
    run_steps(model, opt, lr_at, peak, 0, 4)
    stopped, opt2, _, _ = fresh(0)
    run_steps(stopped, opt2, lr_at, peak, 0, 2)
    buf = io.BytesIO()
    torch.save({"model": stopped.state_dict(), "opt": opt2.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf)
    resumed, opt3, _, _ = fresh(123)
    resumed.load_state_dict(state["model"])
    opt3.load_state_dict(state["opt"])
    run_steps(resumed, opt3, lr_at, peak, 2, 2)
    a, b = resumed.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not all(torch.equal(a[k], stopped.state_dict()[k]) for k in b)  # the last 2 steps changed something
    if name == "swav":
        assert int(model.queue_filled) == 8


@pytest.mark.parametrize("name", [n if n in ("dino", "swav") else pytest.param(n, marks=pytest.mark.slow) for n in NEWER])
def test_newer_method_trains_from_the_cli(name, tmp_path):
    """`sslab train` for one epoch of 2 steps: a finite loss, a run folder, weights that moved."""
    from sslab.cli import main

    assert main(cli_args(tiny_values(name, tmp_path, "run", epochs=1))) == 0
    records = run_metrics(tmp_path / "run")
    assert len(records) == 2 and math.isfinite(records[1]["loss"]) and records[1]["step"] == 2
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["model"]
    initial = torch.load(tmp_path / "run" / "checkpoints" / "init.pt", weights_only=False)["model"]
    assert not torch.equal(initial["backbone.features.0.0.weight"], last["backbone.features.0.0.weight"])


@pytest.mark.slow  # 3 runs per method (about 15 s each on 2 cores); the default suite has the two tests above
@pytest.mark.parametrize("name", NEWER)
def test_newer_method_trains_from_the_cli_and_resumes_exactly_from_the_api(name, tmp_path):
    """The reference run from `sslab train`; the same run stopped by SIGINT in epoch 2 and resumed with fit() ends
    bitwise as the reference (weights, EMA teachers, queues, centres and the metrics)."""
    from signal_at_step import signal_at_step

    from sslab.cli import main
    from sslab.errors import Interrupted
    from sslab.pretrain import fit

    assert main(cli_args(tiny_values(name, tmp_path, "reference"))) == 0
    with signal_at_step(3, signal.SIGINT), pytest.raises(Interrupted):  # the first step of epoch 2
        fit(Config.from_values(tiny_values(name, tmp_path, "stopped")), log=lambda m: None)
    fit(resume=tmp_path / "stopped", log=lambda m: None)
    ref, got = tmp_path / "reference", tmp_path / "stopped"
    assert run_metrics(got) == run_metrics(ref) and len(run_metrics(ref)) == 3
    assert all(math.isfinite(r["loss"]) for r in run_metrics(ref)[1:])
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=False)["model"] for r in (got, ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    initial = torch.load(ref / "checkpoints" / "init.pt", weights_only=False)["model"]
    assert not torch.equal(initial[next(iter(initial))], b[next(iter(b))])  # it trained


def test_dino_steps_on_a_vit_tiny_with_multi_crop():
    """DINO on ViT-Tiny at 16 px with 2 local crops of 8 px (2 x 2 patches through the resampled position
    embeddings), the views made by the training loop's ViewMaker from uint8 images: two steps with the hooks give
    finite losses, move the student, and the teacher follows it by EMA without equalling it."""
    from sslab.augment.views import ViewMaker

    cfg, model = build("dino", backbone="vit-tiny", local_crops=2)
    specs = model.view_specs(IMAGE)
    assert [s.size for s in specs] == [16, 16, 8, 8] and specs[2].changes["crop_scale"] == (0.05, 0.4)
    make = ViewMaker(specs, cfg.augment, IMAGE, [0.5] * 3, [0.25] * 3)
    images = torch.randint(0, 256, (8, 3, IMAGE, IMAGE), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    opt, lr_at = build_optimizer(model, cfg, steps_per_epoch=2)
    student0 = model.backbone.cls_token.detach().clone()
    model.train()
    for step in range(2):
        progress = StepProgress(step, 2, 4)
        views = make(images, torch.Generator().manual_seed(step))
        assert [v.shape[-1] for v in views] == [16, 16, 8, 8]
        set_lr(opt, lr_at(step), cfg.method.lr * cfg.method.batch_size / 256)
        model.before_step(progress)
        loss = model(views)["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.after_backward(progress)
        assert model.head.last_layer.weight_v.grad is None  # frozen in the first epoch
        opt.step()
        model.after_step(progress)
    student, teacher = model.backbone.cls_token, model.teacher_backbone.cls_token
    assert not torch.equal(student, student0) and not torch.equal(teacher, student0)
    assert not torch.equal(teacher, student)


@pytest.mark.slow  # a whole run on ViT-Tiny (about 15 s on 2 cores)
def test_dino_trains_a_vit_tiny_with_multi_crop(tmp_path):
    """The same through fit(): a finite loss, a teacher that follows the student, the multi-crop views in the
    step."""
    from sslab.pretrain import fit

    values = tiny_values("dino", tmp_path, "vit", backbone="vit-tiny", epochs=1, local_crops=2, limit_train=20,
                         limit_test=20, batch_size=16, knn_k=3)  # one step of 16 images
    summary = fit(Config.from_values(values), log=lambda m: None)
    records = run_metrics(Path(summary["run_dir"]))
    assert len(records) == 2 and math.isfinite(records[1]["loss"])
    model = torch.load(Path(summary["run_dir"]) / "checkpoints" / "last.pt", weights_only=False)["model"]
    student, teacher = model["backbone.cls_token"], model["teacher_backbone.cls_token"]
    initial = torch.load(Path(summary["run_dir"]) / "checkpoints" / "init.pt", weights_only=False)["model"]
    assert not torch.equal(student, initial["backbone.cls_token"]) and not torch.equal(teacher, student)


def test_local_crops_on_a_backbone_that_flattens_is_one_line(tmp_path, capsys):
    from sslab.cli import main

    assert main(cli_args(tiny_values("swav", tmp_path, "refused", local_crops=2))) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sslab: error: --local-crops needs a backbone") and "simple-cnn" in err
    assert not (tmp_path / "refused").exists()
