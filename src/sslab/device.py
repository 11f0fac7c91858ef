"""The training device in one place: which device, its name, mixed precision, fused optimisers, sync, memory.

Every other module asks these helpers instead of testing `device.type == "cuda"` itself, so the CPU and the
GPU paths differ in this file only.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from sslab.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast on a GPU, fp32 on the CPU


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """--device as a torch.device; under torchrun (`local_rank` given) `cuda`/`auto` is cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name} asks for GPU {device.index} but {torch.cuda.device_count()} "
                              "are visible; use cuda:0 ... or --device cuda")
    return device


def device_name(device: torch.device) -> str:
    """"NVIDIA H100 80GB HBM3" or "cpu (2 threads)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def is_gpu(device: torch.device) -> bool:
    return device.type == "cuda"


def uses_bf16(precision: str, device: torch.device) -> bool:
    """--precision: bf16 always means bf16 autocast (on the CPU too); auto means bf16 on a GPU only."""
    return precision == "bf16" or (precision == "auto" and is_gpu(device))


def autocast(device: torch.device, bf16: bool) -> ContextManager[Any]:
    """bf16 autocast on `device` (CPU or GPU) when `bf16`, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def fused_options(device: torch.device, fused: bool | None = None) -> dict[str, bool]:
    """Keyword arguments for SGD/Adam/AdamW: the fused kernel (one launch for all parameters); `fused` None:
    on a GPU only, True/False: forced (the CPU tests of the GPU configuration)."""
    return {"fused": True} if (is_gpu(device) if fused is None else fused) else {}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a clock)."""
    if is_gpu(device):
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (after the queued work); nothing on the CPU."""
    if is_gpu(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated so far in GiB; None on the CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if is_gpu(device) else None


def rng_state(device: torch.device) -> torch.Tensor | None:
    """The device's global generator state (a GPU's; None on the CPU, whose state is torch.get_rng_state())."""
    return torch.cuda.get_rng_state(device) if is_gpu(device) else None


def set_rng_state(state: torch.Tensor | None, device: torch.device) -> None:
    """Restore `rng_state()`; ignored when there is none or it came from another device type."""
    if state is not None and is_gpu(device):
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state(state, device)


__all__ = ["PRECISIONS", "pick_device", "device_name", "is_gpu", "uses_bf16", "autocast", "fused_options", "sync",
           "peak_memory_gib", "rng_state", "set_rng_state"]
