"""The detect task: its COCO output, its box coding, a few training steps, serving answers, bad input."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.ops import box_iou

from raycv.config import TrainConfig
from raycv.data.scenes import SCENE_DEFAULTS, composite_scene, mask_box
from raycv.synth import sample_generator, synthesize
from raycv.errors import RaycvError
from raycv.tasks import get_task
from raycv.tasks.detect import DISTANCE_SCALE, decode_detections, draw_detections, encode_targets

TASK = get_task("detect")


def scenes(count, seed=0, **params):
    """Decoded scenes made in this process (no Ray), as tensors, and their dataset meta."""
    params = {**SCENE_DEFAULTS, **params}
    meta = TASK.dataset_meta(params)
    rows = [composite_scene(sample_generator(seed, "train", index), params) for index in range(count)]
    stored = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    return {key: torch.from_numpy(value) for key, value in TASK.decode(stored, meta).items()}, meta


def perfect_outputs(batch, meta, height, width):
    """What a perfect model would output: the encoded targets, heatmaps as logits, distances as the
    model's raw log-scale values."""
    targets = encode_targets(batch["boxes"], batch["labels"], len(meta["classes"]), height, width)
    return torch.cat([torch.logit(targets.heatmap.clamp(1e-6, 1 - 1e-6)),
                      torch.log(targets.distances.clamp(min=1e-3) / DISTANCE_SCALE)], dim=1)


class Replay(nn.Module):
    """A 'model' that answers with fixed outputs, whatever the input."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs
        self.device_marker = nn.Parameter(torch.zeros(0), requires_grad=False)  # evaluate() reads the device

    def forward(self, images):
        return self.outputs


def test_coco_json_loads_and_ground_truth_scores_map_1(ray_session, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = tmp_path / "scenes"
    manifest = synthesize(TASK, str(path), {"train": 32, "val": 16}, seed=11, params={"classes": "sun,star,ring"})
    assert manifest["meta"]["classes"] == ["sun", "star", "ring"]
    for split, count in (("train", 32), ("val", 16)):
        truth = COCO(str(path / "annotations" / f"{split}.json"))
        assert len(truth.getImgIds()) == count and [c["name"] for c in truth.loadCats(truth.getCatIds())] == [
            "sun", "star", "ring"]
        detections = truth.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                                     "score": 1.0} for a in truth.dataset["annotations"]])
        evaluation = COCOeval(truth, detections, "bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0) and evaluation.stats[1] == pytest.approx(1.0)


def test_target_encoding_decodes_back_to_the_boxes():
    # Overlapping objects and up to 6 per image: cells claimed by two objects must still decode right.
    batch, meta = scenes(24, seed=3, classes="sun,star,ring", overlap=True, max_objects=6)
    size = meta["image_size"][0]
    outputs = perfect_outputs(batch, meta, size // 4, size // 4)
    for detections, boxes, labels in zip(decode_detections(outputs, 3, min_score=0.5), batch["boxes"], batch["labels"],
                                         strict=False):
        truth = boxes[labels >= 0]
        assert len(detections.boxes) == len(truth)
        overlap = box_iou(truth, detections.boxes)
        best = overlap.argmax(dim=1)
        assert overlap.max(dim=1).values.min() > 0.95
        assert torch.equal(detections.labels[best], labels[labels >= 0])
    # The same outputs through evaluate(): every box found, at every IoU threshold.
    metrics = TASK.evaluate(Replay(outputs), [batch], meta)
    assert metrics["map50"] == pytest.approx(1.0) and metrics["map"] > 0.95


def test_augment_flips_images_and_boxes_together():
    batch, meta = scenes(16, seed=4, max_objects=1)  # one object: its box is its mask's box
    torch.manual_seed(0)
    flipped = TASK.augment(batch, TrainConfig())
    original = batch["image"].permute(0, 3, 1, 2).float() / 255
    was_flipped = [not torch.equal(flipped["image"][i], original[i]) for i in range(16)]
    assert 3 <= sum(was_flipped) <= 13
    for index in range(16):
        assert torch.equal(flipped["image"][index], original[index].flip(-1) if was_flipped[index] else original[index])
        x, y, w, h = mask_box(flipped["semantic"][index].numpy() > 0)
        assert flipped["boxes"][index, 0].tolist() == [x, y, x + w, y + h]


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    batch, meta = scenes(8, seed=5, image_size=64, classes="star,ring")
    cfg = TASK.default_config().replace(model="resnet10", width=0.25)
    model = TASK.build_model(cfg, meta)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = TASK.loss(model, TASK.augment(batch, cfg), cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_postprocess_answers_in_the_original_pixels():
    meta = {"classes": ["sun", "star"], "image_size": [128, 128], "max_objects": 3}
    batch = {"boxes": torch.tensor([[[20.0, 10.0, 60.0, 50.0], [-1, -1, -1, -1]]]), "labels": torch.tensor([[1, -1]])}
    outputs = perfect_outputs(batch, meta, 32, 32)
    # The request image was 256 high and 512 wide; the model saw it letterboxed into 128 x 128 (scaled by 1/4).
    [answer] = TASK.postprocess(outputs, meta, [(256, 512)])
    assert len(answer) == 1
    assert answer[0]["class"] == "star" and answer[0]["index"] == 1 and answer[0]["score"] > 0.99
    assert answer[0]["box"] == pytest.approx([80.0, 40.0, 240.0, 200.0], abs=0.01)
    json.dumps(answer)  # JSON-able as served
    image = np.zeros((256, 512, 3), dtype=np.uint8)
    drawn = draw_detections(image, answer)
    assert drawn.shape == image.shape and drawn[40, 80:240].any() and not drawn[220:, 300:].any()
    # preprocess gives the model its input size whatever the request size
    assert TASK.preprocess([image, image[:100]], meta).shape == (2, 3, 128, 128)


def test_bad_input_is_named(tmp_path):
    star = tmp_path / "objects" / "star"
    star.mkdir(parents=True)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(star / "flat.png")
    with pytest.raises(RaycvError, match=f"cut-out {star / 'flat.png'} has no alpha"):
        TASK.dataset_meta({**SCENE_DEFAULTS, "objects_dir": str(tmp_path / "objects")})

    (tmp_path / "backgrounds").mkdir()
    with pytest.raises(RaycvError, match=f"backgrounds_dir {tmp_path / 'backgrounds'} holds no images"):
        TASK.dataset_meta({**SCENE_DEFAULTS, "backgrounds_dir": str(tmp_path / "backgrounds")})

    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "images").mkdir()
    Image.new("RGB", (64, 48)).save(coco / "images" / "present.png")
    for split, name in (("train", "present.png"), ("val", "missing.png")):
        document = {"images": [{"id": 1, "file_name": name, "width": 64, "height": 48}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 10]}],
                    "categories": [{"id": 7, "name": "thing"}]}
        (coco / "annotations" / f"{split}.json").write_text(json.dumps(document))
    with pytest.raises(RaycvError, match=f"{os.path.join(coco, 'annotations', 'val.json')} names image 'missing.png'"):
        TASK.read(str(coco), TASK.default_config())

    with pytest.raises(RaycvError, match="unknown model 'yolo'.*resnet18"):
        TASK.build_model(TASK.default_config().replace(model="yolo"), {"classes": ["a"], "image_size": [128, 128]})
