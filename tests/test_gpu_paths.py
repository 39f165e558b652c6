"""The GPU paths, checked on the CPU: CPU autocast in bf16 stands in for a GPU's mixed precision, resource
checks stand in for placement, and counted host copies stand in for GPU syncs.

Validation inside a bf16 training loop against a separate fp32 evaluation (SSIM under bf16 autocast is badly
wrong: a blurred pair's 0.76 read 0.30) is the device check's eval_metrics_amp_on_off, which
tests/test_gpu_check.py runs on the CPU with the same superres set and bf16 fit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from raycv.config import TrainConfig
from raycv.devices import autocast_dtype, check_cluster_gpus, check_local_gpus, cluster_may_grow
from raycv.errors import RaycvError
from raycv.tasks import get_task


def test_cosface_logits_stay_fp32_under_autocast():
    from raycv.models.embedding import CosFaceHead

    torch.manual_seed(0)
    head, embeddings, labels = CosFaceHead(64, 10), torch.randn(8, 64), torch.arange(8)
    reference = head(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(embeddings, labels)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, reference)


def test_emulated_bf16_gets_fp16_with_a_grad_scaler(monkeypatch):
    cuda = torch.device("cuda")  # only the dtype choice is asked for: nothing runs on it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert autocast_dtype("auto", cuda) == torch.float16  # a T4 or V100: emulated bf16 only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert autocast_dtype("auto", cuda) == torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) is None and autocast_dtype("off", cuda) is None


def count_host_copies(monkeypatch) -> list[int]:
    """Every way a tensor's values reach Python (each one a GPU sync on a GPU tensor), counted."""
    calls = [0]
    for name in ("item", "tolist", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, original=original):
            calls[0] += 1
            return original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("task_name, outputs_for", [
    ("classify", lambda n: torch.randn(n, 10)),
    ("boxreg", lambda n: torch.randn(n, 4)),
])
def test_postprocess_copies_per_batch_not_per_number(monkeypatch, task_name, outputs_for):
    task = get_task(task_name)
    meta = {"classes": [f"c{i}" for i in range(10)], "image_size": [32, 32]}
    calls = count_host_copies(monkeypatch)
    counts = []
    for batch in (2, 16):
        calls[0] = 0
        answers = task.postprocess(outputs_for(batch), meta, [(32, 32)] * batch)
        assert len(answers) == batch
        counts.append(calls[0])
    assert counts[0] == counts[1] <= 2, counts


def test_detect_postprocess_copies_per_image_not_per_box(monkeypatch):
    from raycv.tasks.detect import OUTPUT_STRIDE

    task = get_task("detect")
    meta = {"classes": ["a", "b", "c"], "image_size": [64, 64]}
    side = 64 // OUTPUT_STRIDE
    torch.manual_seed(0)
    outputs = torch.randn(2, 3 + 4, side, side) * 3  # many confident peaks: many boxes per image
    answers = task.postprocess(outputs, meta, [(64, 64)] * 2, min_score=0.0)
    boxes = sum(len(answer) for answer in answers)
    calls = count_host_copies(monkeypatch)
    task.postprocess(outputs, meta, [(64, 64)] * 2, min_score=0.0)
    assert boxes > 10 and calls[0] <= 3 * 2, (boxes, calls[0])


def test_several_workers_never_share_a_gpu():
    with pytest.raises(RaycvError, match=r"invalid gpus_per_worker=0.5: expected a whole number of GPUs with 2"):
        TrainConfig(gpu=True, workers=2, gpus_per_worker=0.5).validate()
    TrainConfig(gpu=True, workers=1, gpus_per_worker=0.25).validate()  # one worker may share a GPU
    TrainConfig(gpu=True, workers=2, gpus_per_worker=1).validate()
    with pytest.raises(RaycvError, match="sync_bn"):
        TrainConfig(sync_bn=True).validate()


def test_bad_gpu_layouts_are_one_line_before_ray_starts(tmp_path):
    def raycv(*argv):
        result = subprocess.run([sys.executable, "-m", "raycv.cli", *argv], capture_output=True, text=True,
                                timeout=120, env={**__import__("os").environ, "RAY_ADDRESS": ""})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("raycv: error:"), result.stderr
        return lines[0]

    data = str(tmp_path)
    assert "--gpus-per-trial 0.3 with 2 workers" in raycv("classify", "tune", "--data", data, "--space",
                                                          "lr=grid:0.1", "--gpus-per-trial", "0.3", "--workers", "2")
    if torch.cuda.device_count() == 0:
        assert "this machine has none" in raycv("classify", "train", "--data", data, "--gpu")


def test_placement_check_counts_every_worker(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(RaycvError, match=r"needs 8 x 1 = 8 GPUs, but this machine has 4"):
        check_local_gpus(8, 1.0, "training with 8 workers")
    check_local_gpus(4, 1.0, "training with 4 workers")
    check_local_gpus(8, 0.5, "serving up to 8 replicas")  # fractions pack onto the 4
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")
    check_local_gpus(64, 1.0, "training on a cluster")  # an autoscaler may add them: Ray decides there


def test_an_autoscaling_cluster_is_left_to_ray(ray_session, monkeypatch):
    """A fixed cluster is judged (tests/test_multinode.py refuses layouts on one); where an autoscaler reports
    node types of its config, it may add GPU nodes, so nothing is refused."""
    import json

    import ray.experimental.internal_kv

    assert cluster_may_grow() is False  # this session's local Ray
    status = {"autoscaler_report": {"active_nodes": {"headgroup": 1}, "idle_nodes": {}, "pending_launches": {}}}
    monkeypatch.setattr(ray.experimental.internal_kv, "_internal_kv_get", lambda key, **_: json.dumps(status).encode())
    assert cluster_may_grow() is True
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")
    check_cluster_gpus(64, 1.0, "training with 64 workers")  # not refused: the autoscaler may add them


def test_cpu_actor_keeps_off_the_gpu(ray_session):
    @ray_session.remote(num_cpus=0.1, num_gpus=0)
    class Probe:
        def device(self) -> str:
            import torch

            from raycv.devices import default_device

            torch.cuda.is_available = lambda: True  # as on a GPU node: the GPU is there, not reserved
            return str(default_device())

    assert ray_session.get(Probe.remote().device.remote()) == "cpu"


