"""A COCO set of real photographs made only of what installed packages ship, laid out as COCO 2017 is
distributed (annotations/instances_train2017.json, train2017/*.jpg, and the same for val2017): the quality
check of detect and segment on users' kind of data.

- Objects, two classes: "coin", the 24 coins of scikit-image's `coins` photograph, each cut out along its
  own outline (Otsu threshold, holes filled, one connected region per coin); and "horse", scikit-image's
  horse silhouette filled with a crop of the cat photograph's fur (`chelsea`), flipped at random.
- Backgrounds: crops of the other bundled photographs (astronaut, coffee, rocket, brick, grass, gravel, china,
  flower, ...), 320 to 640 pixels on the long side, landscape or portrait, from 1:1 to 16:9.
- 1 to 4 objects per photo, 8 to 30 % of its shorter side, not overlapping; per-object brightness and a
  slight blur so the paste edges are not a give-away; JPEG at quality 90.
- Annotations: the visible mask of each object as COCO RLE, its box and area; categories with ids 1 and 2.

Every photo is a pure function of (seed, split, index): a rerun writes the same bytes, and the val split
comes from its own stream of the seed, never from the training photos.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from raycv.data.coco import encode_rle
from raycv.data.photos import real_photos
from raycv.data.scenes import mask_box
from raycv.errors import RaycvError

CLASSES = ("coin", "horse")
BACKGROUNDS = ("astronaut", "coffee", "rocket", "brick", "grass", "gravel", "china", "flower", "camera", "moon")
LONG_SIDE = (320, 640)
ASPECT = (1.0, 16 / 9)
OBJECTS = (1, 4)
OBJECT_SCALE = (0.08, 0.30)  # of the photo's shorter side
JPEG_QUALITY = 90
SPLIT_STREAMS = {"train": 0, "val": 1}


@lru_cache(maxsize=1)
def cutouts() -> dict[str, list[np.ndarray]]:
    """class -> RGBA cut-outs (uint8), each cropped to its opaque pixels."""
    import skimage.data
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    coins = skimage.data.coins()
    solid = ndimage.binary_fill_holes(ndimage.binary_opening(coins > threshold_otsu(coins), iterations=2))
    regions, count = ndimage.label(solid)
    coin_cutouts = []
    for index, window in enumerate(ndimage.find_objects(regions), start=1):
        mask = regions[window] == index
        if mask.sum() < 400:  # specks of the background, not coins
            continue
        grey = coins[window]
        coin_cutouts.append(np.dstack([grey, grey, grey, mask * 255]).astype(np.uint8))
    horse = ~skimage.data.horse()  # True on the horse
    rows, cols = np.nonzero(horse)
    horse = horse[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    fur = np.asarray(Image.fromarray(real_photos(("cat",))["cat"]).resize((horse.shape[1], horse.shape[0]),
                                                                           Image.BILINEAR))
    horse_cutouts = [np.dstack([fur, horse * 255]).astype(np.uint8)]
    if len(coin_cutouts) < 10:
        raise RaycvError(f"found {len(coin_cutouts)} coins in scikit-image's coins photo; expected about 24")
    return {"coin": coin_cutouts, "horse": horse_cutouts}


def background(rng: np.random.Generator, photos: dict[str, np.ndarray]) -> np.ndarray:
    """A crop of a random background photo at a camera's shape, resized to a long side of 320-640 pixels."""
    photo = photos[BACKGROUNDS[rng.integers(len(BACKGROUNDS))]]
    aspect = rng.uniform(*ASPECT)
    long_side = int(rng.integers(LONG_SIDE[0], LONG_SIDE[1] + 1))
    short_side = round(long_side / aspect)
    height, width = (short_side, long_side) if rng.random() < 0.6 else (long_side, short_side)
    # The largest crop of that shape in the photo, scaled to 50-100 % of it.
    fit = min(photo.shape[0] / height, photo.shape[1] / width) * rng.uniform(0.5, 1.0)
    crop_h, crop_w = max(8, int(height * fit)), max(8, int(width * fit))
    top = int(rng.integers(0, photo.shape[0] - crop_h + 1))
    left = int(rng.integers(0, photo.shape[1] - crop_w + 1))
    crop = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop.resize((width, height), Image.BILINEAR), dtype=np.float32)


def coin_scene(rng: np.random.Generator, photos: dict[str, np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    """One photo (uint8 HWC) and its COCO annotations (category_id 1 coin, 2 horse; RLE masks)."""
    image = background(rng, photos)
    height, width = image.shape[:2]
    instances = np.zeros((height, width), dtype=np.uint8)
    labels: list[int] = []
    taken: list[list[float]] = []
    sprites = cutouts()
    for _ in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
        for _ in range(30):  # placement tries
            label = int(rng.integers(len(CLASSES)))
            choices = sprites[CLASSES[label]]
            sprite = Image.fromarray(choices[rng.integers(len(choices))])
            if rng.random() < 0.5:
                sprite = sprite.transpose(Image.FLIP_LEFT_RIGHT)
            extent = rng.uniform(*OBJECT_SCALE) * min(height, width)
            scale = extent / max(sprite.size)
            sprite = sprite.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR, expand=True) \
                if label == 0 else sprite
            size = (max(4, round(sprite.width * scale)), max(4, round(sprite.height * scale)))
            rgba = np.asarray(sprite.resize(size, Image.BILINEAR).filter(ImageFilter.GaussianBlur(0.6)),
                              dtype=np.float32)
            top, left = int(rng.integers(0, height - size[1] + 1)), int(rng.integers(0, width - size[0] + 1))
            box = [left, top, size[0], size[1]]
            if size[1] > height or size[0] > width or any(_overlap(box, other) for other in taken):
                continue
            alpha = rgba[..., 3:] / 255
            colour = rgba[..., :3] * rng.uniform(0.75, 1.2)
            window = (slice(top, top + size[1]), slice(left, left + size[0]))
            image[window] = image[window] * (1 - alpha) + colour * alpha
            instances[window][alpha[..., 0] >= 0.5] = len(labels) + 1
            labels.append(label)
            taken.append(box)
            break
    annotations = []
    for index, label in enumerate(labels):
        visible = instances == index + 1
        if visible.any():
            annotations.append({"bbox": mask_box(visible), "category_id": label + 1, "area": int(visible.sum()),
                                "iscrowd": 0, "segmentation": encode_rle(visible)})
    return np.clip(image, 0, 255).round().astype(np.uint8), annotations


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def write_coin_scenes(out: str, sizes: dict[str, int], seed: int = 0) -> dict:
    """The COCO 2017 layout at `out` (which must not exist); returns a summary."""
    if os.path.exists(out):
        raise RaycvError(f"--out {out} already exists; choose a new folder")
    started = time.perf_counter()
    photos = real_photos(BACKGROUNDS + ("cat",))
    os.makedirs(os.path.join(out, "annotations"))
    categories = [{"id": index + 1, "name": name, "supercategory": "object"} for index, name in enumerate(CLASSES)]
    objects = {}
    for split, count in sizes.items():
        folder = os.path.join(out, f"{split}2017")
        os.makedirs(folder)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
            pixels, found = coin_scene(rng, photos)
            name = f"{index + 1:012d}.jpg"
            Image.fromarray(pixels).save(os.path.join(folder, name), quality=JPEG_QUALITY)
            images.append({"id": index + 1, "file_name": name, "height": pixels.shape[0], "width": pixels.shape[1]})
            annotations += [{**annotation, "id": len(annotations) + offset + 1, "image_id": index + 1}
                            for offset, annotation in enumerate(found)]
        with open(os.path.join(out, "annotations", f"instances_{split}2017.json"), "w") as file:
            json.dump({"info": {"description": "raycv coin scenes"}, "images": images, "annotations": annotations,
                       "categories": categories}, file)
        objects[split] = len(annotations)
    return {"out": out, "images": dict(sizes), "objects": objects, "seed": seed,
            "seconds": round(time.perf_counter() - started, 1)}
