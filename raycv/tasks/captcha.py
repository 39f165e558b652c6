"""Fixed-length captcha reading (textbook chapter 4): 4 characters of 36 ([0-9A-Z]), 160x60 images
from the `captcha` package.

The book trains a ResNet-18 with a 4x36 multi-label soft-margin loss and reports per-character
accuracy only. raycv gives every position its own softmax head trained with cross-entropy, and ranks
checkpoints by whole-string accuracy (all characters right), the number a captcha reader is judged by;
per-character accuracy is reported too. Real data: an SVHN-style folder (see raycv/data/text.py).
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
from raycv.data import augment, text
from raycv.data.images import CIFAR_MEAN, CIFAR_STD, decode_image, encode_png, resize_all, to_model_input
from raycv.errors import RaycvError
from raycv.models.cifar import CifarResNet
from raycv.models.common import Normalized
from raycv.models.crnn import PositionHeads, conv_stack
from raycv.tasks.base import Task
from raycv.tasks.cards import CARDS


def resnet18_features(width: float) -> tuple[nn.Module, int]:
    net = CifarResNet((2, 2, 2, 2), width=width)
    return nn.Sequential(net.stem, net.stages), net.fc.in_features


BACKBONES = {
    "convnet": conv_stack,  # the CRNN conv stack: fast, pools early
    "resnet18": resnet18_features,  # the book's network (stride-1 stem: about 10x the compute)
}


def model_input_size(height: int, width: int) -> list[int]:
    """The network reads captchas at 3/5 of their size, rounded to multiples of 16 (the backbones'
    total stride): 160x60 becomes 96x32, where characters are still legible and training is cheap on CPU."""
    return [max(16, int(round(side * 0.6 / 16)) * 16) for side in (height, width)]


class CaptchaTask(Task):
    card = CARDS["captcha"]
    metric = "accuracy"
    metric_mode = "max"
    synth_defaults = {"length": 4, "width": 160, "height": 60}

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        length, width, height = (int(params[key]) for key in ("length", "width", "height"))
        if not 1 <= length <= 16:
            raise RaycvError(f"invalid length={params['length']!r}: expected a character count in 1..16")
        if width < 32 or height < 32:
            raise RaycvError(f"invalid captcha size {width}x{height}: expected width and height >= 32")
        return {"alphabet": text.CAPTCHA_ALPHABET, "length": length, "image_size": model_input_size(height, width)}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        alphabet = text.CAPTCHA_ALPHABET
        label = "".join(alphabet[i] for i in rng.integers(len(alphabet), size=int(params["length"])))
        image = text.render_captcha(rng, label, int(params["width"]), int(params["height"]))
        return {"image": encode_png(image), "text": label}

    def read(self, path: str, cfg: TrainConfig) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
        """An SVHN-style folder of captchas, all of one length (that of the first training image)."""
        splits = text.read_svhn_folder(path, text.CAPTCHA_ALPHABET)
        length = len(splits["train"][0]["text"])
        for rows in splits.values():
            for row in rows:
                if len(row["text"]) != length:
                    raise RaycvError(f"{row['filename']}: label {row['text']!r} has {len(row['text'])} characters; "
                                     f"a captcha set needs one length (the first training label has {length})")
        meta = {**self.dataset_meta({**self.synth_defaults, "length": length}), "format": "svhn-json"}
        return {split: ray.data.from_items(rows) for split, rows in splits.items()}, meta

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        images = resize_all([decode_image(data) for data in batch["image"]], tuple(meta["image_size"]))
        labels, _ = text.encode_texts((str(t) for t in batch["text"]), meta["alphabet"], meta["length"])
        return {"image": images, "label": labels}

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        backbone, channels = BACKBONES[cfg.model](cfg.width)
        heads = PositionHeads(backbone, channels, meta["length"], len(meta["alphabet"]))
        return Normalized(heads, CIFAR_MEAN, CIFAR_STD)

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        # Shifts only: a flip would turn characters into non-characters.
        return {**batch, "image": augment.random_translate(to_model_input(batch["image"]), pad=4)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        logits = model(to_model_input(batch["image"]))
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch["label"].flatten(),
                                           label_smoothing=cfg.label_smoothing)

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        string_accuracy, char_accuracy, mean_loss = (torchmetrics.MeanMetric().to(device) for _ in range(3))
        for batch in batches:
            logits = model(to_model_input(batch["image"])).float()
            correct = logits.argmax(dim=2) == batch["label"]
            string_accuracy.update(correct.all(dim=1).float())
            char_accuracy.update(correct.float())
            mean_loss.update(nn.functional.cross_entropy(logits.flatten(0, 1), batch["label"].flatten()),
                             weight=len(logits))
        return {"accuracy": float(string_accuracy.compute()), "char_accuracy": float(char_accuracy.compute()),
                "loss": float(mean_loss.compute())}

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        confidences, indices = outputs.float().softmax(dim=2).max(dim=2)
        return [text.text_answer((meta["alphabet"][i] for i in row), row_confidences)
                for row, row_confidences in zip(indices.tolist(), confidences.tolist(), strict=False)]


TASK = CaptchaTask()
