"""Users' photographs to model-sized uint8 batches: decoding every file Pillow reads, and the
torchvision transforms.v2 pipelines of training and evaluation, run per image on Ray Data's CPU workers.

Real folders hold what cameras and editors write: EXIF-rotated JPEGs, CMYK JPEGs, 16-bit and
palette PNGs, RGBA, greyscale, and now and then a truncated file. `images.decode_image` turns each into
an upright 8-bit RGB array or raises ValueError; `transform_photos` applies a pipeline to a batch of
encoded files and reports which ones could not be read, so a reader can skip and count them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import v2

from raycv.data.images import decode_image

# Evaluation resizes the shorter side to size / EVAL_CROP_FRACTION and keeps the centre (torchvision's
# ImageNet recipe: 256 -> 224).
EVAL_CROP_FRACTION = 0.875

Transform = Callable[[torch.Tensor], torch.Tensor]


def train_transform(size: int) -> Transform:
    """Training augmentation for real photos: a random crop of random scale and aspect resized to
    size x size, a horizontal flip, and TrivialAugmentWide's one random colour or geometry op."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.TrivialAugmentWide(),
    ])


def eval_transform(size: int) -> Transform:
    """Evaluation: the shorter side resized to size / 0.875, then the central size x size."""
    return v2.Compose([v2.Resize(round(size / EVAL_CROP_FRACTION), antialias=True), v2.CenterCrop(size)])


def transform_photos(encoded: list[bytes] | np.ndarray, transform: Transform) -> tuple[np.ndarray, np.ndarray]:
    """Decode and transform a batch of encoded photos: (uint8 NHWC images of the readable ones, a
    boolean mask of which inputs were readable)."""
    images, readable = [], np.zeros(len(encoded), dtype=bool)
    for index, data in enumerate(encoded):
        try:
            pixels = decode_image(bytes(data))
        except ValueError:
            continue
        chw = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # a writable copy: PIL's arrays are read-only
        images.append(transform(chw).permute(1, 2, 0).numpy())
        readable[index] = True
    return (np.stack(images) if images else np.zeros((0, 0, 0, 3), dtype=np.uint8)), readable


MIXES = {"cutmix": lambda classes: v2.CutMix(num_classes=classes),
         "mixup": lambda classes: v2.MixUp(num_classes=classes),
         "cutmix_or_mixup": lambda classes: v2.RandomChoice([v2.CutMix(num_classes=classes),
                                                            v2.MixUp(num_classes=classes)])}


def mix_batch(images: np.ndarray, labels: np.ndarray, num_classes: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """CutMix and/or MixUp (transforms.v2, which pair each image with its neighbour in the batch) of a
    uint8 NHWC batch: (the mixed uint8 images, float32 soft labels of shape (N, num_classes)). The pixels
    are mixed in float and rounded back, so batches stay uint8 on their way to the trainers."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mixed, soft = MIXES[mode](num_classes)(pixels, torch.from_numpy(labels))
    return (mixed.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(),
            soft.to(torch.float32).numpy())
