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
    from before `stem_stride` loads its weights into a stride-2 stem without an error), so say which. The
    task's inference options are left out: evaluation may set them on any checkpoint, so their defaults
    cannot misbuild one."""
    stored = meta["config"]
    task = get_task(meta["task"])
    today = with_task_options(task, TrainConfig())
    missing = sorted({field.name for field in fields(TrainConfig)} - set(stored)
                     | set(today.extra) - set(stored.get("extra", {})) - set(task.card.inference_options))
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


def read_pretrained(path: str) -> dict[str, torch.Tensor]:
    """The weights --pretrained names: a raycv checkpoint folder, or a state_dict file (torchvision's .pth,
    or a {"state_dict": ...} / {"model": ...} wrapper of one), local or a storage URI."""
    import io
    import pickle

    if storage.is_dir(storage.absolute(path)):
        return load_weights(path)
    if not storage.exists(storage.absolute(path)):
        raise RaycvError(f"pretrained weights not found: {path}")
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(storage.absolute(path))), weights_only=True,
                           map_location="cpu")
    except pickle.UnpicklingError:  # weights_only refused to build some object
        raise RaycvError(f"pretrained file {path} is not a state_dict: it pickles objects other than tensors (a "
                         "whole model saved with torch.save(model)? save model.state_dict() instead)") from None
    except Exception as error:  # text, a zip of something else, a truncated file
        raise RaycvError(f"pretrained file {path} is not a state_dict: torch.load cannot read it "
                         f"({type(error).__name__})") from None
    if isinstance(state, dict):
        state = next((state[key] for key in ("state_dict", "model") if isinstance(state.get(key), dict)), state)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RaycvError(f"pretrained file {path} is not a state_dict (a dict of parameter names to tensors); "
                         f"it holds a {type(state).__name__}")
    return state


# The names torchvision's classification networks give their classifier, and raycv's detector its output layers
# (its weights may seed segment's pyramid segmenter, which shares the detector's body).
HEAD_NAMES = ("fc", "classifier", "head", "heads", "heatmap_tower", "box_tower", "output")


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor], head: str | None, path: str) -> list[str]:
    """Load `state` into `model`, which may wrap the network the weights were saved from (raycv's
    models hold their network as a submodule, torchvision's files are of the bare network). Layers under
    `head` (the output layer, whose size follows the class count) keep their fresh weights when the
    shapes differ; any other missing layer or shape difference is an error naming it. The weights may
    also be of a network the model uses as its backbone (a torchvision classifier's, under detect's
    detector): they load into that part, their classifier is left out, and the rest of the model stays
    fresh. The file may itself wrap the network (a raycv classifier's checkpoint holds it under `net.`
    beside its input normalisation): the pairing of the file's and the model's prefixes under which most
    layers match is used. Returns the names of the parameters left fresh."""
    own = model.state_dict()
    prefixes = [""] + [f"{name}." for name, _ in model.named_modules() if name]
    file_prefixes = [""] + sorted({f"{key.split('.', 1)[0]}." for key in state if "." in key})

    def matches(file_prefix: str, prefix: str) -> int:
        return sum(key.startswith(file_prefix) and f"{prefix}{key[len(file_prefix):]}" in own for key in state)

    file_prefix, prefix = max(((f, p) for f in file_prefixes for p in prefixes), key=lambda pair: matches(*pair))
    state = {key[len(file_prefix):]: value for key, value in state.items() if key.startswith(file_prefix)}
    if not any(f"{prefix}{key}" in own for key in state):
        raise RaycvError(f"pretrained file {path} matches none of the model's layers (the file has "
                         f"{next(iter(state))}, the model {next(iter(own))}); is it of another architecture?")
    renamed = {f"{prefix}{key}": value for key, value in state.items()}
    fresh = []
    for key, value in own.items():
        if not key.startswith(prefix):  # e.g. the input normalisation raycv's wrapper adds
            continue
        in_head = head is not None and (key.startswith(f"{head}.") or key == head)
        if key not in renamed:
            if in_head:
                fresh.append(key)
                continue
            raise RaycvError(f"pretrained file {path} has no weights for layer {key} {tuple(value.shape)}; is it "
                             "of another architecture?")
        if renamed[key].shape != value.shape:
            if in_head:
                fresh.append(key)
                del renamed[key]
                continue
            raise RaycvError(f"pretrained file {path} does not fit layer {key}: the file's shape "
                             f"{tuple(renamed[key].shape)}, the model's {tuple(value.shape)}")
    unexpected = sorted(set(renamed) - set(own))
    modules = {name for name, _ in model.named_modules()}

    def missing_layer(key: str) -> str:
        """The first module on `key`'s path the model lacks (box_tower for net.box_tower.0.weight)."""
        parts = key.split(".")
        return next(part for index, part in enumerate(parts) if ".".join(parts[:index + 1]) not in modules)

    # A classification network's weights loaded into a backbone (detect's torchvision backbones), or a detector's
    # into the segmenter built on its body: the classifier or the detection heads have no place there.
    unknown = [key for key in unexpected if missing_layer(key) not in HEAD_NAMES]
    if unknown:
        raise RaycvError(f"pretrained file {path} has layers the model lacks, e.g. {unknown[0]}; is it of "
                         "another architecture?")
    renamed = {key: value for key, value in renamed.items() if key in own}
    model.load_state_dict(renamed, strict=False)
    return fresh


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


def check_inference_options(task: Task, options: dict[str, Any]) -> None:
    """Refuse, in one line, options a trained model cannot change and bad values of those it can."""
    fixed = sorted(set(options) - set(task.card.inference_options))
    if fixed:
        changeable = ", ".join(task.card.inference_options) or "none"
        raise RaycvError(f"{', '.join(fixed)} cannot change after training a {task.name} model "
                         f"(options evaluation may change: {changeable})")
    task.card.check_options(options)


def with_inference_options(task: Task, config: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    check_inference_options(task, options)
    return config.replace(extra={**config.extra, **options}) if options else config


def load_model(path: str, task_name: str | None = None, device: str | torch.device = "cpu",
               options: dict[str, Any] | None = None) -> LoadedModel:
    """Rebuild the model saved at `path`, in eval mode. With `task_name`, refuse another task's
    checkpoint rather than fail later with a confusing shape error. `options` change the task's
    inference options (TaskCard.inference_options: test-time augmentation) from what the run used."""
    with local_copy(path) as folder:
        meta = read_meta(folder)
        if task_name is not None and meta["task"] != task_name:
            raise RaycvError(f"checkpoint {path} belongs to task {meta['task']!r}, not {task_name!r}")
        task = get_task(meta["task"])
        config = with_inference_options(task, stored_config(meta, path), options or {})
        model = task.build_model(config, meta["dataset"])
        try:
            model.load_state_dict(torch.load(os.path.join(folder, MODEL_FILE), weights_only=True, map_location="cpu"))
        except RuntimeError as error:  # torch lists every mismatched tensor; the first says enough
            first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
            raise RaycvError(f"checkpoint {path} does not fit the {task.name} model this raycv builds ({first}): "
                             "was it written by an older raycv? train it again") from None
    return LoadedModel(task, model.to(device).eval(), config, meta, storage.absolute(path))
