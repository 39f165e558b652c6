"""Composited scenes: labels that agree with the pixels, and COCO JSON in and out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from raycv.data import coco
from raycv.data.images import decode_image
from raycv.data.scenes import SCENE_DEFAULTS, composite_scene, decode_scenes, validate_params
from raycv.errors import RaycvError


def scenes(count: int, **params):
    params = {**SCENE_DEFAULTS, **params}
    return [composite_scene(np.random.default_rng([3, index]), params) for index in range(count)], params


def test_masks_boxes_and_rle_agree_with_each_other():
    from pycocotools import mask as mask_utils

    rows, params = scenes(12, overlap=True, max_objects=5, min_visible=0.6)
    for row in rows:
        instances = decode_image(row["mask"], mode="L")
        annotations = json.loads(row["annotations"])
        assert 1 <= len(annotations) <= 5 and instances.max() == len(annotations)
        for index, annotation in enumerate(annotations):
            visible = instances == index + 1
            rle = {**annotation["segmentation"], "counts": annotation["segmentation"]["counts"].encode()}
            assert np.array_equal(mask_utils.decode(rle).astype(bool), visible)
            rows_, cols = np.nonzero(visible)
            assert annotation["bbox"] == [cols.min(), rows_.min(), cols.max() + 1 - cols.min(), rows_.max() + 1 - rows_.min()]
            assert annotation["area"] == visible.sum() and 1 <= annotation["category_id"] <= 4


def test_without_overlap_boxes_are_disjoint_and_same_seed_same_bytes():
    rows, params = scenes(12, max_objects=4)
    for row in rows:
        boxes = [a["bbox"] for a in json.loads(row["annotations"])]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
    again, _ = scenes(12, max_objects=4)
    assert rows == again


def test_decode_resizes_images_masks_and_boxes_together():
    rows, params = scenes(4)
    meta = validate_params({**params, "image_size": 128})
    batch = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    decoded = decode_scenes(batch, {**meta, "image_size": [64, 64]})
    assert decoded["image"].shape == (4, 64, 64, 3) and decoded["semantic"].shape == (4, 64, 64)
    for semantic, boxes, labels in zip(decoded["semantic"], decoded["boxes"], decoded["labels"]):
        for box, label in zip(boxes, labels):
            if label < 0:
                assert (box == -1).all()
                continue
            x1, y1, x2, y2 = np.round(box).astype(int)
            inside = semantic[y1:y2, x1:x2]
            assert (inside == label + 1).mean() > 0.3  # the object's class fills much of its halved box


def test_coco_on_disk_reads_back_as_the_same_rows(ray_session, tmp_path):
    rows, params = scenes(6)
    meta = validate_params(params)
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        document = coco.coco_document([{"id": i, **row} for i, row in enumerate(rows)], meta["classes"], meta["image_size"])
        for image in document["images"]:
            (tmp_path / split / image["file_name"]).write_bytes(rows[image["id"]]["image"])
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"{split}.json").write_text(json.dumps(document))
    splits, read_meta = coco.read_coco(str(tmp_path))
    assert read_meta["classes"] == meta["classes"] and read_meta["image_size"] == [128, 128]
    read_rows = sorted(splits["val"].take_all(), key=lambda row: row["id"])
    for original, read in zip(rows, read_rows):
        assert np.array_equal(decode_image(read["mask"], mode="L"), decode_image(original["mask"], mode="L"))
        assert decode_image(read["image"]).tobytes() == decode_image(original["image"]).tobytes()

    (tmp_path / "val" / "00000003.png").unlink()
    with pytest.raises(RaycvError, match="names image '00000003.png'"):
        coco.read_coco(str(tmp_path))


def test_bad_scene_folders_are_named(tmp_path):
    (tmp_path / "objects" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "objects" / "cat" / "flat.png")
    with pytest.raises(RaycvError, match="flat.png has no alpha channel"):
        validate_params({**SCENE_DEFAULTS, "objects_dir": str(tmp_path / "objects")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaycvError, match="backgrounds_dir .*empty holds no images"):
        validate_params({**SCENE_DEFAULTS, "backgrounds_dir": str(tmp_path / "empty")})
    with pytest.raises(RaycvError, match="invalid classes='dog'"):
        validate_params({**SCENE_DEFAULTS, "classes": "dog"})


def test_cutouts_and_photo_backgrounds_are_composited(tmp_path):
    (tmp_path / "objects" / "disc").mkdir(parents=True)
    (tmp_path / "backgrounds").mkdir()
    sprite = np.zeros((40, 40, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:40, :40]
    sprite[(yy - 20) ** 2 + (xx - 20) ** 2 < 18 ** 2] = (255, 0, 0, 255)
    Image.fromarray(sprite).save(tmp_path / "objects" / "disc" / "disc.png")
    Image.fromarray(np.full((200, 300, 3), (0, 0, 255), dtype=np.uint8)).save(tmp_path / "backgrounds" / "blue.jpg")
    rows, params = scenes(3, objects_dir=str(tmp_path / "objects"), backgrounds_dir=str(tmp_path / "backgrounds"),
                          noise=0.0)
    assert validate_params(params)["classes"] == ["disc"]
    for row in rows:
        image, instances = decode_image(row["image"]), decode_image(row["mask"], mode="L")
        assert (image[instances > 0][:, 0] > 120).all()  # red where the masks say
        assert (image[instances == 0][:, 2] > 120).all()  # blue photo elsewhere
