"""The configurations users set: training (TrainConfig), serving (ServeOptions) and compression
(CompressOptions), plain dataclasses with their --help texts.

Tasks start from `TrainConfig()` and override what differs (their card's config, tasks/cards.py); the
CLI and jobs override again from flags. Everything a run used is written next to its checkpoints as
JSON. This module imports nothing heavy: the command line builds its flags from it before torch loads.
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
CACHE_MODES = ("auto", "on", "off")
CRITERIA = ("l1", "bn")  # channel-importance criteria of compress's channel pruning
COMPRESS_STAGES = ("sparse", "channels", "int8", "export")  # raycv.compress's stages, in the order they run


def option(default: Any, help: str, hidden: bool = False) -> Any:
    """A config field with its --help text (the CLI makes one flag per field; a hidden one, for tests,
    is accepted but left out of --help)."""
    return field(default=default, metadata={"help": help, "hidden": hidden})


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
    grad_clip: float = option(0.0, "clip the gradients' global norm to this before each step (0 = off)")
    augment: bool = option(True, "batched augmentation on the training device")
    sparsity: float = option(0.0, "global magnitude sparsity kept through training (0 = dense); see raycv/sparsity.py")
    pretrained: str = option("", "start from these weights: a raycv checkpoint (e.g. a dense model to sparsify and "
                                 "fine-tune) or a local state_dict file such as torchvision's .pth; a classifier head "
                                 "of another class count is replaced. Nothing is downloaded")
    freeze_backbone_epochs: int = option(0, "train only the head for this many epochs first (fine-tuning)")
    backbone_lr_scale: float = option(1.0, "the backbone's learning rate as a share of --lr (fine-tuning: e.g. 0.1)")
    # execution
    workers: int = option(1, "Ray Train workers (DDP processes)")
    gpu: bool = option(False, "train on GPUs (gpus_per_worker each)")
    gpus_per_worker: float = option(1.0, "GPUs per worker with --gpu; fractions let small models share a GPU")
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker (= torch threads on CPU)")
    sync_bn: bool = option(False, "SyncBatchNorm across DDP workers (GPUs): batch statistics over the global "
                                  "batch, for small per-GPU batches")
    amp: str = option("auto", "mixed precision: auto (bf16 or fp16+GradScaler on GPU, off on CPU), bf16, fp16, off")
    channels_last: str = option("auto", "channels_last memory format: auto (on GPU; on CPU it pays for some "
                                        "networks and costs others, so tasks opt in), on, off")
    compile: bool = option(False, "torch.compile the model")
    seed: int = option(0, "random seed (per worker: seed + rank)")
    cache_data: str = option("auto", "decode the dataset once into Ray's object store (on), or stream it from storage "
                                     "and decode every epoch (off); auto caches what fits in a third of the store")
    # bookkeeping
    storage: str = option("runs", "where runs go: a folder or a URI (s3://, gs://); runs land in STORAGE/TASK/NAME")
    name: str = option("", "run name (default train, train2, ...); an existing name resumes that run")
    keep_checkpoints: int = option(2, "best checkpoints kept by the validation metric (the latest is kept too)")
    verbose: bool = option(False, "show the INFO logs of Ray Train and Ray Data")
    max_failures: int = option(0, "worker-group restarts after a failure (-1: forever)")
    fail_at_epoch: int = option(0, "fault injection for tests: the first attempt crashes at this epoch", hidden=True)
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
            # Two DDP ranks on one GPU fail in NCCL ("Duplicate GPU detected"): several workers need whole GPUs.
            (not self.gpu or self.workers == 1 or float(self.gpus_per_worker).is_integer(), "gpus_per_worker",
             self.gpus_per_worker, f"a whole number of GPUs with {self.workers} workers (NCCL cannot put two DDP "
             "ranks on one GPU); use fractions with --workers 1"),
            (not self.sync_bn or self.gpu, "sync_bn", self.sync_bn, "False without --gpu (SyncBatchNorm runs on GPUs)"),
            (0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip", self.grad_clip, "a norm >= 0 (0 = off)"),
            (0 < self.warmup_fraction < 1, "warmup_fraction", self.warmup_fraction, "in (0, 1)"),
            (self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {', '.join(SCHEDULES)}"),
            (self.amp in AMP_MODES, "amp", self.amp, f"one of {', '.join(AMP_MODES)}"),
            (self.channels_last in CHANNELS_LAST_MODES, "channels_last", self.channels_last,
             f"one of {', '.join(CHANNELS_LAST_MODES)}"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "an integer >= 1"),
            (self.max_failures >= -1, "max_failures", self.max_failures, "-1 (retry forever) or >= 0"),
            (self.cache_data in CACHE_MODES, "cache_data", self.cache_data, f"one of {', '.join(CACHE_MODES)}"),
            (self.freeze_backbone_epochs >= 0, "freeze_backbone_epochs", self.freeze_backbone_epochs,
             "an integer >= 0"),
            (self.backbone_lr_scale >= 0, "backbone_lr_scale", self.backbone_lr_scale, "a number >= 0"),
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
        values = dict(values)
        # Configs recorded by earlier versions: a boolean cache_data and init_checkpoint for pretrained.
        if isinstance(values.get("cache_data"), bool):
            values["cache_data"] = "on" if values["cache_data"] else "off"
        if "init_checkpoint" in values:
            values.setdefault("pretrained", values.pop("init_checkpoint"))
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class ServeOptions:
    """How `raycv TASK serve` deploys a checkpoint (see raycv/serve.py)."""

    checkpoint: str
    task: str | None = None  # refuse a checkpoint of another task when set
    # The task's inference options the replicas load the checkpoint with (checkpoint.load_model's `options`).
    inference_options: dict[str, Any] = field(default_factory=dict)
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


@dataclass
class CompressOptions:
    sparsities: tuple[float, ...] = option((0.5, 0.6, 0.7, 0.8, 0.9), "global sparsity levels, reached in order")
    finetune_epochs: int = option(1, "fine-tuning epochs after each sparsity step")
    finetune_steps: int = option(0, "cap on steps in every fine-tune epoch, sparse and channel (a random subset); "
                                    "0: all")
    lr: float | None = option(None, "fine-tuning learning rate (cosine decay); None: 0.3 x the checkpoint's")
    batch_size: int = option(128, "fine-tuning and calibration batch size")
    channel_ratio: float = option(0.7, "share of channels removed from every prunable layer (params shrink ~ (1-r)^2)")
    channel_steps: int = option(3, "remove the channels in this many rounds, fine-tuning after each")
    channel_finetune_epochs: int = option(10, "fine-tuning epochs after channel pruning, spread over the rounds "
                                              "(removing channels changes more than a mask does)")
    criterion: str = option("l1", "channel importance: \"l1\" (filter weight norm) or \"bn\" (BatchNorm scale)")
    distill: float = option(1.0, "weight of the dense model's outputs as a second target while the channel-pruned "
                                 "model fine-tunes (mean squared difference; 0: off)")
    calibration_batches: int = option(16, "training batches that calibrate the int8 observers")
    threads: int = option(0, "torch / onnxruntime threads for the whole run, latencies included; 0: torch's default")
    latency_runs: int = option(20, "timed runs per measurement (the median is reported)")
    latency_batches: tuple[int, ...] = option((1, 64), "batch sizes to time on CPU")
    stages: tuple[str, ...] = option(COMPRESS_STAGES, "stages to run (the dense row always comes first)")
    parity_tolerance: float = option(1e-4, "largest allowed |difference| between exported and PyTorch outputs")
    seed: int = option(0, "random seed for fine-tuning")

    def validate(self) -> CompressOptions:
        checks = [
            (len(self.sparsities) > 0 and all(0 < s < 1 for s in self.sparsities), "sparsities", self.sparsities,
             "one or more fractions in (0, 1)"),
            (list(self.sparsities) == sorted(set(self.sparsities)), "sparsities", self.sparsities,
             "strictly increasing (pruning is iterative: each level starts from the previous one)"),
            (self.finetune_epochs >= 0, "finetune_epochs", self.finetune_epochs, "an integer >= 0"),
            (self.finetune_steps >= 0, "finetune_steps", self.finetune_steps, "an integer >= 0 (0: whole epoch)"),
            (self.lr is None or self.lr > 0, "lr", self.lr, "a positive number (or None: 0.3 x the checkpoint's)"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1"),
            (0 < self.channel_ratio < 1, "channel_ratio", self.channel_ratio, "a fraction in (0, 1)"),
            (self.channel_steps >= 1, "channel_steps", self.channel_steps, "an integer >= 1"),
            (self.distill >= 0, "distill", self.distill, "a weight >= 0"),
            (self.channel_finetune_epochs >= 0, "channel_finetune_epochs", self.channel_finetune_epochs,
             "an integer >= 0"),
            (self.criterion in CRITERIA, "criterion", self.criterion, f"one of {', '.join(CRITERIA)}"),
            (self.calibration_batches >= 1, "calibration_batches", self.calibration_batches, "an integer >= 1"),
            (self.threads >= 0, "threads", self.threads, "an integer >= 0 (0: torch's default)"),
            (self.latency_runs >= 1, "latency_runs", self.latency_runs, "an integer >= 1"),
            (len(self.latency_batches) > 0 and all(b >= 1 for b in self.latency_batches), "latency_batches",
             self.latency_batches, "one or more batch sizes >= 1"),
            (all(s in COMPRESS_STAGES for s in self.stages), "stages", self.stages,
             f"a subset of {', '.join(COMPRESS_STAGES)}"),
            (self.parity_tolerance > 0, "parity_tolerance", self.parity_tolerance, "a positive number"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise RaycvError(f"invalid {key}={value!r}: expected {expected}")
        return self
