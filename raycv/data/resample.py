"""Sizes: the super-resolution scales, PIL's antialiased bicubic (Keys a = -0.5, as MATLAB's imresize;
the standard way super-resolution pairs and baselines are made), crops to a multiple of a size, and
batches of images of different sizes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from raycv.errors import RaycvError

SCALES = (2, 3, 4)


def check_scale(scale: int) -> int:
    if int(scale) != scale or int(scale) not in SCALES:
        raise RaycvError(f"invalid scale={scale!r}: expected one of {', '.join(map(str, SCALES))}")
    return int(scale)


def bicubic_downscale(image: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, C) uint8 shrunk by `scale` with antialiased bicubic; H and W must be multiples of it
    (`crop_to_multiple` first), or the low-resolution pixels would not tile the high-resolution ones."""
    height, width = image.shape[:2]
    if height % scale or width % scale:
        raise RaycvError(f"a {height}x{width} image cannot be downscaled x{scale}: both sides must be multiples "
                         f"of {scale} (crop it to {height - height % scale}x{width - width % scale})")
    return np.asarray(Image.fromarray(image).resize((width // scale, height // scale), Image.BICUBIC))


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """The baseline every super-resolution number is compared with."""
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width * scale, height * scale), Image.BICUBIC))


def crop_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """The top-left part of `image` whose sides are multiples of `multiple` (the SR literature's
    "modcrop"): at most multiple - 1 rows and columns are dropped."""
    height, width = image.shape[:2]
    return image[:height - height % multiple, :width - width % multiple]


def stack_padded(images: list[np.ndarray], margin: int = 0, multiple: int = 1) -> torch.Tensor:
    """Images of different sizes as one float NCHW batch in [0, 1]: each replicate-padded by `margin`
    on every side and then at the bottom and right to the batch's largest size, rounded up to
    `multiple`. With a margin at least a network's receptive field, an image's answer does not
    depend on the images it is batched with."""
    height = max(image.shape[0] for image in images) + 2 * margin
    width = max(image.shape[1] for image in images) + 2 * margin
    height, width = height + -height % multiple, width + -width % multiple
    batch = []
    for image in images:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div_(255)  # a writable copy
        top_left = torch.nn.functional.pad(pixels, (margin, margin, margin, margin), mode="replicate")
        rest = (0, width - top_left.shape[-1], 0, height - top_left.shape[-2])
        batch.append(torch.nn.functional.pad(top_left, rest, mode="replicate"))
    return torch.cat(batch)
