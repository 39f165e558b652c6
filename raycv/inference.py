"""Evaluation and prediction from a checkpoint, in this process (no Ray Train needed)."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from raycv import checkpoint, storage
from raycv.data.images import decode_image
from raycv.devices import default_device
from raycv.synth import open_dataset
from raycv.errors import RaycvError


def evaluate_checkpoint(path: str, data: str, split: str = "val", batch_size: int = 256,
                        task_name: str | None = None, options: dict[str, Any] | None = None) -> dict[str, float]:
    device = default_device()
    loaded = checkpoint.load_model(path, task_name, device, options)
    splits, meta = open_dataset(loaded.task, data, loaded.config)
    if split not in splits:
        raise RaycvError(f"dataset {data} has no split {split!r}; splits: {', '.join(splits)}")
    if meta.get("classes") is not None and meta["classes"] != loaded.dataset_meta.get("classes"):
        raise RaycvError(f"dataset {data} has classes {meta['classes']} but the checkpoint was trained on "
                         f"{loaded.dataset_meta.get('classes')}")
    decoded = splits[split].map_batches(loaded.task.decode, fn_kwargs={"meta": loaded.dataset_meta}, batch_size=256)
    with torch.no_grad():  # fp32, as validation during training: metrics under autocast are wrong (train.py)
        metrics = loaded.task.evaluate(loaded.model, decoded.iter_torch_batches(batch_size=batch_size, device=device),
                                       loaded.dataset_meta)
    return {**metrics, "samples": splits[split].count()}


def read_image_files(paths: list[str], mode: str = "RGB") -> list[np.ndarray]:
    """Decoded files, uint8 HWC in `mode` (a task's image_mode: "RGB", or "RGBA" for inpaint)."""
    images = []
    for path in paths:
        if not storage.exists(path):
            raise RaycvError(f"image not found: {path}")
        try:
            images.append(decode_image(storage.read_bytes(path), mode=mode))
        except ValueError as error:
            raise RaycvError(f"cannot read image {path}: {error}") from None
    return images


def predict(loaded: checkpoint.LoadedModel, images: list[np.ndarray], **postprocess_options: Any) -> list[Any]:
    """The task's answers for decoded images (uint8 HWC RGB): preprocess, the model, postprocess. The
    one path from images to answers, shared by local prediction, batch prediction and Serve."""
    device = next(loaded.model.parameters()).device
    with torch.inference_mode():
        outputs = loaded.model(loaded.task.preprocess(images, loaded.dataset_meta).to(device))
    return loaded.task.postprocess(outputs, loaded.dataset_meta, [image.shape[:2] for image in images],
                                   **postprocess_options)


def predict_over_http(url: str, task_name: str, paths: list[str], timeout_s: float = 60) -> list[Any]:
    """`raycv TASK predict --url`: send the files to a running Serve app, one JSON request."""
    import base64

    import requests

    payload = {"images": []}
    for path in paths:
        if not storage.exists(path):
            raise RaycvError(f"image not found: {path}")
        fs, inner = storage.resolve(path)
        with fs.open_input_stream(inner) as stream:
            payload["images"].append(base64.b64encode(stream.read()).decode())
    endpoint = f"{url.rstrip('/')}/v1/{task_name}/predict"
    try:
        response = requests.post(endpoint, json=payload, timeout=timeout_s)
    except requests.RequestException as error:
        raise RaycvError(f"cannot reach {endpoint}: {error}") from None
    if response.status_code != 200:
        detail = response.json().get("detail", response.text) if response.headers.get("content-type", "").startswith(
            "application/json") else response.text
        raise RaycvError(f"{endpoint} answered {response.status_code}: {detail}")
    return response.json()["predictions"]


class FolderPredictor:
    """A model replica for Ray Data's actor pool: loaded once per actor, called per batch of files."""

    def __init__(self, checkpoint_path: str, task_name: str | None, postprocess_options: dict[str, Any],
                 options: dict[str, Any] | None = None):
        self.loaded = checkpoint.load_model(checkpoint_path, task_name, default_device(), options)
        self.image_mode = self.loaded.task.image_mode
        self.postprocess_options = postprocess_options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, errors, sizes = [], [], []
        for data in batch["bytes"]:
            try:
                images.append(decode_image(data, mode=self.image_mode))
                errors.append("")
                sizes.append(images[-1].shape[:2])
            except ValueError as error:  # one unreadable file must not fail the whole folder
                errors.append(str(error))
                sizes.append((0, 0))
        answers = iter(predict(self.loaded, images, **self.postprocess_options) if images else [])
        predictions = ["" if problem else json.dumps(next(answers)) for problem in errors]
        return {"path": batch["path"], "prediction": np.array(predictions, dtype=object),
                "error": np.array(errors, dtype=object), "height": np.array([size[0] for size in sizes]),
                "width": np.array([size[1] for size in sizes])}


def predict_folder(checkpoint_path: str, folder: str, out: str | None, task_name: str | None = None,
                   concurrency: int = 2, batch_size: int = 64, cpus_per_actor: float = 1.0,
                   gpus_per_actor: float = 0.0, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Offline batch prediction of every image under `folder` with Ray Data and an actor pool of
    `concurrency` model replicas; rows stream to `out` (.csv or .json lines) as they finish. `options`:
    the task's inference options (checkpoint.load_model)."""
    import csv
    import time

    import ray.data

    from raycv.data.formats import IMAGE_EXTENSIONS

    loaded = checkpoint.load_model(checkpoint_path, task_name, options=options)  # fail fast, here, on a bad one
    writer = loaded.task.prediction_writer(out, loaded.dataset_meta) if out else None
    if out is not None and writer is None and not out.endswith((".csv", ".json")):
        raise RaycvError(f"--out {out}: expected a .csv or .json file name")
    if not storage.is_dir(folder):
        raise RaycvError(f"image folder not found: {folder}")
    started = time.perf_counter()
    inside = storage.resolve(storage.absolute(folder))[1].rstrip("/") + "/"
    dataset = ray.data.read_binary_files(storage.absolute(folder), include_paths=True, file_extensions=[
        extension.lstrip(".") for extension in IMAGE_EXTENSIONS]).map_batches(
        FolderPredictor, fn_constructor_kwargs={"checkpoint_path": checkpoint_path, "task_name": task_name,
                                                "postprocess_options": writer.postprocess_options if writer else {},
                                                "options": options},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=concurrency), batch_size=batch_size,
        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
    count = failed = 0
    if writer is not None:  # the task's own format (COCO results, YOLO labels, PNG masks)
        for row in dataset.iter_rows():
            count += 1
            failed += bool(row["error"])
            if not row["error"]:
                writer.add(str(row["path"]).removeprefix(inside), (int(row["height"]), int(row["width"])),
                           json.loads(row["prediction"]))
        written = writer.close()
    else:
        with (open(out, "w", newline="") if out else nullcontext(sys.stdout)) as stream:
            written = "csv" if out and out.endswith(".csv") else "json lines"
            csv_writer = csv.writer(stream) if written == "csv" else None
            if csv_writer:
                csv_writer.writerow(["path", "prediction", "error"])
            for row in dataset.iter_rows():
                count += 1
                failed += bool(row["error"])
                if csv_writer:
                    csv_writer.writerow([row["path"], row["prediction"], row["error"]])
                else:
                    stream.write(json.dumps({"path": row["path"], "prediction": json.loads(row["prediction"] or "null"),
                                             "error": row["error"] or None}) + "\n")
    seconds = time.perf_counter() - started
    return {"images": count, "failed": failed, "seconds": round(seconds, 2),
            "images_per_s": round(count / seconds, 1), "out": out, "written": written}
