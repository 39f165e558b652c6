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
    leave the run PENDING forever. On a cluster (RAY_ADDRESS) check_cluster_gpus does it once joined."""
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


def check_cluster_gpus(processes: int, gpus_each: float, what: str) -> None:
    """Once joined to a cluster (RAY_ADDRESS), refuse a GPU layout that its nodes can never place, each
    process's GPUs on one node: Ray would leave the run PENDING forever. Only a cluster that cannot grow
    is judged; where an autoscaler runs it may add GPU nodes that do not exist yet, so Ray decides."""
    import math
    import os

    import ray

    from raycv.errors import RaycvError

    if gpus_each <= 0 or not os.environ.get("RAY_ADDRESS") or cluster_may_grow():
        return
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    gpus = [node.get("GPU", 0.0) for node in nodes]
    if sum(gpus) == 0:
        found = ", ".join(f"{key} {value:g}" for key, value in sorted(ray.cluster_resources().items())
                          if key in ("CPU", "GPU", "TPU") or key.startswith("accelerator_type"))
        raise RaycvError(f"{what} asks for GPUs, but this cluster has none ({len(nodes)} nodes: {found}); "
                         f"drop --gpu, or add GPU nodes")
    places = sum(math.floor(count / gpus_each + 1e-9) for count in gpus)
    if places < processes:
        raise RaycvError(f"{what} needs {processes} x {gpus_each:g} = {processes * gpus_each:g} GPUs, but this cluster "
                         f"has {sum(gpus):g} (per node: {', '.join(f'{count:g}' for count in gpus)}) and no "
                         f"autoscaler; lower --workers or the GPUs each one takes")


def cluster_may_grow() -> bool:
    """Whether an autoscaler runs on the joined cluster. Both autoscalers report the nodes in the GCS by node
    type: the types of their cluster config (KubeRay's group names, the launcher's available_node_types),
    where a fixed cluster's read-only monitor names every node node_<id>. Unknown is taken as yes, so that
    raycv never refuses what an autoscaler could have placed. (These reports are Ray's internals: no public
    API tells a driver its cluster's limits.)"""
    import json

    import ray

    try:
        from ray._private import ray_constants
        from ray.autoscaler.v2.sdk import get_cluster_status
        from ray.experimental.internal_kv import _internal_kv_get

        node_types = set()
        legacy = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if legacy:
            report = json.loads(legacy).get("autoscaler_report") or {}
            for key in ("active_nodes", "idle_nodes", "pending_launches"):
                node_types |= set(report.get(key) or {})
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        if status.stats.autoscaler_version not in (None, "", "0"):
            node_types |= {node.ray_node_type_name for node in status.active_nodes + status.idle_nodes}
    except Exception:  # a Ray that stores these elsewhere: let Ray decide
        return True
    return any(name and not name.startswith("node_") for name in node_types)
