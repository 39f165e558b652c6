"""One local Ray instance per test session, and one small synthesized dataset shared by the tests."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager

import pytest

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray Train's controller polls its workers every 2 s by default, so each fit idles up to 2 s after its last
# epoch before it ends; the suite runs dozens of short fits (and the clusters its child processes start
# inherit this environment).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# S3 as a cluster's nodes get it: credentials and endpoint from the environment, set here before Ray starts
# so that every Ray worker inherits them. The endpoint is the loopback S3 server test_s3.py opens on this
# port; fake credentials also keep a developer's real ones from ever reaching a test.
S3_PORT = free_port()
os.environ.update(AWS_ACCESS_KEY_ID="raycv-test", AWS_SECRET_ACCESS_KEY="raycv-test", AWS_DEFAULT_REGION="us-east-1",
                  AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from raycv.runtime import init_ray

    # With the dashboard: Ray Train's PlacementGroupCleaner asks the state API whether a trial's
    # controller died, so without it a trial that Tune stops early leaks its workers' CPUs.
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("raycv")


@pytest.fixture(scope="session")
def classify_data(ray_session, workdir):
    """A small procedural classification set: 3,072 training and 256 validation images."""
    from raycv.synth import synthesize
    from raycv.tasks import get_task

    path = str(workdir / "classify-data")
    synthesize(get_task("classify"), path, {"train": 3072, "val": 256}, seed=7)
    return path


# Small enough for 2 CPU cores, large enough that the loss visibly falls within a few epochs.
TINY = dict(width=0.25, batch_size=32, optimizer="adamw", lr=3e-3, weight_decay=0.05, label_smoothing=0.0)


@pytest.fixture(scope="session")
def ddp_run(classify_data, workdir):
    """One 2-worker DDP fit shared by the training, CLI and serving tests."""
    from raycv.tasks import get_task
    from raycv.train import fit

    task = get_task("classify")
    cfg = task.default_config().replace(epochs=4, workers=2, storage=str(workdir / "runs"), name="ddp", **TINY)
    return fit(task, cfg, classify_data)


def train_steps(task, model, batch, cfg, steps: int, lr: float = 3e-3) -> list[float]:
    """`steps` AdamW steps of the task's loss on one batch, in-process (no Ray); the losses seen."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = task.loss(model, batch, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def saved_checkpoint(task, cfg, meta: dict, folder: str, model=None) -> str:
    """A raycv checkpoint folder written in-process (no Ray Train fit): for tests of the verbs, the
    predict path and Serve, which need a checkpoint but not a trained one."""
    from raycv import checkpoint
    from raycv.tasks.base import with_task_options

    model = model if model is not None else task.build_model(cfg, meta)
    checkpoint.save(folder, model, {"task": task.name, "config": with_task_options(task, cfg).to_dict(),
                                    "dataset": meta, "epoch": 0, "history": []})
    return folder


def png_bytes(image) -> bytes:
    """A uint8 HWC array as PNG bytes, as a client would send it."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG header declaring an RGB image of width x height, without its pixels: the first bytes of a
    decompression bomb, for the size checks that must refuse an image before decoding it."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@contextmanager
def served(checkpoint: str, task: str, **options):
    """raycv's Serve app for one checkpoint on a free local port, small enough for the test machine;
    yields the base URL and shuts Serve down after. `options` override ServeOptions fields."""
    from ray import serve

    from raycv.config import ServeOptions
    from raycv.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    defaults = {"max_replicas": 1, "cpus_per_replica": 0.5, "batch_wait_ms": 5}
    serve.run(build_app(ServeOptions(checkpoint=checkpoint, task=task, **{**defaults, **options})),
              name="raycv", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
