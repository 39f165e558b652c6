"""A real-photo classification set made only of photographs installed packages ship: "which photograph
does this crop come from", with the 15 photographs of raycv.data.photos as classes, written as an
ImageFolder tree of camera-sized JPEGs (OUT/train/<photo>/*.jpg, OUT/val/<photo>/*.jpg).

Held out by geography. Crops of one photograph overlap, so validation crops drawn from anywhere in it
would share pixels with training crops: near-copies that measure memory, not recognition. The
bottom-right quadrant of every photograph is held out: validation crops lie inside it, training crops
anywhere that does not touch it (the L-shaped rest, three quarters of the area). No pixel of a
validation crop is in any training crop. A quadrant rather than a band of the same area (a quarter of
the long side), because a crop can be no larger than the held-out region's narrower side: half of each
side for a quadrant, a quarter of the long side for a band. The photographs are small (300x451 to
1411x1411), so a band would have left validation crops half as large and upsampled twice as much.

Crop sizes are drawn from one distribution in both splits, relative to the quadrant's size (the largest
crop of the drawn shape that fits in it, scaled to 25-100 % of its area, the scale range of
photo_pipeline.train_transform), so the splits differ only in where their crops come from. Each crop has
a camera's shape (3:2 to 5:4, landscape or portrait) and is resized to a long side of 400-560 pixels,
the size of the photos people's folders hold; most crops are upsampled, since most source photos are
about 512 pixels.

All 15 photographs are classes by default: each is a different scene, and the grey ones (brick, camera,
coins, grass, gravel, moon), which the colour of a crop does not tell apart, differ in texture and
content. Note that these are also the held-out test photographs of the pixel tasks (superres, inpaint,
compress_ae): a model trained on this set has seen them, so it must not be used to score those tasks.

Every crop is a pure function of (seed, split, photo, index), so a set is byte-identical however it is
made, and a larger set extends a smaller one with the same seed.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from typing import NamedTuple

import numpy as np
from PIL import Image

from raycv.data.photos import PHOTO_NAMES, real_photos
from raycv.errors import RaycvError

SPLITS = ("train", "val")
SHORT_TO_LONG = (2 / 3, 4 / 5)  # crop shapes from 3:2 to 5:4, as cameras take them
AREA_SCALE = (0.25, 1.0)  # of the largest crop of the drawn shape that fits in the held-out quadrant
OUTPUT_LONG_SIDE = (400, 560)  # pixels, both included
JPEG_QUALITY = 90
CROPS_CSV = "crops.csv"  # where every file's crop lies in its photo, beside train/ and val/


class Box(NamedTuple):
    """A rectangle of a photo in pixels: rows top..bottom-1, columns left..right-1."""

    top: int
    left: int
    bottom: int
    right: int

    def inside(self, other: Box) -> bool:
        return (other.top <= self.top and other.left <= self.left and self.bottom <= other.bottom
                and self.right <= other.right)

    def overlaps(self, other: Box) -> bool:
        return (self.top < other.bottom and other.top < self.bottom and self.left < other.right
                and other.left < self.right)


def held_out_box(height: int, width: int) -> Box:
    """The region validation crops come from: the bottom-right quadrant of a height x width photo."""
    return Box(height - height // 2, width - width // 2, height, width)


def crop_box(height: int, width: int, split: str, rng: np.random.Generator) -> Box:
    """Where one crop of `split` lies in a height x width photo: inside the held-out quadrant for val,
    disjoint from it for train, with a size and shape drawn the same way for both."""
    if split not in SPLITS:
        raise RaycvError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    held_out = held_out_box(height, width)
    quadrant_height, quadrant_width = held_out.bottom - held_out.top, held_out.right - held_out.left
    short_to_long = rng.uniform(*SHORT_TO_LONG)
    side = np.sqrt(rng.uniform(*AREA_SCALE))
    if rng.random() < 0.5:  # landscape
        crop_width = side * min(quadrant_width, quadrant_height / short_to_long)
        crop_height = crop_width * short_to_long
    else:
        crop_height = side * min(quadrant_height, quadrant_width / short_to_long)
        crop_width = crop_height * short_to_long
    crop_height, crop_width = max(1, round(crop_height)), max(1, round(crop_width))
    if split == "val":
        top = held_out.top + int(rng.integers(quadrant_height - crop_height + 1))
        left = held_out.left + int(rng.integers(quadrant_width - crop_width + 1))
        return Box(top, left, top + crop_height, left + crop_width)
    # Uniform over the positions that miss the quadrant. The crop fits in the top-left quadrant, so some do;
    # for the largest crops only a few rows and columns do (a hundred draws or so, microseconds).
    while True:
        top, left = int(rng.integers(height - crop_height + 1)), int(rng.integers(width - crop_width + 1))
        box = Box(top, left, top + crop_height, left + crop_width)
        if not box.overlaps(held_out):
            return box


def photo_crop(photo: np.ndarray, split: str, rng: np.random.Generator) -> tuple[np.ndarray, Box]:
    """One crop of a uint8 (H, W, 3) photo for `split`, resized with its shape kept to a long side of
    400-560 pixels: (uint8 RGB pixels, where it lies in the photo)."""
    box = crop_box(photo.shape[0], photo.shape[1], split, rng)
    crop_height, crop_width = box.bottom - box.top, box.right - box.left
    long_side = int(rng.integers(OUTPUT_LONG_SIDE[0], OUTPUT_LONG_SIDE[1] + 1))
    scale = long_side / max(crop_height, crop_width)
    size = (max(1, round(crop_width * scale)), max(1, round(crop_height * scale)))
    pixels = Image.fromarray(photo).resize(size, Image.BICUBIC, box=(box.left, box.top, box.right, box.bottom))
    return np.asarray(pixels), box


def crop_rng(seed: int, split: str, photo_name: str, index: int) -> np.random.Generator:
    """The generator of one crop: keyed by its identity, never by the order crops are made in. The photo's
    place in PHOTO_NAMES (not in the chosen classes) keys it, so a photo's crops do not depend on which
    other photos are chosen."""
    return np.random.default_rng([seed, SPLITS.index(split), PHOTO_NAMES.index(photo_name), index])


def write_photo_crops(out: str, classes: tuple[str, ...], train_per_class: int, val_per_class: int,
                      seed: int) -> dict:
    """Write the ImageFolder tree out/train/<photo>/<photo>_<index>.jpg and out/val/... (JPEG quality 90)
    and out/crops.csv (each file's box in its photo), and return a summary. The tree is written beside
    `out` and renamed into place when complete, so a half-written set is never read; `out` must not exist."""
    if not classes or len(set(classes)) != len(classes):
        raise RaycvError(f"classes must name distinct photos, got {', '.join(classes) or 'none'}; "
                         f"valid: {', '.join(PHOTO_NAMES)}")
    if train_per_class < 1 or val_per_class < 0:
        raise RaycvError(f"need train_per_class >= 1 and val_per_class >= 0, got {train_per_class} and "
                         f"{val_per_class}")
    if seed < 0:
        raise RaycvError(f"seed must be >= 0, got {seed}")
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise RaycvError(f"{out} already exists; remove it or choose another output folder")
    started = time.perf_counter()
    photos = real_photos(tuple(classes))
    partial = f"{out}.partial-{os.getpid()}"
    try:
        rows = [row for split, per_class in zip(SPLITS, (train_per_class, val_per_class), strict=True)
                for name, photo in photos.items()
                for row in write_crops(partial, photo, name, split, per_class, seed)]
        with open(os.path.join(partial, CROPS_CSV), "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {"out": out, "classes": list(classes), "train": train_per_class * len(classes),
            "val": val_per_class * len(classes), "seed": seed, "held_out": "bottom-right quadrant of each photo",
            "megabytes": round(sum(row["bytes"] for row in rows) / 1e6, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def write_crops(root: str, photo: np.ndarray, name: str, split: str, count: int, seed: int) -> list[dict]:
    """`count` crops of one photo as root/<split>/<name>/<name>_<index>.jpg: a row per file for crops.csv."""
    folder = os.path.join(split, name)
    if count:  # no empty class folders: ImageFolder readers refuse a split without images
        os.makedirs(os.path.join(root, folder))
    rows = []
    for index in range(count):
        pixels, box = photo_crop(photo, split, crop_rng(seed, split, name, index))
        path = os.path.join(folder, f"{name}_{index:05d}.jpg")
        Image.fromarray(pixels).save(os.path.join(root, path), format="JPEG", quality=JPEG_QUALITY)
        rows.append({"path": path, "photo": name, "split": split, **box._asdict(), "width": pixels.shape[1],
                     "height": pixels.shape[0], "bytes": os.path.getsize(os.path.join(root, path))})
    return rows
