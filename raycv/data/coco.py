"""COCO JSON in and out: the instances files of datasets, and the results files of predictions.

Out: every synthesized scene split gets DATASET/annotations/SPLIT.json, which pycocotools loads; its
file_name entries are the row ids (`00000042.png`), the images themselves live in the Parquet rows.
Predictions over a folder are written in COCO's results format (`results_document`).

In: COCO sets laid out as distributed, ROOT/annotations/instances_train2017.json and
instances_val2017.json with the images in ROOT/train2017/ and ROOT/val2017/; other split names are found
the same way (annotations/instances_NAME.json or annotations/NAME.json, NAME starting with train, and with
val or test), with the images in ROOT/NAME/, ROOT/images/NAME/, ROOT/images/ or ROOT/. Category ids need
not be contiguous; segmentations may be polygons or RLE; crowd regions (iscrowd 1) are kept and marked;
images without annotations are kept; file names may hold sub-folders; ROOT may be any storage URI.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from raycv import storage
from raycv.data.annotated import AnnotatedImage, AnnotatedSet
from raycv.errors import RaycvError

# Split name prefixes, in the order they are looked for: the validation split may be called test.
SPLIT_PREFIXES = {"train": ("train",), "val": ("val", "test")}
ANNOTATION_PREFIX = "instances_"
# COCO's own boxes overhang their images by a fraction of a pixel; further out is a wrong annotation.
EDGE_TOLERANCE_PX = 1.0


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


def image_id_of(relative_path: str) -> int | str:
    """The image id a results entry gives a file: its name's number when the name is one (COCO's own files,
    000000397133.jpg, are their ids), else its path under the folder."""
    stem = relative_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return int(stem) if stem.isdigit() else relative_path


def results_document(image_ids: list[Any], answers: list[list[dict[str, Any]]],
                     category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO's results format (what pycocotools' loadRes reads) for detect's answers: one entry per box, [x, y,
    width, height] in the image's pixels, the set's own category ids; with a mask, its RLE."""
    results = []
    for image_id, detections in zip(image_ids, answers, strict=True):
        for detection in detections:
            x1, y1, x2, y2 = detection["box"]
            entry = {"image_id": image_id, "category_id": category_ids[detection["index"]],
                     "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                     "score": detection["score"]}
            if "segmentation" in detection:
                entry["segmentation"] = detection["segmentation"]
            results.append(entry)
    return results


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of a boolean mask, JSON-able."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


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
            if mask.shape != (height, width):  # an RLE of another size than its image: its box stands in
                mask = None
        else:
            mask = None
        if mask is None:
            x, y, w, h = annotation["bbox"]
            mask = np.zeros((height, width), dtype=bool)
            mask[int(round(y)):int(round(y + h)), int(round(x)):int(round(x + w))] = True
        instances[mask] = index + 1
    return instances


# ---------------------------------------------------------------------------------------------------
# In.
# ---------------------------------------------------------------------------------------------------


def annotation_files(root: str) -> dict[str, str]:
    """Split name -> annotation file, from ROOT/annotations/instances_NAME.json or NAME.json."""
    folder = storage.join(root, "annotations")
    if not storage.is_dir(folder):
        return {}
    files = {}
    for name in sorted(storage.list_dir(folder)):
        split = name.removesuffix(".json").removeprefix(ANNOTATION_PREFIX)
        if name.endswith(".json") and split.startswith(SPLIT_PREFIXES["train"] + SPLIT_PREFIXES["val"]):
            files.setdefault(split, storage.join(folder, name))
    return files


def is_coco(path: str) -> bool:
    return bool(annotation_files(storage.absolute(path)))


def chosen_splits(root: str, files: dict[str, str]) -> dict[str, str]:
    """{"train": NAME, "val": NAME}: for each, the split named exactly so, else the only one whose name starts so
    (train2017); several candidates are an error naming them."""
    chosen = {}
    for wanted, prefixes in SPLIT_PREFIXES.items():
        candidates = [name for name in files if name.startswith(prefixes)]
        picked = [name for name in candidates if name in prefixes] or candidates
        if not picked:
            raise RaycvError(f"COCO set {root} has no {wanted} annotations: expected annotations/instances_"
                             f"{wanted}2017.json or annotations/{wanted}.json (found: {', '.join(files) or 'none'})")
        if len(picked) > 1:
            raise RaycvError(f"COCO set {root} has several {wanted} annotation files ({', '.join(picked)}): "
                             "keep one per split")
        chosen[wanted] = picked[0]
    return chosen


def load_document(path: str) -> dict[str, Any]:
    try:
        document = json.loads(storage.read_text(path))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise RaycvError(f"cannot read COCO file {path}: {problem}") from None
    if not isinstance(document, dict) or not document.get("images"):
        raise RaycvError(f"COCO file {path} lists no images")
    return document


def list_coco(root: str) -> AnnotatedSet:
    """The COCO set at `root`, every annotation and image name checked; opens no image."""
    root = storage.absolute(root)
    files = annotation_files(root)
    names = chosen_splits(root, files)
    documents = {split: load_document(files[name]) for split, name in names.items()}
    categories = sorted(documents["train"].get("categories") or [], key=lambda category: category["id"])
    if not categories:
        raise RaycvError(f"COCO file {files[names['train']]} has no categories")
    listed = AnnotatedSet(source=root, format="coco", classes=[category["name"] for category in categories],
                          category_ids=[category["id"] for category in categories])
    contiguous = {category["id"]: index + 1 for index, category in enumerate(categories)}
    for split, name in names.items():
        listed.splits[split] = list_split(root, name, files[name], documents[split], contiguous)
    return listed


def list_split(root: str, name: str, path: str, document: dict[str, Any],
               contiguous: dict[int, int]) -> list[AnnotatedImage]:
    images = {image["id"]: image for image in document["images"]}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for annotation in document.get("annotations", []):
        image = images.get(annotation.get("image_id"))
        label = f"COCO file {path}: annotation {annotation.get('id')}"
        if image is None:
            raise RaycvError(f"{label} names image_id {annotation.get('image_id')}, which is not among its images")
        if annotation.get("category_id") not in contiguous:
            raise RaycvError(f"{label} has category_id {annotation.get('category_id')}, not among the categories "
                             f"{sorted(contiguous)}")
        x, y, w, h = annotation["bbox"]
        if (w < 0 or h < 0 or x < -EDGE_TOLERANCE_PX or y < -EDGE_TOLERANCE_PX
                or x + w > image["width"] + EDGE_TOLERANCE_PX or y + h > image["height"] + EDGE_TOLERANCE_PX):
            raise RaycvError(f"{label}: box {annotation['bbox']} lies outside its image {image['file_name']} "
                             f"({image['width']}x{image['height']})")
        by_image.setdefault(image["id"], []).append(
            {key: annotation[key] for key in ("bbox", "area", "iscrowd", "segmentation") if key in annotation}
            | {"category_id": contiguous[annotation["category_id"]]})
    folder = image_folder(root, name, path, [image["file_name"] for image in document["images"]])
    return [AnnotatedImage(storage.join(folder, image["file_name"]), image["id"], by_image.get(image["id"], []))
            for image in document["images"]]


def image_folder(root: str, name: str, path: str, file_names: list[str]) -> str:
    """The folder holding a split's images: the first of ROOT/NAME/, ROOT/images/NAME/, ROOT/images/ and ROOT/
    that holds the first named image; every other named image is checked to be there too (one listing)."""
    candidates = [storage.join(root, name), storage.join(root, "images", name), storage.join(root, "images"), root]
    for folder in candidates:
        if storage.exists(storage.join(folder, file_names[0])):
            present = set(storage.list_files(folder))
            missing = [file for file in file_names if file not in present]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise RaycvError(f"COCO file {path} names image {missing[0]!r}, which is not in {folder}{more}")
            return folder
    raise RaycvError(f"COCO file {path} names image {file_names[0]!r}, which is not in any of "
                     f"{', '.join(candidates)}")
