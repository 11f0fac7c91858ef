"""Several processes on the CPU (gloo) must compute what one process computes on the same global batch:
BatchNorm synced over ranks (SimSiam, BYOL, PhiNet), negatives gathered over ranks (SimCLR, MoCo v3, NNCLR), keys
gathered into the queue (MoCo v2, NNCLR, SwAV), the cross-correlation and covariance of the global batch (Barlow
Twins, VICReg), DINO's centre and SwAV's codes over the global batch. And `torchrun -m sslab train` must run, stop and resume.
"""
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslab.distributed import SyncBatchNorm, convert_sync_batchnorm
from sslab.methods import METHODS

SRC = Path(__file__).resolve().parents[1] / "src"
HOOKS = Path(__file__).resolve().parent / "hooks"  # the test signal hook (SSLAB_TEST_SIGNAL_AT_STEP)
WORLD = 2
GLOBAL_BATCH = 16
METHOD_SETTINGS = {
    "simsiam": dict(proj_layers=2, proj_hidden=32, proj_dim=32, pred_hidden=8, fixed_predictor_lr=True),
    "simclr": dict(proj_hidden=32, proj_dim=16, temperature=0.2),
    "byol": dict(proj_hidden=32, proj_dim=16, pred_hidden=32, ema=0.99),
    "mocov2": dict(proj_hidden=32, proj_dim=16, temperature=0.2, ema=0.99, queue_size=64),
    "phinet": dict(proj_layers=2, proj_hidden=32, proj_dim=32, pred_hidden=8, fixed_predictor_lr=True, lam=1.0,
                   third_view="clean"),
    "barlowtwins": dict(proj_hidden=32, proj_dim=16),
    "vicreg": dict(proj_hidden=32, proj_dim=16),
    "dino": dict(proj_hidden=32, proj_dim=8, num_prototypes=24),  # the centre: the global batch's teacher mean
    "mocov3": dict(proj_hidden=32, proj_dim=16, pred_hidden=32),  # the keys of every rank
    "nnclr": dict(proj_hidden=32, proj_dim=16, pred_hidden=32, queue_size=24),  # the support set: every rank's z
    "swav": dict(proj_hidden=32, proj_dim=16, num_prototypes=24, queue_size=24, queue_start_epoch=0),  # Sinkhorn
}


class TinyBackbone(torch.nn.Sequential):
    """conv-BatchNorm2d-ReLU-pool: a backbone with 2-d BatchNorm, small enough to build ten times a second."""

    out_dim = 8

    def __init__(self):
        super().__init__(torch.nn.Conv2d(1, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                         torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # BatchNorm2d in the backbone, BatchNorm1d in the heads
    return METHODS.create(name, TinyBackbone(), METHODS.get(name).Settings(**METHOD_SETTINGS[name]))


def global_batch(name: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=g) for _ in range(2)]
    return views, torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=g)


def step(model: torch.nn.Module, views, clean) -> dict[str, torch.Tensor]:
    """Loss, parameter gradients and buffers (BN running stats, MoCo's queue) after one forward/backward."""
    out = model(views, clean)
    out["loss"].backward()
    inner = getattr(model, "module", model)
    grads = {k: p.grad.clone() for k, p in inner.named_parameters() if p.grad is not None}
    buffers = {k: b.clone() for k, b in inner.named_buffers()}
    return {"loss": out["loss"].detach(), "grads": grads, "buffers": buffers}


def worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        n = GLOBAL_BATCH // WORLD
        for name in METHOD_SETTINGS:
            model = convert_sync_batchnorm(build(name), torch.device("cpu"))
            ddp_model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
            views, clean = global_batch(name)
            mine = slice(rank * n, (rank + 1) * n)  # this rank's slice of the global batch
            result = step(ddp_model, [v[mine] for v in views], clean[mine])
            loss = result["loss"].clone()
            dist.all_reduce(loss)
            result["loss"] = loss / WORLD  # each rank's loss is the mean over its slice (SimCLR's: the global one)
            if rank == 0:
                torch.save(result, Path(out_dir) / f"{name}.pt")
            del ddp_model, model  # the DDP reducer holds the process group: free it before the group goes
        dist.barrier()  # no rank tears gloo down while the other still uses it
    finally:
        gc.collect()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("name", list(METHOD_SETTINGS))
def test_two_processes_match_one_process_on_the_global_batch(name, two_process_results):
    torch.set_num_threads(1)
    ref = step(build(name), *global_batch(name))
    got = torch.load(two_process_results / f"{name}.pt")
    torch.testing.assert_close(got["loss"], ref["loss"], atol=1e-5, rtol=1e-5)
    assert got["grads"].keys() == ref["grads"].keys() and ref["grads"]
    for k in ref["grads"]:  # DDP averages over ranks: the gradient of the global loss
        torch.testing.assert_close(got["grads"][k], ref["grads"][k], atol=1e-5, rtol=1e-4, msg=k)
    for k in ref["buffers"]:  # running statistics of the global batch; MoCo's queue holds every rank's keys
        torch.testing.assert_close(got["buffers"][k].float(), ref["buffers"][k].float(), atol=1e-5, rtol=1e-4, msg=k)


def test_sync_batchnorm_is_batchnorm_in_one_process_and_keeps_the_state_dict():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(5)
    sync = convert_sync_batchnorm(torch.nn.Sequential(bn), torch.device("cpu"))
    assert isinstance(sync[0], SyncBatchNorm) and sync[0].weight is bn.weight
    assert sync.state_dict().keys() == torch.nn.Sequential(torch.nn.BatchNorm1d(5)).state_dict().keys()
    x = torch.randn(8, 5)
    ref = torch.nn.BatchNorm1d(5)
    torch.testing.assert_close(sync(x), ref(x))
    torch.testing.assert_close(sync[0].running_var, ref.running_var)


# ---- torchrun, end to end --------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HOOKS}", "OMP_NUM_THREADS": "1", **extra}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _digits_npz(folder: Path) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255 / 16)).astype(np.uint8)
    path = folder / "digits.npz"
    np.savez(path, x_train=x[:1200], y_train=d.target[:1200], x_test=x[1200:1500], y_test=d.target[1200:1500])
    return path


@pytest.mark.slow  # minutes of the default suite on 2 cores (CI's 10-minute budget); run with -m slow
def test_torchrun_trains_on_two_processes_stops_on_a_signal_and_resumes_on_one(tmp_path):
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not installed")
    (tmp_path / "data").mkdir()
    data = _digits_npz(tmp_path / "data")
    args = ["-m", "sslab", "train", "--method", "simclr", "--dataset", "npz", "--data-dir", str(data),
            "--backbone", "simple-cnn", "--proj-hidden", "32", "--proj-dim", "16", "--batch-size", "64", "--epochs", "2",
            "--limit-train", "512",
            "--knn-k", "20", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "runs"), "--name", "ddp"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    steps_per_epoch = 512 // 64
    # rank 0 alone receives the signal, after a step in epoch 2: both ranks must stop after that same step
    p = subprocess.run(launcher + args, env=_env(SSLAB_TEST_SIGNAL_AT_STEP=str(steps_per_epoch + 5)),
                       capture_output=True, text=True, timeout=240)
    assert "interrupted by SIGINT; checkpoint saved" in p.stderr, p.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert [q.name for q in run.parent.iterdir()] == ["ddp"]  # one run folder, made by rank 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # written once, by rank 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert (state["loop"]["epoch"], state["loop"]["step_in_epoch"], state["loop"]["world_size"]) == (1, 5, 2)
    assert len(state["ranks"]) == 2 and not any(k.startswith("module.") for k in state["model"])
    assert state["loop"]["perm"].shape == (512,)

    # resume with one process: the global batch, sample order and step carry over
    p = subprocess.run([sys.executable, "-m", "sslab", "train", "--resume", str(run)], env=_env(),
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming with 1 process(es) where the checkpoint had 2" in p.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2] and all(np.isfinite(r["loss"]) for r in records[1:])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["knn_top1"] is not None and summary["processes"] == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_train_as_one_process_with_the_same_global_batch(tmp_path):
    """Two "machines" (two torchrun launchers, --nnodes 2, one process each, c10d rendezvous on 127.0.0.1,
    gloo) against one process with the same global batch: with views that draw no randomness (full-image
    crops, no flip or colour), every rank's slice of the batch is the single process's, so the losses, the kNN
    and the weights agree up to the order of floating-point sums."""
    plain_views = ["--crop-scale", "1,1", "--crop-ratio", "1,1", "--flip-p", "0", "--jitter-p", "0", "--grayscale-p",
                   "0", "--blur-p", "0", "--solarize-p", "0"]
    args = ["-m", "sslab", "train", "--method", "simclr", "--dataset", "digits", "--backbone", "simple-cnn",
            "--proj-hidden", "32", "--proj-dim", "16", "--batch-size", "64", "--epochs", "2", "--limit-train", "256",
            "--knn-k", "20", "--no-progress", "--device", "cpu", *plain_views]
    port = _free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "sslab-two-nodes"]
    out = tmp_path / "runs"
    nodes = [subprocess.Popen(node + args + ["--out", str(out), "--name", "two-nodes"], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    single = subprocess.run([sys.executable, *args, "--out", str(out), "--name", "one"], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    for p in nodes:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]

    two, one = (json.loads((out / name / "summary.json").read_text()) for name in ("two-nodes", "one"))
    assert (two["processes"], one["processes"]) == (2, 1)
    metrics = [[json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
               for name in ("two-nodes", "one")]
    assert [r["epoch"] for r in metrics[0]] == [r["epoch"] for r in metrics[1]] == [0, 1, 2]
    for a, b in zip(*metrics):
        if "loss" in a:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["knn_top1"] == pytest.approx(b["knn_top1"], abs=0.01)
    weights = [torch.load(out / name / "checkpoints" / "last.pt", weights_only=False)["model"]
               for name in ("two-nodes", "one")]
    assert weights[0].keys() == weights[1].keys()
    for k in weights[1]:
        torch.testing.assert_close(weights[0][k].float(), weights[1][k].float(), atol=1e-4, rtol=1e-3, msg=k)
