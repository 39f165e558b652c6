"""Box regression (textbook chapter 4.2): where on a gray canvas was an image pasted?

The book pastes a CIFAR image onto a gray canvas whose sides are U(1, 2) times the image's, resizes
the canvas to 32x32 and regresses the box with an L1 loss, reporting no metric. raycv pastes procedural
shape images (or crops of any image folder: `--param images_dir=DIR`), regresses the box with L1 plus
GIoU, and measures mean IoU and the share of boxes with IoU > 0.5.

Boxes are (x1, y1, x2, y2) as fractions of the image side; the network predicts centre and size
through a sigmoid, so every prediction is a valid box inside the image.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from collections.abc import Iterable

import numpy as np
import torch
import torchmetrics
from PIL import Image
from torch import nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from raycv.config import TrainConfig
from raycv.data import augment
from raycv.data.formats import image_files
from raycv.data.images import CIFAR_MEAN, CIFAR_STD, decode_image, encode_png, resize_all, to_model_input
from raycv.data.procedural import SHAPE_CLASSES, render_shape_image
from raycv.errors import RaycvError
from raycv.models.cifar import CifarResNet
from raycv.models.common import Normalized
from raycv.tasks.base import Task
from raycv.tasks.cards import CARDS

BOX_COLUMNS = ("x1", "y1", "x2", "y2")
CANVAS_GRAY = 128


@lru_cache(maxsize=4)
def _folder_images(folder: str) -> tuple[str, ...]:
    return tuple(image_files(folder, "images_dir"))


def pasted_image(rng: np.random.Generator, params: dict[str, Any]) -> np.ndarray:
    """The image to paste: a procedural shape image, or a random image of images_dir."""
    side = int(params["image_size"])
    if not params["images_dir"]:
        return render_shape_image(rng, int(rng.integers(len(SHAPE_CLASSES))), side)
    files = _folder_images(params["images_dir"])
    with Image.open(files[rng.integers(len(files))]) as image:
        return np.asarray(image.convert("RGB").resize((side, side), Image.BILINEAR))


def paste_on_canvas(rng: np.random.Generator, image: np.ndarray, max_ratio: float) -> tuple[np.ndarray, list[float]]:
    """The book's construction: a gray canvas U(1, max_ratio) times the image in each direction, the
    image at a random place on it, the canvas resized back to the image's size. Returns the canvas
    and the box as fractions."""
    side = image.shape[0]
    height, width = (int(round(side * rng.uniform(1.0, max_ratio))) for _ in range(2))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    canvas = np.full((height, width, 3), CANVAS_GRAY, dtype=np.uint8)
    canvas[top:top + side, left:left + side] = image
    resized = np.asarray(Image.fromarray(canvas).resize((side, side), Image.BILINEAR))
    return resized, [left / width, top / height, (left + side) / width, (top + side) / height]


class BoxRegressionTask(Task):
    card = CARDS["boxreg"]
    metric = "iou"
    metric_mode = "max"
    synth_defaults = {"image_size": 32, "max_ratio": 2.0, "images_dir": ""}

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        if not 1.0 <= float(params["max_ratio"]) <= 8.0:
            raise RaycvError(f"invalid max_ratio={params['max_ratio']!r}: expected a canvas ratio in [1, 8]")
        if params["images_dir"]:
            _folder_images(params["images_dir"])
        size = int(params["image_size"])
        return {"image_size": [size, size]}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        canvas, box = paste_on_canvas(rng, pasted_image(rng, params), float(params["max_ratio"]))
        return {"image": encode_png(canvas), **dict(zip(BOX_COLUMNS, box, strict=False))}

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        images = [decode_image(data) for data in batch["image"]]
        boxes = np.stack([np.asarray(batch[column], dtype=np.float32) for column in BOX_COLUMNS], axis=1)
        return {"image": resize_all(images, tuple(meta["image_size"])), "box": boxes}

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        return Normalized(CifarResNet((2, 2, 2, 2), num_classes=4, width=cfg.width), CIFAR_MEAN, CIFAR_STD)

    @staticmethod
    def predict_boxes(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(N, 4) xyxy boxes as fractions, from the network's (centre, size) logits."""
        return box_convert(model(to_model_input(images)).float().sigmoid(), "cxcywh", "xyxy")

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        images = to_model_input(batch["image"])
        flip = augment.random_flip_mask(images)
        mirrored = torch.stack([1 - batch["box"][:, 2], batch["box"][:, 1],
                                1 - batch["box"][:, 0], batch["box"][:, 3]], 1)
        return {"image": augment.flip_where(images, flip), "box": torch.where(flip[:, None], mirrored, batch["box"])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        predicted = self.predict_boxes(model, batch["image"])
        return (nn.functional.l1_loss(predicted, batch["box"])
                + generalized_box_iou_loss(predicted, batch["box"], reduction="mean"))

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        mean_iou, hit_rate, mean_loss = (torchmetrics.MeanMetric().to(device) for _ in range(3))
        for batch in batches:
            predicted = self.predict_boxes(model, batch["image"])
            iou = box_iou(predicted, batch["box"]).diagonal()
            mean_iou.update(iou)
            hit_rate.update((iou > 0.5).float())
            mean_loss.update(nn.functional.l1_loss(predicted, batch["box"]), weight=len(iou))
        return {"iou": float(mean_iou.compute()), "iou_above_0.5": float(hit_rate.compute()),
                "loss": float(mean_loss.compute())}

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        boxes = box_convert(outputs.float().sigmoid(), "cxcywh", "xyxy").tolist()  # one device-to-host copy
        return [{"box": [round(value * scale, 2)
                         for value, scale in zip(box, (width, height, width, height), strict=False)]}
                for box, (height, width) in zip(boxes, sizes, strict=False)]


TASK = BoxRegressionTask()
