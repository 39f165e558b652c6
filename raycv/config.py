"""The training configuration: one dataclass shared by every task, with per-task defaults.

Tasks start from `TrainConfig()` and override what differs (`Task.default_config`); the CLI and jobs
override again from flags. Everything a run used is written next to its checkpoints as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from raycv.errors import RaycvError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
CHANNELS_LAST_MODES = ("auto", "on", "off")


def option(default: Any, help: str) -> Any:
    """A config field with its --help text (the CLI makes one flag per field)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # model
    model: str = option("vgg11_bn", "network name (the task's --help lists them)")
    width: float = option(1.0, "channel multiplier; 1.0 is the book's network")
    # optimisation
    epochs: int = option(30, "training epochs")
    batch_size: int = option(128, "batch size per worker")
    lr: float = option(0.1, "peak learning rate (onecycle) or initial one (cosine, constant)")
    optimizer: str = option("sgd", f"one of {', '.join(OPTIMIZERS)}")
    momentum: float = option(0.9, "SGD momentum (Nesterov when > 0), or AdamW's beta1 (GANs train with 0.5)")
    weight_decay: float = option(5e-4, "weight decay on weights (not on biases or norm scales)")
    schedule: str = option("onecycle", f"learning-rate schedule: one of {', '.join(SCHEDULES)}")
    warmup_fraction: float = option(0.2, "onecycle's rising phase, as a share of all steps")
    label_smoothing: float = option(0.0, "label smoothing for classification losses")
    augment: bool = option(True, "batched augmentation on the training device")
    sparsity: float = option(0.0, "global magnitude sparsity kept through training (0 = dense); see raycv/sparsity.py")
    init_checkpoint: str = option("", "start from these weights, e.g. a dense model to sparsify and fine-tune")
    # execution
    workers: int = option(1, "Ray Train workers (DDP processes)")
    gpu: bool = option(False, "train on GPUs (gpus_per_worker each)")
    gpus_per_worker: float = option(1.0, "GPUs per worker with --gpu; fractions let small models share a GPU")
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker (= torch threads on CPU)")
    amp: str = option("auto", "mixed precision: auto (bf16 or fp16+GradScaler on GPU, off on CPU), bf16, fp16, off")
    channels_last: str = option("auto", "channels_last memory format: auto (on GPU; on CPU it pays for some "
                                        "networks and costs others, so tasks opt in), on, off")
    compile: bool = option(False, "torch.compile the model")
    seed: int = option(0, "random seed (per worker: seed + rank)")
    cache_data: bool = option(True, "decode the dataset once into Ray's object store; off for data larger than memory")
    # bookkeeping
    storage: str = option("runs", "where runs go: a folder or a URI (s3://, gs://); runs land in STORAGE/TASK/NAME")
    name: str = option("", "run name (default train, train2, ...); an existing name resumes that run")
    keep_checkpoints: int = option(2, "best checkpoints kept by the validation metric (the latest is kept too)")
    verbose: bool = option(False, "show the INFO logs of Ray Train and Ray Data")
    max_failures: int = option(0, "worker-group restarts after a failure (-1: forever)")
    fail_at_epoch: int = option(0, "fault injection for tests: the first attempt crashes at this epoch")
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific options

    def validate(self) -> TrainConfig:
        checks = [
            (self.epochs >= 1, "epochs", self.epochs, "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1"),
            (self.lr > 0, "lr", self.lr, "a positive number"),
            (0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)"),
            (self.width > 0, "width", self.width, "a positive number"),
            (self.workers >= 1, "workers", self.workers, "an integer >= 1"),
            (self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "a positive number"),
            (self.gpus_per_worker > 0, "gpus_per_worker", self.gpus_per_worker, "a positive number"),
            (0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)"),
            (0 < self.warmup_fraction < 1, "warmup_fraction", self.warmup_fraction, "in (0, 1)"),
            (self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {', '.join(SCHEDULES)}"),
            (self.amp in AMP_MODES, "amp", self.amp, f"one of {', '.join(AMP_MODES)}"),
            (self.channels_last in CHANNELS_LAST_MODES, "channels_last", self.channels_last,
             f"one of {', '.join(CHANNELS_LAST_MODES)}"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "an integer >= 1"),
            (self.max_failures >= -1, "max_failures", self.max_failures, "-1 (retry forever) or >= 0"),
            (0 <= self.sparsity < 1, "sparsity", self.sparsity, "a fraction in (0, 1), e.g. 0.7 (0 = dense)"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise RaycvError(f"invalid {key}={value!r}: expected {expected}")
        return self

    def replace(self, **overrides: Any) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RaycvError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class ServeOptions:
    """How `raycv TASK serve` deploys a checkpoint (see raycv/serve.py)."""

    checkpoint: str
    task: str | None = None  # refuse a checkpoint of another task when set
    min_replicas: int = option(1, "autoscaling floor")
    max_replicas: int = option(2, "autoscaling ceiling")
    target_ongoing_requests: float = option(4.0, "requests in flight per replica the autoscaler aims for")
    batch_size: int = option(32, "largest @serve.batch")
    batch_wait_ms: float = option(20.0, "how long a batch waits to fill: throughput against latency at low load")
    gpu: float = option(0.0, "GPUs per replica; fractions share a GPU; bare --gpu means 1")
    cpus_per_replica: float = option(1.0, "CPUs per replica (= torch threads)")
    max_body_mb: float = option(10.0, "larger request bodies get 413")
    max_pixels: int = option(4096 * 4096, "larger images get 413 (read from the header, before decoding)")
    max_images_per_request: int = option(64, "more images in one JSON request get 413")
    upscale_delay_s: float = option(3.0, "load must last this long before a replica is added")
    downscale_delay_s: float = option(60.0, "idle time before a replica is removed")
    metrics_interval_s: float = option(2.0, "how often replicas report their load to the autoscaler")
    look_back_period_s: float = option(10.0, "window the autoscaler averages load over")
    state_dir: str = option("", "where a task keeps its serve state (search: the gallery index); "
                                "default: serve_state/ in the checkpoint's run folder")

    def validate(self) -> ServeOptions:
        checks = [
            (self.min_replicas >= 0, "min_replicas", self.min_replicas, ">= 0"),
            (self.max_replicas >= max(1, self.min_replicas), "max_replicas", self.max_replicas,
             ">= max(1, min_replicas)"),
            (self.target_ongoing_requests > 0, "target_ongoing_requests", self.target_ongoing_requests, "> 0"),
            (self.batch_size >= 1, "batch_size", self.batch_size, ">= 1"),
            (self.batch_wait_ms >= 0, "batch_wait_ms", self.batch_wait_ms, ">= 0"),
            (self.gpu >= 0, "gpu", self.gpu, ">= 0"),
            (self.cpus_per_replica > 0, "cpus_per_replica", self.cpus_per_replica, "> 0"),
            (self.max_body_mb > 0, "max_body_mb", self.max_body_mb, "> 0"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise RaycvError(f"invalid {key}={value!r}: expected {expected}")
        return self
