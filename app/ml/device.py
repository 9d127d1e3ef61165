"""Choosing where training runs."""

from collections.abc import Sequence

import torch


class DeviceUnavailableError(RuntimeError):
    pass


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda``/``cuda:N`` must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {requested!r} requested but CUDA is not "
                                         "available on this worker")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {requested!r} requested but this worker has "
                                         f"{torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise DeviceUnavailableError(f"device {requested!r} is not supported")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA; full precision on CPU."""
    return torch.bfloat16 if device.type == "cuda" else None


def describe(device: torch.device, notes: Sequence[str] = ()) -> str:
    """``cuda:0 (NVIDIA H200, bf16 autocast, …notes)`` or ``cpu (2 threads, fp32, …)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        parts = [torch.cuda.get_device_name(index), "bf16 autocast", *notes]
        return f"cuda:{index} ({', '.join(parts)})"
    threads = torch.get_num_threads()
    parts = [f"{threads} thread{'' if threads == 1 else 's'}", "fp32", *notes]
    return f"cpu ({', '.join(parts)})"
