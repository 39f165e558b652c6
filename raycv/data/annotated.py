"""Users' annotated photos (COCO and YOLO sets) as streamed scene rows, and the letterbox that puts any
photo at the training resolution and maps answers back to its pixels.

A reader (raycv/data/coco.py, raycv/data/yolo.py) first lists a set: per split, each image file with its
objects as COCO annotations (bbox [x, y, width, height], category_id 1..K, iscrowd, and a polygon or RLE
segmentation when there is one). Listing opens no image and starts no Ray, so every fault of a set (a
missing image, a box outside its image, an unknown category) is a one-line error before anything runs.
`read_annotated` then streams the listed files through Ray Data: the image bytes are read on its workers
and joined with their annotations; nothing is decoded until a trainer asks for a batch.

YOLO labels are fractions of the image's size, which only the image knows, so a listed image may carry
`normalized` annotations that are turned into pixels on the workers, from the upright (EXIF-rotated) size
that YOLO's own tools use too.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from raycv.errors import RaycvError

if TYPE_CHECKING:
    import ray.data

# The padding colour of letterboxed images, YOLO's grey: it marks "no image here" for a detector that is
# shown it in every non-square photo.
PAD_VALUE = 114
SKIPPED_EXAMPLES = 5


@dataclass
class AnnotatedImage:
    file: str  # storage path or URI
    image_id: int
    annotations: list[dict[str, Any]]  # COCO style, category_id 1..K
    normalized: bool = False  # bbox and polygons are fractions of the image's width and height (YOLO)


@dataclass
class AnnotatedSet:
    """A listed set: its splits' images and what the categories are."""

    source: str
    format: str  # "coco" or "yolo"
    classes: list[str]
    category_ids: list[int]  # the set's own id of each class, for results files (COCO ids need not be 1..K)
    splits: dict[str, list[AnnotatedImage]] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        max_objects = max((len(image.annotations) for images in self.splits.values() for image in images), default=0)
        if max_objects > 255:
            raise RaycvError(f"{self.source} has an image with {max_objects} objects; at most 255 are supported")
        return {"classes": self.classes, "category_ids": self.category_ids, "max_objects": max(1, max_objects),
                "source": self.source, "format": self.format,
                "files": {split: len(images) for split, images in self.splits.items()}}


def read_annotated(listed: AnnotatedSet) -> dict[str, ray.data.Dataset]:
    """Each split as rows of "id", "image" (the file's bytes) and "annotations" (JSON, in pixels), streamed:
    the training split in a new random file order every epoch."""
    import ray.data

    from raycv.data.photo_folders import as_ray_reports

    splits = {}
    for split, images in listed.splits.items():
        reported = as_ray_reports([image.file for image in images])
        by_path = {path: (image.image_id, json.dumps(image.annotations), image.normalized)
                   for path, image in zip(reported, images, strict=True)}
        splits[split] = ray.data.read_binary_files([image.file for image in images], include_paths=True,
                                                   shuffle="files" if split == "train" else None).map_batches(
            _annotated_rows, fn_kwargs={"by_path": by_path}, batch_size=64)
    return splits


def _annotated_rows(batch: dict[str, np.ndarray], by_path: dict[str, tuple[int, str, bool]]) -> dict[str, np.ndarray]:
    ids, annotations = [], []
    for path, data in zip(batch["path"], batch["bytes"], strict=True):
        image_id, objects, normalized = by_path[str(path)]
        if normalized:
            objects = json.dumps(to_pixels(json.loads(objects), upright_size(bytes(data))))
        ids.append(image_id)
        annotations.append(objects)
    return {"id": np.array(ids, dtype=np.int64), "image": batch["bytes"],
            "annotations": np.array(annotations, dtype=object)}


def upright_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes as viewers show them, from the header alone; (0, 0) when
    unreadable (the decoder then skips the row)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = image.getexif().get(ImageOps.ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - any header Pillow cannot read is an unreadable image, skipped later
        return 0, 0
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_pixels(annotations: list[dict[str, Any]], size: tuple[int, int]) -> list[dict[str, Any]]:
    """Normalized annotations (fractions of width and height) in pixels of an image of `size` (width, height)."""
    width, height = size
    scaled = []
    for annotation in annotations:
        x, y, w, h = annotation["bbox"]
        pixel = {**annotation, "bbox": [x * width, y * height, w * width, h * height], "area": w * width * h * height}
        if "segmentation" in annotation:
            pixel["segmentation"] = [[value * (width if index % 2 == 0 else height)
                                      for index, value in enumerate(polygon)]
                                     for polygon in annotation["segmentation"]]
        scaled.append(pixel)
    return scaled


# ---------------------------------------------------------------------------------------------------
# Letterbox: the photo scaled to fit a square, its aspect kept, padded right and below.
# ---------------------------------------------------------------------------------------------------


def letterbox_scale(height: int, width: int, side: int) -> float:
    """The factor that fits a height x width image into a side x side square, aspect kept."""
    return side / max(height, width)


def letterbox(image: np.ndarray, side: int, interpolation: int = Image.BILINEAR, fill: int = PAD_VALUE) -> np.ndarray:
    """`image` (HW or HWC uint8) scaled by letterbox_scale and padded right and below to side x side. A square
    image is a plain resize, so raycv's own (square) scenes are decoded exactly as before letterboxing."""
    height, width = image.shape[:2]
    scale = letterbox_scale(height, width, side)
    new_height, new_width = min(side, max(1, round(height * scale))), min(side, max(1, round(width * scale)))
    if (new_height, new_width) != (height, width):
        image = np.asarray(Image.fromarray(image).resize((new_width, new_height), interpolation))
    if (new_height, new_width) == (side, side):
        return image
    canvas = np.full((side, side, *image.shape[2:]), fill, dtype=image.dtype)
    canvas[:new_height, :new_width] = image
    return canvas


def unletterbox_mask(class_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """A side x side map predicted on a letterboxed image back to the photo's height x width (nearest)."""
    import cv2

    side = class_map.shape[0]
    scale = letterbox_scale(height, width, side)
    inner = class_map[:min(side, max(1, round(height * scale))), :min(side, max(1, round(width * scale)))]
    return cv2.resize(inner, (int(width), int(height)), interpolation=cv2.INTER_NEAREST_EXACT)


def log_skipped(paths: list[str]) -> None:
    if paths:
        logging.getLogger("raycv").warning("skipping %d unreadable image(s): %s%s", len(paths),
                                           ", ".join(paths[:SKIPPED_EXAMPLES]),
                                           ", ..." if len(paths) > SKIPPED_EXAMPLES else "")
