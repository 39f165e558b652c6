"""Evaluation and prediction from a checkpoint, in this process (no Ray Train needed)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from raycv import checkpoint, storage
from raycv.data.images import decode_image
from raycv.data.synth import open_dataset
from raycv.errors import RaycvError


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate_checkpoint(path: str, data: str, split: str = "val", batch_size: int = 256,
                        task_name: str | None = None) -> dict[str, float]:
    device = default_device()
    loaded = checkpoint.load_model(path, task_name, device)
    splits, meta = open_dataset(loaded.task, data)
    if split not in splits:
        raise RaycvError(f"dataset {data} has no split {split!r}; splits: {', '.join(splits)}")
    if meta.get("classes") is not None and meta["classes"] != loaded.dataset_meta.get("classes"):
        raise RaycvError(f"dataset {data} has classes {meta['classes']} but the checkpoint was trained on "
                         f"{loaded.dataset_meta.get('classes')}")
    decoded = splits[split].map_batches(loaded.task.decode, fn_kwargs={"meta": loaded.dataset_meta}, batch_size=256)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with torch.no_grad(), autocast:
        metrics = loaded.task.evaluate(loaded.model, decoded.iter_torch_batches(batch_size=batch_size, device=device),
                                       loaded.dataset_meta)
    return {**metrics, "samples": decoded.count()}


def read_image_files(paths: list[str]) -> list[np.ndarray]:
    images = []
    for path in paths:
        if not storage.exists(path):
            raise RaycvError(f"image not found: {path}")
        fs, inner = storage.resolve(path)
        with fs.open_input_stream(inner) as stream:
            data = stream.read()
        try:
            images.append(decode_image(data))
        except ValueError as error:
            raise RaycvError(f"cannot read image {path}: {error}") from None
    return images


def predict(loaded: checkpoint.LoadedModel, images: list[np.ndarray]) -> list[Any]:
    device = next(loaded.model.parameters()).device
    with torch.no_grad():
        outputs = loaded.model(loaded.task.preprocess(images, loaded.dataset_meta).to(device))
    return loaded.task.postprocess(outputs, loaded.dataset_meta)
