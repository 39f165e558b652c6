"""The photo folders users bring (`raycv classify train --data PATH`) to labelled Ray Datasets: torchvision's
ImageFolder layout, with or without a validation split, and CSV or JSONL lists of path,label.

Listing and checking (`list_photo_files`) touch storage only, never Ray or torch, so that a wrong path or
layout is reported in a second, before Ray starts. Reading then scans every file once on Ray Data's workers
and drops the ones no decoder reads: real folders hold truncated downloads, and one bad file among
thousands must not stop a run, nor crash it hours in.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from raycv import storage
from raycv.errors import RaycvError

if TYPE_CHECKING:
    import ray.data

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
LIST_SUFFIXES = (".csv", ".jsonl")
VAL_NAMES = ("val", "test")  # the validation split's folder (or list-name prefix), in order of preference
SKIPPED_EXAMPLES = 5

SplitFiles = dict[str, list[tuple[str, str]]]  # split -> (file, class name)


def is_photo_list(path: str) -> bool:
    """Whether `path` names a list of photos (by its suffix) rather than a folder of them."""
    return str(path).lower().endswith(LIST_SUFFIXES)


def list_photo_files(path: str, val_fraction: float = 0.1, seed: int = 0) -> tuple[SplitFiles, list[str]]:
    """The (file, class name) pairs of the "train" and "val" splits of the folder or list at `path`, and
    the sorted class names. Without a val split, `val_fraction` of each class goes to val (seeded). Raises
    RaycvError for anything wrong with the layout or the lists; opens no image."""
    if not 0 < val_fraction < 1:
        raise RaycvError(f"invalid val_fraction={val_fraction!r}: expected a fraction between 0 and 1, exclusive")
    path = storage.absolute(path)
    if not (storage.is_dir(path) or is_photo_list(path) and storage.exists(path)):
        problem = "is neither a folder nor a .csv or .jsonl list" if storage.exists(path) else "not found"
        raise RaycvError(f"photo data {path} {problem}: expected a folder of class folders ({path}/<class>/*.jpg, "
                         "or those under train/ and val/), or a .csv or .jsonl list of path,label")
    files = photo_list_files(path) if is_photo_list(path) else image_folder_files(path)
    classes = sorted({name for _, name in files["train"]})
    if len(classes) < 2:
        raise RaycvError(f"{path} has one class ({classes[0]}): needs at least two classes")
    if "val" not in files:
        files = _stratified_split(files["train"], val_fraction, seed)
    unknown = sorted({name for _, name in files["val"]} - set(classes))
    if unknown:
        raise RaycvError(f"{path}: validation classes {unknown} are not among the train classes {classes}")
    return files, classes


def image_folder_files(path: str) -> SplitFiles:
    """ImageFolder trees: PATH/train/<class>/ and PATH/val/<class>/ (or test/) give both splits;
    PATH/train/<class>/ alone, or PATH/<class>/ directly, give "train" only, to be split."""
    train = storage.join(path, "train")
    val = next((storage.join(path, name) for name in VAL_NAMES if storage.is_dir(storage.join(path, name))), None)
    if not storage.is_dir(train):
        if val is not None:
            raise RaycvError(f"photo folder {path} has {val.rsplit('/', 1)[1]}/ but no train/ subfolder")
        return {"train": _class_files(path)}
    files = {"train": _class_files(train)}
    return files if val is None else {**files, "val": _class_files(val)}


def _class_files(folder: str) -> list[tuple[str, str]]:
    """(file, class) for every photo under each class subfolder of `folder`, at any depth. Names starting with
    "." are skipped: .ipynb_checkpoints/ and macOS's ._IMG_0001.jpg resource forks hold no photos."""
    classes = [name for name in storage.list_dir(folder)
               if not name.startswith(".") and storage.is_dir(storage.join(folder, name))]
    if not classes:
        raise RaycvError(f"photo folder {folder} has no class subfolders (expected {folder}/<class>/*.jpg)")
    pairs = []
    for name in classes:
        class_folder = storage.join(folder, name)
        photos = [relative for relative in storage.list_files(class_folder)
                  if relative.lower().endswith(PHOTO_EXTENSIONS)
                  and not any(part.startswith(".") for part in relative.split("/"))]
        if not photos:
            raise RaycvError(f"class folder {class_folder} holds no photos ({', '.join(PHOTO_EXTENSIONS)})")
        pairs += [(storage.join(class_folder, relative), name) for relative in photos]
    return pairs


def _stratified_split(pairs: list[tuple[str, str]], val_fraction: float, seed: int) -> SplitFiles:
    """Of each class's n files, round(val_fraction * n) go to val, at least one and never all, chosen by a
    generator seeded with `seed`: every class is validated, and a rerun validates on the same files."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for file, name in pairs:
        by_class.setdefault(name, []).append(file)
    files: SplitFiles = {"train": [], "val": []}
    for name in sorted(by_class):
        members = sorted(by_class[name])
        if len(members) < 2:
            raise RaycvError(f"class {name} has a single photo ({members[0]}): splitting off validation photos "
                             "needs at least two per class; add photos, or give a val/ folder or val list")
        count = min(max(1, round(val_fraction * len(members))), len(members) - 1)
        chosen = set(rng.choice(len(members), count, replace=False).tolist())
        for index, file in enumerate(members):
            files["val" if index in chosen else "train"].append((file, name))
    return files


def photo_list_files(path: str) -> SplitFiles:
    """The list at `path` as "train" and, when its name starts with "train" and a sibling names "val" (or
    "test") in its place (train.csv beside val.csv), that sibling as "val"."""
    folder, name = path.rsplit("/", 1)
    files = {"train": _read_photo_list(path)}
    if name.lower().startswith("train"):
        for val_name in VAL_NAMES:
            sibling = storage.join(folder, val_name + name[len("train"):])
            if storage.exists(sibling):
                return {**files, "val": _read_photo_list(sibling)}
    return files


def _read_photo_list(path: str) -> list[tuple[str, str]]:
    """(file, label) per line of a CSV or JSONL list, each file checked to exist. Labels are class names:
    numbers are read as their text."""
    text = storage.read_text(path)
    rows = _jsonl_rows(path, text) if path.lower().endswith(".jsonl") else _csv_rows(path, text)
    if not rows:
        raise RaycvError(f"photo list {path} names no photos")
    folder = path.rsplit("/", 1)[0]
    entries = [(line, resolve_entry(folder, entry), label) for line, entry, label in rows]
    first_label: dict[str, tuple[int, str]] = {}
    for line, file, label in entries:
        seen_line, seen_label = first_label.setdefault(file, (line, label))
        if seen_label != label:
            raise RaycvError(f"{path} line {line}: {file} is labelled {label!r}, "
                             f"but {seen_label!r} on line {seen_line}")
    _check_listed_files_exist(path, entries)
    return [(file, label) for _, file, label in entries]


def _csv_rows(path: str, text: str) -> list[tuple[int, str, str]]:
    """(line number, path, label) of each row of a CSV list, with a path,label header or none."""
    reader = csv.reader(io.StringIO(text))
    try:
        rows = [(reader.line_num, [field.strip() for field in row]) for row in reader]
    except csv.Error as error:
        raise RaycvError(f"malformed line {reader.line_num + 1} of {path}: {error}") from None
    rows = [(line, fields) for line, fields in rows if any(fields)]
    if rows and [field.lower() for field in rows[0][1]] == ["path", "label"]:
        rows = rows[1:]
    for line, fields in rows:
        if len(fields) != 2 or not all(fields):
            raise RaycvError(f"malformed line {line} of {path}: expected two fields path,label, found "
                             f"{','.join(fields)!r}")
    return [(line, entry, label) for line, (entry, label) in rows]


def _jsonl_rows(path: str, text: str) -> list[tuple[int, str, str]]:
    """(line number, path, label) of each line of a JSONL list: {"path": ..., "label": ...}."""
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            row = None
        entry, label = (row.get("path"), row.get("label")) if isinstance(row, dict) else (None, None)
        if not (isinstance(entry, str) and entry.strip() and isinstance(label, (str, int, float))
                and not isinstance(label, bool) and str(label).strip()):
            raise RaycvError(f'malformed line {line} of {path}: expected {{"path": "...", "label": "..."}}, '
                             f"found {raw.strip()[:100]!r}")
        rows.append((line, entry.strip(), str(label).strip()))
    return rows


def resolve_entry(folder: str, entry: str) -> str:
    """A list's path as a storage path: a URI as it is, anything else relative to the list's folder."""
    if storage.is_uri(entry):
        return entry
    if not storage.is_uri(folder):
        return storage.absolute(os.path.join(folder, entry))  # an absolute entry stays itself
    scheme, inside = folder.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(inside, entry))}"


def _check_listed_files_exist(path: str, entries: list[tuple[int, str, str]]) -> None:
    """One listing per folder named rather than one request per file: lists name thousands of photos, and
    on object stores each request is a round trip."""
    listed: dict[str, set[str]] = {}
    missing = []
    for line, file, _ in entries:
        folder, name = file.rsplit("/", 1)
        if folder not in listed:
            listed[folder] = set(storage.list_dir(folder)) if storage.is_dir(folder) else set()
        if name not in listed[folder]:
            missing.append((line, file))
    if missing:
        line, file = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RaycvError(f"{path} line {line} names a missing file: {file}{more}")


def read_photo_folder(path: str, val_fraction: float = 0.1,
                      seed: int = 0) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
    """The photo folder or list at `path` (see list_photo_files) as "train" and "val" Datasets of labelled,
    still encoded photos (read_labelled_photos), and its meta: classes, source, format, files, skipped.
    The caller adds the training image size, which is its choice and not the data's."""
    files, classes = list_photo_files(path, val_fraction, seed)
    splits, report = read_labelled_photos(files, classes)
    return splits, {"classes": classes, "source": storage.absolute(path),
                    "format": "imagelist" if is_photo_list(path) else "imagefolder", **report}


def read_labelled_photos(files: SplitFiles,
                         classes: list[str]) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
    """Each split of (file, class name) pairs as rows of "image" (the file's bytes, decoded later, on the
    training workers), "label" (the class's index in `classes`, int64) and "path", without the files that no
    decoder reads; and what was read: {"files": {split: rows}, "class_counts": {split: [rows per class]},
    "skipped": {"count", "examples"}}."""
    import ray.data

    everything = sorted({file for pairs in files.values() for file, _ in pairs})
    reported = dict(zip(everything, as_ray_reports(everything), strict=True))
    unreadable = _unreadable(everything)
    skipped = [file for file in everything if reported[file] in unreadable]
    if skipped:
        logging.getLogger("raycv").warning(
            "skipping %d unreadable photo(s): %s%s", len(skipped), ", ".join(skipped[:SKIPPED_EXAMPLES]),
            ", ..." if len(skipped) > SKIPPED_EXAMPLES else "")
    index = {name: position for position, name in enumerate(classes)}
    splits, counts, class_counts = {}, {}, {}
    for split, pairs in files.items():
        kept = [(file, name) for file, name in pairs if reported[file] not in unreadable]
        if not kept:
            raise RaycvError(f"none of the {len(pairs)} {split} photos is readable, e.g. {pairs[0][0]}")
        class_counts[split] = [sum(name == wanted for _, name in kept) for wanted in classes]
        labels = {reported[file]: index[name] for file, name in kept}
        # Folders list their files class by class: training reads them in a new random order every epoch
        # (Ray Data shuffles the file list per execution, so nothing larger than a block is held for it).
        shuffle = "files" if split == "train" else None
        splits[split] = ray.data.read_binary_files([file for file, _ in kept], include_paths=True,
                                                   shuffle=shuffle).map_batches(
            _labelled_rows, fn_kwargs={"labels": labels}, batch_size=256)
        counts[split] = len(kept)
    return splits, {"files": counts, "class_counts": class_counts,
                    "skipped": {"count": len(skipped), "examples": skipped[:SKIPPED_EXAMPLES]}}


def as_ray_reports(files: list[str]) -> list[str]:
    """Each file's path as read_binary_files(include_paths=True) reports it: inside its filesystem, without
    s3:// or file://. Resolved once per folder, as resolving an S3 URI may ask the network for a region."""
    inside: dict[str, str] = {}
    reported = []
    for file in files:
        folder, name = file.rsplit("/", 1)
        if folder not in inside:
            inside[folder] = storage.resolve(folder)[1].rstrip("/")
        reported.append(f"{inside[folder]}/{name}")
    return reported


def _unreadable(files: list[str]) -> set[str]:
    """The files no decoder reads, as Ray reports their paths. The scan runs in parallel on Ray Data's
    workers; only paths and flags come back to the driver, never the bytes."""
    import ray.data

    flags = ray.data.read_binary_files(files, include_paths=True).map_batches(_readable_flags, batch_size=32)
    unreadable = set()
    for batch in flags.iter_batches(batch_size=4096, batch_format="numpy"):
        unreadable.update(str(path) for path in batch["path"][~batch["readable"]])
    return unreadable


def _readable_flags(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    readable = np.array([_is_readable(bytes(data)) for data in batch["bytes"]], dtype=bool)
    return {"path": batch["path"], "readable": readable}


def _is_readable(data: bytes) -> bool:
    """Whether decode_image reads `data`. JPEGs are decoded at 1/8 scale (Pillow's draft mode, libjpeg's DCT
    scaling), which still entropy-decodes every byte, so truncation and corruption still show, 6x faster on
    a 12 MP photo (35 ms instead of 215 ms; 9x when progressive)."""
    # images brings OpenCV: imported here, on the workers, so that listing stays light
    from raycv.data.images import UNREADABLE, decode_image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format in ("JPEG", "MPO"):  # MPO: the multi-picture JPEGs of phones and 3D cameras
                image.draft("RGB", (1, 1))
                image.load()
                return True
        decode_image(data)
    except UNREADABLE:
        return False
    return True


def _labelled_rows(batch: dict[str, np.ndarray], labels: dict[str, int]) -> dict[str, np.ndarray]:
    label = np.array([labels[str(path)] for path in batch["path"]], dtype=np.int64)
    return {"image": batch["bytes"], "label": label, "path": batch["path"]}
