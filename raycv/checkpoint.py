"""The checkpoint format: a folder any task's model can be rebuilt from without running pickled code.

    model.pt        the model's state_dict (tensors only)
    train_state.pt  optimizer, schedule and scaler state, for resuming (tensors and numbers only)
    meta.json       task, config, dataset meta (class names, input size), epoch, metric history

Everything loads with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, fields
from typing import Any
from collections.abc import Iterator

import torch
from torch import nn

from raycv import storage
from raycv.config import TrainConfig
from raycv.errors import RaycvError
from raycv.tasks import get_task
from raycv.tasks.base import Task, with_task_options

MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "train_state.pt", "meta.json"


def save(folder: str, model: nn.Module, meta: dict[str, Any], train_state: dict[str, Any] | None = None) -> None:
    """Pruned models are saved as plain weights (masks multiplied out), loadable by a dense model."""
    from raycv.sparsity import plain_state_dict

    os.makedirs(folder, exist_ok=True)
    torch.save(plain_state_dict(model), os.path.join(folder, MODEL_FILE))
    if train_state is not None:
        torch.save(train_state, os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, META_FILE), "w") as file:
        json.dump(meta, file, indent=2)


def read_meta(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, META_FILE)) as file:
        return json.load(file)


def stored_config(meta: dict[str, Any], path: str) -> TrainConfig:
    """The config a checkpoint was trained with. An option added after the checkpoint was written takes
    today's default, which may build another network than the one its weights came from (a search model
    from before `stem_stride` loads its weights into a stride-2 stem without an error), so say which."""
    stored = meta["config"]
    today = with_task_options(get_task(meta["task"]), TrainConfig())
    missing = sorted({field.name for field in fields(TrainConfig)} - set(stored)
                     | set(today.extra) - set(stored.get("extra", {})))
    if missing:
        defaults = ", ".join(f"{name}={today.extra[name] if name in today.extra else getattr(today, name)!r}"
                             for name in missing)
        warnings.warn(f"checkpoint {path} records no {', '.join(missing)}: it was written before "
                      f"{'that option' if len(missing) == 1 else 'those options'} existed, and loads with "
                      f"today's {defaults}; if it was trained otherwise, rebuild it with those values",
                      stacklevel=3)
    return TrainConfig.from_dict(stored)


def load_weights(path: str) -> dict[str, Any]:
    with local_copy(path) as folder:
        return torch.load(os.path.join(folder, MODEL_FILE), weights_only=True, map_location="cpu")


def load_train_state(folder: str) -> dict[str, Any]:
    return torch.load(os.path.join(folder, STATE_FILE), weights_only=True, map_location="cpu")


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local folder holding the checkpoint at `path` (a folder or a storage URI)."""
    import ray.train

    path = storage.absolute(path)
    if not storage.is_dir(path) or not storage.exists(storage.join(path, META_FILE)):
        raise RaycvError(f"not a raycv checkpoint: {path} (expected a folder with {MODEL_FILE} and {META_FILE})")
    if not storage.is_uri(path):
        yield path
        return
    with ray.train.Checkpoint(path).as_directory() as folder:
        yield folder


@dataclass
class LoadedModel:
    task: Task
    model: nn.Module
    config: TrainConfig
    meta: dict[str, Any]  # the checkpoint's meta.json
    path: str

    @property
    def dataset_meta(self) -> dict[str, Any]:
        return self.meta["dataset"]


def load_model(path: str, task_name: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model saved at `path`, in eval mode. With `task_name`, refuse another task's
    checkpoint rather than fail later with a confusing shape error."""
    with local_copy(path) as folder:
        meta = read_meta(folder)
        if task_name is not None and meta["task"] != task_name:
            raise RaycvError(f"checkpoint {path} belongs to task {meta['task']!r}, not {task_name!r}")
        task = get_task(meta["task"])
        config = stored_config(meta, path)
        model = task.build_model(config, meta["dataset"])
        model.load_state_dict(torch.load(os.path.join(folder, MODEL_FILE), weights_only=True, map_location="cpu"))
    return LoadedModel(task, model.to(device).eval(), config, meta, storage.absolute(path))
