"""Where a run trains: ``--device auto|cpu|cuda|cuda:N`` and optional bf16 autocast (``--amp``).

The model is moved once, before the pruner attaches, so every tensor a pruner creates from its
layers (scores, gates, statistics) is born on the run's device; tasks move each batch to the
device of the model (:func:`device_of`), so data loading stays on the CPU. The device is not part
of the run identity (a CUDA row and a CPU row of one spec are the same experiment; rows record
where they ran); ``amp`` is, because it changes the arithmetic of training.
"""

from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from bench.core.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None) -> ``cuda`` when a GPU is visible, else ``cpu``; ConfigError for anything
    else than auto/cpu/cuda/cuda:N, and for a CUDA device that this machine does not have."""
    name = "auto" if name is None else str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ConfigError("device", f"unknown device {name!r}; allowed: {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} asked for, but torch sees no CUDA device here; allowed: auto, cpu")
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ConfigError("device", f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def to_device(obj, device: torch.device):
    """Tensors of ``obj`` (a tensor, or dicts/lists/tuples holding tensors) moved to ``device``;
    anything else is returned as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast of the forward pass when ``amp`` (weights, gradients and optimizer state stay fp32)."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def flush_denormals() -> bool:
    """Flush subnormal floats to zero on the CPU (FTZ/DAZ; ``torch.set_flush_denormal``); True when
    the CPU supports it (x86 with SSE3), False elsewhere (a no-op).

    Why: a soft mask that has driven a unit far below its threshold (SMART's sigmoid(s/tau + t) at
    s/tau + t < -87, PDP's soft masks at a small tau) holds values below 1.2e-38, and masked weights
    and their gradients inherit them. x86 cores handle such operands in microcode: on the Xeon of
    docs/cell-time.md a 64x64 3x3 convolution is ~130x slower with subnormal weights, and SMART's
    training step on fmnist-resnet channel 3.4x dense (1.09x with flushing). Flushing changes only
    values below 1.2e-38 (to 0), an effect far under any metric's resolution; GPUs are unaffected.

    The mode is per thread and new threads inherit it, so call this at the start of a process,
    before the first parallel torch operation creates the intra-op thread pool (the CLI, every
    suite worker and the stage driver do; the driver's call covers the calling thread, which is
    all a one-thread run uses)."""
    return bool(torch.set_flush_denormal(True))


def describe(device: torch.device) -> str:
    """``"cpu"`` or ``"cuda:0 (NVIDIA H200)"``: what a row records as the place it ran."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; the machine type elsewhere): rows and speed reports
    record it, as float kernels -- hence a run's exact numbers -- differ between CPUs."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
