"""Readers of real formats, on small files written here in exactly those formats."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from raycv.synth import open_dataset
from raycv.errors import RaycvError
from raycv.tasks import get_task

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar_batch(path, images, labels):
    """The CIFAR-10 python layout: a pickled dict with bytes keys, rows of 3072 = 3 x 32 x 32 (CHW)."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as file:
        pickle.dump({b"batch_label": b"batch", b"labels": list(map(int, labels)), b"data": data,
                     b"filenames": [f"{i}.png".encode() for i in range(len(images))]}, file, protocol=2)


@pytest.fixture()
def cifar_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 50)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for index in range(1, 6):
        write_cifar_batch(root / f"data_batch_{index}", images[(index - 1) * 8:index * 8],
                          labels[(index - 1) * 8:index * 8])
    write_cifar_batch(root / "test_batch", images[40:], labels[40:])
    with open(root / "batches.meta", "wb") as file:
        pickle.dump({b"label_names": [name.encode() for name in CLASSES], b"num_cases_per_batch": 8}, file)
    return root, images, labels


def test_cifar10_pickles_round_trip(ray_session, cifar_folder):
    root, images, labels = cifar_folder
    task = get_task("classify")
    splits, meta = open_dataset(task, str(root))
    assert meta["classes"] == CLASSES and meta["format"] == "cifar10"
    train = task.decode(splits["train"].take_batch(100), meta)
    val = task.decode(splits["val"].take_batch(100), meta)
    assert train["image"].shape == (40, 32, 32, 3) and val["image"].shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(train["image"], images[:40])  # pixel-exact, HWC order restored
    np.testing.assert_array_equal(val["label"], labels[40:])


def test_corrupt_and_hostile_cifar_batches_are_refused(ray_session, cifar_folder):
    root, _, _ = cifar_folder
    task = get_task("classify")
    original = (root / "data_batch_3").read_bytes()
    (root / "data_batch_3").write_bytes(original[: len(original) // 2])
    with pytest.raises(RaycvError, match="corrupt CIFAR batch file .*data_batch_3"):
        open_dataset(task, str(root))

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": RunsCode(), b"labels": []}))
    with pytest.raises(RaycvError, match="refusing to load"):
        open_dataset(task, str(root))


def test_image_folder_tree(ray_session, tmp_path):
    rng = np.random.default_rng(1)
    for split, per_class in (("train", 3), ("val", 2)):
        for class_name in ("cats", "dogs"):
            folder = tmp_path / "tree" / split / class_name
            folder.mkdir(parents=True)
            for index in range(per_class):
                # other sizes and formats than the model's: the reader resizes to 32x32
                image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(image).save(folder / f"{index}.{'png' if index % 2 else 'jpg'}")
    (tmp_path / "tree" / "train" / "cats" / "notes.txt").write_text("not an image")
    task = get_task("classify")
    splits, meta = open_dataset(task, str(tmp_path / "tree"))
    assert meta["classes"] == ["cats", "dogs"]
    meta = task.training_meta(meta, task.default_config())  # the book's network: 32 px
    train = task.decode(splits["train"].take_batch(100), meta)
    assert train["image"].shape == (6, 32, 32, 3)
    assert sorted(train["label"].tolist()) == [0, 0, 0, 1, 1, 1]
    assert splits["val"].count() == 4


def test_image_folder_errors(ray_session, tmp_path):
    task = get_task("classify")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(RaycvError, match="has no class subfolders"):
        open_dataset(task, str(tmp_path / "empty"))
    (tmp_path / "nosplit").mkdir()
    with pytest.raises(RaycvError, match="nosplit has no class subfolders"):
        open_dataset(task, str(tmp_path / "nosplit"))
