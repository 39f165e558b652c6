"""Users' photo folders and lists: layouts, the seeded stratified split, the files real folders hold
(CMYK, 16-bit, alpha, EXIF-rotated, truncated), and the errors a wrong layout gives before Ray starts."""

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raycv.data.formats import read_image_folder
from raycv.data.photo_folders import list_photo_files, read_photo_folder
from raycv.data.images import decode_image
from raycv.errors import RaycvError

COLOURS = {"cats": (255, 0, 0), "dogs": (0, 0, 255), "birds": (0, 255, 0)}


def write_photo(path, colour=(128, 128, 128), size=(12, 8)):
    """A small solid-colour photo; the format follows the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return str(path)


def write_class_folders(root, counts: dict[str, int]):
    """root/<class>/<i>.jpg|.png, alternating formats; the paths written, per class."""
    return {name: [write_photo(root / name / f"{index}.{'png' if index % 2 else 'jpg'}", COLOURS[name])
                   for index in range(count)] for name, count in counts.items()}


def as_pairs(written: dict[str, list[str]]):
    return sorted((path, name) for name, paths in written.items() for path in paths)


def rows(dataset):
    """{path: label} of a split's rows, checking that each row's image is its file's bytes."""
    batch = dataset.take_batch(1000, batch_format="numpy")
    for path, image in zip(batch["path"], batch["image"], strict=True):
        assert bytes(image) == Path(path).read_bytes()
    assert batch["label"].dtype == np.int64
    return dict(zip(batch["path"].tolist(), batch["label"].tolist(), strict=True))


# -- listing: no Ray -------------------------------------------------------------------------------


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_split_folders_list_each_split_recursively(tmp_path, val_name):
    train = write_class_folders(tmp_path / "train", {"cats": 2, "dogs": 3})
    val = write_class_folders(tmp_path / val_name, {"cats": 1, "dogs": 1})
    nested = write_photo(tmp_path / "train" / "dogs" / "2024" / "summer" / "beach.JPEG")
    write_photo(tmp_path / "train" / "dogs" / ".ipynb_checkpoints" / "0-checkpoint.jpg")
    (tmp_path / "train" / "cats" / "._0.jpg").write_bytes(b"macOS resource fork")
    (tmp_path / "train" / "cats" / "notes.txt").write_text("not a photo")
    files, classes = list_photo_files(str(tmp_path))
    assert classes == ["cats", "dogs"]
    assert sorted(files["train"]) == sorted([*as_pairs(train), (nested, "dogs")])
    assert sorted(files["val"]) == as_pairs(val)


def test_a_folder_without_val_is_split_seeded_and_stratified(tmp_path):
    written = write_class_folders(tmp_path / "flat", {"cats": 10, "dogs": 20, "birds": 3})
    files, classes = list_photo_files(str(tmp_path / "flat"), val_fraction=0.2, seed=3)
    assert classes == ["birds", "cats", "dogs"]
    val_per_class = {name: sum(1 for _, label in files["val"] if label == name) for name in classes}
    assert val_per_class == {"birds": 1, "cats": 2, "dogs": 4}  # round(0.2 n), at least one
    assert sorted(files["train"] + files["val"]) == as_pairs(written)  # disjoint, and nothing lost
    assert list_photo_files(str(tmp_path / "flat"), val_fraction=0.2, seed=3) == (files, classes)
    assert list_photo_files(str(tmp_path / "flat"), val_fraction=0.2, seed=4)[0]["val"] != files["val"]
    # PATH/train/<class>/ without val/ is split the same way
    train_only = write_class_folders(tmp_path / "only" / "train", {"cats": 10, "dogs": 20, "birds": 3})
    files, _ = list_photo_files(str(tmp_path / "only"), val_fraction=0.2, seed=3)
    assert len(files["val"]) == 7 and sorted(files["train"] + files["val"]) == as_pairs(train_only)


def test_lists_csv_with_and_without_header_and_jsonl(tmp_path):
    written = write_class_folders(tmp_path / "photos", {"cats": 3, "dogs": 3})
    cats, dogs = written["cats"], written["dogs"]
    (tmp_path / "lists").mkdir()
    # relative to the list's folder, absolute, and a file:// URI; numeric labels are class names
    (tmp_path / "lists" / "train.csv").write_text(
        f"path,label\n../photos/cats/0.jpg,3\n\n{cats[1]},3\nfile://{dogs[0]},10\n../photos/dogs/1.png,10\n")
    (tmp_path / "lists" / "val.csv").write_text(f"{cats[2]},3\n{dogs[2]},10\n")  # no header
    files, classes = list_photo_files(str(tmp_path / "lists" / "train.csv"))
    assert classes == ["10", "3"]
    assert files["train"] == [(cats[0], "3"), (cats[1], "3"), (f"file://{dogs[0]}", "10"), (dogs[1], "10")]
    assert files["val"] == [(cats[2], "3"), (dogs[2], "10")]

    lines = [json.dumps({"path": f"photos/{name}/{index}.{'png' if index % 2 else 'jpg'}", "label": name})
             for name in ("cats", "dogs") for index in range(3)]
    (tmp_path / "all.jsonl").write_text("\n".join(lines) + "\n")
    files, classes = list_photo_files(str(tmp_path / "all.jsonl"), val_fraction=0.4, seed=0)  # no val list: split
    assert classes == ["cats", "dogs"] and len(files["val"]) == 2
    assert sorted(files["train"] + files["val"]) == as_pairs(written)


def setup_error_case(tmp_path, case):
    """The data of each error case, beside tmp_path/photos/{cats,dogs}/{0.jpg,1.png}; its path."""
    data = tmp_path / "data"
    if case == "one class":
        write_class_folders(data, {"cats": 2})
    elif case == "no classes":
        write_photo(data / "loose.jpg")
    elif case == "empty class":
        write_class_folders(data / "train", {"cats": 2})
        (data / "train" / "dogs").mkdir()
    elif case == "single photo":
        write_class_folders(data, {"cats": 2, "dogs": 1})
    elif case == "val without train":
        write_class_folders(data / "val", {"cats": 1, "dogs": 1})
    elif case == "unknown val class":
        write_class_folders(data / "train", {"cats": 1, "dogs": 1})
        write_class_folders(data / "val", {"cats": 1, "birds": 1})
    elif case == "missing listed file":
        data = tmp_path / "missing.csv"
        data.write_text("path,label\nphotos/cats/0.jpg,cats\nphotos/cats/7.jpg,cats\nelsewhere/1.jpg,dogs\n")
    elif case == "malformed csv":
        data = tmp_path / "bad.csv"
        data.write_text("photos/cats/1.png,cats\nphotos/cats/0.jpg\n")
    elif case == "malformed jsonl":
        data = tmp_path / "bad.jsonl"
        data.write_text('{"path": "photos/cats/0.jpg", "label": "cats"}\n{"path": "photos/cats/1.png"}\n')
    elif case == "conflicting labels":
        data = tmp_path / "conflict.csv"
        data.write_text("photos/cats/0.jpg,cats\nphotos/cats/0.jpg,dogs\nphotos/dogs/0.jpg,dogs\n")
    elif case == "a photo":
        data = tmp_path / "photos" / "cats" / "0.jpg"
    elif case == "bad val_fraction":
        data = tmp_path / "photos"
    return str(data)


@pytest.mark.parametrize("case, val_fraction, message", [
    ("missing", 0.1, r"photo data .*/data not found: expected a folder of class folders"),
    ("a photo", 0.1, r"photo data .*/photos/cats/0.jpg is neither a folder nor a .csv or .jsonl list"),
    ("one class", 0.1, r"/data has one class \(cats\): needs at least two classes"),
    ("no classes", 0.1, r"photo folder .*/data has no class subfolders"),
    ("empty class", 0.1, r"class folder .*/data/train/dogs holds no photos"),
    ("single photo", 0.1, r"class dogs has a single photo \(.*/data/dogs/0.jpg\)"),
    ("val without train", 0.1, r"/data has val/ but no train/ subfolder"),
    ("unknown val class", 0.1, r"validation classes \['birds'\] are not among the train classes \['cats', 'dogs'\]"),
    ("missing listed file", 0.1, r"missing.csv line 3 names a missing file: .*/photos/cats/7.jpg \(and 1 more\)"),
    ("malformed csv", 0.1, r"malformed line 2 of .*/bad.csv: expected two fields path,label, found 'photos/cats/0"),
    ("malformed jsonl", 0.1, r"malformed line 2 of .*/bad.jsonl: .*found '\{\"path\": \"photos/cats/1.png\"\}'"),
    ("conflicting labels", 0.1, r"conflict.csv line 2: .*/cats/0.jpg is labelled 'dogs', but 'cats' on line 1"),
    ("bad val_fraction", 0, r"invalid val_fraction=0: expected a fraction between 0 and 1"),
    ("bad val_fraction", 1.5, r"invalid val_fraction=1.5: expected a fraction between 0 and 1"),
])
def test_layout_errors_name_the_bad_value(tmp_path, case, val_fraction, message):
    write_class_folders(tmp_path / "photos", {"cats": 2, "dogs": 2})
    with pytest.raises(RaycvError, match=message):
        list_photo_files(setup_error_case(tmp_path, case), val_fraction=val_fraction)


def test_listing_imports_neither_ray_nor_torch(tmp_path):
    """The CLI lists and checks the data before it starts Ray: that must stay cheap."""
    write_class_folders(tmp_path, {"cats": 2, "dogs": 2})
    code = ("import sys; from raycv.data.photo_folders import list_photo_files; "
            f"list_photo_files({str(tmp_path)!r}); print(sorted({{'ray', 'torch'}} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_decode_image_turns_an_exif_rotated_jpeg_upright(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high: left half red, right half blue
    pixels[:, :20, 0] = 255
    pixels[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the stored left edge is the top
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    upright = decode_image(buffer.getvalue()).astype(int)
    assert upright.shape == (40, 20, 3)
    top, bottom = upright[:16].mean(axis=(0, 1)), upright[24:].mean(axis=(0, 1))  # away from the JPEG-blurred edge
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


# -- reading: Ray Data -----------------------------------------------------------------------------


def test_folders_and_lists_read_to_labelled_rows(ray_session, tmp_path):
    train = write_class_folders(tmp_path / "tree" / "train", {"cats": 3, "dogs": 2})
    val = write_class_folders(tmp_path / "tree" / "val", {"cats": 1, "dogs": 1})
    splits, meta = read_photo_folder(str(tmp_path / "tree"))
    assert meta == {"classes": ["cats", "dogs"], "source": str(tmp_path / "tree"), "format": "imagefolder",
                    "files": {"train": 5, "val": 2}, "class_counts": {"train": [3, 2], "val": [1, 1]},
                    "skipped": {"count": 0, "examples": []}}
    expected = {split: {path: ["cats", "dogs"].index(name) for path, name in as_pairs(written)}
                for split, written in (("train", train), ("val", val))}
    assert {split: rows(dataset) for split, dataset in splits.items()} == expected

    lines = [json.dumps({"path": path, "label": name}) for path, name in as_pairs(train)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines))
    (tmp_path / "val.jsonl").write_text(json.dumps({"path": f"file://{val['dogs'][0]}", "label": "dogs"}))
    splits, meta = read_photo_folder(str(tmp_path / "train.jsonl"))
    assert meta["format"] == "imagelist" and meta["files"] == {"train": 5, "val": 1}
    assert rows(splits["train"]) == expected["train"]
    assert rows(splits["val"]) == {val["dogs"][0]: 1}  # read through the URI, reported as the local path


def test_unreadable_photos_are_skipped_and_reported_once(ray_session, tmp_path, caplog):
    rng = np.random.default_rng(0)
    odd = tmp_path / "train" / "odd"
    odd.mkdir(parents=True)
    photo = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    (odd / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    photo.convert("CMYK").save(odd / "cmyk.jpg")
    photo.convert("L").save(odd / "grey.png")
    Image.fromarray(rng.integers(0, 65536, (16, 16), dtype=np.uint16)).save(odd / "deep.png")
    photo.convert("RGBA").save(odd / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(odd / "rotated.jpg", exif=exif)
    assert Image.open(odd / "deep.png").mode.startswith("I;16")  # really 16-bit
    write_class_folders(tmp_path / "train", {"cats": 2})
    write_photo(tmp_path / "val" / "odd" / "0.png")
    write_photo(tmp_path / "val" / "cats" / "0.png")
    with caplog.at_level(logging.WARNING, logger="raycv"):
        splits, meta = read_photo_folder(str(tmp_path))
    truncated = str(odd / "truncated.jpg")
    assert meta["skipped"] == {"count": 1, "examples": [truncated]}
    assert meta["files"] == {"train": 7, "val": 2}
    assert [record.getMessage() for record in caplog.records if record.name == "raycv"] == [
        f"skipping 1 unreadable photo(s): {truncated}"]
    train = splits["train"].take_batch(100, batch_format="numpy")
    assert sorted(path.rsplit("/", 1)[1] for path in train["path"]) == [
        "0.jpg", "1.png", "alpha.png", "cmyk.jpg", "deep.png", "grey.png", "rotated.jpg"]
    assert all(decode_image(bytes(data)).dtype == np.uint8 for data in train["image"])


def test_image_folder_open_set_numbers_unseen_val_classes_after_train(ray_session, tmp_path):
    write_class_folders(tmp_path / "train", {"cats": 1, "dogs": 1})
    val = write_class_folders(tmp_path / "val", {"birds": 1, "dogs": 1})
    splits, meta = read_image_folder(str(tmp_path), image_size=24, open_set=True)
    assert meta["classes"] == ["cats", "dogs"] and meta["val_classes"] == ["birds"]
    assert meta["image_size"] == [24, 24] and meta["files"] == {"train": 2, "val": 2}
    assert rows(splits["val"]) == {val["birds"][0]: 2, val["dogs"][0]: 1}
    with pytest.raises(RaycvError, match=r"val classes \['birds'\] of image folder .* not among"):
        read_image_folder(str(tmp_path))
