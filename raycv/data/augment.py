"""Batched, per-sample augmentation on the training device.

torchvision.transforms.v2 draws one set of random parameters per call, so applied to a batch tensor
it crops and flips every image the same way; per-image calls would run a Python loop per sample on
the GPU's critical path. These ops draw parameters per sample and run as a few tensor ops.
"""

from __future__ import annotations

import torch


def random_flip_mask(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which images of a batch to flip (a random half), for tasks that must flip their labels too."""
    return torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the NCHW (or NHW) images selected by the boolean `flip`."""
    return torch.where(flip.view(-1, *[1] * (images.dim() - 1)), images.flip(-1), images)


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Horizontal flip of a random half of an NCHW batch."""
    return flip_where(images, random_flip_mask(images, generator))


def random_translate(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The classic pad-and-random-crop, per sample: shift each image by up to `pad` pixels in x and y,
    filling with reflected border pixels."""
    if pad <= 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    shifts = torch.randint(0, 2 * pad + 1, (2, n), device=images.device, generator=generator)
    rows = (torch.arange(h, device=images.device)[None, :] + shifts[0][:, None])  # n, h
    cols = (torch.arange(w, device=images.device)[None, :] + shifts[1][:, None])  # n, w
    batch_index = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing gathers an (n, h, w, c) block; move channels back to dim 1.
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def random_dihedral(*images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same random flips and transpose (one of 8 orientations) per sample for NCHW batches of
    square images that belong together (a low- and high-resolution pair, an image and its mask):
    edges of every orientation, eight times the data for free."""
    flips = (lambda x: x.flip(-1), lambda x: x.flip(-2), lambda x: x.transpose(-1, -2))
    for flip in flips:
        chosen = (torch.rand(images[0].shape[0], device=images[0].device) < 0.5).view(-1, 1, 1, 1)
        images = tuple(torch.where(chosen, flip(image), image) for image in images)
    return images


def random_low_contrast(images: torch.Tensor, share: float, lowest: float = 0.1) -> torch.Tensor:
    """A random `share` of an NCHW batch in [0, 1] with its contrast lowered: each chosen image's deviations
    from its own mean colour scaled by a factor log-uniform in [`lowest`, 1]. Smooth, faint photographs
    (the moon, a retina, most of a sky) are rare among textured training crops; a codec that has seen few
    of them spends its bits there badly."""
    if share <= 0:
        return images
    count = images.shape[0]
    factors = (lowest ** torch.rand(count, device=images.device)).view(-1, 1, 1, 1)
    chosen = (torch.rand(count, device=images.device) < share).view(-1, 1, 1, 1)
    means = images.mean(dim=(-2, -1), keepdim=True)
    return torch.where(chosen, means + factors * (images - means), images)
