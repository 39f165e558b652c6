"""Image classification (textbook chapter 4; the network-compression chapter 10 starts from it).

Data: raycv's procedural 10-class 32x32 shapes (offline stand-in for CIFAR-10), CIFAR-10 python
pickle batches, or an ImageFolder tree. Models: the book's CIFAR VGG-11-BN and ResNet-18.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Iterable

import numpy as np
import ray.data
import torch
import torchmetrics
from torch import nn

from raycv.config import TrainConfig
from raycv.data import augment, formats
from raycv.data.images import CIFAR_MEAN, CIFAR_STD, decode_image, encode_png, resize_all, to_model_input
from raycv.data.procedural import SHAPE_CLASSES, render_shape_image
from raycv.models.cifar import VGG, CifarResNet
from raycv.models.common import Normalized
from raycv.tasks.base import Task
from raycv.tasks.cards import CARDS

MODELS = {
    "vgg11_bn": lambda num_classes, width: VGG(num_classes=num_classes, width=width),
    "resnet18": lambda num_classes, width: CifarResNet((2, 2, 2, 2), num_classes=num_classes, width=width),
}


class ClassifyTask(Task):
    card = CARDS["classify"]
    metric = "accuracy"
    metric_mode = "max"
    synth_defaults = {"image_size": 32}

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        size = int(params["image_size"])
        return {"classes": list(SHAPE_CLASSES), "image_size": [size, size]}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        label = int(rng.integers(len(SHAPE_CLASSES)))
        return {"image": encode_png(render_shape_image(rng, label, int(params["image_size"]))), "label": label}

    def read(self, path: str) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
        if formats.is_cifar10(path):
            return formats.read_cifar10(path)
        return formats.read_image_folder(path)

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        # Raw-pixel formats (CIFAR) arrive as uint8 arrays, encoded ones (PNG/JPEG) as bytes.
        images = list(batch["image"]) if batch["image"].dtype == np.uint8 else [decode_image(b) for b in batch["image"]]
        return {"image": resize_all(images, tuple(meta["image_size"])),
                "label": np.asarray(batch["label"], dtype=np.int64)}

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        return Normalized(MODELS[cfg.model](len(meta["classes"]), cfg.width), CIFAR_MEAN, CIFAR_STD)

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        images = augment.random_flip(augment.random_translate(to_model_input(batch["image"]), pad=4))
        return {**batch, "image": images}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        logits = model(to_model_input(batch["image"]))
        return nn.functional.cross_entropy(logits, batch["label"], label_smoothing=cfg.label_smoothing)

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        accuracy = torchmetrics.classification.MulticlassAccuracy(len(meta["classes"]), average="micro").to(device)
        mean_loss = torchmetrics.MeanMetric().to(device)
        for batch in batches:
            logits = model(to_model_input(batch["image"])).float()
            accuracy.update(logits, batch["label"])
            mean_loss.update(nn.functional.cross_entropy(logits, batch["label"]), weight=len(logits))
        return {"accuracy": float(accuracy.compute()), "loss": float(mean_loss.compute())}

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any], sizes: list[tuple[int, int]],
                    top_k: int = 5) -> list[list[dict[str, Any]]]:
        probabilities = outputs.float().softmax(dim=1)
        values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        # One device-to-host copy per tensor, not one per number (each float() on a GPU tensor syncs).
        values, indices = values.tolist(), indices.tolist()
        return [[{"class": meta["classes"][i], "index": i, "probability": round(p, 6)}
                 for p, i in zip(row_values, row_indices, strict=True)]
                for row_values, row_indices in zip(values, indices, strict=True)]


def linear_baseline(splits: dict[str, ray.data.Dataset], meta: dict[str, Any], limit: int = 10_000) -> float:
    """Accuracy of logistic regression on raw pixels: the bar a CNN must clear for a dataset to be
    worth one (a set a linear model solves teaches nothing about convolutions)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = TASK.decode(splits[split].limit(limit).take_batch(limit), meta)
        return rows["image"].reshape(len(rows["image"]), -1) / 255.0, rows["label"]

    train_x, train_y = features("train")
    val_x, val_y = features("val")
    with warnings.catch_warnings():  # 200 iterations is a deliberate budget for a baseline
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(max_iter=200, C=1.0).fit(train_x, train_y)
    return float(model.score(val_x, val_y))


TASK = ClassifyTask()
