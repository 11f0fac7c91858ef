"""The training device in one place: which device, its name, mixed precision, fused optimisers, sync, memory.

Every other module asks these helpers instead of testing `device.type == "cuda"` itself, so the CPU, CUDA
and Apple-GPU (mps) paths differ in this file only.

Precision (`--precision`, `Precision.for_device`): `auto` is bf16 autocast on a CUDA GPU that computes bf16
natively (compute capability 8.0 and above: A100, RTX 30xx, H100, ...), fp16 autocast with a gradient scaler
on older CUDA GPUs (T4, V100, P100, RTX 20xx: fp16 runs on their tensor cores, bf16 does not), and fp32 on
the CPU and on mps. `bf16`, `fp16` and `fp32` are taken as asked, on any device (the CPU runs both autocast
dtypes and the CPU gradient scaler, which is how CI tests the GPU paths).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch

from sslab.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # auto: see choose_precision
PRECISION_HELP = ("mixed precision: auto (bf16 autocast on a CUDA GPU of compute capability 8.0 or newer, fp16 "
                  "with a gradient scaler on older CUDA GPUs, fp32 on the CPU and on Apple GPUs), bf16, fp16 or fp32")
DEVICE_HELP = ("where to run: auto (a CUDA GPU, else an Apple GPU (mps), else the CPU), cpu, cuda, cuda:N or mps")
NATIVE_BF16 = (8, 0)  # compute capability from which NVIDIA GPUs have bf16 tensor cores (Ampere)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    """An Apple GPU usable through PyTorch's MPS backend (False on builds without it)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """--device as a torch.device. `auto`: a CUDA GPU, else an Apple GPU (mps), else the CPU. Under torchrun
    (`local_rank` given) `cuda`/`auto` is cuda:LOCAL_RANK, and auto never picks mps (one process per Mac)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() and local_rank is None else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name.startswith("mps"):
        if not mps_available():
            raise ConfigError("--device mps was asked for but no Apple GPU (MPS) is available; use --device cpu or auto")
        if local_rank is not None:
            raise ConfigError("--device mps runs in one process; start sslab without torchrun on a Mac")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name} asks for GPU {device.index} but {torch.cuda.device_count()} "
                              "are visible; use cuda:0 ... or --device cuda")
    return device


def device_name(device: torch.device) -> str:
    """"NVIDIA H100 80GB HBM3", "Apple GPU (mps)" or "cpu (2 threads)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (mps)"
    return f"cpu ({torch.get_num_threads()} threads)"


def is_gpu(device: torch.device) -> bool:
    """A CUDA GPU (the fused optimisers, channels-last, peak memory and device RNG states are CUDA's)."""
    return device.type == "cuda"


# ---- precision ---------------------------------------------------------------------------------------------------
def choose_precision(asked: str, device: torch.device) -> tuple[str, str]:
    """--precision on `device` -> ("bf16" | "fp16" | "fp32", the reason, for the start-up line)."""
    if asked not in PRECISIONS:
        raise ConfigError(f"--precision {asked!r} is not a precision; use auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        native = (major, minor) >= NATIVE_BF16
        if asked == "auto":
            if native:
                return "bf16", f"auto: compute capability {major}.{minor} computes bf16 natively"
            return "fp16", (f"auto: compute capability {major}.{minor} has no native bf16 (it needs 8.0), "
                            "so fp16 with a gradient scaler")
        if asked == "bf16" and not native:
            return "bf16", (f"as asked; compute capability {major}.{minor} emulates bf16 (slow): "
                            "--precision auto would use fp16")
        return asked, "as asked"
    if asked == "auto":
        if device.type == "mps":
            return "fp32", "auto: fp32 on Apple GPUs (mixed precision on mps is not verified by sslab's tests)"
        return "fp32", "auto: fp32 on the CPU (mixed precision there is for testing the GPU paths)"
    if asked != "fp32" and not autocast_available(device.type):
        raise ConfigError(f"--precision {asked}: this PyTorch has no autocast on {device.type}; use fp32")
    return asked, "as asked" + ("; slow on the CPU: the GPU path, for tests" if device.type == "cpu" and asked != "fp32" else "")


def autocast_available(device_type: str) -> bool:
    """Whether torch.autocast runs on this device type (PyTorch >= 2.5 on mps)."""
    check = getattr(torch.amp, "is_autocast_available", None)
    return bool(check(device_type)) if check is not None else device_type in ("cpu", "cuda")


class Precision:
    """How a loop computes: the autocast context and, in fp16, the gradient scaler, so that loops call
    `autocast()` and `backward_and_step()` instead of branching on the precision.

    fp16's range ends at 65504, so small gradients underflow to zero unless the loss is scaled up first
    (Micikevicius et al. 2018, "Mixed Precision Training"); the scaler starts at 2^16, halves the scale and
    skips the step when a gradient is inf/NaN, and doubles it after 2000 clean steps. The skipped steps are
    normal while it calibrates; `backward_and_step` reports them so loops count them (they are not the NaN stop).
    The scaler's state goes into every checkpoint (`state_dict`) so that a resumed run continues exactly."""

    def __init__(self, mode: str, device: torch.device, reason: str = "as asked"):
        if mode not in AUTOCAST_DTYPES and mode != "fp32":
            raise ConfigError(f"precision {mode!r} is not bf16, fp16 or fp32")
        self.mode, self.device, self.reason = mode, device, reason
        self.dtype = AUTOCAST_DTYPES.get(mode)
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    @classmethod
    def for_device(cls, asked: str, device: torch.device) -> "Precision":
        """--precision (auto, bf16, fp16, fp32) on `device`, with the reason for the choice."""
        mode, reason = choose_precision(asked, device)
        return cls(mode, device, reason)

    @property
    def scaled(self) -> bool:
        """True in fp16: steps may be skipped by the gradient scaler."""
        return self.scaler is not None

    def describe(self) -> str:
        """"precision: fp16 autocast with a gradient scaler (auto: compute capability 7.5 has ...)"."""
        what = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with a gradient scaler", "fp32": "fp32"}[self.mode]
        return f"precision: {what} ({self.reason})"

    def autocast(self) -> ContextManager[Any]:
        """The forward pass's context: autocast to bf16/fp16 on the device, or nothing in fp32."""
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                          before_step: Callable[[], None] | None = None) -> torch.Tensor | None:
        """`loss.backward()`, then `optimizer.step()` (through the scaler in fp16). `before_step` runs between
        the two with the true (unscaled) gradients in `.grad` (gradient clipping, freezing a layer).

        Returns None without a scaler (a step is never skipped), else a 0-d float tensor on the device: 1.0
        when the scaler skipped the step (inf/NaN gradients), 0.0 when it stepped. Reading it is left to the
        caller, so the hot path has no host-device sync beyond the scaler's own."""
        if self.scaler is None:
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            return None
        self.scaler.scale(loss).backward()
        if before_step is not None:
            self.scaler.unscale_(optimizer)
            before_step()
        self.scaler.step(optimizer)
        # what step() found, before update() forgets it (one 0-d tensor per device the gradients are on)
        found = [t.to(self.device) for t in self.scaler._found_inf_per_device(optimizer).values()]
        self.scaler.update()
        return torch.stack(found).amax().float() if found else torch.zeros((), device=self.device)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the mode and, in fp16, the scaler's scale and growth tracker (plain numbers,
        loadable with weights_only=True)."""
        return {"mode": self.mode, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any] | None) -> bool:
        """Continue from `state_dict()`; True when the scaler's state was restored. A state from another mode
        (or none: a checkpoint from before fp16) leaves a fresh scaler, which recalibrates in a few steps."""
        if self.scaler is None or not state or state.get("mode") != self.mode or not state.get("scaler"):
            return False
        self.scaler.load_state_dict(state["scaler"])
        return True


def uses_bf16(precision: str, device: torch.device) -> bool:
    """--precision: bf16 always means bf16 autocast (on the CPU too); auto means bf16 on a GPU with native bf16."""
    return precision == "bf16" or (precision == "auto" and choose_precision(precision, device)[0] == "bf16")


def autocast(device: torch.device, bf16: bool) -> ContextManager[Any]:
    """bf16 autocast on `device` (CPU or GPU) when `bf16`, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# ---- optimisers, sync, memory, random state ---------------------------------------------------------------------
def fused_options(device: torch.device, fused: bool | None = None) -> dict[str, bool]:
    """Keyword arguments for SGD/Adam/AdamW: the fused kernel (one launch for all parameters); `fused` None:
    on a CUDA GPU only, True/False: forced (the CPU tests of the GPU configuration)."""
    return {"fused": True} if (is_gpu(device) if fused is None else fused) else {}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a clock)."""
    if is_gpu(device):
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (after the queued work); nothing on the CPU and mps."""
    if is_gpu(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated so far in GiB; None on the CPU and mps (which keeps no peak)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if is_gpu(device) else None


def rng_state(device: torch.device) -> torch.Tensor | None:
    """The device's global generator state (a GPU's; None on the CPU, whose state is torch.get_rng_state())."""
    if is_gpu(device):
        return torch.cuda.get_rng_state(device)
    return torch.mps.get_rng_state() if device.type == "mps" else None


def set_rng_state(state: torch.Tensor | None, device: torch.device) -> None:
    """Restore `rng_state()`; ignored when there is none or it came from another device type."""
    if state is None or device.type not in ("cuda", "mps"):
        return
    with contextlib.suppress(RuntimeError):
        if is_gpu(device):
            torch.cuda.set_rng_state(state, device)
        else:
            torch.mps.set_rng_state(state)


def float64_device(device: torch.device) -> torch.device:
    """Where float64 work on `device`'s tensors runs: the CPU for mps (Apple GPUs have no float64), else `device`."""
    return torch.device("cpu") if device.type == "mps" else device


__all__ = ["PRECISIONS", "PRECISION_HELP", "DEVICE_HELP", "Precision", "choose_precision", "pick_device",
           "mps_available", "device_name", "is_gpu", "uses_bf16", "autocast", "fused_options",
           "sync", "peak_memory_gib", "reset_peak_memory", "rng_state", "set_rng_state", "float64_device"]
