"""Object detection on composited scenes (textbook chapter 5), COCO in and out.

The book regresses boxes from a 3x3 grid head on ResNet-18 and prunes them with a hand-written NMS.
raycv trains a dense anchor-free detector in the style of CenterNet / TTFNet (raycv/models/detection.py):

- targets: per class, a Gaussian heatmap peaking (1.0) at the stride-4 cell holding each box centre;
  box regression at every cell of a smaller Gaussian area around the centre, the target being the
  distances from the cell centre to the four box edges, so many cells per object learn the box;
- loss: CenterNet's penalty-reduced focal loss on the heatmaps, plus GIoU loss on the boxes decoded at
  those cells, weighted by the Gaussian (cells near the centre count most);
- decoding: heatmap peaks (3x3 max), top-k over classes and cells, the box read at the peak's cell,
  then class-wise NMS (torchvision.ops.batched_nms);
- metrics: COCO mAP@0.5 and mAP@[.5:.95] (torchmetrics, pycocotools backend).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar
from collections.abc import Iterable

import numpy as np
import torch
import torchmetrics
from PIL import Image, ImageDraw
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss

from raycv import storage
from raycv.config import TrainConfig
from raycv.data import coco, yolo
from raycv.data.annotated import letterbox_scale
from raycv.data.images import CIFAR_MEAN, CIFAR_STD, to_model_input
from raycv.data.scenes import SceneData, category_ids, output_kind
from raycv.errors import RaycvError
from raycv.models.common import Normalized
from raycv.models.detection import OUTPUT_STRIDE, CenterDetector
from raycv.models.zoo import BACKBONE_STAGES, IMAGENET_MEAN, IMAGENET_STD, ZOO_PREFIX, ZooBackbone
from raycv.tasks.base import PredictionWriter, Task
from raycv.tasks.cards import CARDS

# raycv's CIFAR-style ResNets by their blocks per stage (scaled by --width), then torchvision's backbones (None).
MODELS = {
    "resnet18": (2, 2, 2, 2),
    "resnet10": (1, 1, 1, 1),
    **{f"{ZOO_PREFIX}{name}": None for name in BACKBONE_STAGES},
}
# Gaussian radii as a share of the box (TTFNet's alpha and beta): the heatmap's spread, and the area
# around the centre whose cells regress the box.
HEATMAP_ALPHA = 0.54
REGRESSION_BETA = 0.54
GIOU_WEIGHT = 5.0  # TTFNet's balance of the box loss against the heatmap focal loss
TOP_K = 100  # detections kept per image before NMS (COCO scores at most 100 per image)
NMS_IOU = 0.5
EVAL_MIN_SCORE = 0.01  # mAP integrates over all scores: keep low-confidence detections
SERVE_MIN_SCORE = 0.3  # what a caller of the API sees
# Box distances are exp(raw) * DISTANCE_SCALE pixels: a raw output of 0 is a mid-sized half-extent, so
# the head starts in the right range. exp, not TTFNet's relu: a relu unit pushed negative gets no
# gradient and its distances stay 0 for good (measured: half the cells died, mAP stayed near 0).
DISTANCE_SCALE = 16.0
MAX_LOG_DISTANCE = 6.0  # exp(6) * 16 = 6455 px: no overflow from a wild early step


@dataclass
class Targets:
    heatmap: torch.Tensor  # (B, C, h, w) in [0, 1], 1.0 exactly at object centres
    distances: torch.Tensor  # (B, 4, h, w): left, top, right, bottom from each cell centre, pixels
    box_weight: torch.Tensor  # (B, h, w): each object's cells sum to 1; 0 off objects
    object_count: torch.Tensor  # scalar: valid boxes in the batch


def cell_centers(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (x, y) of the stride-4 cells' centres: cell j spans [4j, 4j + 4)."""
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * OUTPUT_STRIDE
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * OUTPUT_STRIDE
    return xs, ys


def encode_targets(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, height: int, width: int) -> Targets:
    """Training targets on an (height, width) stride-4 grid for boxes (B, M, 4) xyxy pixels and labels
    (B, M), both padded with -1. Batched over images and boxes: no Python loop per object."""
    device = boxes.device
    valid = labels >= 0
    boxes = boxes.float()
    xs, ys = cell_centers(height, width, device)
    box_w = (boxes[..., 2] - boxes[..., 0]).clamp(min=1.0)
    box_h = (boxes[..., 3] - boxes[..., 1]).clamp(min=1.0)
    # The cell holding the box centre; the Gaussians peak there, so its heatmap value is exactly 1.
    center_col = ((boxes[..., 0] + boxes[..., 2]) / 2 / OUTPUT_STRIDE).floor().clamp(0, width - 1)
    center_row = ((boxes[..., 1] + boxes[..., 3]) / 2 / OUTPUT_STRIDE).floor().clamp(0, height - 1)
    dx = (xs[None, None, None, :] - ((center_col + 0.5) * OUTPUT_STRIDE)[..., None, None])  # B, M, 1, w
    dy = (ys[None, None, :, None] - ((center_row + 0.5) * OUTPUT_STRIDE)[..., None, None])  # B, M, h, 1

    def gaussian(scale: float) -> torch.Tensor:  # B, M, h, w; sigma = scale * side / 6 (3 sigma = scale * side / 2)
        sigma_x = (scale * box_w / 6)[..., None, None]
        sigma_y = (scale * box_h / 6)[..., None, None]
        return torch.exp(-(dx ** 2) / (2 * sigma_x ** 2) - dy ** 2 / (2 * sigma_y ** 2)) * valid[..., None, None]

    heat = gaussian(HEATMAP_ALPHA)
    class_of_box = nn.functional.one_hot(labels.clamp(min=0), num_classes).float() * valid[..., None]  # B, M, C
    heatmap = (heat[:, :, None] * class_of_box[..., None, None]).amax(dim=1)  # B, C, h, w

    # Regression cells: inside the beta-scaled box around the centre cell. A cell claimed by several
    # objects regresses the one whose Gaussian is highest there (usually the nearer, smaller one).
    spread = gaussian(REGRESSION_BETA)
    inside = (dx.abs() <= REGRESSION_BETA * box_w[..., None, None] / 2) & (
        dy.abs() <= REGRESSION_BETA * box_h[..., None, None] / 2)
    spread = spread * inside
    spread = torch.where((dx == 0) & (dy == 0) & valid[..., None, None], torch.ones_like(spread), spread)
    strongest, owner = spread.max(dim=1)  # B, h, w
    owned = nn.functional.one_hot(owner, boxes.shape[1]).permute(0, 3, 1, 2).float() * (strongest > 0)[:, None]
    per_object = spread * owned  # B, M, h, w: each cell counts for at most one object
    box_weight = (per_object / per_object.sum(dim=(2, 3), keepdim=True).clamp(min=1e-6)).sum(dim=1)

    owner_boxes = torch.gather(boxes, 1, owner.flatten(1)[..., None].expand(-1, -1, 4)).view(*owner.shape, 4)
    grid_x, grid_y = xs[None, None, :], ys[None, :, None]
    distances = torch.stack([grid_x - owner_boxes[..., 0], grid_y - owner_boxes[..., 1],
                             owner_boxes[..., 2] - grid_x, owner_boxes[..., 3] - grid_y], dim=1)
    distances = distances * (box_weight > 0)[:, None]
    return Targets(heatmap, distances, box_weight, valid.sum())


def predicted_distances(outputs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The model's raw box channels as (B, 4, h, w) distances in pixels."""
    return outputs[:, num_classes:].float().clamp(max=MAX_LOG_DISTANCE).exp() * DISTANCE_SCALE


def distances_to_boxes(distances: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) left/top/right/bottom distances to (B, h, w, 4) xyxy boxes in pixels."""
    xs, ys = cell_centers(distances.shape[2], distances.shape[3], distances.device)
    grid_x, grid_y = xs[None, None, :], ys[None, :, None]
    return torch.stack([grid_x - distances[:, 0], grid_y - distances[:, 1],
                        grid_x + distances[:, 2], grid_y + distances[:, 3]], dim=-1)


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, object_count: torch.Tensor,
                       ignored: torch.Tensor | None = None) -> torch.Tensor:
    """CenterNet's focal loss: centres are positives; other cells are negatives whose penalty shrinks
    by (1 - target)^4 near a centre. Summed, divided by the number of objects. Cells `ignored` (B, h, w)
    are no negatives: crowd regions, where a detection is neither right nor wrong."""
    logits = logits.float()
    probability = logits.sigmoid()
    positive = target >= 1.0
    positive_loss = -nn.functional.logsigmoid(logits) * (1 - probability) ** 2
    negative_loss = -nn.functional.logsigmoid(-logits) * probability ** 2 * (1 - target) ** 4
    if ignored is not None:
        negative_loss = negative_loss * ~ignored[:, None]
    return torch.where(positive, positive_loss, negative_loss).sum() / object_count.clamp(min=1)


def cells_inside(boxes: torch.Tensor, chosen: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h, w): the stride-4 cells whose centre lies inside any of the boxes (B, M, 4) where `chosen` (B, M)."""
    xs, ys = cell_centers(height, width, boxes.device)
    x, y = xs[None, None, None, :], ys[None, None, :, None]
    edges = boxes[..., None, None]  # B, M, 4, 1, 1
    inside = (x >= edges[:, :, 0]) & (x < edges[:, :, 2]) & (y >= edges[:, :, 1]) & (y < edges[:, :, 3])
    return (inside & chosen[..., None, None]).any(dim=1)


def detection_loss(outputs: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   crowd: torch.Tensor | None = None) -> torch.Tensor:
    """Crowd boxes (`crowd`, B x M) are no objects to find, and their regions no background: pycocotools
    ignores detections there, so the loss does too."""
    ignored = None
    if crowd is not None and bool(crowd.any()):
        ignored = cells_inside(boxes.float(), crowd & (labels >= 0), outputs.shape[2], outputs.shape[3])
        labels = labels.masked_fill(crowd, -1)
    targets = encode_targets(boxes, labels, num_classes, outputs.shape[2], outputs.shape[3])
    heat_loss = heatmap_focal_loss(outputs[:, :num_classes], targets.heatmap, targets.object_count, ignored)
    cells = targets.box_weight > 0
    predicted = distances_to_boxes(predicted_distances(outputs, num_classes))[cells]
    wanted = distances_to_boxes(targets.distances)[cells]
    giou = generalized_box_iou_loss(predicted, wanted, reduction="none")
    box_loss = (giou * targets.box_weight[cells]).sum() / targets.object_count.clamp(min=1)
    return heat_loss + GIOU_WEIGHT * box_loss


@dataclass
class Detections:
    boxes: torch.Tensor  # (N, 4) xyxy pixels of the model input
    scores: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,) class index


def decode_detections(outputs: torch.Tensor, num_classes: int, min_score: float,
                      top_k: int = TOP_K) -> list[Detections]:
    """Heatmap peaks -> top-k (class, cell) pairs -> the box regressed at that cell -> class-wise NMS."""
    heat = outputs[:, :num_classes].float().sigmoid()
    peaks = heat * (heat == nn.functional.max_pool2d(heat, 3, stride=1, padding=1))
    batch, _, height, width = heat.shape
    scores, flat = peaks.flatten(1).topk(min(top_k, peaks[0].numel()), dim=1)
    classes, cells = flat // (height * width), flat % (height * width)
    all_boxes = distances_to_boxes(predicted_distances(outputs, num_classes)).flatten(1, 2)  # B, h*w, 4
    results = []
    for image in range(batch):
        keep = scores[image] > min_score
        boxes = all_boxes[image, cells[image, keep]]
        image_scores, labels = scores[image, keep], classes[image, keep]
        kept = batched_nms(boxes, image_scores, labels, NMS_IOU)
        results.append(Detections(boxes[kept], image_scores[kept], labels[kept]))
    return results


def draw_detections(image: np.ndarray, detections: list[dict[str, Any]]) -> np.ndarray:
    """Boxes and "class score" labels of postprocess() answers drawn on a uint8 HWC RGB image."""
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    palette = [(255, 59, 48), (52, 199, 89), (0, 122, 255), (255, 204, 0), (175, 82, 222), (255, 149, 0)]
    for detection in detections:
        color = palette[detection["index"] % len(palette)]
        x1, y1, x2, y2 = detection["box"]
        draw.rectangle((x1, y1, x2, y2), outline=color, width=2)
        text = f"{detection['class']} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        text_top = max(0, y1 - (bottom - top) - 2)
        draw.rectangle((x1, text_top, x1 + right - left + 2, text_top + bottom - top + 2), fill=color)
        draw.text((x1 + 1, text_top), text, fill=(255, 255, 255))
    return np.asarray(canvas)


@contextlib.contextmanager
def quiet_pycocotools():
    """pycocotools prints its summary table on every compute(). Under Ray Train, `print` is patched to
    log at INFO level as well as write to stdout, so both are muted for the call."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


class CocoResultsWriter(PredictionWriter):
    """Detections in COCO's results format, one JSON list, with the set's own category ids. Results files are
    read by evaluators, whose AP integrates over every score: they keep eval's low-confidence detections, not
    the API's (Ultralytics likewise writes its JSON at a low confidence)."""

    postprocess_options: ClassVar[dict[str, Any]] = {"min_score": EVAL_MIN_SCORE}

    def __init__(self, out: str, category_ids: list[int]):
        self.out, self.category_ids = out, category_ids
        self.image_ids: list[Any] = []
        self.answers: list[list[dict[str, Any]]] = []

    def add(self, relative_path: str, size: tuple[int, int], answer: Any) -> None:
        self.image_ids.append(coco.image_id_of(relative_path))
        self.answers.append(answer)

    def close(self) -> str:
        results = coco.results_document(self.image_ids, self.answers, self.category_ids)
        storage.write_text(self.out, json.dumps(results))
        return f"{len(results)} detections on {len(self.answers)} images, COCO results format"


class YoloLabelsWriter(PredictionWriter):
    """One YOLO label file per image (class cx cy w h confidence), named as the image under the folder."""

    def __init__(self, folder: str):
        self.folder, self.files = folder.rstrip("/"), 0

    def add(self, relative_path: str, size: tuple[int, int], answer: Any) -> None:
        text = yolo.label_lines([d["box"] for d in answer], [d["index"] for d in answer], size,
                                [d["score"] for d in answer])
        storage.write_text(storage.join(self.folder, relative_path.rsplit(".", 1)[0] + ".txt"), text)
        self.files += 1

    def close(self) -> str:
        return f"{self.files} YOLO label files"


class DetectTask(SceneData, Task):
    card = CARDS["detect"]
    metric = "map50"
    metric_mode = "max"

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        height, width = meta["image_size"]
        if height % 32 or width % 32:
            raise RaycvError(f"image_size {meta['image_size']} is not divisible by 32, as the detector needs")
        if MODELS[cfg.model] is not None:
            return Normalized(CenterDetector(len(meta["classes"]), MODELS[cfg.model], cfg.width), CIFAR_MEAN, CIFAR_STD)
        # A torchvision backbone (--width does not apply), normalised as its ImageNet weights expect.
        backbone = ZooBackbone(cfg.model.removeprefix(ZOO_PREFIX))
        return Normalized(CenterDetector(len(meta["classes"]), backbone=backbone), IMAGENET_MEAN, IMAGENET_STD)

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """Horizontal flip of a random half of the batch, boxes and masks included (padding rows stay -1)."""
        images = to_model_input(batch["image"])
        flip = torch.rand(images.shape[0], device=images.device) < 0.5
        boxes = batch["boxes"]
        flipped = torch.stack([images.shape[-1] - boxes[..., 2], boxes[..., 1],
                               images.shape[-1] - boxes[..., 0], boxes[..., 3]], dim=-1)
        flip_box = flip[:, None] & (batch["labels"] >= 0)
        semantic = batch["semantic"]  # (B, H, W): not used here, but kept consistent with the image
        return {**batch, "image": torch.where(flip[:, None, None, None], images.flip(-1), images),
                "boxes": torch.where(flip_box[..., None], flipped, boxes),
                "semantic": torch.where(flip[:, None, None], semantic.flip(-1), semantic)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        outputs = model(to_model_input(batch["image"]))
        return detection_loss(outputs, batch["boxes"], batch["labels"], outputs.shape[1] - 4, batch.get("crowd"))

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        num_classes = len(meta["classes"])
        average_precision = torchmetrics.detection.MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
                                                                        backend="pycocotools").to(device)
        mean_loss = torchmetrics.MeanMetric().to(device)
        for batch in batches:
            outputs = model(to_model_input(batch["image"])).float()
            mean_loss.update(detection_loss(outputs, batch["boxes"], batch["labels"], num_classes, batch.get("crowd")),
                             weight=len(outputs))
            # Scored in the photos' own pixels (the letterbox undone), as pycocotools scores the set's JSON.
            scales = batch["scale"] if "scale" in batch else torch.ones(len(outputs), device=device)
            crowds = batch["crowd"] if "crowd" in batch else torch.zeros_like(batch["labels"], dtype=torch.bool)
            predictions = [{"boxes": d.boxes / scale, "scores": d.scores, "labels": d.labels}
                           for d, scale in zip(decode_detections(outputs, num_classes, EVAL_MIN_SCORE), scales,
                                               strict=True)]
            truths = [{"boxes": boxes[labels >= 0].float() / scale, "labels": labels[labels >= 0],
                       "iscrowd": crowd[labels >= 0].long()}
                      for boxes, labels, crowd, scale in zip(batch["boxes"], batch["labels"], crowds, scales,
                                                             strict=True)]
            average_precision.update(predictions, truths)
        with quiet_pycocotools():
            scores = average_precision.compute()
        return {"map50": float(scores["map_50"]), "map": float(scores["map"]), "map75": float(scores["map_75"]),
                "loss": float(mean_loss.compute())}

    def prediction_writer(self, out: str, meta: dict[str, Any]) -> PredictionWriter | None:
        kind = output_kind(out)
        if kind == "json":
            return CocoResultsWriter(out, category_ids(meta))
        return YoloLabelsWriter(out) if kind == "folder" else None

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any], sizes: list[tuple[int, int]],
                    min_score: float = SERVE_MIN_SCORE) -> list[list[dict[str, Any]]]:
        side = int(meta["image_size"][0])
        answers = []
        for detections, (height, width) in zip(decode_detections(outputs, len(meta["classes"]), min_score), sizes,
                                               strict=False):
            # The letterbox undone: boxes in the caller's pixels.
            scale = letterbox_scale(height, width, side)
            limits = torch.tensor([width, height] * 2, device=detections.boxes.device)
            boxes = torch.minimum((detections.boxes / scale).clamp(min=0), limits)
            # One device-to-host copy per tensor, not one per number (each float() on a GPU tensor syncs).
            rows = zip(boxes.tolist(), detections.scores.tolist(), detections.labels.tolist(), strict=True)
            answers.append([{"box": [round(v, 2) for v in box], "class": meta["classes"][label], "index": label,
                             "score": round(score, 4)} for box, score, label in rows])
        return answers


TASK = DetectTask()
