"""Image classification (textbook chapter 4; the network-compression chapter 10 starts from it).

Data: raycv's procedural 10-class 32x32 shapes (offline stand-in for CIFAR-10), CIFAR-10 python
pickle batches, or users' photos (ImageFolder trees, CSV or JSON-lines lists). Models: the book's
CIFAR VGG-11-BN and ResNet-18 (32 px), and torchvision's classification zoo by name.

Photos of any size are decoded and augmented on Ray Data's CPU workers every epoch (random resized
crops from the full-resolution image, flips, TrivialAugmentWide); evaluation and serving resize the
shorter side and keep the centre. The 32-px sets are decoded once and augmented on the device.
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
from raycv.data import augment, formats, photo_folders
from raycv.data.images import CIFAR_MEAN, CIFAR_STD, decode_image, encode_png, resize_all, to_model_input
from raycv.data.photo_pipeline import eval_transform, mix_batch, train_transform, transform_photos
from raycv.data.procedural import (BACKGROUNDS, LAYOUTS, NO_SHAPE, NO_SHAPE_LABEL, SHAPE_CLASSES, check_choice,
                                   render_shape_image)
from raycv.errors import RaycvError
from raycv.models.cifar import VGG, CifarResNet
from raycv.models.common import FlipAveraged, Normalized
from raycv.models.zoo import (IMAGENET_MEAN, IMAGENET_STD, ZOO_IMAGE_SIZE, build_zoo_classifier, classifier_head,
                              zoo_name)
from raycv.tasks.base import Task, with_task_options
from raycv.tasks.cards import CARDS

MODELS = {
    "vgg11_bn": lambda num_classes, width: VGG(num_classes=num_classes, width=width),
    "resnet18": lambda num_classes, width: CifarResNet((2, 2, 2, 2), num_classes=num_classes, width=width),
}
PHOTO_FORMATS = ("imagefolder", "imagelist")  # encoded photos of any size, as users bring them
BOOK_IMAGE_SIZE = 32  # the book's CIFAR networks' resolution


class ClassifyTask(Task):
    card = CARDS["classify"]
    metric = "accuracy"
    metric_mode = "max"
    synth_defaults = {"image_size": 32, "background": "textured", "layout": "anywhere", "no_shape_share": 0.0}

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        size = int(params["image_size"])
        try:
            no_shape_share = float(params["no_shape_share"])
        except ValueError:
            no_shape_share = -1.0  # refused below, with the value named
        if not 0 <= no_shape_share < 1:
            raise RaycvError(f"invalid no_shape_share={params['no_shape_share']!r}: expected a share in [0, 1), "
                             "e.g. 0.1 (that many images hold blobs and no shape, class 'none')")
        classes = list(SHAPE_CLASSES) + ([NO_SHAPE] if no_shape_share else [])
        return {"classes": classes, "image_size": [size, size],
                "background": check_choice("background", params["background"], BACKGROUNDS),
                "layout": check_choice("layout", params["layout"], LAYOUTS)}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        share = float(params["no_shape_share"])
        # No extra draw without the option, so the default sets stay byte-identical.
        label = NO_SHAPE_LABEL if share and rng.random() < share else int(rng.integers(len(SHAPE_CLASSES)))
        image = render_shape_image(rng, label, int(params["image_size"]), params["background"], params["layout"])
        return {"image": encode_png(image), "label": label}

    def check_data(self, path: str, cfg: TrainConfig) -> None:
        if not formats.is_cifar10(path):
            photo_folders.list_photo_files(path, with_task_options(self, cfg).extra["val_fraction"], seed=0)

    def read(self, path: str, cfg: TrainConfig) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
        if formats.is_cifar10(path):
            return formats.read_cifar10(path)
        # A fixed split seed, not the run's: tune trials and later evaluations must see the same split.
        return photo_folders.read_photo_folder(path, with_task_options(self, cfg).extra["val_fraction"], seed=0)

    def training_meta(self, meta: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
        zoo = zoo_name(cfg.model, self.model_names)
        default = ZOO_IMAGE_SIZE if zoo else meta.get("image_size", [BOOK_IMAGE_SIZE])[0]
        size = default if cfg.extra.get("image_size", "auto") == "auto" else int(cfg.extra["image_size"])
        options = with_task_options(self, cfg).extra
        photo_only = [f"--{name.replace('_', '-')} {options[name]}" for name in ("mix", "class_weighting")
                      if options[name] != "off"]
        if photo_only and meta.get("format") not in PHOTO_FORMATS:
            raise RaycvError(f"{' and '.join(photo_only)}: only photo folders and lists are augmented on the CPU "
                             f"workers, and this {meta.get('format', 'raycv')} set is not one")
        return {**meta, "image_size": [size, size], "mix": options["mix"],
                "class_weights": balanced_weights(meta["class_counts"]["train"])
                if options["class_weighting"] == "balanced" else None}

    def augments_rows(self, meta: dict[str, Any]) -> bool:
        return meta.get("format") in PHOTO_FORMATS

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.augments_rows(meta):
            return photo_rows(batch, eval_transform(meta["image_size"][0]))
        # Raw-pixel formats (CIFAR) arrive as uint8 arrays, encoded ones (PNG) as bytes.
        images = list(batch["image"]) if batch["image"].dtype == np.uint8 else [decode_image(b) for b in batch["image"]]
        return {"image": resize_all(images, tuple(meta["image_size"])),
                "label": np.asarray(batch["label"], dtype=np.int64)}

    def decode_train(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        if not self.augments_rows(meta):
            return self.decode(batch, meta)
        rows = photo_rows(batch, train_transform(meta["image_size"][0]))
        classes = len(meta["classes"])
        targets = np.eye(classes, dtype=np.float32)[rows["label"]]  # one-hot; soft once mixed
        if meta.get("mix", "off") != "off":
            if len(targets):  # a batch of only unreadable files has nothing to mix
                rows["image"], targets = mix_batch(rows["image"], rows["label"], classes, meta["mix"])
            rows["label"] = targets
        if meta.get("class_weights") is not None:
            rows["weight"] = targets @ np.asarray(meta["class_weights"], dtype=np.float32)
        return rows

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        classes = len(meta["classes"])
        zoo = zoo_name(cfg.model, self.model_names)
        # With --tta flip the model itself averages each image with its mirror in eval mode, so evaluation,
        # predict, serve and exports all see it (the wrapper's state_dict is Normalized's).
        wrapper = FlipAveraged if with_task_options(self, cfg).extra["tta"] == "flip" else Normalized
        if zoo:  # --width does not apply: the zoo's architectures are as torchvision defines them
            return wrapper(build_zoo_classifier(zoo, classes, meta["image_size"][0]), IMAGENET_MEAN, IMAGENET_STD)
        return wrapper(MODELS[cfg.model](classes, cfg.width), CIFAR_MEAN, CIFAR_STD)

    def head(self, model: nn.Module, meta: dict[str, Any]) -> str | None:
        return classifier_head(model, len(meta["classes"]))

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        images = augment.random_flip(augment.random_translate(to_model_input(batch["image"]), pad=4))
        return {**batch, "image": images}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        logits = model(to_model_input(batch["image"]))
        # The labels are class indices, or soft targets after CutMix/MixUp; cross_entropy takes both.
        losses = nn.functional.cross_entropy(logits, batch["label"], label_smoothing=cfg.label_smoothing,
                                             reduction="none")
        if "weight" in batch:  # --class-weighting balanced: a weighted mean, as cross_entropy's weight= gives
            return (losses * batch["weight"]).sum() / batch["weight"].sum()
        return losses.mean()

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

    def preprocess(self, images: list[np.ndarray], meta: dict[str, Any]) -> torch.Tensor:
        if not self.augments_rows(meta):
            return super().preprocess(images, meta)
        transform = eval_transform(meta["image_size"][0])  # as validation saw its photos
        return to_model_input(torch.stack([transform(torch.from_numpy(np.array(image)).permute(2, 0, 1))
                                           for image in images]).permute(0, 2, 3, 1))

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any], sizes: list[tuple[int, int]],
                    top_k: int = 5) -> list[list[dict[str, Any]]]:
        probabilities = outputs.float().softmax(dim=1)
        values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        # One device-to-host copy per tensor, not one per number (each float() on a GPU tensor syncs).
        values, indices = values.tolist(), indices.tolist()
        return [[{"class": meta["classes"][i], "index": i, "probability": round(p, 6)}
                 for p, i in zip(row_values, row_indices, strict=True)]
                for row_values, row_indices in zip(values, indices, strict=True)]


def model_table(num_classes: int = 1000) -> list[dict[str, Any]]:
    """Every --model name with its parameter count at `num_classes` classes: the book's networks first."""
    from raycv.models.zoo import ZOO_PREFIX, parameter_count, zoo_model_names

    rows = [{"model": name, "source": f"book, CIFAR ({BOOK_IMAGE_SIZE} px)",
             "parameters": parameter_count(lambda build=build: build(num_classes, 1.0))}
            for name, build in MODELS.items()]
    for name in zoo_model_names():
        shown = f"{ZOO_PREFIX}{name}" if name in MODELS else name
        rows.append({"model": shown, "source": f"torchvision ({ZOO_IMAGE_SIZE} px)",
                     "parameters": parameter_count(lambda name=name: build_zoo_classifier(name, num_classes,
                                                                                         ZOO_IMAGE_SIZE))})
    return rows


def balanced_weights(class_counts: list[int]) -> list[float]:
    """Each class's loss weight, the inverse of its share of the rows (scikit-learn's "balanced": a class
    as common as the average weighs 1). A class without training rows weighs 0: it has no loss to weigh."""
    rows, present = sum(class_counts), sum(count > 0 for count in class_counts)
    return [rows / (present * count) if count else 0.0 for count in class_counts]


def photo_rows(batch: dict[str, np.ndarray], transform) -> dict[str, np.ndarray]:
    """Encoded photos through `transform`; a file that cannot be read is dropped (the reader's scan
    has already skipped and counted those it found)."""
    images, readable = transform_photos(batch["image"], transform)
    return {"image": images, "label": np.asarray(batch["label"], dtype=np.int64)[readable]}


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
