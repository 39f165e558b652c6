"""The real-photo crop set: seeded to the byte, the counts asked for, and validation crops only from the
held-out quadrant (training crops never touching it). No Ray."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from raycv.data.photo_crops import (CROPS_CSV, OUTPUT_LONG_SIDE, Box, crop_box, held_out_box, photo_crop,
                                    write_photo_crops)
from raycv.errors import RaycvError

CLASSES = ("cat", "coins", "coffee")  # the smallest photos: quick to load and to crop


def written_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_same_bytes_and_the_counts_asked_for(tmp_path):
    summaries = [write_photo_crops(str(tmp_path / name), CLASSES, 3, 2, seed)
                 for name, seed in (("first", 5), ("again", 5), ("other", 6))]
    first, again, other = (written_files(tmp_path / name) for name in ("first", "again", "other"))
    assert first == again
    assert first.keys() == other.keys() and first != other
    assert summaries[0]["train"] == 9 and summaries[0]["val"] == 6
    for split, per_class in (("train", 3), ("val", 2)):
        for name in CLASSES:
            assert len(list((tmp_path / "first" / split / name).glob("*.jpg"))) == per_class
    assert not list(tmp_path.glob("*.partial-*"))


def test_val_crops_only_from_the_held_out_quadrant():
    rng = np.random.default_rng(0)
    for height, width in ((300, 451), (303, 384), (512, 512), (427, 640), (1411, 1411), (7, 5)):
        held_out, photo = held_out_box(height, width), Box(0, 0, height, width)
        for _ in range(300):
            val, train = crop_box(height, width, "val", rng), crop_box(height, width, "train", rng)
            assert val.inside(held_out)
            assert train.inside(photo) and not train.overlaps(held_out)


def test_written_boxes_respect_the_split(tmp_path):
    write_photo_crops(str(tmp_path / "set"), CLASSES, 4, 3, seed=0)
    with open(tmp_path / "set" / CROPS_CSV) as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 3 * (4 + 3)
    from raycv.data.photos import real_photos

    shapes = {name: photo.shape[:2] for name, photo in real_photos(CLASSES).items()}
    for row in rows:
        box = Box(*(int(row[key]) for key in Box._fields))
        held_out = held_out_box(*shapes[row["photo"]])
        assert box.inside(held_out) if row["split"] == "val" else not box.overlaps(held_out)
        assert row["path"].startswith(f"{row['split']}/{row['photo']}/")


def test_crops_are_camera_sized_rgb():
    photo = np.random.default_rng(1).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    for seed in range(20):
        pixels, box = photo_crop(photo, "train", np.random.default_rng(seed))
        assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
        assert OUTPUT_LONG_SIDE[0] <= max(pixels.shape[:2]) <= OUTPUT_LONG_SIDE[1]
        assert 0.6 < min(pixels.shape[:2]) / max(pixels.shape[:2]) < 0.85  # 3:2 to 5:4, rounding allowed


def test_bad_requests_name_the_problem(tmp_path):
    with pytest.raises(RaycvError, match="unknown photo"):
        write_photo_crops(str(tmp_path / "a"), ("cat", "dog"), 1, 1, 0)
    with pytest.raises(RaycvError, match="distinct"):
        write_photo_crops(str(tmp_path / "b"), ("cat", "cat"), 1, 1, 0)
    (tmp_path / "taken").mkdir()
    with pytest.raises(RaycvError, match="already exists"):
        write_photo_crops(str(tmp_path / "taken"), CLASSES, 1, 1, 0)
