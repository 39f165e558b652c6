"""Users' detection and segmentation sets: COCO as distributed, YOLO folders and raycv's own scenes read to the same
rows; photos of any size letterboxed and answered in their own pixels; crowd regions; the results JSON; bad sets."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from raycv.data import coco, yolo
from raycv.data.images import decode_image
from raycv.data.scenes import CROWD, SCENE_DEFAULTS, composite_scene, decode_scenes
from raycv.errors import RaycvError
from raycv.synth import sample_generator
from raycv.tasks import get_task
from raycv.tasks.detect import EVAL_MIN_SCORE, SERVE_MIN_SCORE, detection_loss

from test_detect import Replay, perfect_outputs

DETECT = get_task("detect")
PARAMS = {**SCENE_DEFAULTS, "image_size": 96, "classes": "sun,star,ring", "max_objects": 3}


def scene_rows(count, seed):
    return [{"id": index, **composite_scene(sample_generator(seed, "train", index), PARAMS)} for index in range(count)]


def as_batch(rows, keys=("id", "image", "mask", "annotations")):
    return {key: np.array([row[key] for row in rows], dtype=object if key != "id" else np.int64)
            for key in keys if key in rows[0]}


def write_coco_2017(root, rows_by_split, classes, category_ids):
    """The COCO 2017 layout, with non-contiguous category ids and, for one image, a file name in a sub-folder."""
    os.makedirs(root / "annotations")
    for split, rows in rows_by_split.items():
        images, annotations = [], []
        for row in rows:
            name = f"{row['id'] + 1000:012d}.png" if row["id"] else f"nested/{row['id'] + 1000:012d}.png"
            os.makedirs((root / f"{split}2017" / name).parent, exist_ok=True)
            (root / f"{split}2017" / name).write_bytes(row["image"])
            height, width = decode_image(row["image"]).shape[:2]
            images.append({"id": row["id"] + 1000, "file_name": name, "width": width, "height": height})
            for annotation in json.loads(row["annotations"]):
                annotations.append({**annotation, "id": len(annotations) + 1, "image_id": row["id"] + 1000,
                                    "category_id": category_ids[annotation["category_id"] - 1]})
        categories = [{"id": ident, "name": name} for ident, name in zip(category_ids, classes, strict=True)]
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def write_yolo(root, rows_by_split, classes):
    for split, rows in rows_by_split.items():
        for row in rows:
            os.makedirs(root / "images" / split, exist_ok=True)
            os.makedirs(root / "labels" / split, exist_ok=True)
            (root / "images" / split / f"{row['id']}.png").write_bytes(row["image"])
            height, width = decode_image(row["image"]).shape[:2]
            objects = json.loads(row["annotations"])
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)]
            (root / "labels" / split / f"{row['id']}.txt").write_text(
                yolo.label_lines(boxes, [o["category_id"] - 1 for o in objects], (height, width)))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames: {json.dumps(classes)}\n")


def read_decoded(path, side):
    cfg = DETECT.default_config()
    DETECT.check_data(str(path), cfg)
    splits, meta = DETECT.read(str(path), cfg)
    meta = DETECT.training_meta({**meta}, cfg.replace(extra={**cfg.extra, "image_size": str(side)}))
    rows = sorted(splits["val"].take_all(), key=lambda row: row["id"])
    return decode_scenes(as_batch(rows), meta), meta


def test_coco_2017_yolo_and_raycv_layouts_read_to_the_same_rows(ray_session, tmp_path):
    rows = {"train": scene_rows(3, seed=1), "val": scene_rows(4, seed=2)}
    classes = ["sun", "star", "ring"]
    write_coco_2017(tmp_path / "coco", rows, classes, category_ids=[3, 7, 90])
    write_yolo(tmp_path / "yolo", rows, classes)
    own = decode_scenes(as_batch(rows["val"]), {**DETECT.dataset_meta(PARAMS), "image_size": [96, 96]})

    from_coco, coco_meta = read_decoded(tmp_path / "coco", 96)
    from_yolo, yolo_meta = read_decoded(tmp_path / "yolo", 96)
    assert coco_meta["classes"] == yolo_meta["classes"] == classes and coco_meta["category_ids"] == [3, 7, 90]
    assert (coco_meta["format"], yolo_meta["format"], yolo_meta["files"]) == ("coco", "yolo", {"train": 3, "val": 4})
    for read in (from_coco, from_yolo):
        assert np.array_equal(read["image"], own["image"])
        assert np.array_equal(read["labels"], own["labels"])
        np.testing.assert_allclose(read["boxes"], own["boxes"], atol=1e-3)  # YOLO keeps 6 decimals of a fraction
        assert not read["crowd"].any() and np.allclose(read["scale"], 1.0)
    assert np.array_equal(from_coco["semantic"], own["semantic"])  # COCO keeps the masks (RLE); YOLO boxes only


def write_photo(path, height, width, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def photo_set(root, boxes_by_image, crowd=()):
    """A COCO set of JPEG photos of several shapes in ROOT/images/, one split used as both train and val."""
    os.makedirs(root / "annotations")
    os.makedirs(root / "images")
    images, annotations = [], []
    for image_id, ((height, width), boxes) in enumerate(boxes_by_image, start=1):
        write_photo(root / "images" / f"{image_id}.jpg", height, width, image_id)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": width, "height": height})
        for index, (x1, y1, x2, y2, category) in enumerate(boxes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": int((image_id, index) in crowd)})
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "coin"}, {"id": 2, "name": "leaf"}]}
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return document


PHOTO_BOXES = [((300, 500), [(40, 30, 200, 150, 1), (300, 100, 480, 290, 2)]),
               ((480, 240), [(10, 300, 120, 460, 2)]),
               ((256, 256), [(64, 64, 192, 160, 1)])]


def test_letterboxed_ground_truth_maps_back_within_a_pixel_and_scores_1_in_pycocotools(ray_session, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    document = photo_set(tmp_path / "photos", PHOTO_BOXES)
    decoded, meta = read_decoded(tmp_path / "photos", 128)
    assert decoded["image"].shape == (3, 128, 128, 3)
    # The 300x500 photo: scaled by 128/500, padded below with YOLO's grey
    assert decoded["scale"][0] == pytest.approx(128 / 500) and (decoded["image"][0, 80:] == 114).all()
    batch = {key: torch.from_numpy(value) for key, value in decoded.items()}
    outputs = perfect_outputs(batch, meta, 32, 32)
    sizes = [(image["height"], image["width"]) for image in document["images"]]
    answers = DETECT.postprocess(outputs, meta, sizes, min_score=0.5)
    for answer, (_, boxes) in zip(answers, PHOTO_BOXES, strict=True):
        got = sorted((round(a["index"]), *a["box"]) for a in answer)
        want = sorted((category - 1, x1, y1, x2, y2) for x1, y1, x2, y2, category in boxes)
        np.testing.assert_allclose(np.array(got), np.array(want, dtype=float), atol=1.0)

    results = coco.results_document([image["id"] for image in document["images"]], answers, meta["category_ids"])
    (tmp_path / "results.json").write_text(json.dumps(results))
    truth = COCO(str(tmp_path / "photos" / "annotations" / "instances_val.json"))
    evaluation = COCOeval(truth, truth.loadRes(str(tmp_path / "results.json")), "bbox")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[1] == pytest.approx(1.0)  # mAP@0.5
    assert evaluation.stats[0] > 0.9  # mAP@[.5:.95]: boxes within a pixel of the truth, in the photos' pixels
    scores = DETECT.evaluate(Replay(outputs), [batch], meta)
    assert scores["map50"] == pytest.approx(1.0) and scores["map"] == pytest.approx(evaluation.stats[0], abs=0.02)


def test_crowd_regions_are_ignored_in_training_and_evaluation(ray_session, tmp_path):
    boxes = [((256, 256), [(20, 20, 100, 100, 1), (140, 140, 240, 240, 2)])]
    photo_set(tmp_path / "crowd", boxes, crowd={(1, 1)})
    decoded, meta = read_decoded(tmp_path / "crowd", 256)
    batch = {key: torch.from_numpy(value) for key, value in decoded.items()}
    assert batch["crowd"][0].tolist()[:2] == [False, True]
    assert (batch["semantic"][0, 150:230, 150:230] == CROWD).all()
    # A model that finds the object, and two objects inside the crowd region: pycocotools takes no detection on a
    # crowd region for a false positive, nor the region for a missed object...
    found = {"boxes": torch.tensor([[[20.0, 20, 100, 100], [150, 150, 190, 190], [195, 195, 235, 235]]]),
             "labels": torch.tensor([[0, 1, 1]])}
    outputs = perfect_outputs(found, meta, 64, 64)
    assert DETECT.evaluate(Replay(outputs), [batch], meta)["map"] == pytest.approx(1.0)
    not_crowd = {**batch, "crowd": torch.zeros_like(batch["crowd"])}
    assert DETECT.evaluate(Replay(outputs), [not_crowd], meta)["map"] < 0.6  # as a plain object: missed, and two FPs
    # ...and in training, the peaks on the crowd region cost nothing: the loss is that of the object alone.
    only_object = perfect_outputs({**batch, "labels": batch["labels"].masked_fill(batch["crowd"], -1)}, meta, 64, 64)
    loss = [float(detection_loss(model_outputs, batch["boxes"], batch["labels"], 2, batch["crowd"]))
            for model_outputs in (outputs, only_object)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-3, abs=1e-3)
    assert float(detection_loss(only_object, batch["boxes"], batch["labels"], 2)) > loss[1] + 5  # a missed object


@pytest.mark.parametrize("crop", [None, 32])
def test_training_views_keep_boxes_and_masks_on_their_objects(crop):
    rows = scene_rows(6, seed=3)
    meta = {**DETECT.dataset_meta(PARAMS), "image_size": [64, 64], "format": "coco",
            **({"crop_size": crop} if crop else {})}
    batch = as_batch(rows, keys=("id", "image", "annotations"))  # as users' rows: masks from the annotations
    torch.manual_seed(0)
    views = DETECT.decode_train(batch, meta)
    side = crop or 64
    assert views["image"].shape == (6, side, side, 3) and views["semantic"].shape == (6, side, side)
    kept = 0
    for semantic, boxes, labels in zip(views["semantic"], views["boxes"], views["labels"], strict=True):
        for box, label in zip(boxes, labels, strict=True):
            if label < 0:
                continue
            kept += 1
            assert 0 <= box[0] < box[2] <= side and 0 <= box[1] < box[3] <= side
            x1, y1, x2, y2 = np.floor(box).astype(int)
            assert (semantic[y1:y2 + 1, x1:x2 + 1] == label + 1).any()  # the object's pixels are inside its box
    assert kept >= 6


def test_crop_size_is_checked_against_the_image_size_and_the_set():
    cfg = DETECT.default_config()
    options = {**cfg.extra, "image_size": "64", "crop_size": "32"}
    meta = DETECT.training_meta({"classes": ["a"], "format": "coco"}, cfg.replace(extra=options))
    assert meta["image_size"] == [64, 64] and meta["crop_size"] == 32
    with pytest.raises(RaycvError, match="invalid --crop-size 96: larger than the image size 64"):
        DETECT.training_meta({"classes": ["a"], "format": "coco"}, cfg.replace(extra={**options, "crop_size": "96"}))
    with pytest.raises(RaycvError, match="--crop-size applies to COCO and YOLO sets"):
        DETECT.training_meta({"classes": ["a"], "image_size": [64, 64]}, cfg.replace(extra=options))


@pytest.mark.parametrize(("case", "expected"), [
    ("missing_image", "names image '2.jpg', which is not in"),
    ("box_outside", "box [200, 10, 100, 50] lies outside its image 1.jpg (256x256)"),
    ("unknown_category", "has category_id 5, not among the categories [1, 2]"),
    ("empty_file", "instances_train.json lists no images"),
    ("yolo_four_numbers", "labels/train/0.txt line 2: 4 numbers"),
    ("yolo_no_names", "data.yaml has no names"),
])
def test_bad_sets_are_one_line_naming_the_file_before_ray_starts(case, expected, tmp_path, monkeypatch, capsys):
    import raycv.runtime
    from raycv.cli import main

    def no_ray(**_):
        raise AssertionError("Ray was started before the bad input was found")

    monkeypatch.setattr(raycv.runtime, "init_ray", no_ray)
    root = tmp_path / "set"
    if case.startswith("yolo"):
        rows = {"train": scene_rows(1, seed=1), "val": scene_rows(1, seed=2)}
        write_yolo(root, rows, ["sun", "star", "ring"])
        if case == "yolo_four_numbers":
            label = root / "labels" / "train" / "0.txt"
            label.write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n")
        else:
            (root / "data.yaml").write_text("train: images/train\nval: images/val\n")
    else:
        document = photo_set(root, [((256, 256), [(10, 10, 60, 60, 1)]), ((128, 192), [(5, 5, 50, 50, 2)])])
        if case == "missing_image":
            (root / "images" / "2.jpg").unlink()
        elif case == "box_outside":
            document["annotations"][0]["bbox"] = [200, 10, 100, 50]
        elif case == "unknown_category":
            document["annotations"][1]["category_id"] = 5
        elif case == "empty_file":
            document = {"images": [], "annotations": [], "categories": document["categories"]}
        if case != "missing_image":
            (root / "annotations" / "instances_train.json").write_text(json.dumps(document))
    code = main(["detect", "train", "--data", str(root), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("raycv: error:"), err


def test_yolo_reader_takes_polygons_and_lists_and_refuses_unknown_classes(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n0 0.5 0.5 1.0 1.0\n")
    objects = yolo.read_labels(str(tmp_path / "labels" / "a.txt"), 2)
    assert objects[0]["category_id"] == 2 and objects[0]["bbox"] == pytest.approx([0.1, 0.1, 0.4, 0.5])
    assert objects[0]["segmentation"] == [[0.1, 0.1, 0.5, 0.1, 0.5, 0.6, 0.1, 0.6]]
    assert objects[1]["bbox"] == pytest.approx([0.0, 0.0, 1.0, 1.0]) and "segmentation" not in objects[1]
    (tmp_path / "labels" / "b.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(RaycvError, match=r"b.txt line 1: class 2 is not among the 2 names"):
        yolo.read_labels(str(tmp_path / "labels" / "b.txt"), 2)
    (tmp_path / "labels" / "c.txt").write_text("0 0.95 0.5 0.2 0.1\n")
    with pytest.raises(RaycvError, match=r"c.txt line 1: the object lies outside its image"):
        yolo.read_labels(str(tmp_path / "labels" / "c.txt"), 2)
    assert yolo.label_file("/d/images/train/x/1.jpg") == "/d/labels/train/x/1.txt"


def test_folder_predictions_as_coco_results_yolo_labels_png_masks_and_rle(ray_session, tmp_path):
    """One folder prediction with Ray Data (COCO results, which pycocotools loads against the set's own JSON); the
    other formats from the same kind of answers, written by each task's writer in this process."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from conftest import saved_checkpoint
    from raycv.inference import predict_folder

    document = photo_set(tmp_path / "photos", PHOTO_BOXES)
    folder = tmp_path / "photos" / "images"
    sizes = {1: (300, 500), 2: (480, 240), 3: (256, 256)}
    meta = {"classes": ["coin", "leaf"], "category_ids": [4, 9], "image_size": [64, 64], "max_objects": 2,
            "format": "coco"}
    models = {}
    for name in ("detect", "segment"):
        task = get_task(name)
        cfg = task.default_config().replace(width=0.25)
        models[name] = task.build_model(cfg, meta).eval()
        if name == "detect":
            with torch.no_grad():  # an untrained detector that sees objects everywhere, all below the API's threshold
                models[name].net.output.bias[:2] = -2.0
            checkpoint = saved_checkpoint(task, cfg, meta, str(tmp_path / name), models[name])
            with torch.no_grad():  # and, for the writers below, above it
                models[name].net.output.bias[:2] = 5.0
        else:
            with torch.no_grad():  # an untrained segmenter without its background prior: regions of every class
                models[name].net.output_layer.bias.zero_()

    summary = predict_folder(checkpoint, str(folder), str(tmp_path / "boxes.json"), "detect", concurrency=1,
                             batch_size=4, cpus_per_actor=0.5)
    assert summary["images"] == 3 and summary["failed"] == 0 and "COCO results format" in summary["written"]
    results = json.loads((tmp_path / "boxes.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2, 3} and {r["category_id"] for r in results} <= {4, 9}
    # A results file is for an evaluator: it keeps what eval scores, not only what the API answers.
    assert max(r["score"] for r in results) < SERVE_MIN_SCORE and min(r["score"] for r in results) >= EVAL_MIN_SCORE
    for r in results:
        x, y, w, h = r["bbox"]
        height, width = sizes[r["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
    for category in document["categories"]:
        category["id"] = {1: 4, 2: 9}[category["id"]]
    for annotation in document["annotations"]:
        annotation["category_id"] = {1: 4, 2: 9}[annotation["category_id"]]
    (tmp_path / "truth.json").write_text(json.dumps(document))
    assert len(COCO(str(tmp_path / "truth.json")).loadRes(str(tmp_path / "boxes.json")).getAnnIds()) == len(results)

    images = [decode_image((folder / f"{image_id}.jpg").read_bytes()) for image_id in sizes]

    def write(name, out):
        task = get_task(name)
        with torch.no_grad():
            answers = task.postprocess(models[name](task.preprocess(images, meta)), meta, list(sizes.values()))
        writer = task.prediction_writer(str(out), meta)
        for image_id, answer in zip(sizes, answers, strict=True):
            writer.add(f"{image_id}.jpg", sizes[image_id], answer)
        return writer.close()

    assert write("detect", tmp_path / "labels") == "3 YOLO label files"
    for image_id in sizes:
        lines = (tmp_path / "labels" / f"{image_id}.txt").read_text().splitlines()
        assert lines and all(len(line.split()) == 6 for line in lines)
        assert all(0 <= float(value) <= 1 for line in lines for value in line.split()[1:])
    assert write("segment", tmp_path / "masks/") == "3 PNG masks"
    for image_id, size in sizes.items():
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{image_id}.png"))
        assert mask.shape == size and mask.max() <= 2
    assert "COCO results format (RLE)" in write("segment", tmp_path / "regions.json")
    regions = json.loads((tmp_path / "regions.json").read_text())
    assert regions and {r["category_id"] for r in regions} <= {4, 9}
    for region in regions:
        decoded = mask_utils.decode({**region["segmentation"], "counts": region["segmentation"]["counts"].encode()})
        assert decoded.shape == sizes[region["image_id"]] and decoded.any()
    assert get_task("segment").prediction_writer(str(tmp_path / "masks.csv"), meta) is None  # the generic writers'


@pytest.mark.parametrize(("task_name", "model_name"), [("detect", "torchvision.resnet18"),
                                                       ("detect", "torchvision.mobilenet_v3_large"),
                                                       ("segment", "unet_torchvision.resnet18")])
def test_torchvision_backbones_take_their_classification_weights_and_train(task_name, model_name, tmp_path):
    import torchvision

    from raycv.checkpoint import load_pretrained, read_pretrained
    from raycv.models.zoo import BACKBONE_STAGES
    from raycv.tasks.cards import SCENE_BACKBONES

    assert set(SCENE_BACKBONES) == set(BACKBONE_STAGES)  # the card lists what the models module builds
    task = get_task(task_name)
    rows = scene_rows(4, seed=4)
    meta = {**task.dataset_meta(PARAMS), "image_size": [64, 64]}
    batch = {key: torch.from_numpy(value) for key, value in decode_scenes(as_batch(rows), meta).items()}
    cfg = task.default_config().replace(model=model_name)
    model = task.build_model(cfg, meta)
    classifier = torchvision.models.get_model(model_name.split("torchvision.")[1], weights=None, num_classes=7)
    torch.save(classifier.state_dict(), tmp_path / "weights.pth")
    fresh = load_pretrained(model, read_pretrained(str(tmp_path / "weights.pth")), None, "weights.pth")
    backbone = model.net.backbone if task_name == "detect" else model.net.encoder
    loaded = backbone.body.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in classifier.state_dict().items() if key in loaded)
    assert len(loaded) == len([key for key in classifier.state_dict() if key.split(".")[0] not in ("fc", "classifier")])
    assert fresh == []
    # A raycv classifier's checkpoint holds the network under `net.`, beside its input normalisation.
    wrapped = {"mean": torch.zeros(3), "std": torch.ones(3),
               **{f"net.{key}": value + 1 for key, value in classifier.state_dict().items()}}
    torch.save(wrapped, tmp_path / "raycv_classifier.pt")
    load_pretrained(model, read_pretrained(str(tmp_path / "raycv_classifier.pt")), None, "raycv_classifier.pt")
    loaded = backbone.body.state_dict()
    assert all(torch.equal(loaded[key], value + 1) for key, value in classifier.state_dict().items() if key in loaded)
    losses = []
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(4):
        loss = task.loss(model, batch, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_a_detectors_checkpoint_seeds_the_pyramid_segmenter(tmp_path):
    from raycv.checkpoint import load_pretrained, read_pretrained

    meta = {**DETECT.dataset_meta(PARAMS), "image_size": [64, 64]}
    detector = DETECT.build_model(DETECT.default_config().replace(model="resnet18", width=0.25), meta)
    torch.save(detector.state_dict(), tmp_path / "detector.pt")
    segment = get_task("segment")
    segmenter = segment.build_model(segment.default_config().replace(model="fpn_resnet18", width=0.25), meta)
    fresh = load_pretrained(segmenter, read_pretrained(str(tmp_path / "detector.pt")), segment.head(segmenter, meta),
                            "detector.pt")
    body = segmenter.state_dict()
    shared = [key for key in detector.state_dict() if key in body]
    assert len(shared) > 50 and all(torch.equal(body[key], detector.state_dict()[key]) for key in shared)
    assert fresh and all(key.startswith("net.head.") for key in fresh)
    # The detection heads are left out; a layer that is neither the model's nor a known head is still an error.
    torch.save({**detector.state_dict(), "net.extra.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(RaycvError, match="has layers the model lacks, e.g. net.extra.weight"):
        load_pretrained(segmenter, read_pretrained(str(tmp_path / "other.pt")), "net.head", "other.pt")


def test_coin_photo_set_is_a_coco_set_pycocotools_reads_whole(tmp_path):
    """jobs/coco_photos.py's set: pycocotools keys annotations by id, so ids must be unique across the
    split, or it keeps one object per image and scores perfect detections far below 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from raycv.data.coin_scenes import write_coin_scenes

    summary = write_coin_scenes(str(tmp_path / "coins"), {"val": 4}, seed=3)
    annotations = str(tmp_path / "coins" / "annotations" / "instances_val2017.json")
    truth = COCO(annotations)
    assert len(truth.anns) == summary["objects"]["val"] > 4  # more objects than images
    results = truth.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                              "score": 1.0} for a in truth.dataset["annotations"]])
    evaluation = COCOeval(truth, results, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
