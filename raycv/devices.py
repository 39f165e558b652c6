"""Which device a process computes on, and in which precision.

Shared by the training loop, evaluation, prediction, Serve replicas and the benchmarks, so that every
one of them makes the same choice.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def default_device() -> torch.device:
    """The GPU only where this process may use one. Inside a Ray actor or task that is the GPUs Ray gave
    it: since Ray 2.x stopped hiding GPUs from processes that reserve none, a CPU actor would otherwise
    pick cuda:0 and share a GPU the scheduler counts as free. Elsewhere (the CLI, a notebook), any GPU."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        uses_gpu = bool(ray.get_gpu_ids())
    else:
        uses_gpu = True
    return torch.device("cuda" if uses_gpu and torch.cuda.is_available() else "cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU computes it natively (no loss scaling needed), fp16 with a GradScaler otherwise;
    off on CPU unless asked. Emulated bf16 (V100, T4) counts as unsupported: it runs slower than fp32."""
    if amp == "off" or (device.type != "cuda" and amp == "auto"):
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported(including_emulation=False)):
        return torch.bfloat16
    return torch.float16


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()


def check_local_gpus(processes: int, gpus_each: float, what: str) -> None:
    """Refuse, before a local Ray starts, a GPU layout this machine cannot place: Ray would otherwise
    leave the run PENDING forever. On a cluster (RAY_ADDRESS) the check is Ray's: an autoscaler may add
    GPU nodes that do not exist yet."""
    import os

    from raycv.errors import RaycvError

    if gpus_each <= 0 or os.environ.get("RAY_ADDRESS"):
        return
    available = torch.cuda.device_count()
    if available == 0:
        raise RaycvError(f"{what} asks for GPUs, but this machine has none (CUDA devices: 0, CPUs: {os.cpu_count()}); "
                         f"drop --gpu, or submit to a cluster with GPUs")
    if gpus_each > available or processes * gpus_each > available:
        raise RaycvError(f"{what} needs {processes} x {gpus_each:g} = {processes * gpus_each:g} GPUs, but this machine "
                         f"has {available}; lower --workers or the GPUs each one takes")
