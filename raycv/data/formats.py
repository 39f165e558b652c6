"""Readers of standard image-dataset formats, returning splits of stored rows as Ray Datasets.

Rows have the same columns as raycv's synthesized data ("image" and "label"; ImageFolder adds "path"),
so everything after reading is shared. Images are PNG/JPEG bytes (ImageFolder) or uint8 HWC arrays
(CIFAR pickles, which store raw pixels; re-encoding them would only cost time).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import ray.data

from raycv import storage
from raycv.data import photo_folders
from raycv.errors import RaycvError

IMAGE_EXTENSIONS = photo_folders.PHOTO_EXTENSIONS
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"


def image_files(folder: str, option: str) -> list[str]:
    """The image files directly in a local `folder`, sorted; `option` names the setting in errors."""
    import os

    if not os.path.isdir(folder):
        raise RaycvError(f"{option} {folder} is not a folder")
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise RaycvError(f"{option} {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles, and unpickling runs whatever code a file names. This unpickler
    only builds plain containers and numpy arrays, so a hostile or damaged file cannot run code."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: str) -> dict:
    fs, inner = storage.resolve(path)
    with fs.open_input_stream(inner) as stream:
        data = stream.read()
    try:
        content = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # any failure to parse means the same thing to the user
        raise RaycvError(f"corrupt CIFAR batch file {path}: {type(error).__name__}: {error}") from None
    if not isinstance(content, dict):
        raise RaycvError(f"corrupt CIFAR batch file {path}: expected a dict, found {type(content).__name__}")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()}


def _cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    content = _load_pickle(path)
    try:
        pixels = np.asarray(content["data"], dtype=np.uint8)
        labels = np.asarray(content["labels"], dtype=np.int64)
        images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError) as error:
        raise RaycvError(f"corrupt CIFAR batch file {path}: {type(error).__name__}: {error}") from None
    if len(images) != len(labels):
        raise RaycvError(f"corrupt CIFAR batch file {path}: {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def is_cifar10(path: str) -> bool:
    return storage.exists(storage.join(path, CIFAR10_TEST)) or storage.exists(storage.join(path, CIFAR10_TRAIN[0]))


def read_cifar10(path: str) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
    """The "CIFAR-10 python version" folder: data_batch_1..5 (train), test_batch (val), batches.meta."""
    meta_path = storage.join(path, "batches.meta")
    classes = ([name.decode() for name in _load_pickle(meta_path)["label_names"]]
               if storage.exists(meta_path) else [str(i) for i in range(10)])
    split_files = {"train": [f for f in CIFAR10_TRAIN if storage.exists(storage.join(path, f))],
                   "val": [CIFAR10_TEST] if storage.exists(storage.join(path, CIFAR10_TEST)) else []}
    splits = {}
    for split, files in split_files.items():
        if not files:
            raise RaycvError(f"CIFAR-10 folder {path} has no {split} batch files "
                             f"(expected {', '.join(CIFAR10_TRAIN) if split == 'train' else CIFAR10_TEST})")
        images, labels = zip(*(_cifar_batch(storage.join(path, f)) for f in files), strict=False)
        images, labels = np.concatenate(images), np.concatenate(labels)
        if labels.min() < 0 or labels.max() >= len(classes):
            raise RaycvError(f"CIFAR-10 folder {path}: labels outside 0..{len(classes) - 1}")
        splits[split] = ray.data.from_numpy(images).zip(ray.data.from_numpy(labels)).rename_columns(
            {"data": "image", "data_1": "label"})
    return splits, {"classes": classes, "image_size": [32, 32], "source": path, "format": "cifar10"}


def read_image_folder(path: str, image_size: int = 32,
                      open_set: bool = False) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
    """torchvision's ImageFolder layout, one tree per split: PATH/train/<class>/ and PATH/val/<class>/ (or
    test/), photos at any depth; unreadable ones are skipped and counted (photo_folders). Class indices
    follow the sorted class-folder names of train. With `open_set`, val may hold classes train lacks
    (identities never seen in training, on which retrieval is measured): they are numbered after train's,
    and meta["val_classes"] names them."""
    path = storage.absolute(path)
    files = photo_folders.image_folder_files(path) if storage.is_dir(storage.join(path, "train")) else {}
    for split, folder in (("train", "train/"), ("val", "val/ or test/")):
        if split not in files:
            raise RaycvError(f"image folder {path} has no {folder} subfolder (expected {path}/train/<class>/*.png "
                             f"and {path}/val/<class>/*.png)")
    classes = sorted({name for _, name in files["train"]})
    val_classes = sorted({name for _, name in files["val"]} - set(classes))
    if val_classes and not open_set:
        raise RaycvError(f"val classes {val_classes} of image folder {path} are not among the train classes {classes}")
    splits, report = photo_folders.read_labelled_photos(files, classes + val_classes)
    meta = {"classes": classes, "image_size": [image_size, image_size], "source": path, "format": "imagefolder",
            **report}
    return splits, {**meta, "val_classes": val_classes} if open_set else meta
