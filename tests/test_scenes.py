"""Composited scenes: labels that agree with the pixels, and COCO JSON in and out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from raycv.data import procedural
from raycv.data.images import decode_image, encode_png
from raycv.data.scenes import SCENE_DEFAULTS, composite_scene, decode_scenes, validate_params
from raycv.errors import RaycvError


def scenes(count: int, **params):
    params = {**SCENE_DEFAULTS, **params}
    return [composite_scene(np.random.default_rng([3, index]), params) for index in range(count)], params


def test_clutter_windows_hold_all_of_its_coverage():
    """Clutter is painted over its window only: the same stroke or disc drawn over the whole image must
    have no coverage outside that window, and the same values inside it."""
    size = 96
    for seed in range(200):
        rng = np.random.default_rng(seed)
        start, end = rng.uniform(-5, size + 5, 2), rng.uniform(-5, size + 5, 2)
        width, radius = rng.uniform(0.6, 3.0), rng.uniform(0.6, 12.0)
        reach = width / 2 + 0.5
        segment_window = procedural.covering_window(size, np.minimum(start, end) - reach,
                                                    np.maximum(start, end) + reach)
        disc_window = procedural.covering_window(size, start - radius - 0.5, start + radius + 0.5)
        for full, window, windowed in [
            (procedural.segment_alpha(size, start, end, width), segment_window,
             procedural.segment_alpha(size, start, end, width, segment_window)),
            (procedural.disc_alpha(size, start, radius), disc_window,
             procedural.disc_alpha(size, start, radius, disc_window)),
        ]:
            np.testing.assert_allclose(windowed, full[window], rtol=0, atol=1e-12)
            outside = full.copy()
            outside[window] = 0
            assert not outside.any(), f"seed {seed}: coverage outside {window}"
    (rows, cols), alpha, _ = procedural.random_clutter(np.random.default_rng(0), size)
    assert alpha.shape == (rows.stop - rows.start, cols.stop - cols.start) and alpha.max() > 0


@pytest.mark.parametrize("shape, mode", [((7, 5), "L"), ((7, 5, 3), "RGB"), ((7, 5, 4), "RGBA")])
def test_png_round_trip_keeps_every_value_and_channel_order(shape, mode):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    image[0, 0] = [255, 0, 0, 128][:shape[2]] if len(shape) == 3 else 255  # red stays red, not blue
    assert np.array_equal(decode_image(encode_png(image), mode=mode), image)


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
            assert annotation["bbox"] == [cols.min(), rows_.min(), cols.max() + 1 - cols.min(),
                                          rows_.max() + 1 - rows_.min()]
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
    for semantic, boxes, labels in zip(decoded["semantic"], decoded["boxes"], decoded["labels"], strict=False):
        for box, label in zip(boxes, labels, strict=False):
            if label < 0:
                assert (box == -1).all()
                continue
            x1, y1, x2, y2 = np.round(box).astype(int)
            inside = semantic[y1:y2, x1:x2]
            assert (inside == label + 1).mean() > 0.3  # the object's class fills much of its halved box


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
