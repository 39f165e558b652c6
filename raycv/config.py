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


@dataclass
class TrainConfig:
    # model
    model: str = "vgg11_bn"
    width: float = 1.0  # channel multiplier; 1.0 is the book's network
    # optimisation
    epochs: int = 30
    batch_size: int = 128  # per worker
    lr: float = 0.1  # peak learning rate for onecycle, initial for cosine/constant
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_fraction: float = 0.2  # onecycle's rising phase, as a share of all steps
    label_smoothing: float = 0.0
    augment: bool = True
    # execution
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: float = 1.0
    amp: str = "auto"  # auto: bf16 where supported, else fp16 + GradScaler; off on CPU
    channels_last: bool = True  # applied on GPU only
    compile: bool = False
    seed: int = 0
    cache_data: bool = True  # decode once into the object store; turn off for data larger than memory
    # bookkeeping
    storage: str = "runs"
    name: str = ""
    keep_checkpoints: int = 2
    verbose: bool = False  # Ray Train's own INFO logs
    max_failures: int = 0
    fail_at_epoch: int = 0  # fault injection for tests: the first attempt raises at this epoch (1-based)
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific options

    def validate(self) -> "TrainConfig":
        checks = [
            (self.epochs >= 1, "epochs", self.epochs, "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1"),
            (self.lr > 0, "lr", self.lr, "a positive number"),
            (self.width > 0, "width", self.width, "a positive number"),
            (self.workers >= 1, "workers", self.workers, "an integer >= 1"),
            (self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "a positive number"),
            (0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)"),
            (0 < self.warmup_fraction < 1, "warmup_fraction", self.warmup_fraction, "in (0, 1)"),
            (self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {', '.join(SCHEDULES)}"),
            (self.amp in AMP_MODES, "amp", self.amp, f"one of {', '.join(AMP_MODES)}"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "an integer >= 1"),
            (self.max_failures >= -1, "max_failures", self.max_failures, "-1 (retry forever) or >= 0"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise RaycvError(f"invalid {key}={value!r}: expected {expected}")
        return self

    def replace(self, **overrides: Any) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RaycvError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
