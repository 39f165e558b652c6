"""YOLO detection and segmentation sets in, YOLO label files out (the layout of Ultralytics' tools).

In: a data.yaml (or a folder holding one) with `names` (a list, or a mapping from class index to name),
`train` and `val` (folders of images, .txt lists of image paths, or lists of either; relative to `path`
when the yaml sets it, else to the yaml's folder). Each image's labels are the .txt of the same name under
the parallel labels/ folder (images/train/a.jpg -> labels/train/a.txt), one object per line:
`class cx cy w h` (a box), or `class x1 y1 x2 y2 ...` (a polygon, YOLO's segmentation format), all as
fractions of the image's width and height. An image without a label file has no objects.
"""

from __future__ import annotations

from typing import Any

import yaml

from raycv import storage
from raycv.data.annotated import AnnotatedImage, AnnotatedSet
from raycv.data.photo_folders import PHOTO_EXTENSIONS, resolve_entry
from raycv.errors import RaycvError

YAML_NAMES = ("data.yaml", "dataset.yaml")
SPLITS = ("train", "val")
# Fractions a little outside [0, 1] are rounding in the tools that wrote them; further out is a wrong label.
EDGE_TOLERANCE = 0.01


def find_yaml(path: str) -> str | None:
    """The data.yaml that `path` is or holds, or None."""
    if path.lower().endswith((".yaml", ".yml")):
        return path if storage.exists(path) else None
    if not storage.is_dir(path):
        return None
    return next((storage.join(path, name) for name in YAML_NAMES if storage.exists(storage.join(path, name))), None)


def list_yolo(path: str) -> AnnotatedSet:
    """The YOLO set at `path` (a data.yaml or a folder holding one), every label line checked."""
    path = storage.absolute(path)
    yaml_path = find_yaml(path)
    if yaml_path is None:
        raise RaycvError(f"{path} has no {' or '.join(YAML_NAMES)}")
    try:
        document = yaml.safe_load(storage.read_text(yaml_path))
    except yaml.YAMLError as problem:
        raise RaycvError(f"cannot parse {yaml_path}: {str(problem).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise RaycvError(f"{yaml_path} is not a mapping of names, train and val")
    classes = class_names(yaml_path, document.get("names"))
    folder = yaml_path.rsplit("/", 1)[0]
    root = resolve_entry(folder, str(document.get("path") or "."))
    listed = AnnotatedSet(source=yaml_path, format="yolo", classes=classes, category_ids=list(range(len(classes))))
    for split in SPLITS:
        entries = document.get(split)
        if not entries:
            raise RaycvError(f"{yaml_path} names no {split} images ({split}: images/{split})")
        files = []
        for entry in entries if isinstance(entries, list) else [entries]:
            files += split_images(yaml_path, root, str(entry))
        if not files:
            raise RaycvError(f"{yaml_path}: the {split} entry {entries!r} holds no images")
        listed.splits[split] = [
            AnnotatedImage(file, index, read_labels(label_file(file), len(classes)), normalized=True)
            for index, file in enumerate(sorted(files))]
    return listed


def class_names(yaml_path: str, names: Any) -> list[str]:
    if isinstance(names, dict) and names and all(isinstance(key, int) for key in names):
        if sorted(names) != list(range(len(names))):
            raise RaycvError(f"{yaml_path}: names' class indices {sorted(names)} are not 0..{len(names) - 1}")
        return [str(names[index]) for index in range(len(names))]
    if isinstance(names, list) and names:
        return [str(name) for name in names]
    raise RaycvError(f"{yaml_path} has no names (a list of class names, or a mapping from class index to name)")


def split_images(yaml_path: str, root: str, entry: str) -> list[str]:
    """The image files a split entry names: a folder (searched at any depth) or a .txt list of paths."""
    target = resolve_entry(root, entry)
    if target.lower().endswith(".txt"):
        if not storage.exists(target):
            raise RaycvError(f"{yaml_path}: image list {target} not found")
        lines = [line.strip() for line in storage.read_text(target).splitlines() if line.strip()]
        return [resolve_entry(root, line) for line in lines]
    if not storage.is_dir(target):
        raise RaycvError(f"{yaml_path}: image folder {target} not found")
    return [storage.join(target, relative) for relative in storage.list_files(target)
            if relative.lower().endswith(PHOTO_EXTENSIONS)]


def label_file(image: str) -> str:
    """YOLO's rule: the last /images/ of the path becomes /labels/, and the suffix .txt."""
    head, marker, tail = image.rpartition("/images/")
    labels = f"{head}/labels/{tail}" if marker else image
    return labels.rsplit(".", 1)[0] + ".txt"


def read_labels(path: str, num_classes: int) -> list[dict[str, Any]]:
    """The objects of one label file as normalized COCO annotations (category_id = class index + 1)."""
    if not storage.exists(path):
        return []
    annotations = []
    for line_number, line in enumerate(storage.read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            numbers = [float(field) for field in fields]
        except ValueError:
            raise RaycvError(f"{path} line {line_number}: {line.strip()!r} is not numbers") from None
        if len(numbers) != 5 and (len(numbers) < 7 or len(numbers) % 2 == 0):
            raise RaycvError(f"{path} line {line_number}: {len(numbers)} numbers; expected 5 (class cx cy w h) or "
                             "an odd number of at least 7 (class and polygon x y pairs)")
        label = numbers[0]
        if label != int(label) or not 0 <= label < num_classes:
            raise RaycvError(f"{path} line {line_number}: class {fields[0]} is not among the {num_classes} names "
                             f"(0..{num_classes - 1})")
        coordinates = numbers[1:]
        if any(value < -EDGE_TOLERANCE or value > 1 + EDGE_TOLERANCE for value in coordinates) or (
                len(coordinates) == 4 and not _box_inside(*coordinates)):
            raise RaycvError(f"{path} line {line_number}: the object lies outside its image (YOLO coordinates are "
                             f"fractions of the image's size, from 0 to 1): {line.strip()!r}")
        annotation: dict[str, Any] = {"category_id": int(label) + 1, "iscrowd": 0}
        if len(coordinates) == 4:
            cx, cy, w, h = coordinates
            annotation["bbox"] = [cx - w / 2, cy - h / 2, w, h]
        else:
            xs, ys = coordinates[0::2], coordinates[1::2]
            annotation["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotation["segmentation"] = [coordinates]
        annotations.append(annotation)
    return annotations


def _box_inside(cx: float, cy: float, w: float, h: float) -> bool:
    return (w > 0 and h > 0 and cx - w / 2 >= -EDGE_TOLERANCE and cy - h / 2 >= -EDGE_TOLERANCE
            and cx + w / 2 <= 1 + EDGE_TOLERANCE and cy + h / 2 <= 1 + EDGE_TOLERANCE)


def label_lines(boxes: list[list[float]], labels: list[int], size: tuple[int, int],
                scores: list[float] | None = None) -> str:
    """YOLO label text for xyxy pixel boxes on an image of (height, width); with scores, each line ends with
    the confidence (as Ultralytics' save_conf writes it)."""
    height, width = size
    lines = []
    for index, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels, strict=True)):
        fields = [f"{label}", f"{(x1 + x2) / 2 / width:.6f}", f"{(y1 + y2) / 2 / height:.6f}",
                  f"{(x2 - x1) / width:.6f}", f"{(y2 - y1) / height:.6f}"]
        if scores is not None:
            fields.append(f"{scores[index]:.4f}")
        lines.append(" ".join(fields))
    return "\n".join(lines) + ("\n" if lines else "")
