"""Readers of standard image-dataset formats, returning splits of stored rows as Ray Datasets.

Rows have the same columns as raycv's synthesized data ("image" and "label"), so everything after
reading is shared. Images are PNG/JPEG bytes (ImageFolder) or uint8 HWC arrays (CIFAR pickles, which
store raw pixels; re-encoding them would only cost time).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import ray.data

from raycv import storage
from raycv.errors import RaycvError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
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
    """torchvision's ImageFolder layout, one tree per split: PATH/train/<class>/*.png and
    PATH/val/<class>/*.png (or test/). Class indices follow the sorted class-folder names of train.
    With `open_set`, val may hold classes train lacks (identities never seen in training, on which
    retrieval is measured): they are numbered after train's, and meta["val_classes"] names them."""
    split_dirs = {"train": "train", "val": "val" if storage.exists(storage.join(path, "val")) else "test"}
    for _, name in split_dirs.items():
        if not storage.is_dir(storage.join(path, name)):
            raise RaycvError(f"image folder {path} has no {name}/ subfolder (expected {path}/train/<class>/*.png "
                             f"and {path}/val/<class>/*.png)")
    classes = [c for c in storage.list_dir(storage.join(path, "train"))
               if storage.is_dir(storage.join(path, "train", c))]
    if not classes:
        raise RaycvError(f"image folder {path}/train has no class subfolders")
    class_index = {name: index for index, name in enumerate(classes)}
    val_classes = []
    splits = {}
    for split, name in split_dirs.items():
        files = []
        for class_name in storage.list_dir(storage.join(path, name)):
            if class_name not in class_index and open_set and storage.is_dir(storage.join(path, name, class_name)):
                class_index[class_name] = len(class_index)
                val_classes.append(class_name)
            if class_name not in class_index:
                raise RaycvError(f"class folder {path}/{name}/{class_name} is not among the train classes {classes}")
            for file in storage.list_dir(storage.join(path, name, class_name)):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(storage.join(path, name, class_name, file))
        if not files:
            raise RaycvError(f"image folder {path}/{name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        splits[split] = ray.data.read_binary_files(files, include_paths=True).map_batches(
            _label_from_parent_folder, fn_kwargs={"class_index": class_index}, batch_size=256)
    meta = {"classes": classes, "image_size": [image_size, image_size], "source": path, "format": "imagefolder"}
    return splits, {**meta, "val_classes": val_classes} if open_set else meta


def _label_from_parent_folder(batch: dict[str, np.ndarray], class_index: dict[str, int]) -> dict[str, np.ndarray]:
    labels = [class_index[str(path).rstrip("/").split("/")[-2]] for path in batch["path"]]
    return {"image": batch["bytes"], "label": np.asarray(labels, dtype=np.int64)}
