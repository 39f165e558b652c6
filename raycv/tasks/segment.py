"""Semantic segmentation (textbook chapter 6.1-6.5): a UNet on a ResNet-18 encoder with LinkNet's
decoder, trained on composited scenes (the masks detect uses, kept as PNG), and the book's "danmu"
demo: scrolling comments drawn behind the people (here, the objects) in a picture.

Labels are per-pixel class maps: 0 is background, i is class i - 1 of the dataset. The model predicts
num_classes + 1 channels. Metrics come from one confusion matrix accumulated over the whole split
(torchmetrics, so DDP workers' shards are summed):

    foreground_iou  IoU of "any object" against background (the ranking metric)
    miou            mean IoU over the classes, background included
    dice            mean Dice (F1) over the same classes
    loss            the class-weighted cross-entropy term of the training loss

Extras beyond the Task protocol: the danmu picture, drawn by `raycv segment danmu` (raycv/verbs/segment.py)
and answered by POST /v1/segment/danmu (Serve).
"""

from __future__ import annotations

import base64
import json
import math
from functools import lru_cache
from typing import Any
from collections.abc import Iterable

import cv2
import numpy as np
import torch
import torchmetrics
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from raycv import storage
from raycv.config import TrainConfig
from raycv.data import coco
from raycv.data.images import decode_image, encode_png, to_model_input
from raycv.data.annotated import unletterbox_mask
from raycv.data.scenes import CROWD, SceneData, category_ids, output_kind
from raycv.errors import RaycvError
from raycv.models.common import AveragedMaps
from raycv.models.unet import INPUT_MULTIPLE, PyramidSegmenter, UNet
from raycv.models.zoo import BACKBONE_STAGES, ZOO_PREFIX, ZooBackbone
from raycv.tasks.base import PredictionWriter, Task, with_task_options
from raycv.tasks.cards import CARDS, parse_scales

# The book's UNet and the pyramid segmenter on a ResNet-18 scaled by --width, then the UNet on torchvision's
# backbones (--width does not apply; --pretrained takes their classification weights). Name -> torchvision backbone.
MODELS = {"unet_resnet18": None, "fpn_resnet18": None,
          **{f"unet_{ZOO_PREFIX}{name}": name for name in BACKBONE_STAGES}}
# ImageNet statistics, what a ResNet encoder expects (and what pretrained weights would need).
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The evaluation loss weighs background as the default of --background-weight does (the book's class
# weights), whatever a run trained with, so runs' validation losses compare.
EVAL_BACKGROUND_WEIGHT = CARDS["segment"].train_options["background_weight"][0]
DICE_WEIGHT = 1.0  # cfg.extra["dice_weight"] overrides; 0 trains on cross-entropy alone
# The classifier starts out calling every pixel background with this probability, about what the data says:
# from an even start, the first epochs are spent unlearning objects everywhere (measured on the coin photos:
# 0.47 foreground IoU after 400 steps with this start, 0.13 without).
BACKGROUND_PRIOR = 0.8


def background_prior(output_layer: nn.Conv2d) -> None:
    """Biases giving background (channel 0) BACKGROUND_PRIOR and the classes the rest in equal shares."""
    nn.init.zeros_(output_layer.bias)
    others = output_layer.out_channels - 1
    nn.init.constant_(output_layer.bias[:1], math.log(BACKGROUND_PRIOR / (1 - BACKGROUND_PRIOR) * others))


# ---------------------------------------------------------------------------------------------------
# Losses and metrics.
# ---------------------------------------------------------------------------------------------------


def class_weights(num_outputs: int, device: torch.device, background_weight: float) -> torch.Tensor:
    weights = torch.ones(num_outputs, device=device)
    weights[0] = background_weight
    return weights


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, background_weight: float) -> torch.Tensor:
    """Crowd regions (CROWD) are left out, as pycocotools leaves detections on them out."""
    weights = class_weights(logits.shape[1], logits.device, background_weight)
    return nn.functional.cross_entropy(logits, target, weight=weights, ignore_index=CROWD)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice of the object classes over the whole batch. Dice scores each class by its
    overlap whatever its pixel count, so a rare class weighs as much as a common one."""
    counted = (target != CROWD)[:, None]
    probabilities = logits.softmax(dim=1)[:, 1:] * counted
    one_hot = nn.functional.one_hot(target.masked_fill(~counted[:, 0], 0), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:]
    one_hot = one_hot.to(probabilities.dtype)
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, float]:
    """foreground_iou, miou and dice from a (target, prediction) confusion matrix; class 0 is background.
    Classes absent from both targets and predictions are left out of the means."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    predicted, actual = confusion.sum(dim=0), confusion.sum(dim=1)
    union = predicted + actual - true_positive
    present = union > 0
    iou = true_positive[present] / union[present]
    dice = 2 * true_positive[present] / (predicted + actual)[present]
    foreground_hit = confusion[1:, 1:].sum()  # an object pixel called any object class
    foreground_union = confusion.sum() - confusion[0, 0]
    return {"foreground_iou": float(foreground_hit / foreground_union) if foreground_union > 0 else 1.0,
            "miou": float(iou.mean()), "dice": float(dice.mean())}


# ---------------------------------------------------------------------------------------------------
# Masks in and out.
# ---------------------------------------------------------------------------------------------------


def mask_polygons(class_map: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Outlines of each class's regions in (x, y) pixels; the outlines of holes (a ring's inside) have
    "hole": true."""
    polygons = []
    for index, name in enumerate(names):
        region = (class_map == index + 1).astype(np.uint8)
        if not region.any():
            continue
        contours, hierarchy = cv2.findContours(region, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        for contour, (_, _, _, parent) in zip(contours, hierarchy[0], strict=False):
            if len(contour) >= 3:  # fewer points enclose no area
                polygons.append({"class": name, "points": contour[:, 0, :].tolist(), "hole": bool(parent >= 0)})
    return polygons


def class_map_from_answer(answer: dict[str, Any]) -> np.ndarray:
    """The (height, width) uint8 class map a prediction answer carries as base64 PNG."""
    return decode_image(base64.b64decode(answer["mask_png"]), mode="L")


def answer_foreground(answer: dict[str, Any]) -> np.ndarray:
    """Where a prediction answer found any object: a boolean (height, width) map."""
    return class_map_from_answer(answer) > 0


# ---------------------------------------------------------------------------------------------------
# Danmu (chapter 6.5): comments scrolling across a picture, passing behind its foreground.
# ---------------------------------------------------------------------------------------------------

# CJK fonts first: danmu comments are often Chinese, and these cover Latin text too.
FONT_NAMES = ("NotoSansCJK-Regular.ttc", "wqy-microhei.ttc", "DejaVuSans-Bold.ttf", "DejaVuSans.ttf")


@lru_cache(maxsize=16)
def danmu_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A TrueType font found offline: from the system font folders or matplotlib's DejaVu, else
    Pillow's bundled default (scalable too, since Pillow 10.1)."""
    candidates = list(FONT_NAMES)
    try:
        import matplotlib

        candidates += [f"{matplotlib.get_data_path()}/fonts/ttf/{name}" for name in FONT_NAMES]
    except ImportError:
        pass
    for candidate in candidates:
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def draw_danmu(image: np.ndarray, foreground: np.ndarray, texts: list[str], offset: float = 0.0,
               seed: int = 0) -> np.ndarray:
    """`image` (H, W, 3 uint8) with `texts` drawn as scrolling comments on its background only.

    Comment i runs in lane (row) i modulo the lanes that fit, with a colour, start and speed drawn from
    `seed`; `offset` is the time step, so frames at offset 0, 1, 2, ... scroll the comments from right to
    left. Text is painted on a transparent layer, then the foreground pixels are copied back: the
    comments pass behind the objects.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise RaycvError(f"draw_danmu needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if foreground.shape != image.shape[:2]:
        raise RaycvError(f"foreground mask of shape {foreground.shape} does not match the image's {image.shape[:2]}")
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise RaycvError("no comment text given: pass at least one non-empty text")
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    font_size = max(10, height // 14)
    font = danmu_font(font_size)
    line_height = int(font_size * 1.4)
    lanes = max(1, (height - line_height // 2) // line_height)
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    stroke = max(1, line_height // 12)
    for index, text in enumerate(texts):
        lane = index % lanes
        text_width = int(draw.textlength(text, font=font)) + 2 * stroke
        track = width + text_width  # a comment enters at the right edge and leaves past the left one
        speed = rng.uniform(2.0, 5.0)
        x = width - (rng.uniform(0, track) + offset * speed) % track
        y = line_height // 4 + lane * line_height
        color = tuple(int(c) for c in rng.integers(160, 256, 3))
        draw.text((x, y), text, font=font, fill=(*color, 255), stroke_width=stroke, stroke_fill=(0, 0, 0, 255))
    painted = np.asarray(Image.alpha_composite(Image.fromarray(image).convert("RGBA"), layer).convert("RGB"))
    return np.where(foreground[..., None].astype(bool), image, painted)


def danmu_from_answer(image: np.ndarray, answer: dict[str, Any], texts: list[str], offset: float = 0.0,
                      seed: int = 0) -> np.ndarray:
    """draw_danmu behind every object the model found (its prediction `answer` for `image`)."""
    return draw_danmu(image, answer_foreground(answer), texts, offset, seed)


MAX_COMMENTS, MAX_COMMENT_CHARS = 64, 200  # bounds on the drawing work one request may ask for


def parse_danmu_query(query: dict[str, list[str]]) -> dict[str, Any]:
    """?text=...&text=...[&offset=F][&seed=N] (POST /v1/segment/danmu) to danmu_png's options."""
    texts = [text for text in query.get("text", []) if text.strip()]
    if not texts:
        raise RaycvError("missing query parameter 'text': e.g. /v1/segment/danmu?text=hello&text=world")
    if len(texts) > MAX_COMMENTS or max(map(len, texts)) > MAX_COMMENT_CHARS:
        raise RaycvError(f"{len(texts)} comments of up to {max(map(len, texts))} characters: the limits are "
                         f"{MAX_COMMENTS} comments of {MAX_COMMENT_CHARS} characters")
    options: dict[str, Any] = {"texts": texts}
    for key, kind, expected in (("offset", float, "a number"), ("seed", int, "an integer")):
        if key in query:
            try:
                options[key] = kind(query[key][-1])
            except ValueError:
                raise RaycvError(f"invalid {key}={query[key][-1]!r}: expected {expected}") from None
    return options


def danmu_png(image: np.ndarray, answer: dict[str, Any], texts: list[str], offset: float = 0.0,
              seed: int = 0) -> bytes:
    return encode_png(danmu_from_answer(image, answer, texts, offset, seed))


# ---------------------------------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------------------------------


def flip_images_and_masks(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random horizontal and vertical flips, the same ones for an NCHW image and its NHW mask."""
    for image_dim in (-1, -2):
        flip = torch.rand(images.shape[0], device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(image_dim), images)
        masks = torch.where(flip[:, None, None], masks.flip(image_dim), masks)
    return images, masks


class MaskPngWriter(PredictionWriter):
    """One PNG class map per image (pixel value i is class i - 1, 0 background), named as the image."""

    def __init__(self, folder: str):
        self.folder, self.files = folder.rstrip("/"), 0

    def add(self, relative_path: str, size: tuple[int, int], answer: Any) -> None:
        name = storage.join(self.folder, relative_path.rsplit(".", 1)[0] + ".png")
        filesystem, inner = storage.resolve(name)
        filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(inner) as stream:
            stream.write(base64.b64decode(answer["mask_png"]))
        self.files += 1

    def close(self) -> str:
        return f"{self.files} PNG masks"


class MaskRleWriter(PredictionWriter):
    """COCO results with segmentations: one entry per image and class present, its region as compressed RLE."""

    def __init__(self, out: str, category_ids: list[int]):
        self.out, self.category_ids, self.results, self.images = out, category_ids, [], 0

    def add(self, relative_path: str, size: tuple[int, int], answer: Any) -> None:
        class_map = class_map_from_answer(answer)
        for value in np.unique(class_map[class_map > 0]):
            rle = coco.encode_rle(class_map == value)
            self.results.append({"image_id": coco.image_id_of(relative_path), "score": 1.0, "segmentation": rle,
                                 "category_id": self.category_ids[int(value) - 1]})
        self.images += 1

    def close(self) -> str:
        storage.write_text(self.out, json.dumps(self.results))
        return f"{len(self.results)} class regions on {self.images} images, COCO results format (RLE)"


class SegmentTask(SceneData, Task):
    card = CARDS["segment"]
    metric = "foreground_iou"
    metric_mode = "max"
    routes = {"danmu": (parse_danmu_query, danmu_png)}

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        height, width = meta["image_size"]
        if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
            raise RaycvError(f"image_size {height}x{width} cannot be segmented: both sides must be "
                             f"multiples of {INPUT_MULTIPLE} (synthesize with --param image_size=128, 160, ...)")
        outputs = len(meta["classes"]) + 1
        # --tta flip and --tta-scales: eval, predict, serve and exports average each photo's logit maps over
        # its mirror and its enlargements (a trained checkpoint takes new values at evaluation).
        options = with_task_options(self, cfg).extra
        if cfg.model == "fpn_resnet18":
            network = PyramidSegmenter(outputs, width=cfg.width)
        else:
            encoder = ZooBackbone(MODELS[cfg.model]) if MODELS[cfg.model] else None
            network = UNet(outputs, cfg.width, encoder=encoder)
        background_prior(network.output_layer)
        return AveragedMaps(network, MEAN, STD, flip=options["tta"] == "flip",
                            scales=parse_scales(options["tta_scales"]), multiple=INPUT_MULTIPLE)

    def head(self, model: nn.Module, meta: dict[str, Any]) -> str | None:
        """The pyramid segmenter's own layers, which --pretrained leaves fresh when it loads a detector."""
        return "net.head" if isinstance(model.net, PyramidSegmenter) else None

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        # Only image and mask: flipped boxes would need their own transform, and this task reads none.
        images, masks = flip_images_and_masks(to_model_input(batch["image"]), batch["semantic"])
        return {"image": images, "semantic": masks}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        logits = model(to_model_input(batch["image"])).float()
        target = batch["semantic"].long()
        loss = weighted_cross_entropy(logits, target, float(with_task_options(self, cfg).extra["background_weight"]))
        dice_weight = float(cfg.extra.get("dice_weight", DICE_WEIGHT))
        return loss + dice_weight * soft_dice_loss(logits, target) if dice_weight else loss

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        outputs = len(meta["classes"]) + 1
        confusion = torchmetrics.classification.MulticlassConfusionMatrix(outputs, ignore_index=CROWD).to(device)
        mean_loss = torchmetrics.MeanMetric().to(device)
        for batch in batches:
            logits = model(to_model_input(batch["image"])).float()
            target = batch["semantic"].long()
            confusion.update(logits.argmax(dim=1), target)
            mean_loss.update(weighted_cross_entropy(logits, target, EVAL_BACKGROUND_WEIGHT), weight=len(logits))
        return {**scores_from_confusion(confusion.compute()), "loss": float(mean_loss.compute())}

    def prediction_writer(self, out: str, meta: dict[str, Any]) -> PredictionWriter | None:
        kind = output_kind(out)
        if kind == "json":
            return MaskRleWriter(out, category_ids(meta))
        return MaskPngWriter(out) if kind == "folder" else None

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image: the class map at the image's own size as a base64 PNG (pixel value i is
        classes[i], classes[0] is "background") and the outline polygons of every region."""
        class_maps = outputs.argmax(dim=1).to(torch.uint8).cpu().numpy()
        answers = []
        for class_map, (height, width) in zip(class_maps, sizes, strict=False):
            class_map = unletterbox_mask(class_map, int(height), int(width))
            answers.append({"mask_png": base64.b64encode(encode_png(class_map)).decode("ascii"),
                            "classes": ["background", *meta["classes"]],
                            "polygons": mask_polygons(class_map, meta["classes"])})
        return answers


TASK = SegmentTask()
