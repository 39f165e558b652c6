"""Inpainting (textbook chapter 8): fill a square hole, 42 px in a 128-px image as in the book, and
measure the fill where it matters, inside the hole, against OpenCV's cv2.inpaint (Telea).

The hole is first filled twice, classically, in torch inside the model: the harmonic (membrane) fill,
by push-pull interpolation (masked means up an image pyramid, then back down) relaxed at every level,
and the biharmonic (thin-plate) fill, by conjugate gradients on every level of the same pyramid. Each
beats Telea inside the hole on photographs, and each is the better one on about half of the holes.
The network, the segment task's UNet (ResNet-18 encoder, LinkNet decoder), sees both and the mask and
answers per pixel a gate between them and a correction with zero mean over the hole (structure, not
colour); its last layer starts at zero, so training starts from the even blend of the two fills (the
prior) rather than from grey. Outside the hole the input is kept exactly, so only the hole is ever the
network's. The loss is the mean over images of the log MSE inside the hole: the mean PSNR, the score.

Data: dead-leaves crops (raycv.data.natural), crops of any image folder (--param images_dir=DIR) or of
bundled photographs by name (--param photos=brick,grass,...; eval-photos then scores the others). Each
stored row carries one square hole, the book's (the validation holes are fixed); training draws new holes
per sample and step: of varied shapes and sizes (random_masks) or, with --masks square, the book's square
moved.

Metrics (val): psnr_hole (the model), psnr_hole_telea (cv2.inpaint, Telea, radius 3), psnr_gain (model
minus Telea), psnr_hole_harmonic (the harmonic fill alone), psnr_hole_prior (the prior alone, what an
untrained model gives: the network adds the rest) and the loss.

Masks in and out: the model's input is RGB plus the mask (1 = hole). Served and predicted images
carry the mask in their alpha channel (Task.image_mode = "RGBA"; transparent = the hole, as in
common image-editing APIs); `raycv inpaint fill --image IMG --mask MASK` (raycv/verbs/inpaint.py) takes
the mask as its own file (white = hole, cv2.inpaint's convention, read by `check_mask`) or --hole X,Y,W,H
(`parse_hole`). POST /v1/inpaint/fill answers the
filled image as image/png; /v1/inpaint/predict answers JSON with the PNG in base64.
"""

from __future__ import annotations

import base64
from typing import Any
from collections.abc import Callable, Iterable

import cv2
import numpy as np
import torch
import torchmetrics
from torch import nn

from raycv.checkpoint import LoadedModel
from raycv.config import TrainConfig
from raycv.data.augment import random_dihedral
from raycv.data.figures import side_by_side, write_png
from raycv.data.images import as_batch, decode_image, encode_png, to_model_input, to_uint8_images
from raycv.data.natural import CROP_SOURCE_DEFAULTS, crop_source, training_crop
from raycv.data.photos import held_out_photos, real_photos
from raycv.data.quality import masked_mse, masked_psnr
from raycv.data.resample import stack_padded
from raycv.errors import RaycvError
from raycv.models.unet import INPUT_MULTIPLE, UNet
from raycv.tasks.base import Predict, Task
from raycv.tasks.cards import CARDS
from raycv.tasks.routes import answer_image, answer_png, no_query

TELEA_RADIUS = 3  # OpenCV's documented example radius
PHOTO_CROPS = 8  # held-out crops per photograph in eval-photos


# ---------------------------------------------------------------------------------------------------
# Holes and masks.
# ---------------------------------------------------------------------------------------------------


def hole_masks(holes: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, size, size) float masks, 1 inside the square hole each row of `holes` (x, y, side) gives."""
    coordinates = torch.arange(size, device=holes.device)
    x, y, side = (holes[:, index].view(-1, 1) for index in range(3))
    in_columns = (coordinates >= x) & (coordinates < x + side)  # N, size
    in_rows = (coordinates >= y) & (coordinates < y + side)
    return (in_rows[:, :, None] & in_columns[:, None, :]).unsqueeze(1).float()


def moved_holes(holes: torch.Tensor, size: int) -> torch.Tensor:
    """The same holes (x, y, side) at new uniformly random places inside a size x size image."""
    side = holes[:, 2]
    corners = (torch.rand(len(holes), 2, device=holes.device) * (size - side + 1)[:, None]).long()
    return torch.cat([corners, side[:, None]], dim=1)


def random_masks(count: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(count, 1, size, size) float training holes of varied shapes and sizes, a third each: rectangles of any
    aspect (the book's square among them), rotated ellipses, and free-form brush strokes (polylines of 2-5
    segments, 3-12 % of the side wide), drawn on the trainer's device. Every hole leaves most of the image
    known and covers at least one pixel."""
    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, *shape, device=device)

    centres = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    y, x = (grid[None] for grid in torch.meshgrid(centres, centres, indexing="ij"))  # 1, S, S

    def per_image(t: torch.Tensor) -> torch.Tensor:
        return t.view(count, 1, 1)

    width, height = uniform(0.1, 0.5) * size, uniform(0.1, 0.5) * size
    left, top = uniform(0, 1) * (size - width), uniform(0, 1) * (size - height)
    rectangles = ((x >= per_image(left)) & (x < per_image(left + width))
                  & (y >= per_image(top)) & (y < per_image(top + height)))

    angle = uniform(0, np.pi)
    dx, dy = x - per_image(uniform(0.2, 0.8) * size), y - per_image(uniform(0.2, 0.8) * size)
    along = dx * per_image(angle.cos()) + dy * per_image(angle.sin())
    across = -dx * per_image(angle.sin()) + dy * per_image(angle.cos())
    radius_along, radius_across = (per_image(uniform(0.06, 0.3) * size) for _ in range(2))
    ellipses = (along / radius_along) ** 2 + (across / radius_across) ** 2 <= 1

    # A random walk of 6 points; segments beyond a per-image count of 2-5 are collapsed onto their start.
    steps = torch.randn(count, 5, 2, device=device) * size * 0.2
    points = torch.cat([uniform(0.2, 0.8, 1, 2) * size, steps], dim=1).cumsum(dim=1).clamp(0, size - 1)
    used = torch.arange(5, device=device)[None] < torch.randint(2, 6, (count, 1), device=device)
    starts, ends = points[:, :-1], torch.where(used[..., None], points[:, 1:], points[:, :-1])
    pixels = torch.stack([x.flatten(), y.flatten()], dim=-1)  # S*S, 2
    direction = ends - starts  # N, 5, 2
    t = (((pixels[None, None] - starts[:, :, None]) * direction[:, :, None]).sum(-1)
         / direction.pow(2).sum(-1, keepdim=True).clamp(min=1e-6)).clamp(0, 1)  # N, 5, S*S
    nearest = starts[:, :, None] + t[..., None] * direction[:, :, None]
    distance = (pixels[None, None] - nearest).norm(dim=-1).amin(dim=1).view(count, size, size)
    strokes = distance <= per_image(uniform(0.03, 0.12) * size / 2).clamp(min=1)

    kind = torch.randint(0, 3, (count, 1, 1), device=device)
    masks = torch.where(kind == 0, rectangles, torch.where(kind == 1, ellipses, strokes))
    return masks.unsqueeze(1).float()


def check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean hole mask (True = fill) from a grey mask image of the image's size; white is hole."""
    if mask.shape[:2] != tuple(shape[:2]):
        raise RaycvError(f"mask of {mask.shape[1]}x{mask.shape[0]} pixels does not match the image's "
                         f"{shape[1]}x{shape[0]}")
    hole = mask > 127
    if not hole.any():
        raise RaycvError("the mask marks no pixel to fill: paint the hole white (> 127) on black")
    if hole.all():
        raise RaycvError("the mask covers the whole image: there is nothing left to fill it from")
    return hole


def parse_hole(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """--hole X,Y,W,H (pixels) as a boolean mask of an image of `shape`."""
    try:
        x, y, w, h = (int(value) for value in text.split(","))
    except ValueError:
        raise RaycvError(f"invalid hole {text!r}: expected X,Y,WIDTH,HEIGHT in pixels, e.g. 40,40,42,42") from None
    height, width = shape[:2]
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise RaycvError(f"hole {text!r} is not inside the {width}x{height} image (x, y >= 0, width and height "
                         f">= 1, x + width <= {width}, y + height <= {height})")
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y:y + h, x:x + w] = 255
    return check_mask(mask, shape)


def with_hole(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """RGBA whose alpha is 0 in the hole: the form served and predicted images take."""
    alpha = np.where(hole, 0, 255).astype(np.uint8)
    return np.dstack([image[..., :3], alpha])


def telea(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """OpenCV's fast-marching inpainting (Telea 2004) of the boolean `hole` of a uint8 RGB image."""
    return cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8), TELEA_RADIUS, cv2.INPAINT_TELEA)


# ---------------------------------------------------------------------------------------------------
# The network.
# ---------------------------------------------------------------------------------------------------


PRIOR_RELAXATIONS = 8  # Jacobi sweeps per pyramid level; 16 changed the photo PSNR by < 0.1 dB
# Conjugate-gradient steps on each coarse pyramid level of the biharmonic fill, half as many at full resolution
# (three quarters of the pixels). The even blend with the harmonic fill on the held-out photos, per batch of 16
# 128-px crops on 2 CPU cores: 80 steps on every level 27.55 dB in 0.69 s, 60/30 27.52 in 0.28 s, 30/30 27.48,
# none at full resolution 27.33; 400 steps at full resolution alone, from the harmonic fill, 26.83 for the
# biharmonic fill alone.
BIHARMONIC_ITERATIONS = 60
HOLE_MSE_FLOOR = 1e-5  # the per-image loss's floor: 50 dB, above any fill of a photograph's hole


def push_pull(known: torch.Tensor, mask: torch.Tensor, settle: Callable[..., torch.Tensor]) -> torch.Tensor:
    """The hole (mask 1) of `known` (N, C, H, W; zero in the hole) filled coarse to fine: every pyramid
    level takes the masked mean of the finer one; on the way down each level keeps its known share, takes
    the rest from the coarser level and lets `settle(filled, values, weights, level)` solve it there (level
    0 is full resolution; `values` = `weights` x the mean of the known pixels). Solving each level from the
    coarser one's answer is what makes a few iterations enough for fills that are global in nature."""
    values, weights = known * (1 - mask), 1 - mask
    pyramid = []
    while min(values.shape[-2:]) > 1 and bool((weights < 1).any()):
        pyramid.append((values, weights))
        values, weights = (nn.functional.avg_pool2d(t, 2, ceil_mode=True) for t in (values, weights))
    filled = values / weights.clamp(min=1e-6)
    for level, (values, weights) in reversed(list(enumerate(pyramid))):
        coarse = nn.functional.interpolate(filled, size=values.shape[-2:], mode="bilinear", align_corners=False)
        filled = settle(values + (1 - weights) * coarse, values, weights, level)
    return filled


def smooth_fill(known: torch.Tensor, mask: torch.Tensor, relaxations: int = PRIOR_RELAXATIONS) -> torch.Tensor:
    """The membrane (harmonic) fill of the hole: push-pull interpolation relaxed by Jacobi sweeps at every
    level. The full-resolution level is only the bilinear upsampling of the relaxed half-resolution one:
    relaxing it too cost 5x the time for 0.08 dB on the held-out photos. Known pixels are returned
    exactly. Hand-written on purpose: cv2.inpaint works on uint8 arrays on the CPU, and this prior has to
    run inside the model, batched, on any device."""
    def relax(filled, values, weights, level):
        for _ in range(relaxations if level > 0 else 0):
            neighbours = nn.functional.avg_pool2d(nn.functional.pad(filled, (1, 1, 1, 1), mode="replicate"), 3,
                                                  stride=1)
            filled = values + (1 - weights) * neighbours
        return filled

    return push_pull(known, mask, relax)


def laplacian(u: torch.Tensor) -> torch.Tensor:
    """The 5-point Laplacian with mirrored (zero-flux) borders, by slicing rather than a convolution, so
    autocast never runs it in half precision."""
    padded = nn.functional.pad(u, (1, 1, 1, 1), mode="replicate")
    return (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
            - 4 * u)


def biharmonic_fill(known: torch.Tensor, mask: torch.Tensor,
                    iterations: int = BIHARMONIC_ITERATIONS) -> torch.Tensor:
    """The thin-plate (biharmonic) fill of the hole, skimage's inpaint_biharmonic in torch: the pixels
    of the hole minimise the squared Laplacian, so gradients, not only values, continue into it. Solved by
    conjugate gradients on every push-pull level (skimage's exact sparse solve is CPU-only and takes
    seconds per image). It keeps edges and ramps that the harmonic fill flattens and overshoots where the
    membrane does not: on the held-out photos each is the better fill on about half of the crops."""
    def solve(filled, values, weights, level):
        free = (weights < 0.999).float()  # partly known pixels of a coarse level are solved for as well

        def operator(p):
            return free * laplacian(laplacian(p))

        residual = -operator(filled)
        direction, norm = residual, residual.pow(2).sum(dim=(2, 3), keepdim=True)
        for _ in range(iterations if level else iterations // 2):
            product = operator(direction)
            curvature = (direction * product).sum(dim=(2, 3), keepdim=True)
            # A converged image (or a channel with nothing left to solve) has curvature 0: it stops there.
            step = torch.where(curvature > 1e-12, norm / curvature.clamp(min=1e-12), torch.zeros_like(norm))
            filled, residual = filled + step * direction, residual - step * product
            new_norm = residual.pow(2).sum(dim=(2, 3), keepdim=True)
            direction, norm = residual + new_norm / norm.clamp(min=1e-20) * direction, new_norm
        return filled

    # Conjugate gradients on an operator this ill-conditioned carry float32's rounding a long way (0.3 of a
    # grey level after 80 steps): a fixed memory layout keeps the fill the same for the same pixels.
    return push_pull(known.contiguous(), mask.contiguous(), solve)


def baseline_fills(known: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The harmonic fill alone and the prior, the two baselines the model is scored against. The prior is
    what an untrained HoleFiller gives: the mean of the harmonic and the biharmonic fills (27.52 dB on the
    held-out photos, against 27.10 and 27.19 for either alone)."""
    harmonic = smooth_fill(known, mask)
    return harmonic, 0.5 * (harmonic + biharmonic_fill(known, mask))



class HoleFiller(nn.Module):
    """(N, 4, H, W): RGB in [0, 1] and the hole mask (1 = fill) -> (N, 4, H, W): the filled RGB
    (input pixels outside the hole, the network's fill inside) and the mask again, so postprocess knows
    the hole. H and W must be multiples of 32 (preprocess pads).

    The network sees two classical fills of the hole, the harmonic and the biharmonic one, and outputs
    per pixel a gate between them and a correction of the gated fill. Neither fill wins everywhere: on the
    held-out photos the biharmonic fill is the better one on 30 of 64 crops, and the better of the two per
    crop is 0.46 dB above their even blend, so choosing between them from the surroundings is the first
    thing worth learning. Its last layer starts at zero: an untrained filler is the even blend, the prior
    of baseline_fills."""

    def __init__(self, width: float):
        super().__init__()
        self.net = UNet(num_classes=4, width=width, in_channels=7)  # gate logit + RGB correction
        last = self.net.classifier[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb, mask = x[:, :3].float(), x[:, 3:4].float()
        known = rgb * (1 - mask)  # whatever the hole held (the book's noise, a logo) is never seen
        harmonic, biharmonic = smooth_fill(known, mask), biharmonic_fill(known, mask)
        difference = biharmonic - harmonic
        output = self.net(torch.cat([harmonic, difference, mask], dim=1)).float()
        gate, correction = torch.sigmoid(output[:, :1]), output[:, 1:] * mask
        # Zero mean over the hole, per image and channel: the gated fill's average colour is kept and the
        # correction only adds structure. Trained on dead leaves without this, it shifted the colour of
        # smooth photos (retina: 44.5 dB for the prior, 31.5 with the correction).
        correction = correction - (correction.sum(dim=(2, 3), keepdim=True)
                                   / mask.sum(dim=(2, 3), keepdim=True).clamp(min=1))
        fill = (harmonic + gate * difference + correction).clamp(0, 1)
        return torch.cat([known + fill * mask, mask], dim=1)


def hole_log_mse(result: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean over images of the log of each one's MSE inside its hole: the mean PSNR the task is scored
    by, up to a factor. A pooled MSE lets the hard, textured holes outweigh the smooth ones, whose decibels
    count the same in the mean; the floor keeps a perfect hole from dominating the gradient."""
    return torch.log(masked_mse(result, target, mask) + HOLE_MSE_FLOOR).mean()


# ---------------------------------------------------------------------------------------------------
# Held-out photographs and the Serve route.
# ---------------------------------------------------------------------------------------------------


def photo_crops(photo: np.ndarray, name: str, size: int, hole: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (crop, boolean hole) pairs at random places of a photograph, seeded by its name so
    every model and baseline is scored on the same ones. Photos smaller than `size` are skipped."""
    import zlib

    rng = np.random.default_rng(zlib.crc32(name.encode()))
    height, width = photo.shape[:2]
    pairs = []
    for _ in range(count if min(height, width) >= size else 0):
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        y, x = rng.integers(0, size - hole + 1, 2)
        mask = np.zeros((size, size), dtype=bool)
        mask[y:y + hole, x:x + hole] = True
        pairs.append((np.ascontiguousarray(photo[top:top + size, left:left + size]), mask))
    return pairs


def hole_psnr(result: np.ndarray, original: np.ndarray, hole: np.ndarray) -> float:
    hole = torch.from_numpy(hole)[None, None].float()
    return float(masked_psnr(as_batch(result), as_batch(original), hole))


def baseline_images(image: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """baseline_fills (the harmonic fill, the prior) of the hole of a uint8 RGB image, as uint8 images."""
    mask = torch.from_numpy(hole)[None, None].float()
    harmonic, prior = baseline_fills(as_batch(image) * (1 - mask), mask)
    return to_uint8_images(harmonic)[0], to_uint8_images(prior)[0]


def score_photos(loaded: LoadedModel, predict: Predict, names: tuple[str, ...] | None = None,
                 out: str | None = None) -> list[dict[str, Any]]:
    """Per photo: mean PSNR inside the hole over PHOTO_CROPS seeded crops, Telea, the harmonic fill and the
    prior (an untrained model's blend) against the model.
    With `out`, a side-by-side PNG of each photo's first crop."""
    size, hole_side = int(loaded.dataset_meta["image_size"][0]), int(loaded.dataset_meta["hole_size"])
    rows = []
    for name, photo in real_photos(names or held_out_photos(loaded.dataset_meta)).items():
        crops = photo_crops(photo, name, size, hole_side, PHOTO_CROPS)
        if not crops:
            continue
        answers = predict(loaded, [with_hole(crop, hole) for crop, hole in crops])
        model_scores, telea_scores, harmonic_scores, prior_scores = [], [], [], []
        for index, ((crop, hole), answer) in enumerate(zip(crops, answers, strict=False)):
            filled, baseline = answer_image(answer), telea(crop, hole)
            model_scores.append(hole_psnr(filled, crop, hole))
            telea_scores.append(hole_psnr(baseline, crop, hole))
            harmonic_filled, prior_filled = baseline_images(crop, hole)
            harmonic_scores.append(hole_psnr(harmonic_filled, crop, hole))
            prior_scores.append(hole_psnr(prior_filled, crop, hole))
            if out and index == 0:
                shown = np.where(hole[..., None], np.uint8(255), crop)
                panels = side_by_side([("input (hole)", shown), ("cv2.inpaint Telea", baseline),
                                       ("raycv inpaint", filled), ("original", crop)])
                write_png(out, f"{name}_inpaint.png", panels)
        rows.append({"image": name, "crops": len(crops), "telea_psnr_hole": round(float(np.mean(telea_scores)), 2),
                     "harmonic_psnr_hole": round(float(np.mean(harmonic_scores)), 2),
                     "prior_psnr_hole": round(float(np.mean(prior_scores)), 2),
                     "model_psnr_hole": round(float(np.mean(model_scores)), 2),
                     "gain_db": round(float(np.mean(model_scores) - np.mean(telea_scores)), 2)})
    rows.append({"image": "mean", "crops": sum(row["crops"] for row in rows),
                 **{key: round(float(np.mean([row[key] for row in rows])), 2)
                    for key in ("telea_psnr_hole", "harmonic_psnr_hole", "prior_psnr_hole", "model_psnr_hole",
                                "gain_db")}})
    return rows


def filled_png(image: np.ndarray, answer: dict[str, Any]) -> bytes:
    if answer["hole_pixels"] == 0:
        raise RaycvError("the image has no transparent pixels: send an RGBA PNG whose alpha is 0 where to fill")
    if answer["hole_pixels"] == image.shape[0] * image.shape[1]:
        raise RaycvError("the whole image is transparent: there is nothing left to fill the hole from")
    return answer_png(answer)


# ---------------------------------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------------------------------


class InpaintTask(Task):
    card = CARDS["inpaint"]
    metric = "psnr_hole"
    metric_mode = "max"
    synth_defaults = {"image_size": 128, "hole_size": 42, **CROP_SOURCE_DEFAULTS}
    image_mode = "RGBA"
    routes = {"fill": (no_query("/v1/inpaint/fill", "; mark the hole with alpha 0 in the image"), filled_png)}

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        size, hole = int(params["image_size"]), int(params["hole_size"])
        if size < INPUT_MULTIPLE or size % INPUT_MULTIPLE:
            raise RaycvError(f"invalid image_size={size}: expected a multiple of {INPUT_MULTIPLE} (the UNet's), "
                             "e.g. 128")
        if not 1 <= hole < size:
            raise RaycvError(f"invalid hole_size={hole}: expected 1 <= hole_size < image_size={size}")
        return {"image_size": [size, size], "hole_size": hole, **crop_source(params)}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        size, hole = int(params["image_size"]), int(params["hole_size"])
        image = training_crop(rng, size, params)
        x, y = rng.integers(0, size - hole + 1, 2)
        return {"image": encode_png(image), "hole": np.array([x, y, hole], dtype=np.int64)}  # x, y, side

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"image": np.stack([decode_image(data) for data in batch["image"]]),
                "hole": np.stack([np.asarray(corner, dtype=np.int64) for corner in batch["hole"]])}

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        return HoleFiller(cfg.width)

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        images = random_dihedral(to_model_input(batch["image"]))[0]
        size = images.shape[-1]
        if cfg.extra.get("masks", "varied") == "square":
            return {"image": images, "mask": hole_masks(moved_holes(batch["hole"], size), size)}
        return {"image": images, "mask": random_masks(len(images), size, images.device)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        images = to_model_input(batch["image"])
        masks = batch["mask"] if "mask" in batch else hole_masks(batch["hole"], images.shape[-1])
        filled = model(torch.cat([images, masks], dim=1))[:, :3]
        return hole_log_mse(filled, images, masks)

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        learned, baseline, harmonic, prior, mean_loss = (torchmetrics.MeanMetric().to(device) for _ in range(5))
        for batch in batches:
            images = to_model_input(batch["image"])
            masks = hole_masks(batch["hole"], images.shape[-1])
            filled = model(torch.cat([images, masks], dim=1))[:, :3].float()
            holes = masks[:, 0].bool().cpu().numpy()
            telea_filled = np.stack([telea(image, hole)
                                     for image, hole in zip(batch["image"].cpu().numpy(), holes, strict=False)])
            learned.update(masked_psnr(filled, images, masks))
            baseline.update(masked_psnr(to_model_input(torch.from_numpy(telea_filled).to(device)), images, masks))
            harmonic_filled, prior_filled = baseline_fills(images * (1 - masks), masks)
            harmonic.update(masked_psnr(harmonic_filled, images, masks))
            prior.update(masked_psnr(prior_filled, images, masks))
            mean_loss.update(hole_log_mse(filled, images, masks), weight=len(images))
        model_psnr, telea_psnr = float(learned.compute()), float(baseline.compute())
        return {"psnr_hole": model_psnr, "psnr_hole_telea": telea_psnr, "psnr_gain": model_psnr - telea_psnr,
                "psnr_hole_harmonic": float(harmonic.compute()), "psnr_hole_prior": float(prior.compute()),
                "loss": float(mean_loss.compute())}

    def preprocess(self, images: list[np.ndarray], meta: dict[str, Any]) -> torch.Tensor:
        """RGBA (alpha 0 = hole) of any size to RGB + mask, replicate-padded to multiples of 32."""
        batch = stack_padded(images, multiple=INPUT_MULTIPLE)
        return torch.cat([batch[:, :3], (batch[:, 3:4] < 0.5).float()], dim=1)

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image: the filled image as a base64 PNG (the caller's size) and how many pixels were filled."""
        images = to_uint8_images(outputs[:, :3].float())
        masks = outputs[:, 3].cpu().numpy() > 0.5
        answers = []
        for image, mask, (height, width) in zip(images, masks, sizes, strict=False):
            image = np.ascontiguousarray(image[:int(height), :int(width)])
            answers.append({"image_png": base64.b64encode(encode_png(image)).decode("ascii"),
                            "hole_pixels": int(mask[:int(height), :int(width)].sum()),
                            "width": int(width), "height": int(height)})
        return answers


TASK = InpaintTask()
