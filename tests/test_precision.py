"""Precision that fits the device (sslab.device): the auto rule per CUDA compute capability (the capability
query faked), mps in `--device auto` (availability faked), and the Precision object against torch's own
autocast and GradScaler on the CPU: fp16 scaling, a skipped step reported, the scaler state restored."""
import pytest
import torch

from sslab import device as dev
from sslab.errors import ConfigError


@pytest.fixture
def cuda_capability(monkeypatch):
    """Pretend a CUDA GPU of the given compute capability is there (nothing CUDA runs)."""

    def fake(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    return fake


@pytest.mark.parametrize("capability, mode", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                              ((9, 0), "bf16"), ((6, 0), "fp16"), ((8, 6), "bf16")])
def test_auto_is_bf16_from_compute_capability_8_and_fp16_with_a_scaler_below(cuda_capability, capability, mode):
    cuda_capability(*capability)
    chosen, reason = dev.choose_precision("auto", torch.device("cuda"))
    assert chosen == mode
    assert f"{capability[0]}.{capability[1]}" in reason and reason.startswith("auto:")
    described = dev.Precision(chosen, torch.device("cpu"), reason).describe()  # the start-up line
    assert ("gradient scaler" in described) == (mode == "fp16") and reason in described


def test_auto_is_fp32_on_the_cpu_and_on_mps_and_the_asked_precision_is_kept():
    for device in ("cpu", "mps"):
        mode, reason = dev.choose_precision("auto", torch.device(device))
        assert mode == "fp32" and reason.startswith("auto:")
    for asked in ("bf16", "fp16", "fp32"):
        assert dev.choose_precision(asked, torch.device("cpu"))[0] == asked
    with pytest.raises(ConfigError, match="--precision"):
        dev.choose_precision("fp8", torch.device("cpu"))


def test_bf16_asked_on_an_old_gpu_is_kept_with_a_note(cuda_capability):
    cuda_capability(7, 5)
    mode, reason = dev.choose_precision("bf16", torch.device("cuda"))
    assert mode == "bf16" and "emulates bf16" in reason and "fp16" in reason
    assert not dev.uses_bf16("auto", torch.device("cuda"))  # SCAN's rule (uses_bf16) follows the auto rule
    cuda_capability(8, 0)
    assert dev.uses_bf16("auto", torch.device("cuda"))


def test_device_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dev.pick_device("auto") == torch.device("mps")
    assert dev.pick_device("mps") == torch.device("mps")
    assert dev.pick_device("auto", local_rank=0) == torch.device("cpu")  # torchrun: one process per Mac
    with pytest.raises(ConfigError, match="one process"):
        dev.pick_device("mps", local_rank=0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no Apple GPU"):
        dev.pick_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.pick_device("auto") == torch.device("cuda")  # CUDA first


def test_mps_paths_of_the_device_helpers_call_the_mps_functions(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("sync"))
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state: calls.append(("set", state.tolist())))
    mps = torch.device("mps")
    dev.sync(mps)
    assert dev.rng_state(mps).tolist() == [7]
    dev.set_rng_state(torch.tensor([9], dtype=torch.uint8), mps)
    assert calls == ["sync", ("set", [9])]
    assert dev.device_name(mps) == "Apple GPU (mps)" and dev.peak_memory_gib(mps) is None
    assert dev.fused_options(mps) == {} and dev.float64_device(mps) == torch.device("cpu")
    assert dev.float64_device(torch.device("cpu")) == torch.device("cpu")


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_autocast_gives_the_dtype_of_the_mode():
    x = torch.randn(3, 8)
    for mode, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        p = dev.Precision(mode, torch.device("cpu"))
        with p.autocast():
            assert tiny_model()(x).dtype == dtype
        assert p.scaled == (mode == "fp16")


def test_fp16_step_scales_the_loss_and_matches_an_unscaled_step():
    """The scaler multiplies the loss by 2^16 and divides the gradients back: the update equals plain SGD's."""
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    results = []
    for mode in ("fp32", "fp16"):
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        p = dev.Precision(mode, torch.device("cpu"))
        loss = torch.nn.functional.cross_entropy(model(x), y)  # fp32 forward: only the scaling differs
        seen = {}
        skipped = p.backward_and_step(loss, opt, before_step=lambda: seen.update(g=model[0].weight.grad.clone()))
        results.append((seen["g"], [q.detach().clone() for q in model.parameters()], skipped))
    (g32, w32, s32), (g16, w16, s16) = results
    assert s32 is None and s16.item() == 0.0
    torch.testing.assert_close(g16, g32)  # before_step sees the true (unscaled) gradients
    for a, b in zip(w32, w16):
        torch.testing.assert_close(a, b)


def test_a_step_with_an_inf_gradient_is_skipped_reported_and_the_scale_halved():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    p = dev.Precision("fp16", torch.device("cpu"))
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    before = [q.detach().clone() for q in model.parameters()]
    with p.autocast():
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    # x 2^16 overflows fp32 (3.4e38): the scaled gradients are inf, as when fp16 activations overflow
    assert p.backward_and_step(loss * 1e35, opt).item() == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # not applied
    assert p.state_dict()["scaler"]["scale"] == 2.0**15
    for _ in range(20):  # fp16 gradients may overflow at this scale too: it halves until they fit
        scale = p.state_dict()["scaler"]["scale"]
        with p.autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        skipped = p.backward_and_step(loss, opt).item()
        changed = not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert changed == (skipped == 0.0)
        if changed:
            break
        assert p.state_dict()["scaler"]["scale"] == scale / 2
    assert changed


def test_scaler_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    p = dev.Precision("fp16", torch.device("cpu"))
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(4, 8)).sum()
    assert p.backward_and_step(loss * 1e35, opt).item() == 1.0  # overflows once scaled: skipped
    torch.save({"precision": p.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["precision"]
    fresh = dev.Precision("fp16", torch.device("cpu"))
    assert fresh.load_state_dict(state)
    assert fresh.state_dict() == p.state_dict() and fresh.state_dict()["scaler"]["scale"] == 2.0**15
    assert not dev.Precision("bf16", torch.device("cpu")).load_state_dict(state)  # another mode: nothing to load
    assert not fresh.load_state_dict(None)  # a checkpoint from before fp16
