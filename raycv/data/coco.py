"""COCO JSON in and out for scene datasets (boxes, categories, RLE or polygon masks).

Out: every synthesized scene split gets DATASET/annotations/SPLIT.json, which pycocotools loads; its
file_name entries are the row ids (`00000042.png`), the images themselves live in the Parquet rows.
In: a COCO dataset on disk, ROOT/annotations/{train,val}.json (or instances_{split}.json) with images
under ROOT/{split}/, ROOT/images/{split}/ or ROOT/images/, becomes the same stored rows as synthesis
produces (image bytes, instance-map PNG, annotations JSON with contiguous category ids 1..K).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import ray.data

from raycv import storage
from raycv.data.images import encode_png
from raycv.errors import RaycvError

SPLITS = ("train", "val")


def file_name(row_id: int) -> str:
    return f"{int(row_id):08d}.png"


def coco_document(rows: list[dict[str, Any]], classes: list[str], image_size: list[int]) -> dict[str, Any]:
    """A COCO instances document from stored rows (columns id and annotations)."""
    height, width = image_size
    images, annotations = [], []
    for row in rows:
        image_id = int(row["id"])
        images.append({"id": image_id, "file_name": file_name(image_id), "width": width, "height": height})
        for annotation in json.loads(row["annotations"]):
            annotations.append({**annotation, "id": len(annotations) + 1, "image_id": image_id})
    categories = [{"id": index + 1, "name": name, "supercategory": "object"} for index, name in enumerate(classes)]
    return {"info": {"description": "raycv synthesized scenes"}, "images": images, "annotations": annotations,
            "categories": categories}


def write_split_annotations(dataset_dir: str, split: str, meta: dict[str, Any]) -> str:
    """Write DATASET/annotations/SPLIT.json for a split already written as Parquet; returns its path."""
    # Read in the driver with pyarrow: the document is assembled here anyway, and a Ray Data read of two
    # small columns cost 2 s of job start-up per 800 scenes, a serial step after the parallel synthesis.
    filesystem, folder = storage.resolve(storage.join(dataset_dir, split))
    rows = pads.dataset(folder, filesystem=filesystem, format="parquet").to_table(
        columns=["id", "annotations"]).to_pylist()
    path = storage.join(dataset_dir, "annotations", f"{split}.json")
    storage.write_json(path, coco_document(sorted(rows, key=lambda row: row["id"]), meta["classes"],
                                           meta["image_size"]))
    return path


def is_coco(path: str) -> bool:
    return any(_annotation_file(path, split) for split in SPLITS)


def _annotation_file(root: str, split: str) -> str | None:
    for name in (f"{split}.json", f"instances_{split}.json"):
        candidate = os.path.join(root, "annotations", name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _image_path(root: str, split: str, name: str) -> str | None:
    for folder in (os.path.join(root, split), os.path.join(root, "images", split), os.path.join(root, "images"), root):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def instance_map(annotations: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """uint8 map, pixel = 1 + index of the annotation drawn there (later ones on top); boxes fill in
    for annotations without a segmentation."""
    from pycocotools import mask as mask_utils

    instances = np.zeros((height, width), dtype=np.uint8)
    for index, annotation in enumerate(annotations):
        segmentation = annotation.get("segmentation")
        if segmentation:
            if isinstance(segmentation, list):  # polygons
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
            mask = mask_utils.decode(rle).astype(bool)
        else:
            x, y, w, h = annotation["bbox"]
            mask = np.zeros((height, width), dtype=bool)
            mask[int(round(y)):int(round(y + h)), int(round(x)):int(round(x + w))] = True
        instances[mask] = index + 1
    return instances


def _load_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    images, masks = [], []
    for path, annotations_json, height, width in zip(batch["path"], batch["annotations"], batch["height"],
                                                     batch["width"], strict=False):
        with open(path, "rb") as file:
            images.append(file.read())
        masks.append(encode_png(instance_map(json.loads(annotations_json), int(height), int(width))))
    return {"id": batch["id"], "image": np.array(images, dtype=object), "mask": np.array(masks, dtype=object),
            "annotations": batch["annotations"]}


def read_coco(root: str) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
    """A COCO dataset on local disk as stored scene rows; every referenced image must exist."""
    root = os.path.abspath(root)
    files = {split: _annotation_file(root, split) for split in SPLITS}
    missing = [split for split, path in files.items() if path is None]
    if missing:
        raise RaycvError(f"COCO dataset {root} has no annotations/{missing[0]}.json (or instances_{missing[0]}.json)")
    documents = {}
    for split, path in files.items():
        try:
            with open(path) as file:
                documents[split] = json.load(file)
        except (OSError, json.JSONDecodeError) as problem:
            raise RaycvError(f"cannot read COCO file {path}: {problem}") from None
    categories = sorted(documents["train"].get("categories", []), key=lambda category: category["id"])
    if not categories:
        raise RaycvError(f"COCO file {files['train']} has no categories")
    contiguous = {category["id"]: index + 1 for index, category in enumerate(categories)}
    splits, largest = {}, (0, 0)
    max_objects = 1
    for split, document in documents.items():
        by_image: dict[int, list] = {}
        for annotation in document.get("annotations", []):
            if annotation["category_id"] not in contiguous:
                raise RaycvError(f"COCO file {files[split]}: annotation {annotation.get('id')} has category_id "
                                 f"{annotation['category_id']}, not among the categories of {files['train']}")
            by_image.setdefault(annotation["image_id"], []).append(
                {key: annotation[key] for key in ("bbox", "area", "iscrowd", "segmentation") if key in annotation}
                | {"category_id": contiguous[annotation["category_id"]]})
        items = []
        for image in document.get("images", []):
            path = _image_path(root, split, image["file_name"])
            if path is None:
                raise RaycvError(f"COCO file {files[split]} names image {image['file_name']!r}, which is not under "
                                 f"{root}/{split}/, {root}/images/{split}/ or {root}/images/")
            annotations = by_image.get(image["id"], [])
            max_objects = max(max_objects, len(annotations))
            largest = max(largest, (image["height"], image["width"]))
            items.append({"id": image["id"], "path": path, "annotations": json.dumps(annotations),
                          "height": image["height"], "width": image["width"]})
        if not items:
            raise RaycvError(f"COCO file {files[split]} lists no images")
        splits[split] = ray.data.from_items(items).map_batches(_load_rows, batch_size=64)
    if max_objects > 255:
        raise RaycvError(f"COCO dataset {root} has an image with {max_objects} objects; at most 255 are supported")
    # Models take square inputs divisible by 32 (the segmentation UNet needs it); rows are resized to it.
    side = -(-max(largest) // 32) * 32
    meta = {"classes": [category["name"] for category in categories], "image_size": [side, side],
            "max_objects": max_objects, "source": root, "format": "coco"}
    return splits, meta
